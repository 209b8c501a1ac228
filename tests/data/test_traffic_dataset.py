"""Tokens, map crops, data sets on disk, and rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genneg.data.traffic import (
    RoadNetworkConfig,
    SceneConfig,
    TokenNormalisation,
    TrafficSceneDataset,
    crop_maps,
    generate_road_maps,
    generate_scenes,
    save_scene_grid,
    scenes_to_tokens,
    tokens_to_scenes,
    write_traffic_dataset,
)
from genneg.oracles.drivable_map import DrivableMap

CFG = SceneConfig(max_vehicles=24, min_vehicles=4, proposals_per_scene=96)


@pytest.fixture(scope="module")
def road_maps():
    return generate_road_maps(RoadNetworkConfig(kinds=("crossroads", "roundabout", "merge")), 3, seed=1)


def test_tokens_round_trip(road_maps):
    scenes = generate_scenes(road_maps, 8, CFG, seed=2)
    norm = TokenNormalisation()
    tokens = scenes_to_tokens(scenes.boxes, scenes.speeds, scenes.valid, scenes.centre_m, norm)
    assert tokens.shape == (8, 24, 7) and tokens.dtype == np.float32
    assert np.all(tokens[~scenes.valid] == 0)
    # Window = [-1, 1]^2 (plus the lateral noise): positions are normalised by half the window.
    assert np.abs(tokens[scenes.valid][:, :2]).max() <= 1.0 + 0.3 / 32
    boxes, speeds = tokens_to_scenes(tokens, scenes.centre_m, norm)
    v = scenes.valid
    # float32 tokens: position error ~ 32 m · 2^-24 · few; angles from atan2 of float32 cos/sin.
    np.testing.assert_allclose(boxes[v][:, :4], scenes.boxes[v][:, :4], atol=1e-4)
    dh = np.angle(np.exp(1j * (boxes[v][:, 4] - scenes.boxes[v][:, 4])))
    assert np.abs(dh).max() < 1e-5
    np.testing.assert_allclose(speeds[v], scenes.speeds[v], atol=1e-5)


def test_token_moments_match_the_stated_constants(road_maps):
    """The normalisation constants are the generator's moments: normalised sizes ≈ mean 0, std 1."""
    scenes = generate_scenes(road_maps, 60, SceneConfig(), seed=3)
    tokens = scenes_to_tokens(
        scenes.boxes, scenes.speeds, scenes.valid, scenes.centre_m, TokenNormalisation()
    )
    real = tokens[scenes.valid]
    # Rejection favours small vehicles (trucks fail more often), so the scene-level means sit a little
    # below the proposal means; the constants still put every feature within ±0.35 of 0 and std in [0.6, 1.4].
    for k in (4, 5, 6):
        assert abs(real[:, k].mean()) < 0.35, k
        assert 0.6 < real[:, k].std() < 1.4, k


def test_crop_maps_reads_the_right_cells():
    drivable = np.zeros((10, 20), dtype=np.uint8)
    drivable[3, 7] = 1  # with origin (-5, 1) and 1 m cells: x in [2, 3], y in [4, 5]
    dm = DrivableMap(drivable, (-5.0, 1.0), 1.0)
    crop = crop_maps(dm, np.array([[2.5, 4.5], [100.0, 100.0]]), window_m=4.0, cells=4)
    # Crop cell centres sit at 2.5 + (-1.5, -0.5, 0.5, 1.5) = (1, 2, 3, 4) in x and (3, 4, 5, 6) in y;
    # x = 2 falls in map column floor((2 + 5) / 1) = 7 and y = 4 in map row 3: crop cell (1, 1) only.
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1, 1] = 1
    np.testing.assert_array_equal(crop[0], expected)
    assert crop[1].sum() == 0  # outside the raster reads 0


