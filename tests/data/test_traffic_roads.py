"""Procedural road maps: every kind builds, lanes lie on the road, determinism from the seed."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
import shapely

from genneg.data.traffic import ROAD_KINDS, RoadNetworkConfig, generate_road_map, generate_road_maps
from genneg.data.traffic.raster import rasterise_polygons, rasterise_polylines, rasterise_triangles
from genneg.oracles.drivable_map import DrivableMap


@pytest.mark.parametrize("kind", ROAD_KINDS)
def test_each_kind_has_lanes_on_drivable_cells(kind):
    cfg = RoadNetworkConfig()
    road_map = generate_road_map(kind, cfg, seed=1)
    dm = road_map.drivable_map
    assert dm.shape == (256, 256)
    points, headings = road_map.lane_points(0.5)
    x0, x1, y0, y1 = dm.extent_m
    inside = (points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)
    assert inside.sum() > 200
    j = ((points[inside, 0] - x0) / dm.resolution_m).astype(int)
    i = ((points[inside, 1] - y0) / dm.resolution_m).astype(int)
    assert np.all(dm.drivable[i, j] == 1)
    # Not everything is road: 5-40 % of the map is drivable.
    assert 0.05 < dm.drivable.mean() < 0.4
    assert np.all(np.isfinite(headings))


def test_lane_points_follow_the_driving_direction():
    road_map = generate_road_map("straight", RoadNetworkConfig(), seed=2)
    lane = road_map.lanes[0]
    direction = lane[-1] - lane[0]
    _, headings = type(road_map)(road_map.name, road_map.drivable_map, (lane,)).lane_points(1.0)
    np.testing.assert_allclose(headings, np.arctan2(direction[1], direction[0]), atol=1e-9)


def test_maps_are_deterministic_from_the_seed():
    cfg = RoadNetworkConfig()
    a, b = generate_road_maps(cfg, 6, seed=7), generate_road_maps(cfg, 6, seed=7)
    c = generate_road_maps(cfg, 6, seed=8)
    for ma, mb, mc in zip(a, b, c):
        np.testing.assert_array_equal(ma.drivable_map.drivable, mb.drivable_map.drivable)
        assert all(np.array_equal(x, y) for x, y in zip(ma.lanes, mb.lanes))
        assert not np.array_equal(ma.drivable_map.drivable, mc.drivable_map.drivable)
    assert [m.name.split("-")[0] for m in a] == list(ROAD_KINDS)


def test_roundabout_has_an_island():
    road_map = generate_road_map("roundabout", RoadNetworkConfig(), seed=3)
    dm = road_map.drivable_map
    centre = (np.array(dm.shape) // 2)
    assert dm.drivable[centre[0], centre[1]] == 0


def test_bad_config_raises():
    with pytest.raises(ValueError, match="kinds"):
        RoadNetworkConfig(kinds=("spaghetti",))
    with pytest.raises(ValueError, match="lanes_per_direction"):
        RoadNetworkConfig(lanes_per_direction=(2, 1))
    with pytest.raises(ValueError, match="kind"):
        generate_road_map("spiral", RoadNetworkConfig(), 0)


def test_rasterisers_agree_with_drivable_map_from_polygons():
    """Triangles, polygons and DrivableMap.from_polygons follow the same cell-centre rule."""
    rng = np.random.default_rng(0)
    origin, res, shape = (-3.0, -2.0), 0.37, (41, 53)
    tris = rng.uniform(-3, 16, size=(25, 3, 2))
    expected = DrivableMap.from_polygons(list(tris), origin, res, shape).drivable
    np.testing.assert_array_equal(rasterise_triangles(tris, origin, res, shape), expected)
    np.testing.assert_array_equal(rasterise_polygons(list(tris), origin, res, shape), expected)


def test_polyline_buffer_is_the_distance_rule():
    origin, res, shape = (0.0, 0.0), 0.5, (20, 30)
    line = np.array([[1.0, 1.0], [9.0, 1.0], [9.0, 8.0]])
    got = rasterise_polylines([line], 1.2, origin, res, shape)
    ys, xs = (np.mgrid[0:20, 0:30] + 0.5) * res
    p = np.stack([xs, ys], -1)
    d = np.full(shape, np.inf)
    for a, b in itertools.pairwise(line):
        t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        d = np.minimum(d, np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1))
    np.testing.assert_array_equal(got, (d <= 1.2).astype(np.uint8))


def enclosed_pockets(drivable: np.ndarray) -> list[int]:
    """Sizes (cells) of the 4-connected non-drivable regions that do not reach the raster's border."""
    h, w = drivable.shape
    free = drivable == 0
    seen = np.zeros_like(free)

    def flood(starts: list[tuple[int, int]]) -> int:
        queue, count = deque(starts), 0
        for i, j in starts:
            seen[i, j] = True
        while queue:
            i, j = queue.popleft()
            count += 1
            for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= a < h and 0 <= b < w and free[a, b] and not seen[a, b]:
                    seen[a, b] = True
                    queue.append((a, b))
        return count

    border = [(i, j) for i in range(h) for j in (0, w - 1)] + [(i, j) for i in (0, h - 1) for j in range(w)]
    flood([(i, j) for i, j in set(border) if free[i, j]])
    return [flood([(i, j)]) for i, j in zip(*np.nonzero(free)) if not seen[i, j]]


@pytest.mark.parametrize("kind", ROAD_KINDS)
def test_no_enclosed_pocket_smaller_than_a_vehicle(kind):
    """Neither the exact area nor its raster has a non-drivable pocket between lane bands; the only
    enclosed non-drivable regions are meant (a roundabout's island) and far larger than a vehicle."""
    cfg = RoadNetworkConfig()
    vehicle_m2 = 5.2 * 2.1
    for seed in range(5):
        road_map = generate_road_map(kind, cfg, seed=seed)
        road = road_map.drivable_map.polygons
        assert road is not None
        holes = [abs(shapely.Polygon(h).area) for h in road.holes]
        pockets = enclosed_pockets(road_map.drivable_map.drivable)
        cell_m2 = cfg.resolution_m**2
        if kind == "roundabout":
            assert len(holes) == 1 and holes[0] > 20 * vehicle_m2, (seed, holes)
            assert len(pockets) == 1 and pockets[0] * cell_m2 > 20 * vehicle_m2, (seed, pockets)
        else:
            assert holes == [] and pockets == [], (seed, holes, pockets)


def test_raster_is_the_polygons_rasterised():
    """The raster is the exact area under the cell-centre rule, and the oracle uses the exact area."""
    cfg = RoadNetworkConfig()
    road_map = generate_road_map("merge", cfg, seed=4)
    dm = road_map.drivable_map
    area = dm.polygons.geometry()
    h, w = dm.shape
    i, j = np.random.default_rng(0).integers(0, [h, w], (2000, 2)).T
    x = dm.origin_m[0] + (j + 0.5) * dm.resolution_m
    y = dm.origin_m[1] + (i + 0.5) * dm.resolution_m
    np.testing.assert_array_equal(dm.drivable[i, j] == 1, shapely.intersects_xy(area, x, y))
