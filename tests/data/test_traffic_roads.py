"""Procedural road maps: every kind builds, lanes lie on the road, determinism from the seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

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