def test_dataset_is_written_once_and_memory_mapped(tmp_path, road_maps):
    out = write_traffic_dataset(tmp_path / "ds", road_maps, 20, CFG, seed=9, crop_cells=32, chunk_scenes=8)
    meta = json.loads((out / "config.json").read_text())
    assert meta["seed"] == 9 and meta["n_scenes"] == 20
    assert SceneConfig.from_json(json.dumps(meta["scene_config"])) == CFG
    ds = TrafficSceneDataset(out)
    assert len(ds) == 20
    assert isinstance(ds.arrays["tokens"], np.memmap)
    item = ds[3]
    assert item["tokens"].shape == (24, 7) and item["tokens"].dtype == torch.float32
    assert item["valid"].dtype == torch.bool and item["map"].shape == (1, 32, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["tokens"].shape == (5, 24, 7)
    # The stored tokens and crops are those of the stored scenes.
    scenes = ds.scenes()
    maps = ds.road_maps()
    np.testing.assert_array_equal(maps[1].drivable_map.drivable, road_maps[1].drivable_map.drivable)
    tokens = scenes_to_tokens(scenes.boxes, scenes.speeds, scenes.valid, scenes.centre_m, ds.norm)
    np.testing.assert_array_equal(ds.arrays["tokens"], tokens)
    m = int(scenes.map_index[3])
    crop = crop_maps(maps[m].drivable_map, np.asarray(scenes.centre_m[3:4]), CFG.window_m, 32)[0]
    np.testing.assert_array_equal(item["map"][0].numpy(), crop)
    # Written with the same seed, the same data set.
    again = TrafficSceneDataset(
        write_traffic_dataset(tmp_path / "ds2", road_maps, 20, CFG, seed=9, crop_cells=32, chunk_scenes=8)
    )
    np.testing.assert_array_equal(again.arrays["boxes"], ds.arrays["boxes"])
    with pytest.raises(ValueError, match="already exists"):
        write_traffic_dataset(out, road_maps, 4, CFG, seed=9)
    with pytest.raises(IndexError):
        ds[20]


def test_render_writes_a_png_coloured_by_verdict(tmp_path, road_maps):
    from matplotlib.image import imread

    scenes = generate_scenes(road_maps, 2, CFG, seed=4)
    collision = np.zeros_like(scenes.valid)
    collision[:, 0] = True
    verdicts = [{"collision": collision[i], "offroad": np.zeros_like(collision[i])} for i in range(2)]
    half = 0.5 * CFG.window_m
    windows = np.c_[
        scenes.centre_m[:, 0] - half,
        scenes.centre_m[:, 0] + half,
        scenes.centre_m[:, 1] - half,
        scenes.centre_m[:, 1] + half,
    ]
    path = save_scene_grid(
        tmp_path / "grid.png",
        [road_maps[i].drivable_map for i in scenes.map_index],
        scenes.boxes,
        scenes.valid,
        verdicts,
        windows,
        columns=2,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)[..., :3]
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.4) & (img[..., 2] < 0.3)  # collision colour #e34a33
    blue = (img[..., 2] > 0.6) & (img[..., 0] < 0.3)  # valid colour #2b8cbe
    assert red.sum() > 20 and blue.sum() > red.sum()
    with pytest.raises(ValueError, match="verdict arrays"):
        save_scene_grid(
            tmp_path / "bad.png",
            [road_maps[0].drivable_map],
            scenes.boxes[:1],
            scenes.valid[:1],
            [{"collision": collision[0, :3], "offroad": collision[0, :3]}],
        )


def test_crops_with_a_margin_cover_the_window_and_beyond(tmp_path, road_maps):
    from genneg.data.traffic import TrafficSceneDataset
    from genneg.data.traffic.tokens import crop_maps

    out = write_traffic_dataset(tmp_path / "ds", road_maps, 6, CFG, seed=3, crop_cells=40, crop_margin_m=4.0)
    ds = TrafficSceneDataset(out)
    half = 0.5 * CFG.window_m
    assert ds.crop_extent == pytest.approx((half + 4.0) / ds.norm.position_scale_m)
    a = ds.arrays
    centres = np.asarray(a["centre_m"])
    maps = np.asarray(a["map_index"])
    for i in range(6):
        expected = crop_maps(road_maps[int(maps[i])].drivable_map, centres[i : i + 1], CFG.window_m + 8.0, 40)
        np.testing.assert_array_equal(np.asarray(a["map_crops"][i]), expected[0])
    with pytest.raises(ValueError, match="crop_margin_m"):
        write_traffic_dataset(tmp_path / "bad", road_maps, 2, CFG, seed=3, crop_margin_m=-1.0)
