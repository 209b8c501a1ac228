"""Drivable areas, the map half of the traffic oracle: a raster, and optionally the exact polygons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DrivableMap",
    "RoadPolygons",
    "cell_centres_in_polygon",
    "polygon_window",
    "rasterise_closed_polygons",
]

# A cell centre within this many cells of a polygon edge is ON the edge (the closed-polygon rule below);
# it absorbs the rounding of vertices given in metres (a vertex 1e-12 m off a centre line still counts).
_EDGE_TOLERANCE_CELLS = 1e-9


def polygon_window(
    polygon_m: np.ndarray, origin_m: tuple[float, float], resolution_m: float, shape: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open ``((i0, i1), (j0, j1))`` of the cells whose centres may lie in the closed polygon (its
    bounding box, widened by the edge tolerance), clipped to a ``(H, W)`` grid."""
    poly = np.asarray(polygon_m, dtype=np.float64)
    u = (poly[:, 0] - origin_m[0]) / resolution_m - 0.5
    v = (poly[:, 1] - origin_m[1]) / resolution_m - 0.5
    tol = _EDGE_TOLERANCE_CELLS

    def span(lo: float, hi: float, n: int) -> tuple[int, int]:
        first = max(int(np.ceil(max(lo - tol, -1.0))), 0)
        last = min(int(np.floor(min(hi + tol, float(n)))) + 1, n)
        return first, last

    rows = span(float(v.min()), float(v.max()), int(shape[0]))
    return rows, span(float(u.min()), float(u.max()), int(shape[1]))


def cell_centres_in_polygon(
    polygon_m: np.ndarray,
    origin_m: tuple[float, float],
    resolution_m: float,
    rows: tuple[int, int],
    cols: tuple[int, int],
    closed: bool = True,
) -> np.ndarray:
    """Which cell centres of a grid window lie in the CLOSED polygon (interior or boundary).

    The rule every rasteriser of the package uses: cell ``(i, j)`` is in iff its centre
    ``(ox + (j + ½)·res, oy + (i + ½)·res)`` lies inside the polygon or on one of its edges (within
    ``1e-9`` cells). The test works in cell units on edges with canonically ordered end points, so the
    result does not depend on the polygon's orientation or on its starting vertex.

    Args:
        polygon_m: ``(V >= 3, 2)`` float vertices in metres, either orientation, closed or not.
        origin_m, resolution_m: the grid (as for :class:`DrivableMap`).
        rows: ``(i0, i1)`` half-open row range of the window; ``cols``: ``(j0, j1)`` column range.
        closed: False gives the open interior instead (centres on an edge are out), for holes.

    Returns:
        ``(i1 - i0, j1 - j0)`` bool.
    """
    poly = np.asarray(polygon_m, dtype=np.float64)
    u = (poly[:, 0] - origin_m[0]) / resolution_m - 0.5  # cell centres sit at integer (u, v)
    v = (poly[:, 1] - origin_m[1]) / resolution_m - 0.5
    jj = np.arange(cols[0], cols[1], dtype=np.float64)[None, :]
    ii = np.arange(rows[0], rows[1], dtype=np.float64)[:, None]
    crossings = np.zeros((ii.shape[0], jj.shape[1]), dtype=bool)
    on_edge = np.zeros_like(crossings)
    n = poly.shape[0]
    for k in range(n):
        a = (u[k], v[k])
        b = (u[(k + 1) % n], v[(k + 1) % n])
        if a == b:
            continue
        (ua, va), (ub, vb) = sorted((a, b))  # canonical order: orientation-independent arithmetic
        du, dv = ub - ua, vb - va
        # On the edge: distance to the segment <= tolerance.
        cross = du * (ii - va) - dv * (jj - ua)
        dot = du * (jj - ua) + dv * (ii - va)
        length2 = du * du + dv * dv
        near_line = cross * cross <= (_EDGE_TOLERANCE_CELLS**2) * length2
        within = (dot >= -_EDGE_TOLERANCE_CELLS * np.sqrt(length2)) & (
            dot <= length2 + _EDGE_TOLERANCE_CELLS * np.sqrt(length2))
        on_edge |= near_line & within
        # Even-odd crossings of the ray to +u, half-open in v (each vertex counted once).
        if va == vb:
            continue
        (u0, v0), (u1, v1) = ((ua, va), (ub, vb)) if va < vb else ((ub, vb), (ua, va))
        spans = (ii >= v0) & (ii < v1)
        u_cross = u0 + (ii - v0) * ((u1 - u0) / (v1 - v0))
        crossings ^= spans & (jj < u_cross)
    return crossings | on_edge if closed else crossings & ~on_edge


