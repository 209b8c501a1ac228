"""Guidance gradients against finite differences, stacking, scales, multi-part logits, backends."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from genneg.diffusion import EDMPrecond, heun_sample, log_linear_sigmas
from genneg.guidance import GuidedDenoiser, GuidedEps, TimeClassifier, guidance_gradient
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig

SIGMA_DATA = 0.5


def _net(dim_out: int, seed: int, dim_in: int = 3) -> ResidualMLP:
    torch.manual_seed(seed)
    cfg = ResidualMLPConfig(dim_in=dim_in, dim_out=dim_out, hidden=24, num_blocks=1, embedding_dim=8)
    return ResidualMLP(cfg).double()


def _classifier(seed: int, parts: int = 1, time_dependent: bool = True) -> TimeClassifier:
    return TimeClassifier(_net(parts, seed), SIGMA_DATA, time_dependent=time_dependent)


def _denoiser(seed: int = 100) -> EDMPrecond:
    return EDMPrecond(_net(3, seed), SIGMA_DATA)


def _batch(n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.3
    sigma = torch.exp(torch.linspace(math.log(0.05), math.log(5.0), n)).to(torch.float32)
    return x, sigma


def _finite_difference(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of a per-sample scalar function ``f: (B, d) -> (B,)`` (samples independent)."""
    grad = torch.empty_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        grad[:, j] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


def _log_c(classifier: TimeClassifier, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    logits = classifier(x, sigma)
    ls = nn.functional.logsigmoid(logits)
    return ls if ls.ndim == 1 else ls.sum(dim=1)


# float64 central differences with h=1e-6 are accurate to ~1e-9 here; 1e-6 leaves ample margin.
FD_TOL = {"rtol": 1e-6, "atol": 1e-7}


@pytest.mark.parametrize("parts", [1, 4])
def test_guidance_equals_finite_differences(parts: int) -> None:
    x, sigma = _batch()
    classifiers = [_classifier(1, parts), _classifier(2, parts)]
    scales = [1.0, 0.7]
    denoiser = _denoiser()
    guided = GuidedDenoiser(denoiser, classifiers, scales)
    with torch.no_grad():  # samplers call under no_grad: guidance must still differentiate
        out = guided(x, sigma)
        base = denoiser(x, sigma)
    fd = _finite_difference(lambda z: sum(s * _log_c(c, z, sigma) for c, s in zip(classifiers, scales)), x)
    s2 = sigma.to(torch.float64)[:, None] ** 2
    torch.testing.assert_close(out - base, s2 * fd, **FD_TOL)
    torch.testing.assert_close(guidance_gradient(classifiers, x, sigma, scales), fd, **FD_TOL)
    assert not out.requires_grad


def test_time_independent_guidance_differentiates_through_denoiser() -> None:
    x, sigma = _batch(seed=3)
    denoiser = _denoiser()
    c = _classifier(5, time_dependent=False)
    with torch.no_grad():
        out = GuidedDenoiser(denoiser, [c])(x, sigma)
        base = denoiser(x, sigma)
    fd = _finite_difference(lambda z: _log_c(c, denoiser(z, sigma), sigma), x)
    torch.testing.assert_close(out - base, sigma.to(torch.float64)[:, None] ** 2 * fd, **FD_TOL)
    torch.testing.assert_close(guidance_gradient([c], x, sigma, denoiser=denoiser), fd, **FD_TOL)
    with pytest.raises(ValueError, match="time-independent"):
        guidance_gradient([c], x, sigma)


def test_time_independent_classifier_ignores_sigma() -> None:
    x, sigma = _batch()
    c = _classifier(6, time_dependent=False)
    torch.testing.assert_close(c(x, sigma), c(x, sigma * 10 + 1))
    c_t = _classifier(6, time_dependent=True)
    assert not torch.allclose(c_t(x, sigma), c_t(x, sigma * 10 + 1))


def test_stack_equals_sum_of_single_guidances() -> None:
    x, sigma = _batch(n=9, seed=4)
    denoiser = _denoiser()
    classifiers = [_classifier(10 + k) for k in range(3)] + [_classifier(20, time_dependent=False)]
    scales = [1.0, 2.0, 0.5, 1.5]
    with torch.no_grad():
        base = denoiser(x, sigma)
        stacked = GuidedDenoiser(denoiser, classifiers, scales)(x, sigma)
        singles = sum(
            GuidedDenoiser(denoiser, [c], [s])(x, sigma) - base for c, s in zip(classifiers, scales)
        )
        chained = GuidedDenoiser(denoiser)
        for c, s in zip(classifiers, scales):
            chained = chained.with_classifier(c, s)
        out_chained = chained(x, sigma)
    # one autograd call vs four: same maths, float64 rounding only
    torch.testing.assert_close(stacked - base, singles, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_chained, stacked, rtol=0, atol=0)
    assert chained.scales == tuple(scales) and len(chained.classifiers) == 4
    assert chained.denoiser is denoiser


def test_zero_scale_gives_plain_denoiser() -> None:
    x, sigma = _batch()
    denoiser = _denoiser()
    with torch.no_grad():
        base = denoiser(x, sigma)
        zero = GuidedDenoiser(denoiser, [_classifier(1), _classifier(2)], [0.0, 0.0])
        assert torch.equal(zero(x, sigma), base)
        assert torch.equal(GuidedDenoiser(denoiser)(x, sigma), base)
        one = GuidedDenoiser(denoiser, [_classifier(1)])(x, sigma)
        mixed = GuidedDenoiser(denoiser, [_classifier(1), _classifier(2)], [1.0, 0.0])(x, sigma)
    assert torch.equal(one, mixed)


def test_guided_denoiser_samples_under_heun_and_keeps_d_term_differentiable() -> None:
    torch.manual_seed(0)
    denoiser = EDMPrecond(ResidualMLP(ResidualMLPConfig(dim_in=2, dim_out=2, hidden=16, num_blocks=1,
                                                        embedding_dim=8)), SIGMA_DATA)
    c = TimeClassifier(ResidualMLP(ResidualMLPConfig(dim_in=2, dim_out=1, hidden=16, num_blocks=1,
                                                     embedding_dim=8)), SIGMA_DATA)
    guided = GuidedDenoiser(denoiser, [c])
    assert guided.heun_step is None
    sigmas = log_linear_sigmas(8, 0.002, 80.0)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) * 80.0
    out = heun_sample(guided, x, sigmas)
    plain = heun_sample(denoiser, x, sigmas)
    assert out.shape == (16, 2) and torch.isfinite(out).all()
    assert not torch.allclose(out, plain)
    # with grad enabled outside, D's graph is kept (for callers that need it) while guidance is detached
    y = guided(x[:4] / 80.0, torch.full((4,), 0.5))
    assert y.requires_grad
    y.sum().backward()
    assert denoiser.net.input_fc.weight.grad is not None
    assert c.net.input_fc.weight.grad is None


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    x, sigma = _batch()
    denoiser = _denoiser()
    auto = GuidedDenoiser(denoiser, [_classifier(1)], backend="auto")
    torch_path = GuidedDenoiser(denoiser, [_classifier(1)], backend="torch")
    assert auto.heun_step is None  # CPU: auto resolves to torch
    with torch.no_grad():
        torch.testing.assert_close(auto(x, sigma), torch_path(x, sigma), rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend"):
        GuidedDenoiser(denoiser, [], backend="cuda")  # type: ignore[arg-type]
    # without the fused module, an explicit triton request says so instead of silently falling back
    monkeypatch.setattr("genneg.guidance.guided._FUSED_MODULE", "genneg.guidance._no_such_module")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton = GuidedDenoiser(denoiser, [_classifier(1)], backend="triton")
    from genneg.kernels._backend import has_triton

    if not has_triton():
        pytest.skip("triton not installed")
    with pytest.raises(RuntimeError, match="fused"):
        triton(x, sigma)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="scales"):
        GuidedDenoiser(_denoiser(), [_classifier(1)], [1.0, 2.0])
    with pytest.raises(TypeError, match="classifier 0"):
        GuidedDenoiser(_denoiser(), [lambda x, s: x])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="sigma_data"):
        TimeClassifier(_net(1, 0), 0.0)


