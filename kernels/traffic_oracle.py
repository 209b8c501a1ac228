"""Triton kernels for the traffic oracle: vehicle collisions and offroad checks on CUDA tensors.

Same contract as the reference :mod:`genneg.reference.traffic_oracle` (read it there): boxes
``(S, A, 5)`` or ``(A, 5)`` float32/float64 ``(x m, y m, length m, width m, heading rad)``, optional
``valid`` mask, exact interior-overlap semantics with strict separating-axis tests, invalid slots False.

Precision: every kernel loads the boxes in their own dtype and computes in **float64**. The contract
says geometry is float64 whatever the input, and the C++ and Triton results must agree on every input not
within 1e-6 m of touching. float32 with scene-local centring would leave about ``6e-8 * extent`` of
rounding (6e-6 m at a 100 m scene, more in the projected radii), i.e. outside that band, and near 1e6 m
coordinates centring would need a float64 subtraction anyway. An H100 runs float64 at half its float32
rate and these kernels are memory- and latency-bound, so the cost is small; on consumer GPUs with 1/64
float64 rate it is larger but still far ahead of a CPU.

Kernels are launched with ``enable_fp_fusion=False``: no fused multiply-adds, so every product and sum is
rounded as in the reference and the C++ (only ``cos``/``sin`` may differ by an ulp between libraries).

Layout: one op, one name through its layers: ``_collisions_kernel`` -> :func:`collisions` (launcher),
``_offroad_kernel`` -> :func:`offroad`. Launchers take exactly the reference's arguments, validate with
the reference's checks, accept any strides, and return bool tensors on the input device.

- Collisions: program ``(scene, block of BLOCK_I vehicles)``; loops over the scene's vehicles in tiles of
  BLOCK_J and runs the 4-axis test on the ``BLOCK_I x BLOCK_J`` tile. Work: ``S * A^2`` pair tests.
- Offroad: program per block of BLOCK_B boxes; each box's bounding box gives a range of raster cells.
  Boxes partly outside the raster are offroad at once; boxes whose range holds no non-drivable cell (a
  summed-area table, four loads) are on the road at once. The rest walk their cells in tiles of BLOCK_C
  (``BLOCK_B x BLOCK_C`` exact cell tests per step, up to the largest count in the block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from genneg.kernels._backend import interpreter_enabled
from genneg.reference.traffic_oracle import HALF_PI, validate_boxes, validate_margin, validate_raster

__all__ = ["collisions", "offroad"]


@triton.jit
def _heading_axis(heading, half_pi):
    """float64 cos and sin of ``heading`` with quarter turns exact (see the reference's heading_axis).

    ``half_pi`` is fl(pi/2) loaded from a float64 tensor: a Python float constant may be materialised
    through float32 on some Triton versions, which would turn every quarter by ~4e-8 rad.
    """
    quarter = tl.floor(heading / half_pi + 0.5)
    rest = heading - quarter * half_pi
    cos_r = tl.cos(rest)
    sin_r = tl.sin(rest)
    quadrant = quarter - 4.0 * tl.floor(quarter * 0.25)
    c = tl.where(
        quadrant == 0.0, cos_r, tl.where(quadrant == 1.0, -sin_r, tl.where(quadrant == 2.0, -cos_r, sin_r))
    )
    s = tl.where(
        quadrant == 0.0, sin_r, tl.where(quadrant == 1.0, cos_r, tl.where(quadrant == 2.0, -sin_r, -cos_r))
    )
    return c, s


@triton.jit
def _box_frame(ptr, stride_v, stride_f, offs, mask, margin, half_pi):
    """Load boxes at ``ptr + offs * stride_v`` and return float64 x, y, half-length, half-width, cos, sin.

    Masked lanes get a unit box at the origin (never NaN), whatever memory holds.
    """
    base = ptr + offs * stride_v
    x = tl.load(base, mask=mask, other=0.0).to(tl.float64)
    y = tl.load(base + stride_f, mask=mask, other=0.0).to(tl.float64)
    length = tl.load(base + 2 * stride_f, mask=mask, other=1.0).to(tl.float64)
    width = tl.load(base + 3 * stride_f, mask=mask, other=1.0).to(tl.float64)
    heading = tl.load(base + 4 * stride_f, mask=mask, other=0.0).to(tl.float64)
    c, s = _heading_axis(heading, half_pi)
    return x, y, 0.5 * length + margin, 0.5 * width + margin, c, s


@triton.jit
def _collisions_kernel(
    boxes_ptr,
    valid_ptr,
    out_ptr,
    num_agents,
    stride_bs,
    stride_ba,
    stride_bf,
    stride_vs,
    stride_va,
    params_ptr,
    HAS_VALID: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    # float64 parameters (a Python float argument would arrive as float32): margin (m), fl(pi/2).
    margin = tl.load(params_ptr)
    half_pi = tl.load(params_ptr + 1)
    scene = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    in_i = offs_i < num_agents
    if HAS_VALID:
        valid_i = tl.load(valid_ptr + scene * stride_vs + offs_i * stride_va, mask=in_i, other=0) != 0
        in_i = in_i & valid_i
    scene_boxes = boxes_ptr + scene * stride_bs
    xa, ya, hla, hwa, ca, sa = _box_frame(scene_boxes, stride_ba, stride_bf, offs_i, in_i, margin, half_pi)
    xa, ya, hla, hwa = xa[:, None], ya[:, None], hla[:, None], hwa[:, None]
    ca, sa = ca[:, None], sa[:, None]
    hit = tl.zeros([BLOCK_I], dtype=tl.int32)
    for start_j in range(0, num_agents, BLOCK_J):
        offs_j = start_j + tl.arange(0, BLOCK_J)
        in_j = offs_j < num_agents
        if HAS_VALID:
            valid_j = tl.load(valid_ptr + scene * stride_vs + offs_j * stride_va, mask=in_j, other=0) != 0
            in_j = in_j & valid_j
        xb, yb, hlb, hwb, cb, sb = _box_frame(
            scene_boxes, stride_ba, stride_bf, offs_j, in_j, margin, half_pi
        )
        xb, yb, hlb, hwb = xb[None, :], yb[None, :], hlb[None, :], hwb[None, :]
        cb, sb = cb[None, :], sb[None, :]
        dx = xb - xa
        dy = yb - ya
        cos_ab = tl.abs(ca * cb + sa * sb)
        sin_ab = tl.abs(sa * cb - ca * sb)
        overlap = tl.abs(dx * ca + dy * sa) < hla + (hlb * cos_ab + hwb * sin_ab)
        overlap = overlap & (tl.abs(dy * ca - dx * sa) < hwa + (hlb * sin_ab + hwb * cos_ab))
        overlap = overlap & (tl.abs(dx * cb + dy * sb) < hlb + (hla * cos_ab + hwa * sin_ab))
        overlap = overlap & (tl.abs(dy * cb - dx * sb) < hwb + (hla * sin_ab + hwa * cos_ab))
        pair = overlap & in_i[:, None] & in_j[None, :] & (offs_i[:, None] != offs_j[None, :])
        hit = tl.maximum(hit, tl.max(pair.to(tl.int32), axis=1))
    tl.store(out_ptr + scene * num_agents + offs_i, hit.to(tl.uint8), mask=offs_i < num_agents)


@triton.jit
def _cell_span(lo, hi, resolution, num_cells):
    """First and last cell (int32, clamped to ``[0, num_cells - 1]``) whose closed extent meets [lo, hi]."""
    first = tl.floor(lo / resolution)
    last = tl.floor(hi / resolution)
    # Widen by one where the division rounded, so no cell whose interior meets the box is skipped.
    first = tl.where(first * resolution > lo, first - 1.0, first)
    last = tl.where((last + 1.0) * resolution < hi, last + 1.0, last)
    first = tl.minimum(tl.maximum(first, 0.0), num_cells - 1.0).to(tl.int32)
    last = tl.minimum(tl.maximum(last, 0.0), num_cells - 1.0).to(tl.int32)
    return first, last


@triton.jit
def _offroad_kernel(
    boxes_ptr,
    valid_ptr,
    drivable_ptr,
    table_ptr,
    out_ptr,
    num_boxes,
    num_agents,
    stride_bs,
    stride_ba,
    stride_bf,
    stride_vs,
    stride_va,
    stride_dh,
    stride_dw,
    stride_th,
    params_ptr,
    HAS_VALID: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # float64 parameters: origin x, y (m), resolution (m/cell), height, width (cells), fl(pi/2).
    origin_x = tl.load(params_ptr)
    origin_y = tl.load(params_ptr + 1)
    resolution = tl.load(params_ptr + 2)
    height = tl.load(params_ptr + 3)
    width = tl.load(params_ptr + 4)
    half_pi = tl.load(params_ptr + 5)
    offs = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    in_b = offs < num_boxes
    scene = offs // num_agents
    agent = offs % num_agents
    if HAS_VALID:
        in_b = in_b & (tl.load(valid_ptr + scene * stride_vs + agent * stride_va, mask=in_b, other=0) != 0)
    base = boxes_ptr + scene * stride_bs
    x, y, hl, hw, c, s = _box_frame(base, stride_ba, stride_bf, agent, in_b, 0.0, half_pi)
    px = x - origin_x
    py = y - origin_y
    ex = hl * tl.abs(c) + hw * tl.abs(s)  # half-extents of the box's axis-aligned bounding box
    ey = hl * tl.abs(s) + hw * tl.abs(c)
    extent_x = width * resolution
    extent_y = height * resolution
    outside = (px - ex < 0) | (px + ex > extent_x) | (py - ey < 0) | (py + ey > extent_y)
    outside = outside & in_b
    # Cell range of the bounding box, clamped in float64 before the integer conversion.
    j0, j1 = _cell_span(px - ex, px + ex, resolution, width)
    i0, i1 = _cell_span(py - ey, py + ey, resolution, height)
    num_cols = tl.maximum(j1 - j0 + 1, 1)
    # Non-drivable cells among the candidates, from the summed-area table: boxes with none are on the road
    # and skip the cell loop (most vehicles, on most maps).
    inside = in_b & ~outside
    row0 = table_ptr + i0 * stride_th
    row1 = table_ptr + (i1 + 1) * stride_th
    num_blocked = (
        tl.load(row1 + j1 + 1, mask=inside, other=0)
        - tl.load(row0 + j1 + 1, mask=inside, other=0)
        - tl.load(row1 + j0, mask=inside, other=0)
        + tl.load(row0 + j0, mask=inside, other=0)
    )
    num_cells = tl.where(inside & (num_blocked > 0), (i1 - i0 + 1) * num_cols, 0)
    radius = 0.5 * resolution * (tl.abs(c) + tl.abs(s))  # a cell's half-extent along a box axis
    hit = outside.to(tl.int32)
    max_cells = tl.max(num_cells, axis=0)
    for start in range(0, max_cells, BLOCK_C):
        k = start + tl.arange(0, BLOCK_C)
        in_range = k[None, :] < num_cells[:, None]
        ii = i0[:, None] + k[None, :] // num_cols[:, None]
        jj = j0[:, None] + k[None, :] % num_cols[:, None]
        cell_ok = tl.load(drivable_ptr + ii * stride_dh + jj * stride_dw, mask=in_range, other=1)
        cx0 = jj.to(tl.float64) * resolution
        cy0 = ii.to(tl.float64) * resolution
        bpx, bpy, bex, bey = px[:, None], py[:, None], ex[:, None], ey[:, None]
        blocked = in_range & (cell_ok == 0)
        blocked = blocked & (cx0 < bpx + bex) & (cx0 + resolution > bpx - bex)
        blocked = blocked & (cy0 < bpy + bey) & (cy0 + resolution > bpy - bey)
        qx = cx0 + 0.5 * resolution - bpx
        qy = cy0 + 0.5 * resolution - bpy
        bc, bs = c[:, None], s[:, None]
        blocked = blocked & (tl.abs(qx * bc + qy * bs) < hl[:, None] + radius[:, None])
        blocked = blocked & (tl.abs(qy * bc - qx * bs) < hw[:, None] + radius[:, None])
        hit = tl.maximum(hit, tl.max(blocked.to(tl.int32), axis=1))
    tl.store(out_ptr + offs, hit.to(tl.uint8), mask=offs < num_boxes)


def _check_device(device: torch.device) -> None:
    """Triton runs CUDA tensors; CPU tensors only under the interpreter (tests)."""
    if device.type != "cuda" and not interpreter_enabled():
        raise ValueError(
            f"the Triton traffic-oracle kernels need CUDA tensors, got device {device} (CPU tensors run "
            f"only under TRITON_INTERPRET=1; use genneg.reference.traffic_oracle or genneg_ext instead)"
        )


def _valid_arg(valid3: torch.Tensor, has_valid: bool) -> tuple[torch.Tensor, int, int]:
    """The mask as uint8 (Triton loads bytes), with its strides; a dummy when there is no mask."""
    if not has_valid:
        return torch.empty(1, dtype=torch.uint8, device=valid3.device), 0, 0
    as_bytes = valid3.view(torch.uint8)
    return as_bytes, as_bytes.stride(0), as_bytes.stride(1)


def collisions(boxes: torch.Tensor, valid: torch.Tensor | None = None, margin: float = 0.0) -> torch.Tensor:
    """Triton twin of :func:`genneg.reference.traffic_oracle.collisions` (same contract).

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64 CUDA tensor (or CPU under ``TRITON_INTERPRET=1``),
            any strides: x m, y m, length m, width m, heading rad.
        valid: optional ``(S, A)`` / ``(A,)`` bool on the same device; invalid slots ignored, reported False.
        margin: metres >= 0 added to every half-length and half-width.

    Returns:
        bool ``(S, A)`` (or ``(A,)``) on ``boxes.device``; True = interior overlaps another valid vehicle's.
    """
    boxes3, valid3, squeeze = validate_boxes(boxes, valid)
    margin = validate_margin(margin)
    _check_device(boxes3.device)
    num_scenes, num_agents = boxes3.shape[:2]
    out = torch.zeros((num_scenes, num_agents), dtype=torch.uint8, device=boxes3.device)
    if num_scenes > 0 and num_agents > 1:
        valid_arg, stride_vs, stride_va = _valid_arg(valid3, valid is not None)
        block_j = min(32, triton.next_power_of_2(num_agents))
        block_i = min(16, block_j)
        grid = (num_scenes, triton.cdiv(num_agents, block_i))
        _collisions_kernel[grid](
            boxes3,
            valid_arg,
            out,
            num_agents,
            boxes3.stride(0),
            boxes3.stride(1),
            boxes3.stride(2),
            stride_vs,
            stride_va,
            torch.tensor([margin, HALF_PI], dtype=torch.float64, device=boxes3.device),
            HAS_VALID=valid is not None,
            BLOCK_I=block_i,
            BLOCK_J=block_j,
            enable_fp_fusion=False,
        )
    out = out.view(torch.bool)
    return out[0] if squeeze else out


def offroad(
    boxes: torch.Tensor,
    drivable: torch.Tensor,
    origin: Sequence[float],
    resolution: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton twin of :func:`genneg.reference.traffic_oracle.offroad` (same contract).

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64 CUDA tensor, any strides.
        drivable: ``(H, W)`` bool/integer tensor on the same device, non-zero = drivable.
        origin: ``(x, y)`` metres of the outer corner of cell ``[0, 0]``.
        resolution: metres per cell.
        valid: optional ``(S, A)`` / ``(A,)`` bool on the same device.

    Returns:
        bool ``(S, A)`` (or ``(A,)``) on ``boxes.device``; True = covers a non-drivable cell or leaves the
        raster.
    """
    boxes3, valid3, squeeze = validate_boxes(boxes, valid)
    drivable, (ox, oy), res = validate_raster(drivable, origin, resolution, boxes3.device)
    _check_device(boxes3.device)
    num_scenes, num_agents = boxes3.shape[:2]
    num_boxes = num_scenes * num_agents
    out = torch.zeros(num_boxes, dtype=torch.uint8, device=boxes3.device)
    if num_boxes > 0:
        # Contiguous bytes keep cell offsets within int32 (validate_raster bounds H*W below 2**31).
        drivable = drivable.contiguous()
        if drivable.dtype == torch.bool:
            drivable = drivable.view(torch.uint8)
        height, width = drivable.shape
        params = torch.tensor(
            [ox, oy, res, height, width, HALF_PI], dtype=torch.float64, device=boxes3.device
        )
        # Summed-area table of non-drivable cells: table[i, j] = count over rows < i and columns < j.
        table = torch.zeros((height + 1, width + 1), dtype=torch.int32, device=boxes3.device)
        table[1:, 1:] = (
            (drivable == 0).to(torch.int32).cumsum(0, dtype=torch.int32).cumsum(1, dtype=torch.int32)
        )
        valid_arg, stride_vs, stride_va = _valid_arg(valid3, valid is not None)
        block_b = 16
        _offroad_kernel[(triton.cdiv(num_boxes, block_b),)](
            boxes3,
            valid_arg,
            drivable,
            table,
            out,
            num_boxes,
            num_agents,
            boxes3.stride(0),
            boxes3.stride(1),
            boxes3.stride(2),
            stride_vs,
            stride_va,
            drivable.stride(0),
            drivable.stride(1),
            table.stride(0),
            params,
            HAS_VALID=valid is not None,
            BLOCK_B=block_b,
            BLOCK_C=64,
            enable_fp_fusion=False,
        )
    out = out.view(torch.bool).reshape(num_scenes, num_agents)
    return out[0] if squeeze else out
