"""Drivable areas, the map half of the traffic oracle: a raster, and optionally the exact polygons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.path import Path

__all__ = ["DrivableMap", "RoadPolygons"]


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
        drivable: ``(H, W)`` uint8, 1 = drivable. Row ``i`` is ``y``, column ``j`` is ``x``.
        origin_m: ``(x, y)`` of the outer corner of cell ``[0, 0]``, metres.
        resolution_m: cell edge length, metres per cell. Cell ``(i, j)`` covers
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
        raster = np.ascontiguousarray(np.asarray(self.drivable), dtype=np.uint8)
        if raster.ndim != 2 or raster.shape[0] == 0 or raster.shape[1] == 0:
            raise ValueError(f"drivable must be a non-empty (H, W) array, got shape {raster.shape}")
        if not np.isfinite(self.resolution_m) or self.resolution_m <= 0:
            raise ValueError(f"resolution_m must be a finite number > 0, got {self.resolution_m}")
        if len(self.origin_m) != 2 or not np.all(np.isfinite(self.origin_m)):
            raise ValueError(f"origin_m must be two finite numbers, got {self.origin_m}")
        object.__setattr__(self, "drivable", (raster != 0).astype(np.uint8))
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
        """Rasterise drivable polygons: a cell is drivable iff its centre lies inside some polygon and
        inside no hole. The polygons are kept (``polygons``) for the exact offroad check.

        Args:
            polygons: each ``(V, 2)`` float, vertices in metres (either orientation, closed or not).
            origin_m, resolution_m: as for the class.
            shape: ``(H, W)`` cells.
            holes: ``(V, 2)`` polygons cut out of the drivable area (islands, medians).
        """
        h, w = int(shape[0]), int(shape[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must be positive, got {shape}")
        xs = origin_m[0] + (np.arange(w) + 0.5) * resolution_m
        ys = origin_m[1] + (np.arange(h) + 0.5) * resolution_m
        centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        inside = np.zeros(h * w, dtype=bool)
        for k, poly in enumerate(polygons):
            poly = np.asarray(poly, dtype=np.float64)
            if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3:
                raise ValueError(f"polygon {k} must have shape (V>=3, 2), got {poly.shape}")
            inside |= Path(poly).contains_points(centres)
        for k, hole in enumerate(holes):
            hole = np.asarray(hole, dtype=np.float64)
            if hole.ndim != 2 or hole.shape[1] != 2 or hole.shape[0] < 3:
                raise ValueError(f"hole {k} must have shape (V>=3, 2), got {hole.shape}")
            inside &= ~Path(hole).contains_points(centres)
        return cls(
            inside.reshape(h, w).astype(np.uint8),
            origin_m,
            resolution_m,
            polygons=RoadPolygons(tuple(polygons), tuple(holes)),
        )
