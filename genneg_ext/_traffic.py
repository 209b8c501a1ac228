"""Typed Python face of the compiled traffic oracles: converts and validates inputs, calls ``_C``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from genneg_ext import _C

__all__ = [
    "available_cores",
    "available_isas",
    "collision_pairs",
    "collisions",
    "offroad",
    "offroad_polygons",
    "road_from_rings",
]

Isa = Literal["auto", "baseline", "avx2", "avx512"]
BroadPhase = Literal["auto", "all_pairs", "sweep"]

_CUDA_HINT = (
    "genneg_ext runs on the CPU only; for CUDA tensors use genneg.oracles.TrafficOracle, which sends them "
    "to the Triton kernel with the same semantics"
)


def _is_torch_tensor(x: object) -> bool:
    # Detected without importing torch: torch is only needed when the caller already has tensors.
    return type(x).__module__.startswith("torch") and hasattr(x, "__dlpack__") and hasattr(x, "device")


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """NumPy view of ``x`` (zero-copy for NumPy arrays and CPU torch tensors)."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch_tensor(x):
        if x.device.type != "cpu":
            raise TypeError(f"{name} is a tensor on device {x.device}; {_CUDA_HINT}")
        x = x.detach().resolve_conj().resolve_neg()
        if x.is_floating_point() and x.element_size() < 4:  # float16 / bfloat16: NumPy has no bfloat16
            x = x.double()  # exact: every float16/bfloat16 value is a float64
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError) as e:
            raise TypeError(f"{name}: cannot read a torch tensor of dtype {x.dtype} ({e})") from e
    return np.asarray(x)


def _native(a: np.ndarray) -> np.ndarray:
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _boxes_array(boxes: Any) -> tuple[np.ndarray, bool]:
    """``(S, A, 5)`` float32/float64 view of ``boxes`` and whether the input was batched (3-D)."""
    a = _native(_as_numpy(boxes, "boxes"))
    if a.dtype.kind not in "fiu":
        raise TypeError(f"boxes must hold real numbers (float32 or float64), got dtype {a.dtype}")
    if a.ndim not in (2, 3) or a.shape[-1] != 5:
        raise ValueError(
            f"boxes must have shape (S, A, 5) or (A, 5) [x m, y m, length m, width m, heading rad], "
            f"got shape {a.shape}"
        )
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    batched = a.ndim == 3
    return (a if batched else a[None]), batched


def _valid_array(valid: Any, boxes: np.ndarray, batched: bool) -> np.ndarray | None:
    """``(S, A)`` bool view of ``valid`` or None."""
    if valid is None:
        return None
    v = _native(_as_numpy(valid, "valid"))
    if v.dtype.kind not in "biu":
        raise TypeError(f"valid must be a bool mask, got dtype {v.dtype}")
    expected = boxes.shape[:2] if batched else boxes.shape[1:2]
    if v.shape != expected:
        shown = boxes.shape if batched else boxes.shape[1:]
        raise ValueError(f"valid must have shape {expected} to match boxes of shape {shown}, got {v.shape}")
    if v.dtype != np.bool_:
        v = v != 0
    return v if batched else v[None]


def _check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0 = all cores), got {threads!r}")
    return int(threads)


def _check_margin(margin: float) -> float:
    m = float(margin)
    if not (0.0 <= m <= _C.MAX_SIZE_M):
        raise ValueError(f"margin must be a number of metres in [0, {_C.MAX_SIZE_M:g}], got {margin!r}")
    return m


def available_cores() -> int:
    """Number of cores this process may run on; what ``threads=0`` uses."""
    return int(_C.available_cores())


def available_isas() -> list[str]:
    """Instruction sets this CPU runs the collision kernels with: ``"baseline"`` (any x86-64) always,
    ``"avx2"`` and ``"avx512"`` (AVX-512F) when the CPU has them. ``isa="auto"`` takes the last."""
    return list(_C.available_isas())