def rasterise_closed_polygons(
    polygons: Sequence[np.ndarray],
    origin_m: tuple[float, float],
    resolution_m: float,
    shape: tuple[int, int],
    holes: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """``(H, W)`` uint8 raster, 1 where a cell centre lies in some CLOSED polygon and in the interior of
    no hole (the rule of :func:`cell_centres_in_polygon`; orientation- and start-vertex-independent).

    Raises:
        ValueError: a polygon or hole not ``(V >= 3, 2)`` or holding NaN/inf.
    """
    h, w = int(shape[0]), int(shape[1])
    inside = np.zeros((h, w), dtype=bool)
    for name, shapes in (("polygon", polygons), ("hole", holes)):
        for poly in _vertex_arrays(shapes, name):
            (i0, i1), (j0, j1) = polygon_window(poly, origin_m, resolution_m, (h, w))
            if i0 >= i1 or j0 >= j1:
                continue
            cells = cell_centres_in_polygon(poly, origin_m, resolution_m, (i0, i1), (j0, j1),
                                            closed=name == "polygon")
            if name == "polygon":
                inside[i0:i1, j0:j1] |= cells
            else:
                inside[i0:i1, j0:j1] &= ~cells
    return inside.astype(np.uint8)


def _vertex_arrays(polygons: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, ...]:
    out = []
    for k, poly in enumerate(polygons):
        a = np.asarray(poly, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 3:
            raise ValueError(f"{what} {k} must have shape (V>=3, 2), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what} {k} has a non-finite vertex")
        out.append(a)
    return tuple(out)


@dataclass(frozen=True)
class RoadPolygons:
    """The exact drivable area: the union of ``shells`` minus the union of ``holes`` (closed sets).

    Adjacent shells that share an edge form one seamless area (a vehicle straddling the shared edge is
    on the road); holes are islands, medians, anything cut out of every shell.

    Attributes:
        shells: each ``(V, 2)`` float64 vertices, metres (either orientation, closed or not): lanelets,
            mesh triangles, road polygons.
        holes: each ``(V, 2)`` float64, metres.

    Raises:
        ValueError: a polygon with fewer than 3 vertices, the wrong shape or a non-finite vertex; no shell.
    """

    shells: tuple[np.ndarray, ...]
    holes: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        shells = _vertex_arrays(self.shells, "polygon")
        if not shells:
            raise ValueError("RoadPolygons needs at least one shell polygon")
        object.__setattr__(self, "shells", shells)
        object.__setattr__(self, "holes", _vertex_arrays(self.holes, "hole"))

    @classmethod
    def with_gaps_closed(
        cls, shells: Sequence[np.ndarray], gap_m: float, holes: Sequence[np.ndarray] = ()
    ) -> RoadPolygons:
        """The area of ``shells`` minus ``holes`` with every crack or gap narrower than ``2 * gap_m``
        closed, as its own exterior rings and holes.

        For road meshes whose triangles do not meet exactly (CARLA's, from torchdrivesim: T-junctions
        leave hundreds of cracks microns wide, median hole 4e-5 m² on Town10HD, and every vehicle across
        one would be offroad). A morphological closing: the union grown by ``gap_m`` and shrunk by
        ``gap_m`` with mitre joins, so straight edges and convex corners stay where they were (to
        rounding) and only notches and holes narrower than ``2 * gap_m`` disappear.

        Args:
            shells, holes: as for the class, metres.
            gap_m: half the widest gap closed, metres, > 0 (1 cm closes CARLA's cracks).

        Raises:
            ValueError: ``gap_m`` not a positive finite number, or the area is empty.
        """
        import shapely

        if not (np.isfinite(gap_m) and gap_m > 0):
            raise ValueError(f"gap_m must be a positive number of metres, got {gap_m!r}")
        area = cls(tuple(shells), tuple(holes)).geometry()
        closed = shapely.buffer(shapely.buffer(area, gap_m, join_style="mitre"), -gap_m, join_style="mitre")
        parts = [g for g in shapely.get_parts(closed) if isinstance(g, shapely.Polygon) and g.area > 0]
        if not parts:
            raise ValueError("the closed area is empty")
        return cls(
            tuple(np.asarray(p.exterior.coords)[:-1] for p in parts),
            tuple(np.asarray(r.coords)[:-1] for p in parts for r in p.interiors),
        )

    def geometry(self) -> Any:
        """The drivable area as one shapely geometry (needs shapely)."""
        import shapely

        shells = shapely.make_valid(np.array([shapely.Polygon(s) for s in self.shells], dtype=object))
        area = shapely.union_all(shells)
        if self.holes:
            holes = shapely.make_valid(np.array([shapely.Polygon(h) for h in self.holes], dtype=object))
            area = shapely.difference(area, shapely.union_all(holes))
        return area


@dataclass(frozen=True)
class DrivableMap:
    """A drivable-area raster, and optionally the exact road polygons it was drawn from.

    When ``polygons`` is given, :class:`~genneg.oracles.TrafficOracle` judges offroad exactly against
    them (``genneg_ext.offroad_polygons``); the raster stays for rendering and for raster-only maps.

    Attributes:
        drivable: ``(H, W)`` uint8, 1 = drivable. Row ``i`` is ``y``, column ``j`` is ``x``. Given as any
            bool, integer or (finite) float array or tensor, any strides or byte order: nonzero = drivable.
        origin_m: ``(x, y)`` of the outer corner of cell ``[0, 0]``, metres, ``|x|, |y| <= 1e100``.
        resolution_m: cell edge length, metres per cell, in ``[1e-100, 1e100]`` (the oracles' valid range).
            Cell ``(i, j)`` covers
            ``[ox + j·res, ox + (j+1)·res] × [oy + i·res, oy + (i+1)·res]``.
        polygons: the exact drivable area, or None for a raster-only map.
    """

    drivable: np.ndarray
    origin_m: tuple[float, float]
    resolution_m: float
    polygons: RoadPolygons | None = field(default=None, compare=False)
    _road: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.polygons is not None and not isinstance(self.polygons, RoadPolygons):
            raise TypeError(f"polygons must be RoadPolygons or None, got {type(self.polygons).__name__}")
        from genneg.reference.traffic_oracle import MAX_ABS_COORDINATE_M, MAX_SIZE_M, MIN_SIZE_M

        raw = self.drivable
        if hasattr(raw, "detach") and hasattr(raw, "cpu"):  # a torch tensor (any dtype, device)
            raw = raw.detach().cpu()
            raw = raw.numpy() if raw.dtype != getattr(raw.dtype, "bfloat16", None) else raw.float().numpy()
        raster = np.asarray(raw)
        if raster.dtype.kind == "f":
            if not np.all(np.isfinite(raster)):
                raise ValueError("drivable holds NaN or inf; nonzero finite values mean drivable")
        elif raster.dtype.kind not in "biu":
            raise TypeError(f"drivable must be a bool, integer or float raster (nonzero = drivable), "
                            f"got dtype {raster.dtype}")
        if raster.ndim != 2 or raster.shape[0] == 0 or raster.shape[1] == 0:
            raise ValueError(f"drivable must be a non-empty (H, W) array, got shape {raster.shape}")
        if not (MIN_SIZE_M <= self.resolution_m <= MAX_SIZE_M):
            raise ValueError(
                f"resolution_m must be in [{MIN_SIZE_M:g}, {MAX_SIZE_M:g}] m, got {self.resolution_m}"
            )
        origin = np.asarray(self.origin_m, dtype=np.float64)
        if origin.shape != (2,) or not np.all(np.abs(origin) <= MAX_ABS_COORDINATE_M):
            raise ValueError(
                f"origin_m must be two finite numbers with |x|, |y| <= {MAX_ABS_COORDINATE_M:g} m, "
                f"got {self.origin_m}"
            )
        object.__setattr__(self, "drivable", np.ascontiguousarray(raster != 0).astype(np.uint8))
        object.__setattr__(self, "origin_m", (float(self.origin_m[0]), float(self.origin_m[1])))
        object.__setattr__(self, "resolution_m", float(self.resolution_m))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in cells."""
        return (int(self.drivable.shape[0]), int(self.drivable.shape[1]))

    @property
    def extent_m(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of the raster, metres."""
        h, w = self.shape
        ox, oy = self.origin_m
        return (ox, ox + w * self.resolution_m, oy, oy + h * self.resolution_m)

    def prepared_road(self) -> Any:
        """The polygons prepared for ``genneg_ext.offroad_polygons`` (built once, then cached).

        Raises:
            ValueError: the map has no polygons. ImportError: shapely or genneg_ext is missing.
        """
        if self.polygons is None:
            raise ValueError("this DrivableMap is a raster only (polygons is None)")
        if not self._road:
            from genneg.oracles.road_polygons import prepare_road

            self._road.append(prepare_road(self.polygons.geometry()))
        return self._road[0]

    @classmethod
    def from_polygons(
        cls,
        polygons: Sequence[np.ndarray],
        origin_m: tuple[float, float],
        resolution_m: float,
        shape: tuple[int, int],
        holes: Sequence[np.ndarray] = (),
    ) -> DrivableMap:
        """Rasterise drivable polygons: a cell is drivable iff its centre lies in some CLOSED polygon
        (inside it or on an edge) and in the interior of no hole (a centre on a hole's edge stays
        drivable). The result does not depend on the polygons' orientation or starting vertex
        (:func:`cell_centres_in_polygon`). The polygons are kept (``polygons``) for the exact offroad check.

        Args:
            polygons: each ``(V, 2)`` float, vertices in metres (either orientation, closed or not).
            origin_m, resolution_m: as for the class.
            shape: ``(H, W)`` cells.
            holes: ``(V, 2)`` polygons cut out of the drivable area (islands, medians).

        Raises:
            ValueError: a non-positive shape, a polygon or hole not ``(V >= 3, 2)`` or holding NaN/inf.
        """
        h, w = int(shape[0]), int(shape[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must be positive, got {shape}")
        if not np.isfinite(resolution_m) or resolution_m <= 0:
            raise ValueError(f"resolution_m must be a finite number > 0, got {resolution_m}")
        inside = rasterise_closed_polygons(polygons, origin_m, resolution_m, (h, w), holes)
        return cls(inside, origin_m, resolution_m,
                   polygons=RoadPolygons(tuple(polygons), tuple(holes)))
