"""Rasterising road geometry into drivable-area grids.

Every function here uses the cell-centre rule of :meth:`DrivableMap.from_polygons`: cell ``(i, j)`` is set
iff its centre ``(ox + (j + ½)·res, oy + (i + ½)·res)`` lies in the closed shape (inside or on its
boundary), whatever the shape's orientation or starting vertex. Each shape touches only the
cells of its bounding box, so cost grows with the covered area, not with the raster times the shape count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genneg.oracles.drivable_map import rasterise_closed_polygons
from genneg.reference.traffic_oracle import MAX_ABS_COORDINATE_M, MAX_SIZE_M, MIN_SIZE_M

__all__ = ["raster_grid_for", "rasterise_polygons", "rasterise_polylines", "rasterise_triangles"]


def _check_grid(origin_m: tuple[float, float], resolution_m: float, shape: tuple[int, int]) -> None:
    if len(shape) != 2 or int(shape[0]) <= 0 or int(shape[1]) <= 0:
        raise ValueError(f"shape must be two positive cell counts (H, W), got {shape}")
    # The oracles' valid range (genneg.reference.traffic_oracle), so that every raster made here can be used.
    if not (MIN_SIZE_M <= resolution_m <= MAX_SIZE_M):
        raise ValueError(f"resolution_m must be in [{MIN_SIZE_M:g}, {MAX_SIZE_M:g}] m, got {resolution_m}")
    origin = np.asarray(origin_m, dtype=np.float64)
    if origin.shape != (2,) or not np.all(np.abs(origin) <= MAX_ABS_COORDINATE_M):
        raise ValueError(f"origin_m must be two finite numbers with |x|, |y| <= {MAX_ABS_COORDINATE_M:g} m, "
                         f"got {origin_m}")


def _cell_range(
    lo_m: float, hi_m: float, origin_m: float, resolution_m: float, n: int
) -> tuple[int, int]:
    """Half-open index range of cells whose centres may fall in ``[lo_m, hi_m]``."""
    first = int(np.floor((lo_m - origin_m) / resolution_m - 0.5))
    last = int(np.ceil((hi_m - origin_m) / resolution_m - 0.5)) + 1
    return max(first, 0), min(last, n)


def raster_grid_for(
    points_m: np.ndarray, resolution_m: float, margin_m: float
) -> tuple[tuple[float, float], tuple[int, int]]:
    """The smallest grid, aligned to ``resolution_m``, covering ``points_m`` plus ``margin_m`` on each side.

    Args:
        points_m: ``(N, 2)`` float, metres.
        resolution_m: cell edge, metres.
        margin_m: extra border, metres (>= 0).

    Returns:
        ``(origin_m, (H, W))`` for a :class:`DrivableMap`.
    """
    points_m = np.asarray(points_m, dtype=np.float64)
    if points_m.ndim != 2 or points_m.shape[1] != 2 or points_m.shape[0] == 0:
        raise ValueError(f"points_m must have shape (N>=1, 2), got {points_m.shape}")
    if margin_m < 0:
        raise ValueError(f"margin_m must be >= 0, got {margin_m}")
    lo = np.floor((points_m.min(axis=0) - margin_m) / resolution_m) * resolution_m
    hi = np.ceil((points_m.max(axis=0) + margin_m) / resolution_m) * resolution_m
    w, h = np.maximum(np.round((hi - lo) / resolution_m).astype(int), 1)
    return (float(lo[0]), float(lo[1])), (int(h), int(w))


def rasterise_polygons(
    polygons: Sequence[np.ndarray],
    origin_m: tuple[float, float],
    resolution_m: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Union of simple polygons as a raster.

    Args:
        polygons: each ``(V >= 3, 2)`` float, vertices in metres, either orientation.
        origin_m, resolution_m, shape: the grid, as for :class:`DrivableMap`.

    Returns:
        ``(H, W)`` uint8, 1 where a cell centre lies inside or on the edge of some polygon.

    Raises:
        ValueError: a bad grid, a polygon not ``(V >= 3, 2)`` or holding NaN/inf.
    """
    _check_grid(origin_m, resolution_m, shape)
    return rasterise_closed_polygons(polygons, origin_m, resolution_m, shape)


