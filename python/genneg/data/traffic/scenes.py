"""Dense traffic scenes placed along lanes, valid by construction and checked by the oracle.

A scene is a square window of ``window_m`` metres (axis-aligned in the map frame) around a point on a lane,
holding up to ``max_vehicles`` vehicles. Vehicles are drawn along the lanes inside the window and accepted
one proposal block at a time: a proposal is kept iff the offroad oracle passes it and the collision oracle
finds no overlap with any vehicle already kept or proposed in the same block (generate-then-reject,
vectorised over scenes). The kept set is collision-free at every step, so every scene is valid; the final
scenes are checked once more with the oracle and the generator raises if any vehicle fails.

Vehicle sizes (truncated normal, cut at ``±truncation_std`` standard deviations, metres):

========  ===========  =================  ================
class     probability  length mean / std  width mean / std
========  ===========  =================  ================
car       0.70         4.50 / 0.35        1.83 / 0.08
van       0.20         5.40 / 0.40        2.00 / 0.08
truck     0.10         9.00 / 1.50        2.45 / 0.05
========  ===========  =================  ================

Speeds (m/s) along the heading: 0 with probability ``stopped_fraction``, else ``max(0, N(mean, std))``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

import genneg_ext
from genneg.oracles.drivable_map import DrivableMap

from .roads import RoadMap

__all__ = [
    "DEFAULT_VEHICLE_CLASSES",
    "SceneConfig",
    "TrafficScenes",
    "VehicleClass",
    "check_scenes",
    "generate_scenes",
    "sample_vehicle_sizes",
]


@dataclass(frozen=True)
class VehicleClass:
    """A vehicle class: its share of proposals and its size distribution (truncated normals, metres)."""

    name: str
    probability: float
    length_mean_m: float
    length_std_m: float
    width_mean_m: float
    width_std_m: float


DEFAULT_VEHICLE_CLASSES: tuple[VehicleClass, ...] = (
    VehicleClass("car", 0.70, 4.50, 0.35, 1.83, 0.08),
    VehicleClass("van", 0.20, 5.40, 0.40, 2.00, 0.08),
    VehicleClass("truck", 0.10, 9.00, 1.50, 2.45, 0.05),
)


@dataclass(frozen=True)
class SceneConfig:
    """Options of the scene generator.

    Attributes:
        window_m: edge of the square scene window, metres.
        max_vehicles: vehicle slots per scene (``A``).
        min_vehicles: the per-scene target count is drawn uniformly from ``[min_vehicles, max_vehicles]``;
            a scene stops growing at its target or when its proposals run out (so it may hold fewer).
        proposals_per_scene: candidate vehicles drawn per scene.
        proposal_block: candidates tested together per oracle call.
        window_margin_m: vehicle centres keep this distance from the window edge.
        lateral_noise_std_m: std of the sideways offset from the lane centreline (truncated at 2 std).
        heading_noise_std_rad: std of the heading noise about the lane direction (truncated at 2 std).
        speed_mean_mps, speed_std_mps, stopped_fraction: speed distribution (see module docstring).
        truncation_std: size distributions are cut at ± this many standard deviations.
        vehicle_classes: size classes; probabilities must sum to 1.
        lane_point_spacing_m: arc-length spacing of the candidate positions along lanes.
    """

    window_m: float = 64.0
    max_vehicles: int = 64
    min_vehicles: int = 8
    proposals_per_scene: int = 512
    proposal_block: int = 16
    window_margin_m: float = 1.0
    lateral_noise_std_m: float = 0.15
    heading_noise_std_rad: float = 0.03
    speed_mean_mps: float = 8.0
    speed_std_mps: float = 4.0
    stopped_fraction: float = 0.2
    truncation_std: float = 2.0
    vehicle_classes: tuple[VehicleClass, ...] = DEFAULT_VEHICLE_CLASSES
    lane_point_spacing_m: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.min_vehicles <= self.max_vehicles:
            raise ValueError(
                f"need 1 <= min_vehicles <= max_vehicles, got {self.min_vehicles}, {self.max_vehicles}"
            )
        if self.proposals_per_scene < self.max_vehicles:
            raise ValueError(
                f"proposals_per_scene ({self.proposals_per_scene}) must be >= "
                f"max_vehicles ({self.max_vehicles})"
            )
        if self.proposal_block < 1:
            raise ValueError(f"proposal_block must be >= 1, got {self.proposal_block}")
        if not self.window_m > 2 * self.window_margin_m:
            raise ValueError(f"window_m ({self.window_m}) must exceed 2 * window_margin_m")
        probs = np.array([c.probability for c in self.vehicle_classes])
        if probs.size == 0 or np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-9:
            raise ValueError(f"vehicle class probabilities must be >= 0 and sum to 1, got {probs.tolist()}")
        for c in self.vehicle_classes:
            lo_l = c.length_mean_m - self.truncation_std * c.length_std_m
            lo_w = c.width_mean_m - self.truncation_std * c.width_std_m
            if lo_l <= 0 or lo_w <= 0:
                raise ValueError(f"vehicle class {c.name!r} admits non-positive sizes at truncation")
        if not 0 <= self.stopped_fraction <= 1:
            raise ValueError(f"stopped_fraction must be in [0, 1], got {self.stopped_fraction}")

    def to_json(self) -> str:
        """The config as JSON (round-trips through :meth:`from_json`)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SceneConfig:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        d["vehicle_classes"] = tuple(VehicleClass(**c) for c in d["vehicle_classes"])
        return cls(**d)