@dataclass
class _Schedule:
    alphas_cumprod: torch.Tensor


class _StepClassifier(nn.Module):
    """A DDPM-side classifier ``c(x_t, t)`` taking integer timesteps."""

    def __init__(self, net: nn.Module, num_steps: int) -> None:
        super().__init__()
        self.net = net
        self.num_steps = num_steps

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t.to(torch.float32) / self.num_steps)[:, 0]


@pytest.mark.parametrize("coordinates", ["ddpm", "ve"])
def test_guided_eps_equals_finite_differences(coordinates: str) -> None:
    num_steps = 50
    schedule = _Schedule(torch.cumprod(1 - torch.linspace(1e-3, 0.2, num_steps, dtype=torch.float64), 0))
    eps_net = _net(3, 7)
    eps_model = lambda x, t: eps_net(x, t.to(torch.float32) / num_steps)  # noqa: E731
    x, _ = _batch(n=6, seed=8)
    t = torch.tensor([0, 5, 11, 23, 37, 49])
    ab = schedule.alphas_cumprod[t]
    if coordinates == "ve":
        c = _classifier(9)
        sigma_t = ((1 - ab) / ab).sqrt().to(torch.float32)
        log_c = lambda z: _log_c(c, z / ab.sqrt()[:, None], sigma_t)  # noqa: E731
    else:
        c = _StepClassifier(_net(1, 9), num_steps)
        log_c = lambda z: nn.functional.logsigmoid(c(z, t))  # noqa: E731
    c_ti = _classifier(12, time_dependent=False)

    def log_c_ti(z: torch.Tensor) -> torch.Tensor:
        x0_hat = (z - (1 - ab).sqrt()[:, None] * eps_model(z, t)) / ab.sqrt()[:, None]
        return _log_c(c_ti, x0_hat, t)

    guided = GuidedEps(eps_model, schedule, [c, c_ti], [1.0, 0.5], coordinates=coordinates)  # type: ignore
    with torch.no_grad():
        out = guided(x, t)
        eps = eps_model(x, t)
    fd = _finite_difference(lambda z: log_c(z) + 0.5 * log_c_ti(z), x)
    torch.testing.assert_close(out, eps - (1 - ab).sqrt()[:, None] * fd, **FD_TOL)
    stacked = GuidedEps(eps_model, schedule, coordinates=coordinates)  # type: ignore
    stacked = stacked.with_classifier(c).with_classifier(c_ti, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(stacked(x, t), out, rtol=0, atol=0)


class _ConstantLogit(nn.Module):
    """A classifier that ignores its input (e.g. a degenerate fit): its guidance is exactly 0."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), 2.0, dtype=x.dtype, device=x.device)


def test_classifier_constant_in_x_gives_zero_guidance() -> None:
    x, sigma = _batch()
    denoiser = _denoiser()
    with torch.no_grad():
        assert torch.equal(GuidedDenoiser(denoiser, [_ConstantLogit()])(x, sigma), denoiser(x, sigma))
    assert torch.equal(guidance_gradient([_ConstantLogit()], x, sigma), torch.zeros_like(x))
