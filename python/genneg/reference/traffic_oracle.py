"""Pure-PyTorch twin of the traffic oracle: exact vehicle overlap and offroad checks.

This is the reference that the C++ (``genneg_ext``) and Triton (``genneg.kernels.traffic_oracle``)
implementations are held to, and the fallback on devices where neither runs. It works on any torch
device, vectorised over scenes and vehicle pairs (collisions) or over boxes and raster cells (offroad),
in chunks that bound peak memory.

Contract (shared by every backend):

- A vehicle is a rectangle ``(x, y, length, width, heading)``: centre in metres, full length along the
  heading, full width across it, heading in radians. ``boxes`` is ``(S, A, 5)`` (S scenes, A vehicle
  slots) or ``(A, 5)`` (one scene), float32 or float64; ``valid`` is an optional bool mask of shape
  ``boxes.shape[:-1]``. Invalid slots are ignored (their values are never read for geometry, may even be
  NaN) and reported False.
- **Collision**: vehicle i collides iff the interior of its rectangle intersects the interior of another
  valid vehicle's rectangle in the same scene. Touching edges or corners is not a collision. ``margin``
  (metres, >= 0) inflates every box's length and width by ``2 * margin`` first.
- **Offroad**: vehicle i is offroad iff the interior of its rectangle intersects the interior of a
  non-drivable raster cell, or a corner lies strictly outside the raster rectangle. Cell ``(i, j)`` covers
  ``[ox + j*res, ox + (j+1)*res] x [oy + i*res, oy + (i+1)*res]``. The whole box counts, not its corners.
- Geometry is computed in float64 whatever the input dtype, in coordinates relative to the raster origin
  (offroad) or as centre differences (collisions), so that coordinates near 1e6 m lose no precision.
  Results are exact up to float64 rounding at exact touching.

Both tests are separating-axis tests with strict inequalities: two convex polygons have intersecting
interiors iff their projections on every edge normal overlap with positive length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "MAX_ABS_COORDINATE_M",
    "MAX_ABS_HEADING_RAD",
    "MAX_SIZE_M",
    "MIN_SIZE_M",
    "collisions",
    "heading_axis",
    "offroad",
    "validate_boxes",
    "validate_margin",
    "validate_raster",
]

HALF_PI = 1.57079632679489661923  # fl(pi / 2), the quarter turn headings are reduced by

# The valid range of every input number, the same on every backend (csrc/boxes.h holds the C++ copy;
# genneg_ext._C exposes it and a test holds the two equal). Inside it every intermediate is a finite,
# normal float64 and the geometry is exact up to float64 rounding; outside it the oracles raise
# ValueError rather than overflow (a 1e308 m box plus a margin), underflow (a 5e-324 m box halves to 0)
# or reduce a huge heading inexactly (the quarter-turn reduction by fl(pi/2) drifts by |heading| * 4e-17
# rad from the true angle: 0.04 rad at 1e15 rad, < 1e-12 rad within the bound). The lengths are bounded
# far from overflow rather than by plausibility: every finite float32 (e.g. a model sample decoded to
# metres, which the Gen-neG loop must label, however wild) is inside, and sums and products of two
# in-range numbers stay below 1e200 and above 1e-200.
MAX_ABS_COORDINATE_M = 1e100  # |x|, |y| of a box centre and of a raster origin, m
MIN_SIZE_M = 1e-100  # length, width, resolution, m
MAX_SIZE_M = 1e100  # length, width, margin, resolution, m
MAX_ABS_HEADING_RAD = 1e4  # |heading|, rad (about 1,600 turns)

# Elements per chunk of pair or cell tests; bounds peak memory to a few hundred MB of float64 temporaries.
_CHUNK_ELEMENTS = 1 << 21


def validate_boxes(
    boxes: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Check ``boxes`` and ``valid`` against the contract and bring them to 3-D.

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64 tensor, any device and strides.
        valid: ``None`` or a bool tensor of shape ``boxes.shape[:-1]`` on the same device.

    Returns:
        ``(boxes3, valid3, squeeze)``: ``boxes3`` a ``(S, A, 5)`` view of ``boxes`` (no copy),
        ``valid3`` a ``(S, A)`` bool tensor, ``squeeze`` True when the input was 2-D.

    Raises:
        TypeError: ``boxes``/``valid`` is not a tensor, or has the wrong dtype.
        ValueError: wrong rank or last dimension, mismatched ``valid`` shape or device, a non-finite
            value, a length/width <= 0 or a value outside the valid range (``MAX_ABS_COORDINATE_M``,
            ``MIN_SIZE_M``, ``MAX_SIZE_M``, ``MAX_ABS_HEADING_RAD``) in a valid slot (the message names
            scene and vehicle index).
    """
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"boxes must be float32 or float64, got {boxes.dtype}")
    if boxes.ndim not in (2, 3) or boxes.shape[-1] != 5:
        raise ValueError(
            f"boxes must have shape (S, A, 5) or (A, 5) (x, y, length, width, heading), "
            f"got {tuple(boxes.shape)}"
        )
    squeeze = boxes.ndim == 2
    boxes3 = boxes.unsqueeze(0) if squeeze else boxes
    if valid is None:
        valid3 = torch.ones(boxes3.shape[:2], dtype=torch.bool, device=boxes.device)
    else:
        if not isinstance(valid, torch.Tensor):
            raise TypeError(f"valid must be a torch.Tensor or None, got {type(valid).__name__}")
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        if tuple(valid.shape) != tuple(boxes.shape[:-1]):
            raise ValueError(
                f"valid has shape {tuple(valid.shape)}, expected {tuple(boxes.shape[:-1])} (boxes.shape[:-1])"
            )
        if valid.device != boxes.device:
            raise ValueError(f"valid is on {valid.device} but boxes are on {boxes.device}")
        valid3 = valid.unsqueeze(0) if squeeze else valid
    if boxes3.numel() == 0:
        return boxes3, valid3, squeeze
    # One host synchronisation for all checks; the error path pays for locating the culprit.
    b = boxes3.to(torch.float64)
    finite = torch.isfinite(b).all(dim=-1)
    positive = (b[..., 2] > 0) & (b[..., 3] > 0)
    in_range = (
        (b[..., :2].abs() <= MAX_ABS_COORDINATE_M).all(dim=-1)
        & ((b[..., 2:4] >= MIN_SIZE_M) & (b[..., 2:4] <= MAX_SIZE_M)).all(dim=-1)
        & (b[..., 4].abs() <= MAX_ABS_HEADING_RAD)
    )
    bad = valid3 & ~(finite & positive & in_range)
    if bool(bad.any()):
        s, a = (int(v) for v in torch.nonzero(bad)[0].tolist())
        where = f"boxes[{a}] (vehicle {a})" if squeeze else f"boxes[{s}, {a}] (scene {s}, vehicle {a})"
        values = boxes3[s, a].tolist()
        if not bool(finite[s, a]):
            raise ValueError(f"{where} has a non-finite value: {values}")
        if not bool(positive[s, a]):
            raise ValueError(f"{where} has length or width <= 0: length={values[2]}, width={values[3]}")
        raise ValueError(
            f"{where} = {values} is outside the valid range (|x|, |y| <= {MAX_ABS_COORDINATE_M:g} m, "
            f"{MIN_SIZE_M:g} m <= length, width <= {MAX_SIZE_M:g} m, "
            f"|heading| <= {MAX_ABS_HEADING_RAD:g} rad)"
        )
    return boxes3, valid3, squeeze