def collisions(
    boxes: Any,
    valid: Any = None,
    margin: float = 0.0,
    threads: int = 0,
    *,
    isa: Isa = "auto",
    broad_phase: BroadPhase = "auto",
) -> np.ndarray:
    """Which vehicles overlap another vehicle of the same scene.

    Vehicle ``i`` of scene ``s`` collides iff the interior of its rectangle intersects the interior of
    another valid vehicle's rectangle in scene ``s``. Touching edges or corners is not a collision.
    ``margin`` inflates every box's length and width by ``2 * margin`` first.

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64, NumPy array or CPU torch tensor, any
            strides and byte order (integer, float16 and bfloat16 inputs are converted to float64) —
            x m, y m, length m, width m, heading rad. Valid range of a present box:
            ``|x|, |y| <= 1e100`` m, ``1e-100 <= length, width <= 1e100`` m, ``|heading| <= 1e4`` rad
            (``_C.MAX_*``, ``_C.MIN_SIZE_M``).
        valid: optional ``(S, A)`` / ``(A,)`` bool mask of present vehicles; absent ones are ignored.
        margin: metres, in ``[0, 1e100]``.
        threads: worker threads (static chunks of scenes); 0 = all cores.
        isa: instruction set of the pair kernels: ``"auto"`` (the widest in :func:`available_isas`),
            ``"baseline"``, ``"avx2"`` or ``"avx512"``. Every choice gives bit-identical verdicts (the
            same float64 expressions in the same order, no fused multiply-add); for tests and benchmarks.
        broad_phase: ``"auto"`` (all pairs up to 64 valid vehicles in a scene, a sweep over sorted
            bounding boxes above, so cost grows with the work rather than with ``A**2``),
            ``"all_pairs"`` or ``"sweep"``. Every choice gives identical verdicts.

    Returns:
        ``(S, A)`` / ``(A,)`` bool NumPy array, True = collides; absent slots are False.

    Raises:
        ValueError: bad shape, NaN/inf or a value outside the valid range in a valid box (scene and
            vehicle named), margin outside ``[0, 1e100]``, negative threads, unknown
            ``isa``/``broad_phase`` or an ``isa`` this CPU lacks. TypeError: CUDA tensor or non-numeric
            dtype. RuntimeError: a worker thread could not be started (nothing leaks; retry with fewer
            threads).
    """
    b, batched = _boxes_array(boxes)
    v = _valid_array(valid, b, batched)
    out = _C.collisions(b, v, _check_margin(margin), _check_threads(threads), batched, isa, broad_phase)
    return out if batched else out[0]


def collision_pairs(
    boxes: Any,
    valid: Any = None,
    margin: float = 0.0,
    threads: int = 0,
    *,
    isa: Isa = "auto",
    broad_phase: BroadPhase = "auto",
) -> np.ndarray:
    """Every overlapping pair, for debugging and rendering.

    Same semantics and arguments as :func:`collisions`.

    Returns:
        ``(P, 3)`` int64 rows ``(scene, i, j)`` with ``i < j`` (vehicle slot indices), sorted by scene,
        then ``i``, then ``j``. For 2-D input the scene column is 0.
    """
    b, batched = _boxes_array(boxes)
    v = _valid_array(valid, b, batched)
    return _C.collision_pairs(b, v, _check_margin(margin), _check_threads(threads), batched, isa, broad_phase)


def offroad(
    boxes: Any,
    drivable: Any,
    origin: tuple[float, float] | Any,
    resolution: float,
    valid: Any = None,
    threads: int = 0,
    mode: Literal["exact", "corners"] = "exact",
) -> np.ndarray:
    """Which vehicles leave the drivable area.

    The drivable area is a raster ``drivable[H, W]`` (nonzero = drivable); cell ``(i, j)`` covers
    ``[ox + j·res, ox + (j+1)·res] × [oy + i·res, oy + (i+1)·res]`` (m). With ``mode="exact"`` a vehicle is
    offroad iff the interior of its rectangle intersects the interior of a non-drivable cell, or any part
    of it lies outside the raster: the whole box counts, so a thin non-drivable strip under the middle
    of a vehicle makes it offroad, while a box exactly touching the raster's border or a non-drivable
    cell is not. ``mode="corners"`` is APPROXIMATE (what Waymax and torchdrivesim do): only the four
    corners are looked up, so it misses non-drivable cells under the rest of the box.

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64 — x m, y m, length m, width m, heading rad.
        drivable: ``(H, W)`` bool or any integer dtype (nonzero = drivable), NumPy array or CPU tensor,
            any strides and byte order, non-empty.
        origin: ``(ox, oy)``, metres: the outer corner of cell ``[0, 0]``; ``|ox|, |oy| <= 1e100``.
        resolution: metres per cell, in ``[1e-100, 1e100]``.
        valid: optional ``(S, A)`` / ``(A,)`` bool mask; absent vehicles are ignored and reported False.
        threads: worker threads; 0 = all cores.
        mode: ``"exact"`` (default) or ``"corners"`` (approximate).

    Returns:
        ``(S, A)`` / ``(A,)`` bool NumPy array, True = offroad.

    Raises:
        ValueError: as for :func:`collisions`, plus an empty or non-2-D map, resolution or origin outside
            the valid range, unknown mode. TypeError: CUDA tensor, non-numeric boxes, non-integer map.
    """
    b, batched = _boxes_array(boxes)
    v = _valid_array(valid, b, batched)
    d = _native(_as_numpy(drivable, "drivable"))
    if d.dtype.kind not in "biu":
        raise TypeError(f"drivable must be a bool or integer raster (nonzero = drivable), got {d.dtype}")
    if d.ndim != 2:
        raise ValueError(f"drivable must have shape (H, W), got {d.shape}")
    if d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"drivable map is empty: shape {d.shape}")
    if d.dtype not in (np.bool_, np.uint8):  # int8, int16, uint16, int64, ...: nonzero = drivable
        d = d != 0
    o = np.asarray(_as_numpy(origin, "origin"), dtype=np.float64)
    if o.shape != (2,) or not np.all(np.abs(o) <= _C.MAX_ABS_COORDINATE_M):
        raise ValueError(
            f"origin must be two finite numbers (x m, y m) with |x|, |y| <= {_C.MAX_ABS_COORDINATE_M:g}, "
            f"got {origin!r}"
        )
    res = float(resolution)
    if not (_C.MIN_SIZE_M <= res <= _C.MAX_SIZE_M):
        raise ValueError(
            f"resolution must be a number of metres per cell in [{_C.MIN_SIZE_M:g}, {_C.MAX_SIZE_M:g}], "
            f"got {resolution!r}"
        )
    if mode not in ("exact", "corners"):
        raise ValueError(f"mode must be 'exact' or 'corners', got {mode!r}")
    out = _C.offroad(b, v, d, float(o[0]), float(o[1]), res, mode, _check_threads(threads), batched)
    return out if batched else out[0]


