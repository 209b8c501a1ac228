"""Conditioning by inpainting: the fixed part is kept exactly, FastSampler equals the reference samplers,
traffic scenes keep the ego and seen vehicles, bad conditions raise ValueError."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genneg.data.traffic import (
    RoadNetworkConfig,
    SceneConfig,
    TokenNormalisation,
    generate_road_map,
    generate_scenes,
    scenes_to_tokens,
    tokens_to_scenes,
)
from genneg.diffusion import DDPMConfig, DDPMSchedule, EpsDenoiser, make_sigmas
from genneg.models.scene_networks import SceneEpsModel
from genneg.models.scene_transformer import SceneTransformerConfig
from genneg.oracles import DrivableMap, TrafficOracle
from genneg.planning.fast_sampler import FastSampler, SamplerConfig
from genneg.planning.inpainting import (
    InpaintCondition,
    check_condition,
    fix_coordinates,
    inpaint_ancestral_sample,
    inpaint_heun_sample,
)
from genneg.planning.traffic import SceneTokenOracle, decode_tokens, scene_condition


@pytest.mark.parametrize("kind", ["edm", "ddpm"])
@pytest.mark.parametrize("coordinate", [0, 1])
def test_checkerboard_fixed_coordinate_exact_and_equals_reference(
    kind, coordinate, denoiser, eps_model, schedule, oracle
) -> None:
    value = -1.37  # not representable exactly in float32: the stored float32 value must come back
    cond = fix_coordinates((2,), coordinate, value)
    cfg = SamplerConfig(num_parallel=32, num_steps=7, fast_paths=False)
    if kind == "edm":
        sampler = FastSampler(denoiser, oracle, sample_shape=(2,), config=cfg)
    else:
        sampler = FastSampler(eps_model, oracle, sample_shape=(2,), config=cfg, ddpm_schedule=schedule)
    result = sampler(cond, seed=5)
    fixed = result.samples[:, coordinate]
    assert torch.equal(fixed, torch.full_like(fixed, cond.values[coordinate].item()))
    free = result.samples[:, 1 - coordinate]
    assert free.std() > 0.05  # the free coordinate is still sampled
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn((32, 2), generator=g)
    if kind == "edm":
        expected = inpaint_heun_sample(denoiser, x_T, make_sigmas("log_linear", 7, 0.002, 80.0), cond)
    else:
        sigmas = schedule.sampling_sigmas(7)
        expected = inpaint_ancestral_sample(EpsDenoiser(eps_model, schedule), x_T, sigmas, cond,
                                            start_scale=math.sqrt(1 + float(sigmas[0]) ** 2), generator=g)
    assert torch.equal(result.samples, expected)


def test_unconditioned_mask_changes_nothing(denoiser, oracle) -> None:
    sampler = FastSampler(
        denoiser, oracle, sample_shape=(2,), config=SamplerConfig(num_parallel=8, num_steps=4)
    )
    empty = InpaintCondition(values=torch.zeros(2), mask=torch.zeros(2, dtype=torch.bool))
    assert torch.equal(sampler(empty, seed=1).samples, sampler(None, seed=1).samples)


def test_conditioning_moves_exact_denoiser_toward_the_conditional() -> None:
    """Exact denoiser of N(0, C), C = [[1, .9], [.9, 1]]; fixing x0 = ±1 gives x1 ~ N(±0.9, 0.19).

    Replacement on the deterministic PF-ODE is an approximation that under-conditions: measured here it
    recovers about half of the mean shift (x1 mean 0.445 for x0 = 1, std 0.73 against 0.44). The test
    holds it to that: the right sign, a shift well away from the unconditional mean 0, symmetry, and a
    spread narrower than the unconditional one (std 1)."""
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float32)

    def exact(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = (sigma**2)[:, None, None]
        gain = cov[None] @ torch.linalg.inv(cov[None] + s2 * torch.eye(2)[None])
        return (gain @ x[:, :, None])[:, :, 0]

    sampler = FastSampler(
        exact,
        lambda x: torch.ones(x.shape[0], dtype=torch.bool),
        sample_shape=(2,),
        config=SamplerConfig(num_parallel=4000, num_steps=40, sigma_max=40.0),
    )
    up = sampler(fix_coordinates((2,), 0, 1.0), seed=0).samples
    down = sampler(fix_coordinates((2,), 0, -1.0), seed=0).samples
    free = sampler(None, seed=0).samples
    assert torch.all(up[:, 0] == 1.0) and torch.all(down[:, 0] == -1.0)
    # MC std of a mean: 1 / sqrt(4000) = 0.016
    assert 0.3 < float(up[:, 1].mean()) < 0.95 and -0.95 < float(down[:, 1].mean()) < -0.3
    assert abs(float(free[:, 1].mean())) < 0.08
    assert float(up[:, 1].std()) < 0.85 * float(free[:, 1].std())
    # D is linear, so the unknown part is affine in the fixed value: flipping its sign mirrors the shift
    # from the x0 = 0 condition (same noise); float32 rounding over 80 network calls, hence 1e-4
    zero = sampler(fix_coordinates((2,), 0, 0.0), seed=0).samples
    torch.testing.assert_close(up[:, 1] - zero[:, 1], zero[:, 1] - down[:, 1], atol=1e-4, rtol=0)


def test_bad_conditions_raise() -> None:
    with pytest.raises(ValueError, match="index"):
        fix_coordinates((2,), 5, 0.0)
    good = fix_coordinates((2,), 0, 0.0)
    with pytest.raises(ValueError, match="mask"):
        check_condition(InpaintCondition(good.values, good.mask.float()), (2,), 4)
    with pytest.raises(ValueError, match="leading batch"):
        check_condition(InpaintCondition(good.values, good.mask, cond={"c": torch.zeros(3, 5)}), (2,), 4)
    with pytest.raises(TypeError, match="dict"):
        check_condition(InpaintCondition(good.values, good.mask, cond=(torch.zeros(4, 5),)), (2,), 4)
    with pytest.raises(ValueError, match="NaN"):
        check_condition(InpaintCondition(torch.tensor([float("inf"), 0.0]), good.mask), (2,), 4)
    # a NaN where nothing is fixed is ignored
    check_condition(InpaintCondition(torch.tensor([0.0, float("nan")]), good.mask), (2,), 4)


# --- traffic --------------------------------------------------------------------------------------------

A = 8


@pytest.fixture(scope="module")
def traffic():
    road = generate_road_map("straight", RoadNetworkConfig(size_m=96.0), seed=3)
    scenes = generate_scenes(
        [road], 4, SceneConfig(max_vehicles=A, min_vehicles=4, proposals_per_scene=64), seed=1
    )
    norm = TokenNormalisation()
    tokens = scenes_to_tokens(scenes.boxes, scenes.speeds, scenes.valid, scenes.centre_m, norm)
    torch.manual_seed(0)
    schedule = DDPMSchedule(DDPMConfig(num_steps=40))
    net = SceneEpsModel(SceneTransformerConfig(width=16, heads=2, blocks=1, mlp_ratio=1), schedule).eval()
    return road, scenes, torch.from_numpy(tokens), net, schedule


def test_decode_tokens_matches_tokens_to_scenes(traffic) -> None:
    _, scenes, tokens, _, _ = traffic
    norm = TokenNormalisation()
    centre = tuple(scenes.centre_m[0])
    boxes, _ = tokens_to_scenes(tokens[:1].numpy(), scenes.centre_m[:1], norm)
    assert np.array_equal(decode_tokens(tokens[:1], centre, norm).numpy(), boxes)
    # one centre per scene, as in cond["centre_m"] (N, 2)
    boxes, _ = tokens_to_scenes(tokens[:3].numpy(), scenes.centre_m[:3], norm)
    per_scene = decode_tokens(tokens[:3], torch.from_numpy(np.asarray(scenes.centre_m[:3])), norm)
    assert np.array_equal(per_scene.numpy(), boxes)
    with pytest.raises(ValueError, match="centre_m"):
        decode_tokens(tokens[:3], torch.zeros(2, 2), norm)


def test_traffic_keeps_ego_and_seen_vehicles(traffic) -> None:
    road, scenes, tokens, net, schedule = traffic
    valid = torch.from_numpy(scenes.valid[0]).clone()
    valid[: int(valid.sum()) + 1] = True  # one more slot to fill than the scene has
    known = torch.zeros(A, dtype=torch.bool)
    known[:3] = True  # ego (slot 0) and two seen vehicles
    cond = scene_condition(
        tokens[0], known, valid, road.drivable_map, tuple(scenes.centre_m[0]), map_cells=16
    )
    oracle = SceneTokenOracle(TrafficOracle(road.drivable_map))
    sampler = FastSampler(
        net,
        oracle,
        sample_shape=(A, 7),
        config=SamplerConfig(num_parallel=6, num_steps=4, max_rounds=2),
        ddpm_schedule=schedule,
    )
    result = sampler(cond, seed=2)
    x = result.samples
    assert x.shape[1:] == (A, 7) and result.verdicts.shape == (x.shape[0], A)
    assert torch.equal(x[:, :3], tokens[0, :3].expand(x.shape[0], 3, 7))  # fixed vehicles, bit for bit
    assert torch.all(x[:, ~valid] == 0)  # absent slots stay padding
    assert x[:, valid & ~known].std() > 0  # the rest is sampled
    # verdicts are the traffic oracle's on the decoded boxes
    boxes = decode_tokens(x, cond.cond["centre_m"], cond.frame.norm)
    expected = TrafficOracle(road.drivable_map)(boxes, valid[None].expand(x.shape[0], A))
    assert torch.equal(result.verdicts, expected)
    # the same with fresh buffers
    fresh = FastSampler(
        net,
        oracle,
        sample_shape=(A, 7),
        config=sampler.config,
        ddpm_schedule=schedule,
        preallocate=False,
    )
    assert torch.equal(fresh(cond, seed=2).samples, x)


def test_pipeline_scene_oracle_serves_the_planner_unchanged(traffic) -> None:
    """The pipeline's own oracle (``TrafficTokenOracle``, ``oracle(tokens, *, valid, centre_m, map_index)``)
    judges the planner's samples through the condition's ``cond``, with the planner's scene oracle's
    verdicts."""
    from genneg.data.traffic.scene_set import TrafficTokenOracle

    road, scenes, tokens, net, schedule = traffic
    valid = torch.from_numpy(scenes.valid[0])
    known = torch.zeros(A, dtype=torch.bool)
    known[:2] = True
    condition = scene_condition(tokens[0], known, valid, road.drivable_map, tuple(scenes.centre_m[0]),
                                map_cells=16, map_index=0)
    config = SamplerConfig(num_parallel=6, num_steps=3, max_rounds=2)
    oracles = (SceneTokenOracle(TrafficOracle(road.drivable_map)),
               TrafficTokenOracle([road], TokenNormalisation()))
    samplers = [FastSampler(net, oracle, sample_shape=(A, 7), config=config, ddpm_schedule=schedule)
                for oracle in oracles]
    results = [sampler(condition, seed=4) for sampler in samplers]
    assert torch.equal(results[0].samples, results[1].samples)
    assert torch.equal(results[0].verdicts, results[1].verdicts)


def test_traffic_bad_input(traffic) -> None:
    road, scenes, tokens, net, schedule = traffic
    valid = torch.from_numpy(scenes.valid[0])
    known = torch.zeros(A, dtype=torch.bool)
    known[0] = True
    centre = tuple(scenes.centre_m[0])
    oracle = SceneTokenOracle(TrafficOracle(road.drivable_map))
    sampler = FastSampler(
        net,
        oracle,
        sample_shape=(A, 7),
        config=SamplerConfig(num_parallel=2, num_steps=2),
        ddpm_schedule=schedule,
    )
    other = DrivableMap(np.ones((8, 8), dtype=np.uint8), origin_m=(0.0, 0.0), resolution_m=1.0)
    with pytest.raises(ValueError, match="map mismatch"):
        sampler(scene_condition(tokens[0], known, valid, other, centre, map_cells=16))
    bad = tokens[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        scene_condition(bad, known, valid, road.drivable_map, centre)
    with pytest.raises(ValueError, match="present"):
        scene_condition(tokens[0], known, torch.zeros(A, dtype=torch.bool), road.drivable_map, centre)
    with pytest.raises(ValueError, match="shape"):
        sampler(fix_coordinates((A, 6), 0, 0.0))
    with pytest.raises(ValueError, match="condition"):
        sampler(None)  # the token oracle needs the scene frame