def rasterise_polylines(
    polylines: Sequence[np.ndarray],
    half_width_m: float | Sequence[float],
    origin_m: tuple[float, float],
    resolution_m: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Union of polylines thickened by ``half_width_m`` (exact buffer: distance to the polyline).

    Args:
        polylines: each ``(N >= 2, 2)`` float, metres.
        half_width_m: one value, or one per polyline, metres.
        origin_m, resolution_m, shape: the grid.

    Returns:
        ``(H, W)`` uint8, 1 where a cell centre is within ``half_width_m`` of a polyline.
    """
    _check_grid(origin_m, resolution_m, shape)
    h, w = int(shape[0]), int(shape[1])
    widths = np.broadcast_to(np.asarray(half_width_m, dtype=np.float64), (len(polylines),))
    out = np.zeros((h, w), dtype=np.uint8)
    for k, (line, r) in enumerate(zip(polylines, widths)):
        line = np.asarray(line, dtype=np.float64)
        if line.ndim != 2 or line.shape[1] != 2 or line.shape[0] < 2:
            raise ValueError(f"polyline {k} must have shape (N>=2, 2), got {line.shape}")
        if not r > 0:
            raise ValueError(f"half_width_m for polyline {k} must be > 0, got {r}")
        # Chunks of segments keep the per-chunk bounding box tight on long curved lines.
        for s0 in range(0, line.shape[0] - 1, 16):
            seg = line[s0 : s0 + 17]
            j0, j1 = _cell_range(seg[:, 0].min() - r, seg[:, 0].max() + r, origin_m[0], resolution_m, w)
            i0, i1 = _cell_range(seg[:, 1].min() - r, seg[:, 1].max() + r, origin_m[1], resolution_m, h)
            if j0 >= j1 or i0 >= i1:
                continue
            xs = origin_m[0] + (np.arange(j0, j1) + 0.5) * resolution_m
            ys = origin_m[1] + (np.arange(i0, i1) + 0.5) * resolution_m
            p = np.stack(np.meshgrid(xs, ys), axis=-1)[:, :, None, :]  # (h', w', 1, 2)
            a, b = seg[:-1], seg[1:]
            ab = b - a
            t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-18), 0.0, 1.0)
            d2 = ((p - (a + t[..., None] * ab)) ** 2).sum(-1).min(-1)
            out[i0:i1, j0:j1] |= (d2 <= r * r).astype(np.uint8)
    return out


def rasterise_triangles(
    triangles_m: np.ndarray,
    origin_m: tuple[float, float],
    resolution_m: float,
    shape: tuple[int, int],
    chunk: int = 4096,
) -> np.ndarray:
    """Union of triangles as a raster (vectorised over triangles of similar size).

    Args:
        triangles_m: ``(F, 3, 2)`` float, vertices in metres, either orientation. Degenerate (zero-area)
            triangles cover nothing.
        origin_m, resolution_m, shape: the grid.
        chunk: triangles processed together.

    Returns:
        ``(H, W)`` uint8, 1 where a cell centre lies inside or on the edge of some triangle.
    """
    _check_grid(origin_m, resolution_m, shape)
    tri = np.asarray(triangles_m, dtype=np.float64)
    if tri.ndim != 3 or tri.shape[1:] != (3, 2):
        raise ValueError(f"triangles_m must have shape (F, 3, 2), got {tri.shape}")
    if not np.all(np.isfinite(tri)):
        raise ValueError("triangles_m holds non-finite coordinates")
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros(h * w, dtype=np.uint8)
    if tri.shape[0] == 0:
        return out.reshape(h, w)
    ox, oy = origin_m
    # Continuous cell coordinates: cell centres sit at integer + 0.5 - 0.5 = integer values of u, v.
    u = (tri[..., 0] - ox) / resolution_m - 0.5
    v = (tri[..., 1] - oy) / resolution_m - 0.5
    j0 = np.clip(np.ceil(u.min(1)), 0, w).astype(np.int64)
    j1 = np.clip(np.floor(u.max(1)) + 1, 0, w).astype(np.int64)
    i0 = np.clip(np.ceil(v.min(1)), 0, h).astype(np.int64)
    i1 = np.clip(np.floor(v.max(1)) + 1, 0, h).astype(np.int64)
    nj, ni = j1 - j0, i1 - i0
    keep = (nj > 0) & (ni > 0)
    order = np.flatnonzero(keep)[np.argsort((nj * ni)[keep], kind="stable")]
    for c0 in range(0, order.size, chunk):
        idx = order[c0 : c0 + chunk]
        mj, mi = int(nj[idx].max()), int(ni[idx].max())
        jj = j0[idx, None, None] + np.arange(mj)[None, None, :]  # (n, 1, mj)
        ii = i0[idx, None, None] + np.arange(mi)[None, :, None]  # (n, mi, 1)
        inside = (jj < j1[idx, None, None]) & (ii < i1[idx, None, None])
        tu, tv = u[idx], v[idx]
        signs = []
        for a, b in ((0, 1), (1, 2), (2, 0)):
            ex = (tu[:, b] - tu[:, a])[:, None, None]
            ey = (tv[:, b] - tv[:, a])[:, None, None]
            signs.append(ex * (ii - tv[:, a, None, None]) - ey * (jj - tu[:, a, None, None]))
        s0, s1, s2 = signs
        eps = 1e-9
        pos = (s0 >= -eps) & (s1 >= -eps) & (s2 >= -eps)
        neg = (s0 <= eps) & (s1 <= eps) & (s2 <= eps)
        area2 = (tu[:, 1] - tu[:, 0]) * (tv[:, 2] - tv[:, 0]) - (tv[:, 1] - tv[:, 0]) * (tu[:, 2] - tu[:, 0])
        inside &= (pos | neg) & (np.abs(area2) > 1e-12)[:, None, None]
        flat = (ii * w + jj)[inside]
        out[flat] = 1
    return out.reshape(h, w)