def road_from_rings(points: Any, ring_offsets: Any) -> _C.RoadGeometry:
    """Prepare a road for :func:`offroad_polygons` from the rings of its drivable area, once per map.

    The rings must be the boundary of the drivable area: the exterior rings and holes of the *union* of
    the drivable polygons (``genneg.oracles.road_polygons.prepare_road`` builds it with shapely), so
    that edges shared by adjacent lanelets are not boundary. Orientation does not matter (even-odd).

    Args:
        points: ``(P, 2)`` float (converted to float64) ring points, x m, y m; ring ``r`` is
            ``points[ring_offsets[r]:ring_offsets[r + 1]]``, closed implicitly (a repeated closing point
            is allowed).
        ring_offsets: ``(R + 1,)`` int, starting at 0 and ending at ``P``, non-decreasing.

    Returns:
        A prepared road (boundary segments and a uniform-grid index); ``.segments``, ``.bounds``.

    Raises:
        ValueError: wrong shapes, offsets out of order, a non-finite point, a ring of fewer than 3 points.
    """
    p = np.ascontiguousarray(_as_numpy(points, "points"), dtype=np.float64)
    o = np.ascontiguousarray(_as_numpy(ring_offsets, "ring_offsets"), dtype=np.int64)
    return _C.road_from_rings(p, o)


def offroad_polygons(boxes: Any, road: _C.RoadGeometry, valid: Any = None, threads: int = 0) -> np.ndarray:
    """Which vehicles leave a road given as polygons (exact, no raster).

    A vehicle is offroad iff the interior of its rectangle is not covered by the drivable area (a closed
    set: the union of the drivable polygons). A box touching the road's boundary from inside (an edge on
    a road edge, a corner on a vertex) is on the road; a box straddling an edge shared by two adjacent
    lanelets is on the road. Exact, even at touching: float64 tests with error bounds, evaluated again in
    exact expansion arithmetic when too close to call, for the rectangle of the box's float64 centre,
    half extents and heading axis (as ``genneg_ext`` rounds them); coordinates near 1e6 m are fine.

    Args:
        boxes: ``(S, A, 5)`` or ``(A, 5)`` float32/float64 — x m, y m, length m, width m, heading rad.
        road: from :func:`road_from_rings`.
        valid: optional ``(S, A)`` / ``(A,)`` bool mask; absent vehicles are ignored and reported False.
        threads: worker threads; 0 = all cores.

    Returns:
        ``(S, A)`` / ``(A,)`` bool NumPy array, True = offroad.

    Raises:
        ValueError: as for :func:`collisions`. TypeError: ``road`` is not a prepared road, CUDA tensor.
    """
    if not isinstance(road, _C.RoadGeometry):
        raise TypeError(f"road must come from genneg_ext.road_from_rings, got {type(road).__name__}")
    b, batched = _boxes_array(boxes)
    v = _valid_array(valid, b, batched)
    out = _C.offroad_polygons(b, v, road, _check_threads(threads), batched)
    return out if batched else out[0]
