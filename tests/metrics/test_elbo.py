"""ELBO and r-ELBO: unbiased against closed forms, a bound on the true likelihood, and below the exact
PF-ODE likelihood of a trained model."""

import math
from itertools import pairwise

import pytest
import torch

from genneg.data.checkerboard import sample_checkerboard
from genneg.diffusion import DDPMConfig, DDPMSchedule, EDMConfig, EDMPrecond, EpsDenoiser, edm_loss
from genneg.metrics import (
    elbo,
    elbo_terms,
    gaussian_denoiser,
    gaussian_elbo,
    gaussian_eps,
    gaussian_log_density,
    pf_ode_log_likelihood,
    r_elbo,
)
from genneg.models import ResidualMLP, ResidualMLPConfig

MU = torch.tensor([0.3, -0.5], dtype=torch.float64)
S = 0.7


def _gaussian_points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 2, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(stratified=False, control_variate=False, antithetic=False),
     dict(stratified=True, control_variate=False, antithetic=False), dict(antithetic=False)],
)
def test_estimator_is_unbiased(options: dict) -> None:
    # σ_min = 0.05 leaves a visible gap to log p; the estimate must match the closed-form ELBO
    cfg = EDMConfig(sigma_min=0.05, sigma_max=80.0, sigma_data=0.5)
    x0 = _gaussian_points(400, 0)
    terms = elbo_terms(gaussian_denoiser(MU, S), x0, cfg, num_sigmas=64,
                       generator=torch.Generator().manual_seed(1), **options)
    exact = gaussian_elbo(x0, MU, S, cfg.sigma_min, cfg.sigma_max)
    stderr = terms.diffusion_stderr.pow(2).sum().sqrt() / len(x0)  # of the mean over points
    assert abs((terms.elbo - exact).mean()) < 4 * stderr
    torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.prior_kl - terms.diffusion)


def test_variance_reduction_helps() -> None:
    cfg = EDMConfig(sigma_min=1e-3, sigma_max=1e3, sigma_data=0.5)
    x0 = _gaussian_points(200, 2)
    plain = elbo_terms(gaussian_denoiser(MU, S), x0, cfg, generator=torch.Generator().manual_seed(3),
                       stratified=False, control_variate=False, antithetic=False)
    reduced = elbo_terms(gaussian_denoiser(MU, S), x0, cfg, generator=torch.Generator().manual_seed(3))
    assert reduced.diffusion_stderr.mean() < 0.25 * plain.diffusion_stderr.mean()


def test_elbo_of_exact_denoiser_is_tight_lower_bound() -> None:
    # small σ_min, large σ_max: the bound is within 0.05 nats of log p and below it
    cfg = EDMConfig(sigma_min=1e-3, sigma_max=1e3, sigma_data=0.5)
    x0 = _gaussian_points(1000, 4)
    true = gaussian_log_density(x0, MU, S * S)
    terms = elbo_terms(gaussian_denoiser(MU, S), x0, cfg, num_sigmas=256,
                       generator=torch.Generator().manual_seed(5))
    stderr = float(terms.diffusion_stderr.pow(2).sum().sqrt() / len(x0))
    gap = float((true - terms.elbo).mean())
    assert stderr < 0.01  # the comparison below is informative
    assert -3 * stderr <= gap < 0.05
    exact_gap = true - gaussian_elbo(x0, MU, S, cfg.sigma_min, cfg.sigma_max)
    # closed form, pointwise: the ELBO bounds the density of the model whose prior is N(0, σ_max² I);
    # that density differs from the data's by ~1e-5 here, so a point may sit that far above log p
    assert float(exact_gap.min()) > -1e-4 and float(exact_gap.max()) < 0.05


def test_bound_loosens_with_large_sigma_min() -> None:
    x0 = _gaussian_points(300, 6)
    true = gaussian_log_density(x0, MU, S * S)
    gaps = [float((true - gaussian_elbo(x0, MU, S, smin, 80.0)).mean()) for smin in (0.5, 0.1, 0.01, 0.001)]
    assert all(a > b >= 0 for a, b in pairwise(gaps))
    cfg = EDMConfig(sigma_min=0.5, sigma_max=80.0, sigma_data=0.5)
    terms = elbo_terms(gaussian_denoiser(MU, S), x0, cfg, generator=torch.Generator().manual_seed(7))
    stderr = float(terms.diffusion_stderr.pow(2).sum().sqrt() / len(x0))
    assert float((true - terms.elbo).mean()) > gaps[0] - 4 * stderr > 10 * stderr


