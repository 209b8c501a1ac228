"""Scene transformer: shapes, permutation equivariance, padding, translation handling, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genneg.data.traffic import (
    RoadNetworkConfig,
    SceneConfig,
    TokenNormalisation,
    crop_maps,
    generate_road_maps,
    generate_scenes,
    scenes_to_tokens,
)
from genneg.models.scene_transformer import SceneTransformer, SceneTransformerConfig
from genneg.oracles.drivable_map import DrivableMap

SMALL = SceneTransformerConfig(width=32, heads=4, blocks=2, map_channels=(8, 8, 16))


def _inputs(b=3, a=7, seed=0, cells=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, a, 7, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (b,), generator=g).double()
    valid = torch.ones(b, a, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 1:] = False
    maps = (torch.rand(b, 1, cells, cells, generator=g) > 0.5).double()
    return x, t, valid, maps


@pytest.fixture(params=["eps", "logit"])
def model(request):
    torch.manual_seed(0)
    cfg = SceneTransformerConfig(**{**SMALL.__dict__, "head": request.param})
    return SceneTransformer(cfg).double().eval()


def test_output_shapes_and_zero_padding(model):
    x, t, valid, maps = _inputs()
    out = model(x, t, valid, maps)
    expected = (3, 7, 7) if model.config.head == "eps" else (3, 7)
    assert out.shape == expected
    assert torch.all(out[~valid] == 0)
    assert torch.isfinite(out).all()
    assert out[valid].abs().sum() > 0


def test_permutation_equivariance_over_vehicles(model):
    x, t, valid, maps = _inputs()
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    out = model(x, t, valid, maps)
    out_perm = model(x[:, perm], t, valid[:, perm], maps)
    # float64 throughout: only summation order differs.
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-10, atol=1e-10)


def test_padding_does_not_change_real_vehicles(model):
    x, t, valid, maps = _inputs()
    out = model(x, t, valid, maps)
    # Extra padding slots holding garbage, and the padded slots of the original changed: same outputs.
    g = torch.Generator().manual_seed(5)
    x_pad = torch.cat([x, 100 * torch.randn(3, 5, 7, generator=g, dtype=torch.float64)], dim=1)
    x_pad[~torch.cat([valid, torch.zeros(3, 5, dtype=torch.bool)], dim=1)] += 3.0
    valid_pad = torch.cat([valid, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    out_pad = model(x_pad, t, valid_pad, maps)
    torch.testing.assert_close(out_pad[:, :7][valid], out[valid], rtol=1e-10, atol=1e-10)
    assert torch.all(out_pad[~valid_pad] == 0)
    # Scene 2 has one vehicle: it equals the same vehicle run alone.
    alone = model(x[2:3, :1], t[2:3], valid[2:3, :1], maps[2:3])
    torch.testing.assert_close(alone[0, 0], out[2, 0], rtol=1e-10, atol=1e-10)


def test_vehicles_interact_and_the_map_matters(model):
    x, t, valid, maps = _inputs()
    out = model(x, t, valid, maps)
    x2 = x.clone()
    x2[0, 1, :2] += 0.3  # move one vehicle: the others' outputs change
    assert not torch.allclose(model(x2, t, valid, maps)[0, 0], out[0, 0])
    assert not torch.allclose(model(x, t, valid, 1 - maps)[0], out[0])
    assert not torch.allclose(model(x, t + 200, valid, maps)[0], out[0])


def test_world_translation_changes_nothing():
    """Design: scenes are expressed in their window frame, so shifting a scene and its map together (by
    whole cells) gives the same tokens, the same crop and the same outputs."""
    road_maps = generate_road_maps(RoadNetworkConfig(kinds=("crossroads",)), 1, seed=0)
    cfg = SceneConfig(max_vehicles=16, min_vehicles=8, proposals_per_scene=64)
    scenes = generate_scenes(road_maps, 2, cfg, seed=1)
    dm = road_maps[0].drivable_map
    shift = np.array([37.5, -12.0])  # multiple of the 0.5 m resolution
    dm_shifted = DrivableMap(
        dm.drivable, (dm.origin_m[0] + shift[0], dm.origin_m[1] + shift[1]), dm.resolution_m
    )
    boxes_shifted = scenes.boxes.astype(np.float64).copy()
    boxes_shifted[..., :2] += shift
    boxes_shifted[~scenes.valid] = 0
    norm = TokenNormalisation(position_scale_m=0.5 * cfg.window_m)

    def run(boxes, centre, drivable_map):
        tokens = scenes_to_tokens(boxes, scenes.speeds, scenes.valid, centre, norm)
        crop = crop_maps(drivable_map, centre, cfg.window_m, 64)
        torch.manual_seed(0)
        net = SceneTransformer(SMALL).eval()
        with torch.no_grad():
            out = net(
                torch.from_numpy(tokens),
                torch.tensor([10.0, 500.0]),
                torch.from_numpy(scenes.valid),
                torch.from_numpy(crop).float()[:, None],
            )
        return tokens, crop, out

    tok_a, crop_a, out_a = run(scenes.boxes.astype(np.float64), scenes.centre_m, dm)
    tok_b, crop_b, out_b = run(boxes_shifted, scenes.centre_m + shift, dm_shifted)
    np.testing.assert_array_equal(crop_a, crop_b)
    # Token positions: (x + s) - (c + s) vs x - c in float64, then float32: equal to float32 rounding.
    np.testing.assert_allclose(tok_a, tok_b, atol=1e-6)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)


def test_relative_position_features_are_rigid_motion_invariant(model):
    """The attention bias depends on positions only through pairwise distances."""
    x, t, _, _ = _inputs()
    temb = model.time_embedding(t)
    angle = 0.7
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=x.dtype
    )
    x_moved = x.clone()
    x_moved[..., :2] = x[..., :2] @ rot.T + torch.tensor([0.3, -0.2], dtype=x.dtype)
    torch.testing.assert_close(
        model.pair_features(x_moved, temb), model.pair_features(x, temb), rtol=1e-9, atol=1e-9
    )


def test_input_gradients_are_finite_for_guidance(model):
    x, t, valid, maps = _inputs()
    x[0, 1, :2] = x[0, 0, :2]  # two vehicles at the same position: distance 0
    x.requires_grad_(True)
    out = model(x, t, valid, maps)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_parameter_count_and_default_size():
    net = SceneTransformer()
    assert net.num_parameters() == sum(p.numel() for p in net.parameters())
    # Small enough for CPU training in minutes.
    assert 50_000 < net.num_parameters() < 1_000_000
    classifier = SceneTransformer(SceneTransformerConfig(head="logit"))
    assert classifier.num_parameters() < net.num_parameters()


def test_config_validation_and_json():
    with pytest.raises(ValueError, match="head"):
        SceneTransformerConfig(head="score")
    with pytest.raises(ValueError, match="divide"):
        SceneTransformerConfig(width=30, heads=4)
    assert SceneTransformerConfig.from_json(SMALL.to_json()) == SMALL
    net = SceneTransformer(SMALL)
    x, t, valid, maps = _inputs()
    with pytest.raises(ValueError, match="x_tokens"):
        net(x[..., :6].float(), t, valid, maps.float())
    with pytest.raises(ValueError, match="valid"):
        net(x.float(), t, valid.int(), maps.float())
    with pytest.raises(ValueError, match="map_raster"):
        net(x.float(), t, valid, maps[:, :, :4, :4].float())


def test_noise_faded_encoding_is_the_expectation_over_the_noise():
    """``sinusoidal_embedding(v, noise_std=s)`` equals ``E_n sinusoidal_embedding(v + n)``, n ~ N(0, s²)."""
    from genneg.models.scene_transformer import sinusoidal_embedding

    g = torch.Generator().manual_seed(0)
    v = torch.tensor([0.3, -0.7], dtype=torch.float64)
    s = torch.tensor([0.02, 0.1], dtype=torch.float64)
    noisy = v[:, None] + s[:, None] * torch.randn(2, 200_000, generator=g, dtype=torch.float64)
    monte_carlo = sinusoidal_embedding(noisy, 16, 0.05, 8.0).mean(dim=1)
    faded = sinusoidal_embedding(v, 16, 0.05, 8.0, noise_std=s)
    torch.testing.assert_close(faded, monte_carlo, atol=5e-3, rtol=0)
    # the finest wavelength (0.05) is gone under noise 0.1; the coarsest (8) is untouched
    assert faded[1, 7].abs() < 1e-6 and faded[1, 15].abs() < 1e-6
    torch.testing.assert_close(faded[:, [0, 8]], sinusoidal_embedding(v, 16, 0.05, 8.0)[:, [0, 8]],
                               atol=5e-3, rtol=0)


def test_position_noise_std_zero_changes_nothing_and_large_noise_flattens_fine_features(model):
    x, t, valid, maps = _inputs()
    plain = model(x, t, valid, maps)
    zero = model(x, t, valid, maps, position_noise_std=torch.zeros(3, dtype=x.dtype))
    torch.testing.assert_close(zero, plain, rtol=1e-12, atol=1e-12)
    # a shift of one vehicle far below every encoded wavelength: with the encodings faded by a large
    # noise the output moves much less than without (only the raw token and the coarse features remain)
    x2 = x.clone()
    x2[0, 0, 0] += 0.002
    big = torch.full((3,), 0.5, dtype=x.dtype)
    moved_plain = (model(x2, t, valid, maps) - plain)[0].abs().sum()
    moved_faded = (model(x2, t, valid, maps, position_noise_std=big)
                   - model(x, t, valid, maps, position_noise_std=big))[0].abs().sum()
    assert moved_faded < 0.5 * moved_plain


def test_relative_values_are_translation_invariant_inputs():
    x, t, _, _ = _inputs()
    model = SceneTransformer(SMALL).double()
    pair = model.pair_features(x, model.time_embedding(t))
    shifted = x.clone()
    shifted[..., :2] += torch.tensor([0.4, -0.1], dtype=x.dtype)
    pair_s = model.pair_features(shifted, model.time_embedding(t))
    torch.testing.assert_close(model.directed_pair_features(shifted, pair_s),
                               model.directed_pair_features(x, pair), rtol=1e-9, atol=1e-9)
    # and they carry the direction: mirroring the scene flips the sign of the displacement part
    mirrored = x.clone()
    mirrored[..., 0] = -x[..., 0]
    dx = slice(pair.shape[-1], 2 * pair.shape[-1])
    torch.testing.assert_close(model.directed_pair_features(mirrored, pair)[..., dx],
                               -model.directed_pair_features(x, pair)[..., dx])
