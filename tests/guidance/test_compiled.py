"""The compiled CPU guidance gradient (``genneg.guidance.compiled``) against the exact autograd reference.

One test body holds every backend of :class:`CompiledMLPGuidance` (``eager``: the same function run
eagerly; ``inductor``: ``torch.compile``) and both orders of differentiation (``tangent``: forward mode,
``reverse``) to :func:`genneg.guidance.guidance_gradient` computed in float64,
over K in {1, 3} stacked classifiers of different widths and block counts (zero padding), shared and
per-row noise levels. The checkerboard classifiers take no conditioning (``cond``); conditioned stacks
keep the autograd path and never reach this module.

Tolerance rule (flash-attention's): the float32 backend's error against the float64 reference is at most
2x the error of float32 autograd (the eager reference run in float32) plus 1e-6 of the gradient's scale
(for rows where float32 autograd happens to be exact).

Compilation takes tens of seconds on a loaded 2-core machine: one compiled case runs by default, the
others and the no-compiler fallback (a subprocess) are marked slow.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from genneg.guidance import TimeClassifier, guidance_gradient
from genneg.guidance.compiled import CompiledMLPGuidance, build_compiled_guidance, classifier_flops
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig

SIGMA_DATA = 0.5
DIM = 2


def _stack(k: int) -> tuple[list[TimeClassifier], list[float]]:
    """K classifiers of different widths / block counts (the padding is exercised), scales != 1."""
    shapes = [(24, 2), (16, 1), (20, 2)]
    classifiers = []
    for i in range(k):
        torch.manual_seed(10 + i)
        hidden, blocks = shapes[i % len(shapes)]
        cfg = ResidualMLPConfig(dim_in=DIM, dim_out=1, hidden=hidden, num_blocks=blocks, embedding_dim=8)
        classifiers.append(TimeClassifier(ResidualMLP(cfg), SIGMA_DATA).eval())
    return classifiers, [1.0, 0.5, 2.0][:k]


def _reference64(classifiers: list[TimeClassifier], scales: list[float], x: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
    doubles = [copy.deepcopy(c).double() for c in classifiers]
    return guidance_gradient(doubles, x.double(), sigma.double(), scales)


def _check(backend: str, k: int, n: int, shared_sigma: bool, mode: str = "auto") -> CompiledMLPGuidance:
    classifiers, scales = _stack(k)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, DIM, generator=g) * 1.5
    sigma = torch.full((n,), 0.7) if shared_sigma else torch.exp(torch.linspace(-3.0, 2.0, n))
    guidance = CompiledMLPGuidance(classifiers, scales, compile=backend == "inductor", mode=mode)
    with torch.inference_mode():  # as FastSampler calls it
        got = guidance.gradient(x, sigma)
    assert got.shape == (n, DIM) and got.dtype == torch.float32
    assert guidance.backend == backend, guidance.fallback_reason
    ref64 = _reference64(classifiers, scales, x, sigma)
    ref32 = guidance_gradient(classifiers, x, sigma, scales)
    scale = ref64.abs().max().item()
    err = (got.double() - ref64).abs().max().item()
    err_autograd32 = (ref32.double() - ref64).abs().max().item()
    # float32 rounding: <= 2x float32 autograd's own error, + 1e-6 of the scale (see module docstring)
    assert err <= 2 * err_autograd32 + 1e-6 * scale, (err, err_autograd32, scale)
    return guidance


@pytest.mark.parametrize("mode", ["tangent", "reverse"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("n", [1, 7, 32])
@pytest.mark.parametrize("shared_sigma", [True, False])
def test_eager_backend_matches_autograd(mode: str, k: int, n: int, shared_sigma: bool) -> None:
    _check("eager", k, n, shared_sigma, mode)


def test_inductor_backend_matches_autograd() -> None:
    """The default suite's one compiled case: K = 3 (padded widths), a sampler step's shared sigma, and a
    second noise level through the same graph (no recompilation: the level enters as tensors)."""
    guidance = _check("inductor", 3, 7, shared_sigma=True)
    classifiers, scales = _stack(3)
    x = torch.randn(7, DIM)
    sigma = torch.full((7,), 3.0)
    with torch.inference_mode():
        got = guidance.gradient(x, sigma)
    ref64 = _reference64(classifiers, scales, x, sigma)
    err_autograd32 = (guidance_gradient(classifiers, x, sigma, scales).double() - ref64).abs().max().item()
    assert (got.double() - ref64).abs().max().item() <= 2 * err_autograd32 + 1e-6 * ref64.abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("n", [1, 32])
def test_inductor_backend_matches_autograd_more_shapes(k: int, n: int) -> None:
    """N = 1 runs the tangent graph, N = 32 the reverse one (``mode="auto"``)."""
    _check("inductor", k, n, shared_sigma=True)
    _check("inductor", k, n, shared_sigma=False)  # per-row levels: the eager function, same numbers


def test_auto_mode_picks_tangents_for_small_batches() -> None:
    classifiers, scales = _stack(1)
    guidance = CompiledMLPGuidance(classifiers, scales, compile=False)
    assert guidance.function_for(16).__name__ == "stack_gradient_tangent"  # (1 + 2) · 16 = 48
    assert guidance.function_for(17).__name__ == "stack_gradient"
    with pytest.raises(ValueError, match="mode"):
        CompiledMLPGuidance(classifiers, scales, mode="forward")  # type: ignore[arg-type]


def test_bad_input_raises() -> None:
    classifiers, scales = _stack(1)
    guidance = CompiledMLPGuidance(classifiers, scales, compile=False)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        guidance.gradient(torch.zeros(4, 3), 1.0)
    with pytest.raises(TypeError, match="float32"):
        guidance.gradient(torch.zeros(4, 2, dtype=torch.float64), 1.0)
    time_independent = TimeClassifier(classifiers[0].net, SIGMA_DATA, time_dependent=False)
    with pytest.raises(ValueError, match="time-independent"):
        CompiledMLPGuidance([time_independent], [1.0])
    assert build_compiled_guidance([time_independent], [1.0]) is None
    assert build_compiled_guidance([], []) is None


def test_flop_floor_counts_matrix_products() -> None:
    """Hand count for H = 4, NB = 1, d = 2, P = 1, B = 3: forward = 2·3·(2·4 + 2·1·16 + 4·1) = 264."""
    flops = classifier_flops(batch=3, dim=2, hidden=4, num_blocks=1, parts=1)
    assert flops == {"classifier_forward": 264, "classifier_backward": 264, "denoiser_forward": 288}


@pytest.mark.slow
def test_without_a_compiler_falls_back_to_eager_with_a_warning(tmp_path: Path) -> None:
    """A process whose C++ compiler does not exist (``CXX``) and with an empty Inductor cache warns once
    and returns the eager function's numbers."""
    script = textwrap.dedent(
        """
        import warnings, torch
        from genneg.guidance import TimeClassifier
        from genneg.guidance.compiled import CompiledMLPGuidance
        from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
        torch.manual_seed(0)
        cfg = ResidualMLPConfig(dim_in=2, dim_out=1, hidden=16, num_blocks=1, embedding_dim=8)
        stack = [TimeClassifier(ResidualMLP(cfg), 0.5)]
        x = torch.randn(5, 2)
        compiled = CompiledMLPGuidance(stack, [1.0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = compiled.gradient(x, 0.3)
        want = CompiledMLPGuidance(stack, [1.0], compile=False).gradient(x, 0.3)
        assert compiled.backend == "eager", compiled.backend
        assert any("running the guidance gradient eagerly" in str(w.message) for w in caught)
        assert torch.equal(got, want)
        print("FELL BACK:", compiled.fallback_reason)
        """
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FELL BACK:" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
def test_fast_sampler_compile_guidance_matches_analytic(solver: str) -> None:
    """``SamplerConfig(compile_guidance=True)``: the same samples as the analytic path to float32 rounding
    carried through 6 steps (Heun: 11 guided evaluations), same verdicts; the path is reported."""
    from genneg.data.checkerboard import CheckerboardOracle
    from genneg.diffusion import EDMPrecond
    from genneg.guidance import GuidedDenoiser
    from genneg.planning.fast_sampler import FastSampler, SamplerConfig

    torch.manual_seed(5)
    cfg = ResidualMLPConfig(dim_in=DIM, dim_out=DIM, hidden=24, num_blocks=2, embedding_dim=8)
    classifiers, scales = _stack(3)
    guided = GuidedDenoiser(EDMPrecond(ResidualMLP(cfg), SIGMA_DATA).eval(), classifiers, scales).eval()
    samples = {}
    for compiled in (False, True):
        config = SamplerConfig(num_parallel=9, num_steps=6, solver=solver, compile_guidance=compiled)
        sampler = FastSampler(guided, CheckerboardOracle(), sample_shape=(DIM,), config=config)
        path = "compiled_guidance" if compiled else "analytic_guidance"
        assert sampler.fast_path == f"mlp_plan+{path}"
        samples[compiled] = sampler(seed=4).samples
    # float32 regrouping in the compiled graph, carried through the solver's steps
    torch.testing.assert_close(samples[True], samples[False], atol=1e-4, rtol=1e-4)