def test_elbo_and_pf_ode_agree_on_gaussian_data() -> None:
    cfg = EDMConfig(sigma_min=2e-3, sigma_max=80.0, sigma_data=0.5)
    x0 = _gaussian_points(300, 8)
    den = gaussian_denoiser(MU, S)
    ode = pf_ode_log_likelihood(den, x0, cfg, num_steps=64)
    terms = elbo_terms(den, x0, cfg, generator=torch.Generator().manual_seed(9))
    stderr = float(terms.diffusion_stderr.pow(2).sum().sqrt() / len(x0))
    # both are known: the ODE gives log N(x0; μ, s² + σ_min²) up to the prior's mismatch at σ_max,
    # the ELBO the closed form
    exact_ode = gaussian_log_density(x0, MU, S * S + cfg.sigma_min**2)
    assert float((ode - exact_ode).abs().max()) < 0.03
    exact_elbo = gaussian_elbo(x0, MU, S, cfg.sigma_min, cfg.sigma_max)
    assert abs(float((terms.elbo - exact_elbo).mean())) < 4 * stderr
    diff = float((ode - terms.elbo).mean())
    assert -3 * stderr <= diff < 0.05


def _train_checkerboard_denoiser(cfg: EDMConfig) -> EDMPrecond:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = ResidualMLP(ResidualMLPConfig(hidden=96, num_blocks=2, embedding_dim=32))
    den = EDMPrecond(net, cfg.sigma_data)
    train = sample_checkerboard(2000, generator=g)
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    for _ in range(300):
        loss = edm_loss(den, train[torch.randint(2000, (256,), generator=g)], cfg, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    den.requires_grad_(False)
    return den.eval()


def test_elbo_below_pf_ode_likelihood_for_trained_model() -> None:
    cfg = EDMConfig(sigma_min=2e-3, sigma_max=80.0, sigma_data=1.0)
    den = _train_checkerboard_denoiser(cfg)
    held_out = sample_checkerboard(200, generator=torch.Generator().manual_seed(1))
    terms = elbo_terms(den, held_out, cfg, num_sigmas=128, generator=torch.Generator().manual_seed(2))
    ode = pf_ode_log_likelihood(den, held_out, cfg, num_steps=48)
    stderr = float(terms.diffusion_stderr.pow(2).sum().sqrt() / len(held_out))
    mean_elbo, mean_ode = float(terms.elbo.mean()), float(ode.mean())
    # the data density is log(1/8) = -2.08 on the dark squares; a briefly trained model is below it
    assert math.isfinite(mean_ode) and -6.0 < mean_ode < -2.08 + 0.2
    assert mean_elbo <= mean_ode + 3 * stderr, (mean_elbo, mean_ode, stderr)


def test_r_elbo_of_exact_eps() -> None:
    # E_ε||E[ε|x_t] - ε||² given x0 = (1-ᾱ) ᾱ ||x0-μ||² / v² + d (ᾱ s² / v)², v = ᾱ s² + 1 - ᾱ
    sched = DDPMSchedule(DDPMConfig(num_steps=300, schedule="cosine"))
    x0 = _gaussian_points(500, 10)
    ab = sched.alphas_cumprod[None, :]
    v = ab * S * S + 1 - ab
    m2 = (x0 - MU).pow(2).sum(dim=1, keepdim=True)
    expected = -((1 - ab) * ab * m2 / v**2 + 2 * (ab * S * S / v) ** 2).mean(dim=1)
    est = r_elbo(EpsDenoiser(gaussian_eps(MU, S, sched), sched), x0, sched, num_timesteps=32,
                 generator=torch.Generator().manual_seed(11))
    diff = est - expected
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(x0))
    assert bool((est <= 0).all())


def test_elbo_wrapper_and_bad_input() -> None:
    cfg = EDMConfig()
    den = gaussian_denoiser(MU, S)
    x0 = _gaussian_points(8, 12)
    a = elbo(den, x0, cfg, num_sigmas=8, generator=torch.Generator().manual_seed(0))
    b = elbo_terms(den, x0, cfg, num_sigmas=8, generator=torch.Generator().manual_seed(0)).elbo
    assert a.shape == (8,) and a.dtype == torch.float64 and torch.equal(a, b)
    with pytest.raises(ValueError, match="num_sigmas"):
        elbo(den, x0, cfg, num_sigmas=7)
    with pytest.raises(ValueError, match="x0"):
        elbo(den, x0[0], cfg)
    with pytest.raises(ValueError, match="shape"):
        elbo(lambda x, s: x[:, :1], x0, cfg, num_sigmas=4)
