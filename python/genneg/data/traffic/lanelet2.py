"""Lanelet2 / OpenStreetMap-format road maps (INTERACTION, CARLA) → drivable raster and lane centrelines.

Parsed with the standard library (``xml.etree``); lanelet2 itself is not needed. Node positions, in order
of preference:

1. ``<tag k="local_x" v=".."/>`` and ``local_y`` tags (metres),
2. ``x`` / ``y`` attributes of the node (the ``.osm_xy`` variant), metres,
3. ``lat`` / ``lon`` attributes, projected to metres as lanelet2's ``UtmProjector`` does: UTM (WGS84,
   transverse Mercator, Krüger series to 3rd order, sub-millimetre here) in the zone of ``origin_latlon``,
   minus the origin's UTM coordinates (``projection="utm"``, the default); or a local equirectangular
   projection ``x = R·Δλ·cos φ₀``, ``y = R·Δφ`` with ``R = 6 378 137 m`` (``projection="equirectangular"``).
   The torchdrivesim CARLA maps need ``"utm"``: with the equirectangular projection their lanelets drift
   from the road mesh by 0.6 % in y (2 m across Town01).

Every ``<relation>`` tagged ``type=lanelet`` whose ``subtype`` is not in ``exclude_subtypes`` contributes
the polygon bounded by its ``left`` and ``right`` ways (the right way is reversed when it runs against the
left one) and a centreline (both bounds resampled to the same number of points by arc length and
averaged), in the direction of the left bound.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from genneg.oracles.drivable_map import DrivableMap, RoadPolygons

from .raster import raster_grid_for, rasterise_polygons
from .roads import RoadMap

__all__ = ["EARTH_RADIUS_M", "LaneletMap", "lanelet2_road_map", "parse_lanelet2", "utm_local"]

EARTH_RADIUS_M = 6_378_137.0
NON_DRIVABLE_SUBTYPES = ("crosswalk", "walkway", "sidewalk", "bicycle_lane", "stairs", "exit", "parking")


class LaneletMap:
    """Parsed lanelets.

    Attributes:
        polygons: per lanelet, ``(V, 2)`` float64 metres (left bound then reversed right bound).
        centrelines: per lanelet, ``(N, 2)`` float64 metres, in the lanelet's direction.
        lanelet_ids: OSM relation ids, in the same order.
    """

    def __init__(self, polygons: list[np.ndarray], centrelines: list[np.ndarray], lanelet_ids: list[int]):
        self.polygons = polygons
        self.centrelines = centrelines
        self.lanelet_ids = lanelet_ids


_WGS84_A = 6_378_137.0
_WGS84_F = 1 / 298.257223563
_UTM_K0 = 0.9996


def utm_local(lat_deg: np.ndarray, lon_deg: np.ndarray, origin_latlon: tuple[float, float]) -> np.ndarray:
    """UTM coordinates relative to the origin's, in the origin's zone (lanelet2's ``UtmProjector``).

    Args:
        lat_deg, lon_deg: ``(N,)`` float, degrees.
        origin_latlon: ``(lat, lon)`` degrees.

    Returns:
        ``(N, 2)`` float64 metres, east and north of the origin.
    """
    zone = math.floor((origin_latlon[1] + 180.0) / 6.0) + 1
    lon0 = math.radians((zone - 1) * 6 - 180 + 3)
    n = _WGS84_F / (2 - _WGS84_F)
    big_a = _WGS84_A / (1 + n) * (1 + n**2 / 4 + n**4 / 64)
    alpha = (n / 2 - 2 * n**2 / 3 + 5 * n**3 / 16, 13 * n**2 / 48 - 3 * n**3 / 5, 61 * n**3 / 240)
    c = 2 * math.sqrt(n) / (1 + n)

    def forward(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        phi, dlam = np.radians(lat), np.radians(lon) - lon0
        t = np.sinh(np.arctanh(np.sin(phi)) - c * np.arctanh(c * np.sin(phi)))
        xi = np.arctan2(t, np.cos(dlam))
        eta = np.arctanh(np.sin(dlam) / np.sqrt(1 + t * t))
        east, north = eta.copy(), xi.copy()
        for j, a_j in enumerate(alpha, 1):
            east += a_j * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
            north += a_j * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        return _UTM_K0 * big_a * np.stack([east, north], axis=-1)

    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    origin = forward(np.array([origin_latlon[0]]), np.array([origin_latlon[1]]))
    return forward(lat, lon) - origin


def _resample(line: np.ndarray, n: int) -> np.ndarray:
    seg = np.hypot(*np.diff(line, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        return np.repeat(line[:1], n, axis=0)
    s = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(s, cum, line[:, 0]), np.interp(s, cum, line[:, 1])], axis=1)


def parse_lanelet2(
    source: str | Path | bytes,
    origin_latlon: tuple[float, float] = (0.0, 0.0),
    exclude_subtypes: tuple[str, ...] = NON_DRIVABLE_SUBTYPES,
    projection: str = "utm",
) -> LaneletMap:
    """Parse a lanelet2 ``.osm`` file (path) or document (bytes).

    Args:
        source: file path, or the XML as bytes.
        origin_latlon: ``(lat, lon)`` degrees of the projection origin (used only for nodes without
            metric coordinates).
        exclude_subtypes: lanelet subtypes that are not drivable.
        projection: ``"utm"`` or ``"equirectangular"`` for lat/lon nodes (module docstring).

    Returns:
        The drivable lanelets.

    Raises:
        ValueError: on malformed XML, a lanelet without a left or right way, or a reference to a missing
            way or node (naming the ids).
    """
    try:
        root = ET.fromstring(source) if isinstance(source, bytes) else ET.parse(source).getroot()
    except ET.ParseError as e:
        raise ValueError(f"lanelet2 map is not valid XML: {e}") from e
    if projection not in ("utm", "equirectangular"):
        raise ValueError(f"projection must be 'utm' or 'equirectangular', got {projection!r}")
    lat0, lon0 = math.radians(origin_latlon[0]), math.radians(origin_latlon[1])
    nodes: dict[str, tuple[float, float]] = {}
    geo_ids, geo_lat, geo_lon = [], [], []
    for node in root.iter("node"):
        tags = {t.get("k"): t.get("v") for t in node.findall("tag")}
        nid = node.get("id")
        if "local_x" in tags and "local_y" in tags:
            nodes[nid] = (float(tags["local_x"]), float(tags["local_y"]))
        elif node.get("x") is not None and node.get("y") is not None:
            nodes[nid] = (float(node.get("x")), float(node.get("y")))
        elif node.get("lat") is not None and node.get("lon") is not None:
            geo_ids.append(nid)
            geo_lat.append(float(node.get("lat")))
            geo_lon.append(float(node.get("lon")))
        else:
            raise ValueError(f"node {nid} has neither local_x/local_y tags, x/y nor lat/lon attributes")
    if geo_ids:
        lat, lon = np.array(geo_lat), np.array(geo_lon)
        if projection == "utm":
            xy = utm_local(lat, lon, origin_latlon)
        else:
            east = EARTH_RADIUS_M * (np.radians(lon) - lon0) * math.cos(lat0)
            xy = np.stack([east, EARTH_RADIUS_M * (np.radians(lat) - lat0)], axis=1)
        nodes.update(zip(geo_ids, map(tuple, xy.tolist())))
    ways = {w.get("id"): [nd.get("ref") for nd in w.findall("nd")] for w in root.iter("way")}

    def way_points(way_id: str, lanelet_id: str) -> np.ndarray:
        if way_id not in ways:
            raise ValueError(f"lanelet {lanelet_id} refers to missing way {way_id}")
        refs = ways[way_id]
        missing = [r for r in refs if r not in nodes]
        if missing:
            raise ValueError(f"way {way_id} (lanelet {lanelet_id}) refers to missing node {missing[0]}")
        return np.array([nodes[r] for r in refs], dtype=np.float64).reshape(-1, 2)

    polygons, centrelines, ids = [], [], []
    for rel in root.iter("relation"):
        tags = {t.get("k"): t.get("v") for t in rel.findall("tag")}
        if tags.get("type") != "lanelet" or tags.get("subtype") in exclude_subtypes:
            continue
        rid = rel.get("id")
        roles = {m.get("role"): m.get("ref") for m in rel.findall("member") if m.get("type") == "way"}
        if "left" not in roles or "right" not in roles:
            raise ValueError(f"lanelet {rid} lacks a left or right way (members: {sorted(roles)})")
        left, right = way_points(roles["left"], rid), way_points(roles["right"], rid)
        if left.shape[0] < 2 or right.shape[0] < 2:
            raise ValueError(f"lanelet {rid}: bounds need >= 2 nodes each")
        same = np.linalg.norm(left[0] - right[0]) + np.linalg.norm(left[-1] - right[-1])
        flipped = np.linalg.norm(left[0] - right[-1]) + np.linalg.norm(left[-1] - right[0])
        if flipped < same:
            right = right[::-1]
        polygons.append(np.concatenate([left, right[::-1]]))
        n = max(left.shape[0], right.shape[0], 2)
        centrelines.append(0.5 * (_resample(left, n) + _resample(right, n)))
        ids.append(int(rid))
    return LaneletMap(polygons, centrelines, ids)


def lanelet2_road_map(
    source: str | Path | bytes,
    resolution_m: float = 0.5,
    margin_m: float = 4.0,
    origin_latlon: tuple[float, float] = (0.0, 0.0),
    name: str | None = None,
    exclude_subtypes: tuple[str, ...] = NON_DRIVABLE_SUBTYPES,
    projection: str = "utm",
) -> RoadMap:
    """A :class:`RoadMap` from a lanelet2 map: union of the lanelet polygons rasterised (cell-centre rule)
    on a grid covering them plus ``margin_m``; lanes are the lanelet centrelines.

    Args:
        source: ``.osm`` path or XML bytes.
        resolution_m: cell edge, metres.
        margin_m: border around the lanelets, metres.
        origin_latlon, exclude_subtypes, projection: as for :func:`parse_lanelet2`.
        name: map name (default: the file stem, or ``"lanelet2"``).
    """
    parsed = parse_lanelet2(source, origin_latlon, exclude_subtypes, projection)
    if not parsed.polygons:
        raise ValueError("the lanelet2 map holds no drivable lanelet")
    origin, shape = raster_grid_for(np.concatenate(parsed.polygons), resolution_m, margin_m)
    drivable = rasterise_polygons(parsed.polygons, origin, resolution_m, shape)
    if name is None:
        name = Path(source).stem if not isinstance(source, bytes) else "lanelet2"
    lanes = tuple(c for c in parsed.centrelines if np.hypot(*(c[-1] - c[0])) > 1e-6 or c.shape[0] > 2)
    polygons = RoadPolygons(tuple(parsed.polygons))  # exact area, for the polygon offroad check
    return RoadMap(name, DrivableMap(drivable, origin, resolution_m, polygons=polygons), lanes)