@dataclass
class TrafficScenes:
    """A batch of scenes (world frame of each scene's map).

    Attributes:
        boxes: ``(S, A, 5)`` float32: x m, y m, length m, width m, heading rad; padding rows are 0.
        speeds: ``(S, A)`` float32, m/s along the heading; 0 on padding.
        valid: ``(S, A)`` bool, True for real vehicles; real vehicles come first in each row.
        vehicle_class: ``(S, A)`` int8 index into the config's classes, -1 on padding.
        map_index: ``(S,)`` int64 index into the map list the scenes were generated on.
        centre_m: ``(S, 2)`` float64 centre of each scene window, metres.
    """

    boxes: np.ndarray
    speeds: np.ndarray
    valid: np.ndarray
    vehicle_class: np.ndarray
    map_index: np.ndarray
    centre_m: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _truncated_normal(
    rng: np.random.Generator, mean: np.ndarray, std: np.ndarray, cut: float
) -> np.ndarray:
    """Normal draws with the given per-element ``mean`` and ``std``, resampled outside ``± cut · std``."""
    z = rng.standard_normal(mean.shape)
    bad = np.abs(z) > cut
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > cut
    return mean + std * z


def sample_vehicle_sizes(
    rng: np.random.Generator, n: int, config: SceneConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` vehicle classes and sizes from ``config.vehicle_classes``.

    Returns:
        ``class_index (n,)`` int8, ``length_m (n,)`` float64, ``width_m (n,)`` float64.
    """
    classes = config.vehicle_classes
    probs = np.array([c.probability for c in classes])
    cls = rng.choice(len(classes), size=n, p=probs).astype(np.int8)
    lm = np.array([c.length_mean_m for c in classes])[cls]
    ls = np.array([c.length_std_m for c in classes])[cls]
    wm = np.array([c.width_mean_m for c in classes])[cls]
    ws = np.array([c.width_std_m for c in classes])[cls]
    length = _truncated_normal(rng, lm, ls, config.truncation_std)
    width = _truncated_normal(rng, wm, ws, config.truncation_std)
    return cls, length, width


def _check_valid(
    boxes: np.ndarray, valid: np.ndarray, drivable_map: DrivableMap
) -> tuple[np.ndarray, np.ndarray]:
    """The traffic oracle (the C++ extension ``genneg_ext``) on scenes of one map.

    Args:
        boxes: ``(S, A, 5)`` float: x m, y m, length m, width m, heading rad.
        valid: ``(S, A)`` bool; padding slots are ignored and reported as not infracting.
        drivable_map: the map the scenes are on.

    Returns:
        ``collision (S, A)`` bool (interior overlaps another valid box) and ``offroad (S, A)`` bool
        (interior not covered by the map's exact polygons when it has them; else interior meets a
        non-drivable cell or leaves the raster).
    """
    boxes32 = np.ascontiguousarray(boxes, dtype=np.float32)
    valid = np.ascontiguousarray(valid, dtype=bool)
    collision = np.asarray(genneg_ext.collisions(boxes32, valid=valid))
    if drivable_map.polygons is not None:  # the exact road, as the TrafficOracle judges it
        offroad = np.asarray(genneg_ext.offroad_polygons(boxes32, drivable_map.prepared_road(), valid=valid))
    else:
        offroad = np.asarray(
            genneg_ext.offroad(
                boxes32, drivable_map.drivable, drivable_map.origin_m, drivable_map.resolution_m, valid=valid
            )
        )
    return collision & valid, offroad & valid


def check_scenes(scenes: TrafficScenes, road_maps: Sequence[RoadMap]) -> tuple[np.ndarray, np.ndarray]:
    """Run the traffic oracle on scenes generated on ``road_maps``.

    Returns:
        ``collision (S, A)`` and ``offroad (S, A)`` bool; False on padding slots.
    """
    s, a = scenes.valid.shape
    collision = np.zeros((s, a), dtype=bool)
    offroad = np.zeros((s, a), dtype=bool)
    for m in np.unique(scenes.map_index):
        rows = np.flatnonzero(scenes.map_index == m)
        c, o = _check_valid(scenes.boxes[rows], scenes.valid[rows], road_maps[int(m)].drivable_map)
        collision[rows], offroad[rows] = c, o
    return collision, offroad


def _pick_centres(
    rng: np.random.Generator, points: np.ndarray, drivable_map: DrivableMap, window_m: float, n: int
) -> np.ndarray:
    """Window centres on lane points, preferring points whose whole window lies inside the raster."""
    x0, x1, y0, y1 = drivable_map.extent_m
    half = 0.5 * window_m
    inside = (points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)
    fits = inside & (points[:, 0] > x0 + half) & (points[:, 0] < x1 - half)
    fits &= (points[:, 1] > y0 + half) & (points[:, 1] < y1 - half)
    pool = np.flatnonzero(fits) if fits.any() else np.flatnonzero(inside)
    if pool.size == 0:
        raise ValueError("no lane point lies inside the map's raster")
    return points[rng.choice(pool, size=n)]


def _generate_on_map(
    rng: np.random.Generator, road_map: RoadMap, n: int, config: SceneConfig
) -> dict[str, np.ndarray]:
    cfg = config
    a, k_prop = cfg.max_vehicles, cfg.proposals_per_scene
    points, headings = road_map.lane_points(cfg.lane_point_spacing_m)
    if points.shape[0] == 0:
        raise ValueError(f"map {road_map.name!r} has no lane points")
    centres = _pick_centres(rng, points, road_map.drivable_map, cfg.window_m, n)
    targets = rng.integers(cfg.min_vehicles, cfg.max_vehicles + 1, size=n)

    # Proposals: uniform in arc length over the lane points inside each window.
    half = 0.5 * cfg.window_m - cfg.window_margin_m
    prop = np.zeros((n, k_prop, 5))
    prop_ok = np.zeros((n, k_prop), dtype=bool)
    for i in range(n):
        near = np.flatnonzero(np.all(np.abs(points - centres[i]) <= half, axis=1))
        if near.size == 0:
            continue
        pick = rng.choice(near, size=k_prop)
        prop[i, :, 0:2] = points[pick]
        prop[i, :, 4] = headings[pick]
        prop_ok[i] = True
    cls, length, width = sample_vehicle_sizes(rng, n * k_prop, cfg)
    lateral = _truncated_normal(rng, np.zeros(n * k_prop), np.full(n * k_prop, cfg.lateral_noise_std_m), 2.0)
    dheading = _truncated_normal(
        rng, np.zeros(n * k_prop), np.full(n * k_prop, cfg.heading_noise_std_rad), 2.0
    )
    lane_heading = prop[..., 4].reshape(-1)
    prop[..., 0] += (-np.sin(lane_heading) * lateral).reshape(n, k_prop)
    prop[..., 1] += (np.cos(lane_heading) * lateral).reshape(n, k_prop)
    prop[..., 2] = length.reshape(n, k_prop)
    prop[..., 3] = width.reshape(n, k_prop)
    prop[..., 4] = np.angle(np.exp(1j * (lane_heading + dheading))).reshape(n, k_prop)
    # Scenes are stored in float32: test exactly the boxes that will be stored.
    prop = prop.astype(np.float32).astype(np.float64)
    prop_cls = cls.reshape(n, k_prop)
    moving = rng.random((n, k_prop)) >= cfg.stopped_fraction
    speed = np.maximum(rng.normal(cfg.speed_mean_mps, cfg.speed_std_mps, (n, k_prop)), 0.0)
    prop_speed = np.where(moving, speed, 0.0)

    # Offroad is a property of each proposal alone: one oracle call for all of them.
    _, prop_offroad = _check_valid(prop, prop_ok, road_map.drivable_map)
    prop_ok &= ~prop_offroad

    boxes = np.zeros((n, a, 5))
    speeds = np.zeros((n, a))
    vclass = np.full((n, a), -1, dtype=np.int8)
    count = np.zeros(n, dtype=np.int64)
    m = cfg.proposal_block
    for b0 in range(0, k_prop, m):
        blk = slice(b0, min(b0 + m, k_prop))
        trial = np.concatenate([boxes, prop[:, blk]], axis=1)
        trial_valid = np.concatenate([np.arange(a)[None] < count[:, None], prop_ok[:, blk]], axis=1)
        collision, _ = _check_valid(trial, trial_valid, road_map.drivable_map)
        accept = prop_ok[:, blk] & ~collision[:, a:]
        # Keep accepted proposals in order, up to each scene's target.
        rank = np.cumsum(accept, axis=1) - 1
        accept &= (count[:, None] + rank) < targets[:, None]
        slot = count[:, None] + rank
        src = np.nonzero(accept)
        dst = (src[0], slot[src])
        boxes[dst] = prop[:, blk][src]
        speeds[dst] = prop_speed[:, blk][src]
        vclass[dst] = prop_cls[:, blk][src]
        count += accept.sum(axis=1)
        if np.all(count >= targets):
            break
    valid = np.arange(a)[None] < count[:, None]
    return {"boxes": boxes, "speeds": speeds, "valid": valid, "vehicle_class": vclass, "centre_m": centres}


def generate_scenes(
    road_maps: Sequence[RoadMap], n_scenes: int, config: SceneConfig, seed: int
) -> TrafficScenes:
    """Generate ``n_scenes`` valid scenes on ``road_maps`` (maps drawn uniformly per scene).

    Args:
        road_maps: the maps (procedural or loaded).
        n_scenes: number of scenes ``S``.
        config: generator options.
        seed: the output is a function of ``(road_maps, n_scenes, config, seed)``.

    Returns:
        :class:`TrafficScenes` with ``A = config.max_vehicles`` slots.

    Raises:
        RuntimeError: if the final oracle check finds an infracting vehicle (a generator bug).
    """
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    if len(road_maps) == 0:
        raise ValueError("road_maps is empty")
    rng = np.random.default_rng(seed)
    map_index = np.sort(rng.integers(len(road_maps), size=n_scenes))
    parts = []
    for m in np.unique(map_index):
        n_m = int((map_index == m).sum())
        map_rng = np.random.default_rng([seed, int(m)])
        parts.append(_generate_on_map(map_rng, road_maps[int(m)], n_m, config))
    order = rng.permutation(n_scenes)
    cat = {k: np.concatenate([p[k] for p in parts])[order] for k in parts[0]}
    scenes = TrafficScenes(
        boxes=cat["boxes"].astype(np.float32),
        speeds=cat["speeds"].astype(np.float32),
        valid=cat["valid"],
        vehicle_class=cat["vehicle_class"],
        map_index=map_index[order].astype(np.int64),
        centre_m=cat["centre_m"],
    )
    collision, offroad = check_scenes(scenes, road_maps)
    if collision.any() or offroad.any():
        bad = np.argwhere(collision | offroad)[0]
        raise RuntimeError(f"generated scene {bad[0]} vehicle {bad[1]} fails the oracle")
    return scenes
