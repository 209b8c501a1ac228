"""FastSampler with the few-step solvers (``SamplerConfig.solver``): the library samplers' results, plain
and guided, on the generic and the specialised paths; one call per level; bad combinations refused."""

from __future__ import annotations

import pytest
import torch

from genneg.diffusion import get_sampler, make_sigmas, multistep_coefficients
from genneg.planning.fast_sampler import FastSampler, SamplerConfig
from genneg.planning.inpainting import fix_coordinates


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("model", ["plain", "guided"])
@pytest.mark.parametrize("fast_paths", [False, True])
def test_solver_equals_library_sampler(solver, model, fast_paths, denoiser, guided, oracle) -> None:
    net = guided if model == "guided" else denoiser
    cfg = SamplerConfig(num_parallel=16, num_steps=7, solver=solver, fast_paths=fast_paths)
    sampler = FastSampler(net, oracle, sample_shape=(2,), config=cfg)
    assert sampler.mode == ("split" if model == "guided" else "plain")
    inner = net.denoiser if model == "guided" else net
    calls: list[int] = []
    hook = inner.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        result = sampler(seed=3)
    finally:
        hook.remove()
    assert len(calls) == (0 if fast_paths else 7)  # generic path: one denoiser call per level
    sigmas = make_sigmas("log_linear", 7, 0.002, 80.0)
    x_T = torch.randn((16, 2), generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    expected = get_sampler(solver)(net, x_T, sigmas)
    if fast_paths:
        # the level-specialised network and the analytic guidance gradient agree with the generic path to
        # float32 rounding, carried through 7 steps
        torch.testing.assert_close(result.samples, expected, atol=2e-4, rtol=2e-4)
    else:  # the library's own steps on the sampler's buffers: bit for bit
        assert torch.equal(result.samples, expected)
    # a second call with the same seed reuses the buffers and gives the same samples
    assert torch.equal(sampler(seed=3).samples, result.samples)


def test_coefficients_reproduce_the_sampler_in_float64() -> None:
    """The coefficient table applied to the denoiser outputs is the sampler, to float64 rounding."""
    from genneg.metrics import gaussian_denoiser

    mu = torch.tensor([0.3, -1.0], dtype=torch.float64)
    den = gaussian_denoiser(mu, 0.7)
    levels = make_sigmas("karras", 9, 0.01, 30.0).tolist()
    x0 = 30.0 * torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("euler", "dpmpp_2m", "unipc"):
        x, before, outputs = x0, x0, []
        for i, step in enumerate(multistep_coefficients(name, levels)):
            outputs.append(den(x, torch.full((5,), levels[i], dtype=torch.float64)))
            if step.corrector is not None:
                a, cs = step.corrector
                x = a * before + sum(c * outputs[i - j] for j, c in enumerate(cs))
            before = x
            a, cs = step.predictor
            x = a * x + sum(c * outputs[i - j] for j, c in enumerate(cs))
        expected = get_sampler(name)(den, x0, torch.tensor(levels, dtype=torch.float64))
        torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="heun"):
        multistep_coefficients("heun", levels)


def test_bad_combinations_are_refused(denoiser, eps_model, schedule, oracle) -> None:
    with pytest.raises(ValueError, match="solver"):
        SamplerConfig(num_parallel=4, solver="dpm")
    with pytest.raises(ValueError, match="ancestral"):
        FastSampler(eps_model, oracle, sample_shape=(2,), ddpm_schedule=schedule,
                    config=SamplerConfig(num_parallel=4, num_steps=5, solver="dpmpp_2m"))
    sampler = FastSampler(denoiser, oracle, sample_shape=(2,),
                          config=SamplerConfig(num_parallel=4, num_steps=5, solver="dpmpp_2m"))
    with pytest.raises(ValueError, match="inpainting"):
        sampler(fix_coordinates((2,), 0, 0.25))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_cuda_graph_round_runs_the_solver(solver, denoiser, oracle) -> None:
    """The captured round integrates with the configured solver: equal to the eager round (which the
    CPU tests hold to the library sampler), and not to a Heun round."""
    import copy

    device = torch.device("cuda")
    model = copy.deepcopy(denoiser).to(device)

    def build(graphs: bool, name: str = solver) -> FastSampler:
        cfg = SamplerConfig(num_parallel=64, num_steps=8, solver=name, cuda_graphs=graphs)
        return FastSampler(model, oracle, sample_shape=(2,), config=cfg)

    graphed, eager = build(True), build(False)
    assert graphed.uses_cuda_graphs
    a, b = graphed(seed=3).samples, eager(seed=3).samples
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # same kernels, replayed
    heun = build(True, "heun")(seed=3).samples
    assert (a - heun).abs().max() > 1e-3  # 8 steps: the solvers differ by far more than rounding


@pytest.mark.parametrize("solver", ["heun", "euler", "dpmpp_2m", "unipc"])
def test_explicit_sigmas_equal_library_sampler(solver, guided, oracle) -> None:
    """``SamplerConfig(sigmas=...)`` (e.g. a fitted schedule) samples on exactly those levels: the library
    sampler on the same levels bit for bit on the generic path."""
    sigmas = torch.tensor([80.0, 9.0, 1.7, 0.31, 0.05, 0.0], dtype=torch.float64)
    cfg = SamplerConfig(num_parallel=16, num_steps=5, solver=solver, fast_paths=False, sigmas=sigmas)
    assert cfg.sigmas == tuple(sigmas.tolist())
    result = FastSampler(guided, oracle, sample_shape=(2,), config=cfg)(seed=3)
    x_T = torch.randn((16, 2), generator=torch.Generator().manual_seed(3)) * 80.0
    assert torch.equal(result.samples, get_sampler(solver)(guided, x_T, sigmas))


def test_explicit_sigmas_refused_when_malformed(eps_model, schedule, oracle) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_parallel=4, num_steps=4, sigmas=(10.0, 1.0, 0.1, 0.0))
    for bad in ((10.0, 1.0, 1.0, 0.0), (10.0, 1.0, 0.1, 0.01), (float("inf"), 1.0, 0.1, 0.0)):
        with pytest.raises(ValueError, match="decreasing"):
            SamplerConfig(num_parallel=4, num_steps=3, sigmas=bad)
    with pytest.raises(ValueError, match="DDPM"):
        FastSampler(eps_model, oracle, sample_shape=(2,), ddpm_schedule=schedule,
                    config=SamplerConfig(num_parallel=4, num_steps=3, sigmas=(10.0, 1.0, 0.1, 0.0)))
