"""Exact offroad against road polygons: the prepared road geometry, built once per map.

``prepare_road`` takes the drivable polygons of a map (lanelets, road meshes, ``DrivableMap.from_polygons``
input; shapely polygons with holes), unions them with shapely (edges shared by adjacent lanelets vanish,
so a vehicle straddling one is on the road) and hands the union's rings to the compiled oracle
(``genneg_ext.road_from_rings``); ``genneg_ext.offroad_polygons`` then answers per box. Rule: a vehicle is
offroad iff the interior of its rectangle is not covered by the union (closed sets), decided exactly for
the box's float64 rectangle (float64 tests with error bounds, an exact expansion-arithmetic fallback near
zero; csrc/polygon_offroad.h).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["prepare_road", "union_rings"]


def union_rings(polygons: Iterable[Any] | Any) -> tuple[np.ndarray, np.ndarray]:
    """Rings of the union of ``polygons``: ``(P, 2)`` float64 points (m) and ``(R + 1,)`` int64 offsets.

    Args:
        polygons: shapely Polygon / MultiPolygon / GeometryCollection, or an iterable of them.

    Raises:
        ImportError: shapely is not installed. ValueError: the union has no area.
    """
    import shapely

    geoms = [polygons] if isinstance(polygons, shapely.Geometry) else list(polygons)
    union = shapely.union_all(np.asarray(geoms, dtype=object))
    parts, todo = [], [union]
    while todo:  # flatten collections (make_valid and unions may nest them); keep areas, drop lines
        g = todo.pop()
        if isinstance(g, shapely.Polygon):
            if g.area > 0:
                parts.append(g)
        elif hasattr(g, "geoms"):
            todo.extend(g.geoms)
    if not parts:
        raise ValueError("the drivable polygons have no area")
    rings = [r for p in parts for r in shapely.get_rings(p)]
    coords = [np.asarray(r.coords, dtype=np.float64)[:-1] for r in rings]  # drop the closing point
    offsets = np.zeros(len(coords) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([c.shape[0] for c in coords])
    return np.concatenate(coords, axis=0), offsets


def prepare_road(polygons: Iterable[Any] | Any):
    """The prepared road (``genneg_ext.RoadGeometry``) for ``genneg_ext.offroad_polygons``."""
    import genneg_ext

    points, offsets = union_rings(polygons)
    return genneg_ext.road_from_rings(points, offsets)
