"""Procedural road networks: straight roads, curves, 3- and 4-way junctions, roundabouts and merges.

Each map is a :class:`RoadMap`: a drivable raster (the traffic oracle's :class:`DrivableMap`) and the lane
centrelines vehicles are placed on, in the map frame (metres, x right, y up, right-hand traffic: roundabouts
run counter-clockwise). The drivable area is built as polygons (shapely): the union of all lanes thickened
to ``lane_width_m / 2 + shoulder_m`` plus the square of every junction, with gaps narrower than ``2 *
close_gaps_m`` closed and every enclosed pocket smaller than ``fill_pockets_below_m2`` filled (a road has
no holes between its lane bands; what stays is meant: a roundabout's island). The map keeps that exact
area (``DrivableMap.polygons``, which the traffic oracle judges offroad against) and its raster (cell-centre
rule). A map is a function of ``(kind, config, seed)``.

Kinds (``n`` lanes per direction drawn from ``lanes_per_direction``; the feature is rotated at random):

- ``straight``: a two-way road, ``n`` lanes each way.
- ``curve``: a two-way road with one bend (radius, angle and side drawn from the config).
- ``t_junction`` / ``crossroads``: 3 / 4 arms of ``n`` lanes each way meeting in a square junction, with a
  connector (quadratic Bézier) from every incoming lane to the same-index lane of every other arm.
- ``roundabout``: a counter-clockwise ring of ``min(n, 2)`` lanes around an island, 3 or 4 single-lane
  two-way arms joined to the ring by entry and exit connectors.
- ``merge``: a one-way carriageway of ``max(n, 2)`` lanes and an on-ramp that runs beside it as an
  acceleration lane and tapers into its outermost lane.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from genneg.oracles.drivable_map import DrivableMap, RoadPolygons

__all__ = ["ROAD_KINDS", "RoadMap", "RoadNetworkConfig", "generate_road_map", "generate_road_maps"]

ROAD_KINDS = ("straight", "curve", "t_junction", "crossroads", "roundabout", "merge")


@dataclass(frozen=True)
class RoadMap:
    """A road map: drivable raster plus lane centrelines.

    Attributes:
        name: identifier (kind and seed for procedural maps, town name for loaded ones).
        drivable_map: the raster the offroad oracle reads.
        lanes: lane centrelines, each ``(N_k >= 2, 2)`` float64 metres, ordered in the driving direction.
    """

    name: str
    drivable_map: DrivableMap
    lanes: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        lanes = []
        for k, lane in enumerate(self.lanes):
            lane = np.asarray(lane, dtype=np.float64)
            if lane.ndim != 2 or lane.shape[1] != 2 or lane.shape[0] < 2:
                raise ValueError(f"lane {k} of map {self.name!r} must have shape (N>=2, 2), got {lane.shape}")
            lanes.append(lane)
        object.__setattr__(self, "lanes", tuple(lanes))

    def lane_points(self, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
        """All lanes resampled at ``spacing_m`` of arc length.

        Returns:
            ``points (P, 2)`` float64 metres and ``headings (P,)`` float64 radians of the driving direction.
        """
        if not spacing_m > 0:
            raise ValueError(f"spacing_m must be > 0, got {spacing_m}")
        points, headings = [], []
        for lane in self.lanes:
            seg = np.diff(lane, axis=0)
            seg_len = np.hypot(seg[:, 0], seg[:, 1])
            keep = seg_len > 1e-9
            if not keep.any():
                continue
            seg, seg_len, start = seg[keep], seg_len[keep], lane[:-1][keep]
            cum = np.concatenate([[0.0], np.cumsum(seg_len)])
            s = np.arange(0.5 * spacing_m, cum[-1], spacing_m)
            k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, seg.shape[0] - 1)
            frac = (s - cum[k]) / seg_len[k]
            points.append(start[k] + frac[:, None] * seg[k])
            headings.append(np.arctan2(seg[k, 1], seg[k, 0]))
        if not points:
            return np.zeros((0, 2)), np.zeros(0)
        return np.concatenate(points), np.concatenate(headings)


@dataclass(frozen=True)
class RoadNetworkConfig:
    """Options of the procedural road generator (all lengths in metres).

    Attributes:
        kinds: road kinds drawn uniformly by :func:`generate_road_maps` (subset of ``ROAD_KINDS``).
        size_m: edge of the square raster; the feature sits at its centre and is rotated at random.
        resolution_m: raster cell edge.
        lane_width_m: lane width; vehicles use the centreline.
        shoulder_m: drivable margin beyond the outer lane edge.
        lanes_per_direction: inclusive range of lanes per direction.
        curve_radius_m: range of the reference-line radius of curves.
        curve_angle_deg: range of the turning angle of curves.
        roundabout_radius_m: range of the inner ring lane's centreline radius.
        merge_angle_deg: approach angle of the on-ramp of a merge.
        point_spacing_m: spacing of centreline vertices.
        fill_pockets_below_m2: enclosed non-drivable pockets of less area than this (m^2) are filled;
            the default is above a 5.2 m x 2.1 m vehicle.
        close_gaps_m: gaps between lane bands narrower than twice this are drivable (a gap narrower than
            a raster cell's diagonal would leave enclosed raster pockets).
    """

    kinds: tuple[str, ...] = ROAD_KINDS
    size_m: float = 128.0
    resolution_m: float = 0.5
    lane_width_m: float = 3.5
    shoulder_m: float = 0.5
    lanes_per_direction: tuple[int, int] = (1, 3)
    curve_radius_m: tuple[float, float] = (30.0, 70.0)
    curve_angle_deg: tuple[float, float] = (45.0, 120.0)
    roundabout_radius_m: tuple[float, float] = (12.0, 18.0)
    merge_angle_deg: float = 10.0
    point_spacing_m: float = 1.0
    fill_pockets_below_m2: float = 12.0
    close_gaps_m: float = 0.5

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in ROAD_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {ROAD_KINDS}, got {self.kinds}")
        lo, hi = self.lanes_per_direction
        if not 1 <= lo <= hi:
            raise ValueError(f"lanes_per_direction must satisfy 1 <= lo <= hi, got {(lo, hi)}")
        for name in ("size_m", "resolution_m", "lane_width_m", "point_spacing_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.shoulder_m < 0:
            raise ValueError(f"shoulder_m must be >= 0, got {self.shoulder_m}")
        if not self.close_gaps_m >= 0:
            raise ValueError(f"close_gaps_m must be >= 0, got {self.close_gaps_m}")
        if not self.fill_pockets_below_m2 >= 0:
            raise ValueError(f"fill_pockets_below_m2 must be >= 0, got {self.fill_pockets_below_m2}")

    def to_json(self) -> str:
        """The config as JSON."""
        return json.dumps(asdict(self), sort_keys=True)


def _line(a: np.ndarray, b: np.ndarray, spacing_m: float) -> np.ndarray:
    n = max(int(np.ceil(np.linalg.norm(b - a) / spacing_m)), 1)
    t = np.linspace(0.0, 1.0, n + 1)[:, None]
    return a[None] + t * (b - a)[None]


def _bezier(p0: np.ndarray, d0: np.ndarray, p2: np.ndarray, d2: np.ndarray, spacing_m: float) -> np.ndarray:
    """Quadratic Bézier from ``p0`` leaving along ``d0`` to ``p2`` arriving along ``d2``."""
    m = np.array([d0, -d2]).T
    if abs(np.linalg.det(m)) < 1e-6:
        return _line(p0, p2, spacing_m)
    s, _ = np.linalg.solve(m, p2 - p0)
    p1 = p0 + s * d0 if s > 0 else 0.5 * (p0 + p2)
    approx = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    t = np.linspace(0.0, 1.0, max(int(np.ceil(approx / spacing_m)), 2) + 1)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _offset(line: np.ndarray, offset_m: float) -> np.ndarray:
    """Shift a polyline sideways; positive offsets go to the right of its direction."""
    tangent = np.gradient(line, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    right = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    return line + offset_m * right


def _two_way_lanes(reference: np.ndarray, n: int, width_m: float) -> list[np.ndarray]:
    """``n`` lanes each way along ``reference``: forward lanes on its right, backward ones on its left."""
    lanes = [_offset(reference, (k + 0.5) * width_m) for k in range(n)]
    lanes += [_offset(reference, -(k + 0.5) * width_m)[::-1] for k in range(n)]
    return lanes


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _junction(
    arm_angles: list[float], n: int, cfg: RoadNetworkConfig, reach_m: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Arms meeting in a square junction of half-size ``n · lane_width``; connectors for every turn."""
    w, sp = cfg.lane_width_m, cfg.point_spacing_m
    h = n * w
    lanes, polygons = [], [np.array([[-h, -h], [h, -h], [h, h], [-h, h]])]
    incoming, outgoing = {}, {}
    for a, phi in enumerate(arm_angles):
        u, v = _unit(phi), _unit(phi + np.pi / 2)
        for k in range(n):
            off = (k + 0.5) * w
            lane_in = _line(reach_m * u + off * v, h * u + off * v, sp)
            lane_out = _line(h * u - off * v, reach_m * u - off * v, sp)
            lanes += [lane_in, lane_out]
            incoming[a, k], outgoing[a, k] = lane_in, lane_out
    for a, phi_a in enumerate(arm_angles):
        for b, phi_b in enumerate(arm_angles):
            if a == b:
                continue
            for k in range(n):
                p0, p2 = incoming[a, k][-1], outgoing[b, k][0]
                lanes.append(_bezier(p0, -_unit(phi_a), p2, _unit(phi_b), sp))
    return lanes, polygons


def generate_road_map(kind: str, config: RoadNetworkConfig, seed: int) -> RoadMap:
    """One procedural map of the given kind.

    Args:
        kind: one of ``ROAD_KINDS``.
        config: generator options.
        seed: makes the map (lane counts, radii, angles, rotation) reproducible.

    Returns:
        The map, raster of ``size_m / resolution_m`` cells a side centred on the origin.
    """
    if kind not in ROAD_KINDS:
        raise ValueError(f"kind must be one of {ROAD_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    cfg = config
    w, sp = cfg.lane_width_m, cfg.point_spacing_m
    n = int(rng.integers(cfg.lanes_per_direction[0], cfg.lanes_per_direction[1] + 1))
    reach = 0.75 * cfg.size_m  # beyond the raster's half-diagonal, whatever the rotation
    polygons: list[np.ndarray] = []
    if kind == "straight":
        lanes = _two_way_lanes(_line(np.array([-reach, 0.0]), np.array([reach, 0.0]), sp), n, w)
    elif kind == "curve":
        radius = rng.uniform(*cfg.curve_radius_m)
        angle = np.radians(rng.uniform(*cfg.curve_angle_deg)) * rng.choice([-1.0, 1.0])
        # Arc starting at the origin heading +x, turning left (sign > 0) or right, straights on both ends.
        sign = np.sign(angle)
        m = max(int(np.ceil(abs(angle) * radius / sp)), 2)
        tau = np.linspace(0.0, abs(angle), m + 1)
        arc = np.stack([radius * np.sin(tau), sign * radius * (1.0 - np.cos(tau))], axis=1)
        end_dir = np.array([np.cos(angle), np.sin(angle)])
        lead = _line(np.array([-reach, 0.0]), np.array([0.0, 0.0]), sp)
        tail = _line(arc[-1], arc[-1] + reach * end_dir, sp)
        reference = np.concatenate([lead[:-1], arc, tail[1:]])
        # Centre the bend in the raster.
        reference -= 0.5 * arc[-1]
        lanes = _two_way_lanes(reference, n, w)
    elif kind in ("t_junction", "crossroads"):
        angles = [0.0, np.pi / 2, np.pi] + ([3 * np.pi / 2] if kind == "crossroads" else [])
        lanes, polygons = _junction(angles, n, cfg, reach)
    elif kind == "roundabout":
        r_in = rng.uniform(*cfg.roundabout_radius_m)
        ring_lanes = min(n, 2)
        m = max(int(np.ceil(2 * np.pi * (r_in + w) / sp)), 16)
        t = np.linspace(0.0, 2 * np.pi, m + 1)
        lanes = [(r_in + k * w) * np.stack([np.cos(t), np.sin(t)], axis=1) for k in range(ring_lanes)]
        r_out = r_in + (ring_lanes - 1) * w  # outermost ring lane centreline
        edge = r_out + 0.5 * w
        arms = 4 if rng.random() < 0.5 else 3
        for a in range(arms):
            phi = a * 2 * np.pi / arms
            u, v = _unit(phi), _unit(phi + np.pi / 2)
            start = edge + 2.0 * w
            lane_in = _line(reach * u + 0.5 * w * v, start * u + 0.5 * w * v, sp)
            lane_out = _line(start * u - 0.5 * w * v, reach * u - 0.5 * w * v, sp)
            join = np.radians(35.0)
            p_join = r_out * _unit(phi + join)
            p_leave = r_out * _unit(phi - join)
            enter = _bezier(lane_in[-1], -u, p_join, _unit(phi + join + np.pi / 2), sp)
            leave = _bezier(p_leave, _unit(phi - join + np.pi / 2), lane_out[0], u, sp)
            lanes += [lane_in, lane_out, enter, leave]
    else:  # merge: a one-way carriageway and an on-ramp tapering into its outermost lane
        n_main = max(n, 2)
        main = [_line(np.array([-reach, -(k + 0.5) * w]), np.array([reach, -(k + 0.5) * w]), sp)
                for k in range(n_main)]
        y_acc = -(n_main + 0.5) * w
        y_out = -(n_main - 0.5) * w
        x = np.arange(-reach, 45.0 + sp, sp)
        slope = np.tan(np.radians(cfg.merge_angle_deg))
        y = np.where(x < -25.0, y_acc - slope * (-25.0 - x), y_acc)
        taper = (x > 15.0)
        blend = 0.5 - 0.5 * np.cos(np.pi * np.clip((x - 15.0) / 30.0, 0.0, 1.0))
        y = np.where(taper, y_acc + (y_out - y_acc) * blend, y)
        ramp = np.stack([x, y], axis=1)
        lanes = [*main, ramp]
    # Random rotation of the whole feature about the map centre.
    rot_angle = rng.uniform(0.0, 2 * np.pi)
    c, s = np.cos(rot_angle), np.sin(rot_angle)
    rot = np.array([[c, -s], [s, c]])
    lanes = [lane @ rot.T for lane in lanes]
    polygons = [poly @ rot.T for poly in polygons]

    cells = round(cfg.size_m / cfg.resolution_m)
    origin = (-0.5 * cells * cfg.resolution_m, -0.5 * cells * cfg.resolution_m)
    half_width = 0.5 * w + cfg.shoulder_m
    area = drivable_area(lanes, polygons, half_width, cfg.fill_pockets_below_m2, cfg.close_gaps_m)
    # The map is the raster's square: the road ends at its border, as the raster's does.
    area = _clip_to_square(area, origin[0], origin[0] + cells * cfg.resolution_m)
    drivable = rasterise_area(area, origin, cfg.resolution_m, (cells, cells))
    parts = _polygon_parts(area)
    road = RoadPolygons(
        tuple(np.asarray(p.exterior.coords)[:-1] for p in parts),
        tuple(np.asarray(h.coords)[:-1] for p in parts for h in p.interiors),
    )
    drivable_map = DrivableMap(drivable, origin, cfg.resolution_m, polygons=road)
    return RoadMap(f"{kind}-{seed}", drivable_map, tuple(lanes))


def _clip_to_square(area: Any, lo_m: float, hi_m: float) -> Any:
    import shapely

    return shapely.intersection(area, shapely.box(lo_m, lo_m, hi_m, hi_m))


def _polygon_parts(geometry: Any) -> list[Any]:
    """The polygons with area in a shapely geometry (collections flattened)."""
    import shapely

    parts, todo = [], [geometry]
    while todo:
        g = todo.pop()
        if isinstance(g, shapely.Polygon):
            if g.area > 0:
                parts.append(g)
        elif hasattr(g, "geoms"):
            todo.extend(g.geoms)
    return parts


def drivable_area(
    lanes: Sequence[np.ndarray],
    polygons: Sequence[np.ndarray],
    half_width_m: float,
    fill_below_m2: float,
    close_gaps_m: float = 0.0,
) -> Any:
    """The drivable area of a procedural map as one shapely geometry.

    Args:
        lanes: centrelines, each ``(N, 2)`` float metres; thickened to ``half_width_m`` on each side (round
            ends: the set of points within ``half_width_m`` of the line, arcs as 32-gons).
        polygons: extra drivable polygons (junction squares), each ``(V, 2)`` float metres.
        half_width_m: metres.
        fill_below_m2: enclosed pockets (holes of the union) with less area are filled.
        close_gaps_m: non-drivable gaps narrower than twice this (e.g. the tip of the wedge between a
            ramp and its carriageway) become drivable (closing: grow, then shrink by this many metres).

    Returns:
        A shapely Polygon or MultiPolygon whose holes all have at least ``fill_below_m2`` of area.
    """
    import shapely

    bands = [shapely.buffer(shapely.LineString(lane), half_width_m, quad_segs=8) for lane in lanes]
    union = shapely.union_all([*bands, *(shapely.Polygon(p) for p in polygons)])
    if close_gaps_m > 0:  # morphological closing: gaps narrower than 2 * close_gaps_m are road
        union = shapely.buffer(shapely.buffer(union, close_gaps_m, quad_segs=8), -close_gaps_m, quad_segs=8)
    kept = [
        shapely.Polygon(p.exterior, [h for h in p.interiors if shapely.Polygon(h).area >= fill_below_m2])
        for p in _polygon_parts(union)
    ]
    return shapely.union_all(kept)


def rasterise_area(
    area: Any, origin_m: tuple[float, float], resolution_m: float, shape: tuple[int, int]
) -> np.ndarray:
    """``(H, W)`` uint8 raster of a shapely area: a cell is 1 iff its centre is in the (closed) area."""
    import shapely

    h, w = shape
    xs = origin_m[0] + (np.arange(w) + 0.5) * resolution_m
    ys = origin_m[1] + (np.arange(h) + 0.5) * resolution_m
    x, y = np.meshgrid(xs, ys)
    shapely.prepare(area)
    return shapely.intersects_xy(area, x, y).astype(np.uint8)


def generate_road_maps(config: RoadNetworkConfig, n_maps: int, seed: int) -> list[RoadMap]:
    """``n_maps`` procedural maps, kinds cycling through ``config.kinds`` (so every kind appears once
    ``n_maps >= len(kinds)``); map ``k`` uses seed ``seed · 1_000_003 + k``."""
    if n_maps < 1:
        raise ValueError(f"n_maps must be >= 1, got {n_maps}")
    return [
        generate_road_map(config.kinds[k % len(config.kinds)], config, seed * 1_000_003 + k)
        for k in range(n_maps)
    ]