def validate_margin(margin: float) -> float:
    """Return ``margin`` as a float after checking it is in ``[0, MAX_SIZE_M]`` (metres), else ValueError."""
    margin = float(margin)
    if not (0 <= margin <= MAX_SIZE_M):
        raise ValueError(f"margin must be a number of metres in [0, {MAX_SIZE_M:g}], got {margin}")
    return margin


def validate_raster(
    drivable: torch.Tensor, origin: Sequence[float], resolution: float, device: torch.device
) -> tuple[torch.Tensor, tuple[float, float], float]:
    """Check a drivable raster and its placement.

    Args:
        drivable: ``(H, W)`` bool or integer tensor (non-zero = drivable) on ``device``.
        origin: ``(x, y)`` of the outer corner of cell ``[0, 0]``, metres.
        resolution: cell edge length, metres per cell, > 0.
        device: the device of the boxes.

    Returns:
        ``(drivable, (ox, oy), resolution)`` with ``drivable`` unchanged and the numbers as floats.

    Raises:
        TypeError: ``drivable`` is not a bool/integer tensor.
        ValueError: empty or non-2-D raster, raster on another device, origin or resolution outside the
            valid range (module constants).
    """
    if not isinstance(drivable, torch.Tensor):
        raise TypeError(f"drivable must be a torch.Tensor, got {type(drivable).__name__}")
    if drivable.dtype.is_floating_point or drivable.dtype.is_complex:
        raise TypeError(f"drivable must be a bool or integer tensor, got {drivable.dtype}")
    if drivable.ndim != 2 or drivable.shape[0] == 0 or drivable.shape[1] == 0:
        raise ValueError(f"drivable must be a non-empty (H, W) raster, got shape {tuple(drivable.shape)}")
    if drivable.shape[0] * drivable.shape[1] >= 2**31:
        raise ValueError(f"drivable raster {tuple(drivable.shape)} has >= 2**31 cells; split the map")
    if drivable.device != torch.device(device):
        raise ValueError(f"drivable is on {drivable.device} but boxes are on {device}")
    origin_xy = tuple(float(v) for v in origin)
    if len(origin_xy) != 2 or not all(abs(v) <= MAX_ABS_COORDINATE_M for v in origin_xy):
        raise ValueError(f"origin must be two finite numbers (x m, y m) with |x|, |y| <= "
                         f"{MAX_ABS_COORDINATE_M:g}, got {origin}")
    resolution = float(resolution)
    if not (MIN_SIZE_M <= resolution <= MAX_SIZE_M):
        raise ValueError(f"resolution must be a number of metres per cell in "
                         f"[{MIN_SIZE_M:g}, {MAX_SIZE_M:g}], got {resolution}")
    return drivable, (origin_xy[0], origin_xy[1]), resolution


