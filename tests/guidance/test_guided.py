"""Guidance gradients against finite differences, stacking, scales, multi-part logits, backends."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genneg.diffusion import DDPMConfig, DDPMSchedule, EDMPrecond, EpsDenoiser, heun_sample, log_linear_sigmas
from genneg.guidance import GuidedDenoiser, TimeClassifier, guidance_gradient, posterior_variance
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


def test_time_independent_guidance_is_taken_on_the_estimate() -> None:
    """D_K - D = γ r² g / sqrt(1 + π r² |g|² / 8), g = ∇_{x̂0} log c(x̂0) at x̂0 = D(x; σ) (ΠGDM's
    posterior, MPGD's gradient on the estimate, MacKay's probit moderation; genneg.guidance.guided)."""
    x, sigma = _batch(seed=3)
    denoiser = _denoiser()
    c = _classifier(5, time_dependent=False)
    with torch.no_grad():
        out = GuidedDenoiser(denoiser, [c], [0.8])(x, sigma)
        base = denoiser(x, sigma)
    fd = _finite_difference(lambda z: _log_c(c, z, sigma), base)
    r2 = posterior_variance(sigma.to(torch.float64), SIGMA_DATA)[:, None]
    moderation = 1 / torch.sqrt(1 + math.pi / 8 * r2 * fd.pow(2).sum(dim=1, keepdim=True))
    torch.testing.assert_close(out - base, 0.8 * r2 * moderation * fd, **FD_TOL)
    s2 = sigma.to(torch.float64)[:, None] ** 2
    got = guidance_gradient([c], x, sigma, [0.8], denoiser=denoiser)
    torch.testing.assert_close(got, 0.8 * r2 * moderation / s2 * fd, **FD_TOL)
    with pytest.raises(ValueError, match="time-independent"):
        guidance_gradient([c], x, sigma)
    # r² -> σ² as σ -> 0 and -> σ_data² as σ -> ∞
    small, large = posterior_variance(torch.tensor([1e-4, 1e4], dtype=torch.float64), SIGMA_DATA)
    assert float(small) == pytest.approx(1e-8, rel=1e-6)
    assert float(large) == pytest.approx(SIGMA_DATA**2, rel=1e-6)


class _SteepLogit(nn.Module):
    """A clean-data classifier with a steep logit (slope 50 along (1, -1, 0.5)): far from its data its
    gradient is large, as a classifier trained on clean samples only may be at a blurred estimate."""

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return 50.0 * (x_in[:, 0] - x_in[:, 1] + 0.5 * x_in[:, 2]) - 20.0


def test_time_independent_guidance_stays_bounded_as_sigma_grows() -> None:
    """On a DDPM ε-network's levels (σ up to ~157) the time-independent term of D_K stays within
    min(r² |g|, r sqrt(8/π)) <= σ_data sqrt(8/π), for a network classifier and a steep one, while the
    literal σ² ∇_x log c(D(x; σ)) grows like σ² (the ablation's divergence)."""
    schedule = DDPMSchedule(DDPMConfig(num_steps=1000))
    eps_net = _net(3, 31)
    eps_model = lambda z, t: eps_net(z, t.to(z.dtype) / 1000)  # noqa: E731
    denoiser = EpsDenoiser(eps_model, schedule)
    g = torch.Generator().manual_seed(7)
    levels = schedule.sigmas[[0, 100, 300, 600, 800, 999]].to(torch.float64)
    for c in (TimeClassifier(_net(1, 32), sigma_data=1.0, time_dependent=False),
              TimeClassifier(_SteepLogit(), sigma_data=1.0, time_dependent=False)):
        norms, literal = [], []
        for sigma_value in levels.tolist():
            sigma = torch.full((16,), sigma_value, dtype=torch.float64)
            x = torch.randn(16, 3, generator=g, dtype=torch.float64) * math.sqrt(1 + sigma_value**2)
            with torch.no_grad():
                shift = GuidedDenoiser(denoiser, [c])(x, sigma) - denoiser(x, sigma)
                x0_hat = denoiser(x, sigma)
                grad_c = _finite_difference(lambda z, s=sigma, c=c: _log_c(c, z, s), x0_hat)  # g at x̂0
                lit = _finite_difference(lambda z, s=sigma, c=c: _log_c(c, denoiser(z, s), s), x)
            r2 = float(posterior_variance(torch.tensor(sigma_value, dtype=torch.float64), 1.0))
            bound = torch.minimum(r2 * grad_c.norm(dim=1), torch.full((16,), math.sqrt(8 * r2 / math.pi)))
            # the slack covers float64 rounding of D_K - D at |D| ~ 160 (~1e-13) and the differences
            assert bool((shift.norm(dim=1) <= bound * (1 + 1e-6) + 1e-10).all()), sigma_value
            assert float(shift.norm(dim=1).max()) <= math.sqrt(8 / math.pi) + 1e-9
            norms.append(float(shift.norm(dim=1).max()))
            literal.append(float((sigma_value**2 * lit).norm(dim=1).max()))
        assert all(math.isfinite(v) for v in norms)
        # the literal form is amplified by σ² J_D, about σ² at the top level: orders of magnitude above
        assert literal[-1] > 100 * norms[-1]


def test_ddpm_guidance_in_sigma_form_is_ddpm_eps_guidance() -> None:
    """GuidedDenoiser(EpsDenoiser) is DDPM's ε_K = ε - sqrt(1 - ᾱ_t) ∇_{x_t} log c(x_t / sqrt(ᾱ_t), σ_t):
    one guidance, written once, for both model families."""
    schedule = DDPMSchedule(DDPMConfig(num_steps=50, beta_start=1e-3, beta_end=0.2))
    eps_net = _net(3, 7)
    eps_model = lambda z, t: eps_net(z, t.to(z.dtype) / 50)  # noqa: E731
    x_t, _ = _batch(n=6, seed=8)
    t = torch.tensor([0, 5, 11, 23, 37, 49])
    ab = schedule.alphas_cumprod[t]
    sigma_t = ((1 - ab) / ab).sqrt()
    c = _classifier(9)
    guided = GuidedDenoiser(EpsDenoiser(eps_model, schedule), [c], [0.7])
    x_ve = x_t / ab.sqrt()[:, None]
    with torch.no_grad():
        eps_k = (x_ve - guided(x_ve, sigma_t)) / sigma_t[:, None]
        eps = eps_model(x_t, t)
    fd = _finite_difference(lambda z: _log_c(c, z / ab.sqrt()[:, None], sigma_t), x_t)
    torch.testing.assert_close(eps_k, eps - 0.7 * (1 - ab).sqrt()[:, None] * fd, **FD_TOL)


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
