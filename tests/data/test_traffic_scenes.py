"""Scene generator: every scene valid (C++ oracle and an independent shapely check), determinism, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genneg.data.traffic import (
    ROAD_KINDS,
    RoadNetworkConfig,
    SceneConfig,
    VehicleClass,
    check_scenes,
    generate_road_maps,
    generate_scenes,
    sample_vehicle_sizes,
)

shapely = pytest.importorskip("shapely")


@pytest.fixture(scope="module")
def road_maps():
    return generate_road_maps(RoadNetworkConfig(), len(ROAD_KINDS), seed=5)


@pytest.fixture(scope="module")
def scenes(road_maps):
    return generate_scenes(road_maps, 120, SceneConfig(), seed=11)


def _polygons(boxes: np.ndarray):
    x, y, length, width, heading = boxes.T.astype(np.float64)
    c, s = np.cos(heading), np.sin(heading)
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    dx = signs[:, 0] * 0.5 * length[:, None]
    dy = signs[:, 1] * 0.5 * width[:, None]
    corners = np.stack(
        [x[:, None] + dx * c[:, None] - dy * s[:, None], y[:, None] + dx * s[:, None] + dy * c[:, None]], -1
    )
    return shapely.polygons(corners)


def _blocked_cells(drivable_map):
    """Non-drivable cells as shapely boxes, with an STRtree over them."""
    x0, _, y0, _ = drivable_map.extent_m
    res = drivable_map.resolution_m
    i, j = np.nonzero(drivable_map.drivable == 0)
    cells = shapely.box(x0 + j * res, y0 + i * res, x0 + (j + 1) * res, y0 + (i + 1) * res)
    return cells, shapely.STRtree(cells)


def _shapely_infractions(boxes: np.ndarray, drivable_map, cells, cell_tree) -> tuple[np.ndarray, np.ndarray]:
    """Independent oracle: pairwise overlap areas; shapely covers on the map's exact area when it has one,
    else cell-by-cell overlap with non-drivable cells."""
    polys = _polygons(boxes)
    n = len(polys)
    collision = np.zeros(n, dtype=bool)
    left, right = shapely.STRtree(polys).query(polys, predicate="intersects")
    pair = left < right
    area = shapely.area(shapely.intersection(polys[left[pair]], polys[right[pair]]))
    hit = area > 1e-9  # m²; interiors overlap. Generated boxes are never within float error of touching.
    collision[left[pair][hit]] = True
    collision[right[pair][hit]] = True
    if drivable_map.polygons is not None:  # the exact road: offroad iff the area does not cover the box
        return collision, ~shapely.covers(drivable_map.polygons.geometry(), polys)
    x0, x1, y0, y1 = drivable_map.extent_m
    offroad = ~shapely.covers(shapely.box(x0, y0, x1, y1), polys)
    v_idx, c_idx = cell_tree.query(polys, predicate="intersects")
    over = shapely.area(shapely.intersection(polys[v_idx], cells[c_idx])) > 1e-9
    offroad[v_idx[over]] = True
    return collision, offroad


def test_every_scene_valid_by_the_cpp_oracle(scenes, road_maps):
    collision, offroad = check_scenes(scenes, road_maps)
    assert not collision.any() and not offroad.any()
    # The scenes are dense: the oracle check above is not vacuous.
    assert scenes.valid.sum(1).max() >= 40
    assert scenes.valid.sum() > 120 * 15


def test_every_scene_valid_by_an_independent_shapely_check(scenes, road_maps):
    blocked = {m: _blocked_cells(road_maps[m].drivable_map) for m in np.unique(scenes.map_index)}
    for i in range(0, len(scenes), 2):
        v = scenes.valid[i]
        m = scenes.map_index[i]
        collision, offroad = _shapely_infractions(scenes.boxes[i][v], road_maps[m].drivable_map, *blocked[m])
        assert not collision.any(), f"scene {i}"
        assert not offroad.any(), f"scene {i}"


def test_the_checker_does_flag_infractions(scenes, road_maps):
    """Perturbing a valid scene (shift a vehicle onto its neighbour, or off the road) is caught."""
    i = int(np.argmax(scenes.valid.sum(1)))
    boxes = scenes.boxes[i : i + 1].copy()
    boxes[0, 1, :2] = boxes[0, 0, :2] + 0.5
    boxes[0, 2, :2] = np.array(road_maps[scenes.map_index[i]].drivable_map.extent_m)[[0, 2]] + 0.2
    scenes_bad = type(scenes)(
        boxes,
        scenes.speeds[i : i + 1],
        scenes.valid[i : i + 1],
        scenes.vehicle_class[i : i + 1],
        scenes.map_index[i : i + 1],
        scenes.centre_m[i : i + 1],
    )
    collision, offroad = check_scenes(scenes_bad, road_maps)
    assert collision[0, 0] and collision[0, 1] and offroad[0, 2]


def test_scenes_are_dense_with_close_pairs(scenes):
    """Many vehicle pairs are close: nearest-neighbour centre gap below 7 m for most vehicles."""
    gaps = []
    for i in range(len(scenes)):
        xy = scenes.boxes[i, scenes.valid[i], :2].astype(np.float64)
        if xy.shape[0] < 2:
            continue
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(xy.shape[0]) * 1e9
        gaps.append(d.min(1))
    gaps = np.concatenate(gaps)
    assert np.median(gaps) < 7.0
    assert (gaps < 4.0).mean() > 0.2


def test_vehicles_lie_in_their_window_and_padding_is_zero(scenes):
    cfg = SceneConfig()
    # Centres are drawn inside the window less its margin, then shifted sideways by <= 2 lateral std.
    half = 0.5 * cfg.window_m - cfg.window_margin_m + 2 * cfg.lateral_noise_std_m
    off = np.abs(scenes.boxes[..., :2] - scenes.centre_m[:, None, :].astype(np.float32))
    assert np.all(off[scenes.valid] <= half + 1e-3)
    assert np.all(scenes.boxes[~scenes.valid] == 0) and np.all(scenes.vehicle_class[~scenes.valid] == -1)
    # Real vehicles first in every row.
    assert np.all(np.diff(scenes.valid.astype(int), axis=1) <= 0)
    assert np.all(scenes.speeds >= 0)


def test_generation_is_deterministic_from_the_seed(road_maps):
    cfg = SceneConfig(proposals_per_scene=128, max_vehicles=32)
    a = generate_scenes(road_maps, 10, cfg, seed=3)
    b = generate_scenes(road_maps, 10, cfg, seed=3)
    c = generate_scenes(road_maps, 10, cfg, seed=4)
    for name in ("boxes", "speeds", "valid", "vehicle_class", "map_index", "centre_m"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.boxes, c.boxes)


def _truncated_moments(mean: float, std: float, cut: float) -> tuple[float, float]:
    """Mean and std of N(mean, std²) truncated symmetrically at ± cut·std."""
    pdf = math.exp(-0.5 * cut * cut) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    var_factor = 1 - 2 * cut * pdf / mass
    return mean, std * math.sqrt(var_factor)


def test_size_distributions_match_the_stated_classes():
    cfg = SceneConfig()
    rng = np.random.default_rng(0)
    n = 200_000
    cls, length, width = sample_vehicle_sizes(rng, n, cfg)
    for k, vc in enumerate(cfg.vehicle_classes):
        sel = cls == k
        frac = sel.mean()
        # Binomial standard error of the class share: sqrt(p(1-p)/n) <= 0.0012; 5 SE.
        assert abs(frac - vc.probability) < 5 * math.sqrt(vc.probability * (1 - vc.probability) / n)
        for values, mean, std in (
            (length[sel], vc.length_mean_m, vc.length_std_m),
            (width[sel], vc.width_mean_m, vc.width_std_m),
        ):
            m, s = _truncated_moments(mean, std, cfg.truncation_std)
            se = s / math.sqrt(sel.sum())
            assert abs(values.mean() - m) < 5 * se, vc.name
            # std of the sample std ≈ s / sqrt(2n) for near-normal data; 5 SE.
            assert abs(values.std() - s) < 5 * s / math.sqrt(2 * sel.sum()), vc.name
            assert values.min() >= mean - cfg.truncation_std * std - 1e-12
            assert values.max() <= mean + cfg.truncation_std * std + 1e-12


def test_config_validation():
    with pytest.raises(ValueError, match="min_vehicles"):
        SceneConfig(min_vehicles=10, max_vehicles=5)
    with pytest.raises(ValueError, match="probabilities"):
        SceneConfig(vehicle_classes=(VehicleClass("car", 0.5, 4.5, 0.3, 1.8, 0.1),))
    with pytest.raises(ValueError, match="non-positive"):
        SceneConfig(vehicle_classes=(VehicleClass("car", 1.0, 1.0, 1.0, 1.8, 0.1),))
    with pytest.raises(ValueError, match="n_scenes"):
        generate_scenes(generate_road_maps(RoadNetworkConfig(kinds=("straight",)), 1, 0), 0, SceneConfig(), 0)


def test_config_json_round_trip():
    cfg = SceneConfig(window_m=48.0, max_vehicles=40)
    assert SceneConfig.from_json(cfg.to_json()) == cfg