def heading_axis(heading: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of float64 ``heading`` (rad) with quarter turns exact.

    The heading is reduced by the nearest multiple ``q`` of ``fl(pi/2)`` and the axis rotated by ``q``
    quarter turns, so headings that are float64 multiples of ``fl(pi/2)`` (0, ±pi/2, ±pi, ±2pi, ...) give
    axes made of 0 and ±1 and axis-aligned boxes keep exactly representable edges, as in ``genneg_ext``.
    """
    quarter = torch.round(heading / HALF_PI)
    rest = heading - quarter * HALF_PI
    cos_r, sin_r = torch.cos(rest), torch.sin(rest)
    quadrant = torch.remainder(quarter, 4.0)
    c = torch.where(
        quadrant == 0, cos_r, torch.where(quadrant == 1, -sin_r, torch.where(quadrant == 2, -cos_r, sin_r))
    )
    s = torch.where(
        quadrant == 0, sin_r, torch.where(quadrant == 1, cos_r, torch.where(quadrant == 2, -sin_r, -cos_r))
    )
    return c, s


def _box_frame(boxes: torch.Tensor, margin: float) -> tuple[torch.Tensor, ...]:
    """``(..., 5)`` boxes -> float64 ``x, y, half_length, half_width, cos, sin``, each ``(...)``."""
    b = boxes.to(torch.float64)
    c, s = heading_axis(b[..., 4])
    return b[..., 0], b[..., 1], 0.5 * b[..., 2] + margin, 0.5 * b[..., 3] + margin, c, s


def _pair_overlap(boxes: torch.Tensor, margin: float) -> torch.Tensor:
    """Interior overlap of every ordered pair: ``(S, A, 5)`` -> ``(S, A, A)`` bool (diagonal True)."""
    x, y, hl, hw, c, s = _box_frame(boxes, margin)
    # Row i is box a, column j is box b; d = centre_b - centre_a.
    dx = x[:, None, :] - x[:, :, None]
    dy = y[:, None, :] - y[:, :, None]
    ca, sa, hla, hwa = c[:, :, None], s[:, :, None], hl[:, :, None], hw[:, :, None]
    cb, sb, hlb, hwb = c[:, None, :], s[:, None, :], hl[:, None, :], hw[:, None, :]
    # Sums grouped as in genneg_ext, so that rounding near touching matches it too.
    cos_ab = (ca * cb + sa * sb).abs()  # |u_a . u_b| = |v_a . v_b|
    sin_ab = (sa * cb - ca * sb).abs()  # |u_a . v_b| = |v_a . u_b|
    overlap = (dx * ca + dy * sa).abs() < hla + (hlb * cos_ab + hwb * sin_ab)  # axis u_a (length of a)
    overlap &= (dy * ca - dx * sa).abs() < hwa + (hlb * sin_ab + hwb * cos_ab)  # axis v_a (width of a)
    overlap &= (dx * cb + dy * sb).abs() < hlb + (hla * cos_ab + hwa * sin_ab)  # axis u_b
    overlap &= (dy * cb - dx * sb).abs() < hwb + (hla * sin_ab + hwa * cos_ab)  # axis v_b
    return overlap


def collisions(boxes: torch.Tensor, valid: torch.Tensor | None = None, margin: float = 0.0) -> torch.Tensor:
    """Which vehicles overlap another valid vehicle of their scene (interiors intersect).

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64, any device: x m, y m, length m, width m,
            heading rad.
        valid: optional ``(S, A)`` / ``(A,)`` bool; invalid slots are ignored and reported False.
        margin: metres >= 0 added to every box's half-length and half-width (length and width grow by
            ``2 * margin``).

    Returns:
        bool tensor ``(S, A)`` (or ``(A,)``) on ``boxes.device``; True = collides.

    Raises:
        TypeError, ValueError: see :func:`validate_boxes`; ``margin`` negative or non-finite.
    """
    boxes3, valid3, squeeze = validate_boxes(boxes, valid)
    margin = validate_margin(margin)
    num_scenes, num_agents = boxes3.shape[:2]
    out = torch.zeros((num_scenes, num_agents), dtype=torch.bool, device=boxes3.device)
    if num_agents > 1:
        scenes_per_chunk = max(1, _CHUNK_ELEMENTS // (num_agents * num_agents))
        eye = torch.eye(num_agents, dtype=torch.bool, device=boxes3.device)
        for start in range(0, num_scenes, scenes_per_chunk):
            chunk = slice(start, start + scenes_per_chunk)
            # Invalid slots may hold NaN: replace them by a harmless unit box before the geometry.
            v = valid3[chunk]
            b = torch.where(v[..., None], boxes3[chunk], torch.ones((), dtype=boxes3.dtype))
            pairs = _pair_overlap(b, margin) & v[:, :, None] & v[:, None, :] & ~eye
            out[chunk] = pairs.any(dim=2)
    return out[0] if squeeze else out


def _cell_ranges(
    px: torch.Tensor, py: torch.Tensor, ex: torch.Tensor, ey: torch.Tensor, shape: tuple[int, int], res: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``i0..i0+ni-1`` and columns ``j0..j0+nj-1`` of the cells a box's bounding box touches.

    ``px, py`` are box centres relative to the raster origin and ``ex, ey`` the half-extents of the box's
    axis-aligned bounding box (metres). Valid only for boxes inside the raster (callers mask the rest).
    """
    h, w = shape

    def span(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.floor(lo / res)
        last = torch.floor(hi / res)
        # Widen by one where the division rounded, so no cell whose interior meets the box is skipped.
        first = torch.where(first * res > lo, first - 1, first)
        last = torch.where((last + 1) * res < hi, last + 1, last)
        first, last = first.clamp(0, n - 1).long(), last.clamp(0, n - 1).long()
        return first, last - first + 1

    i0, ni = span(py - ey, py + ey, h)
    j0, nj = span(px - ex, px + ex, w)
    return i0, ni, j0, nj


def offroad(
    boxes: torch.Tensor,
    drivable: torch.Tensor,
    origin: Sequence[float],
    resolution: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which vehicles cover a non-drivable cell (interiors intersect) or leave the raster.

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64: x m, y m, length m, width m, heading rad.
        drivable: ``(H, W)`` bool/integer tensor on ``boxes.device``, non-zero = drivable; row ``i`` is y,
            column ``j`` is x.
        origin: ``(x, y)`` of the outer corner of cell ``[0, 0]``, metres.
        resolution: metres per cell; cell ``(i, j)`` covers
            ``[ox + j*res, ox + (j+1)*res] x [oy + i*res, oy + (i+1)*res]``.
        valid: optional ``(S, A)`` / ``(A,)`` bool; invalid slots are ignored and reported False.

    Returns:
        bool tensor ``(S, A)`` (or ``(A,)``) on ``boxes.device``; True = offroad.

    Raises:
        TypeError, ValueError: see :func:`validate_boxes` and :func:`validate_raster`.
    """
    boxes3, valid3, squeeze = validate_boxes(boxes, valid)
    drivable, (ox, oy), res = validate_raster(drivable, origin, resolution, boxes3.device)
    h, w = drivable.shape
    flat_boxes = boxes3.reshape(-1, 5)
    flat_valid = valid3.reshape(-1)
    out = torch.zeros(flat_valid.shape, dtype=torch.bool, device=boxes3.device)
    if flat_valid.numel() == 0:
        return out.reshape(valid3.shape[1:] if squeeze else valid3.shape)

    b = torch.where(flat_valid[:, None], flat_boxes, torch.ones((), dtype=flat_boxes.dtype))
    x, y, hl, hw, c, s = _box_frame(b, 0.0)
    px, py = x - ox, y - oy
    ex = hl * c.abs() + hw * s.abs()  # half-extent of the box's bounding box along x
    ey = hl * s.abs() + hw * c.abs()
    outside = (px - ex < 0) | (px + ex > w * res) | (py - ey < 0) | (py + ey > h * res)
    out |= flat_valid & outside

    inside = torch.nonzero(flat_valid & ~outside).squeeze(1)
    if inside.numel() == 0:
        return out.reshape(valid3.shape[1:] if squeeze else valid3.shape)
    i0, ni, j0, nj = _cell_ranges(px[inside], py[inside], ex[inside], ey[inside], (h, w), res)
    blocked = drivable == 0
    # Summed-area table of non-drivable cells: boxes whose candidate cells are all drivable are done.
    table = torch.zeros((h + 1, w + 1), dtype=torch.int64, device=drivable.device)
    table[1:, 1:] = blocked.to(torch.int64).cumsum(0).cumsum(1)
    i1, j1 = i0 + ni, j0 + nj
    num_blocked = table[i1, j1] - table[i0, j1] - table[i1, j0] + table[i0, j0]
    num_cells = torch.where(num_blocked > 0, ni * nj, 0)
    # Chunks of boxes with similar cell counts: sort by count, cut where (boxes x max cells) fills a chunk.
    order = torch.argsort(num_cells)
    order = order[num_cells[order] > 0]
    counts = num_cells[order].cpu().numpy()
    blocked_flat = blocked.reshape(-1)
    start = 0
    while start < counts.size:
        cost = np.arange(1, counts.size - start + 1) * counts[start:]
        stop = start + max(1, int(np.searchsorted(cost, _CHUNK_ELEMENTS, side="right")))
        rows = order[start:stop]
        k = torch.arange(int(counts[stop - 1]), device=boxes3.device)
        idx = inside[rows]
        in_range = k[None, :] < num_cells[rows, None]
        nj_r = nj[rows, None]
        ii = i0[rows, None] + torch.div(k[None, :], nj_r, rounding_mode="floor")
        jj = j0[rows, None] + k[None, :] % nj_r
        ii = torch.where(in_range, ii, 0)
        jj = torch.where(in_range, jj, 0)
        # Only non-drivable cells can make a box offroad: run the geometry on those candidates alone.
        row, col = torch.nonzero(in_range & blocked_flat[ii * w + jj], as_tuple=True)
        box = idx[row]
        ci, cj = ii[row, col].to(torch.float64), jj[row, col].to(torch.float64)
        # Separating axes: x and y (cell edges), then the box's own length and width axes.
        cx0, cy0 = cj * res, ci * res
        bpx, bpy, bex, bey = px[box], py[box], ex[box], ey[box]
        hit = (cx0 < bpx + bex) & (cx0 + res > bpx - bex)
        hit &= (cy0 < bpy + bey) & (cy0 + res > bpy - bey)
        bc, bs = c[box], s[box]
        radius = 0.5 * res * (bc.abs() + bs.abs())  # the cell's half-extent along a box axis
        qx, qy = cx0 + 0.5 * res - bpx, cy0 + 0.5 * res - bpy
        hit &= (qx * bc + qy * bs).abs() < hl[box] + radius
        hit &= (qy * bc - qx * bs).abs() < hw[box] + radius
        out[box[hit]] = True
        start = stop
    return out.reshape(valid3.shape[1:] if squeeze else valid3.shape)
