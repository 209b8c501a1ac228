"""Exact PF-ODE log-likelihood and the exact divergence, against Gaussian closed forms."""

import math

import pytest
import torch

from genneg.diffusion import EDMConfig, EDMPrecond
from genneg.metrics import denoiser_divergence, gaussian_denoiser, gaussian_log_density, pf_ode_log_likelihood
from genneg.models import ResidualMLP, ResidualMLPConfig


@pytest.mark.parametrize("d", [1, 2, 3])
def test_pf_ode_matches_gaussian_density(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    mu = torch.linspace(-0.5, 0.8, d, dtype=torch.float64)
    s, cfg = 0.7, EDMConfig(sigma_min=1e-3, sigma_max=1e3, sigma_data=0.5)
    x0 = mu + 1.5 * s * torch.randn(300, d, generator=g, dtype=torch.float64)  # includes tail points
    ll = pf_ode_log_likelihood(gaussian_denoiser(mu, s), x0, cfg, num_steps=64)
    exact = gaussian_log_density(x0, mu, s * s + cfg.sigma_min**2)
    # residual: the N(0, σ_max²) prior against the true N(μ, s² + σ_max²) (~|μ| |x| / σ_max ~ 1e-3)
    # plus Heun's error (below 1e-4 once the prior is exact: next test)
    assert (ll - exact).abs().max() < 5e-3


def test_pf_ode_exact_prior_removes_residual() -> None:
    # μ = 0 and the exact prior N(0, s² + σ_max²): only the integrator's error remains
    g = torch.Generator().manual_seed(5)
    mu, s, cfg = torch.zeros(2, dtype=torch.float64), 1.3, EDMConfig(2e-3, 80.0, 1.0)
    x0 = s * torch.randn(200, 2, generator=g, dtype=torch.float64)
    ll = pf_ode_log_likelihood(gaussian_denoiser(mu, s), x0, cfg, num_steps=128,
                               prior_std=math.sqrt(s * s + 80.0**2))
    exact = gaussian_log_density(x0, mu, s * s + cfg.sigma_min**2)
    assert (ll - exact).abs().max() < 1e-4


def test_batching_does_not_change_result() -> None:
    g = torch.Generator().manual_seed(6)
    mu = torch.tensor([0.2, -0.1], dtype=torch.float64)
    x0 = torch.randn(50, 2, generator=g, dtype=torch.float64)
    cfg = EDMConfig(0.01, 50.0, 0.5)
    den = gaussian_denoiser(mu, 0.9)
    a = pf_ode_log_likelihood(den, x0, cfg, num_steps=16)
    b = pf_ode_log_likelihood(den, x0, cfg, num_steps=16, batch_size=7)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_divergence_is_trace_of_jacobian() -> None:
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    net = ResidualMLP(ResidualMLPConfig(dim_in=3, dim_out=3, hidden=32, num_blocks=1, embedding_dim=16))
    den = EDMPrecond(net, sigma_data=0.5).double()
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 30.0], dtype=torch.float64)
    out, div = denoiser_divergence(den, x, sigma)
    torch.testing.assert_close(out, den(x, sigma))
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda xi, i=i: den(xi[None], sigma[i:i + 1])[0], x[i])
        assert div[i].item() == pytest.approx(torch.trace(jac).item(), rel=1e-5, abs=1e-8)
    # linear denoiser D = A x: divergence trace(A) for every sample
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    _, div_lin = denoiser_divergence(lambda x, s: x @ A.T, x, sigma)
    torch.testing.assert_close(div_lin, torch.full((5,), torch.trace(A).item(), dtype=torch.float64))


def test_bad_input() -> None:
    den = gaussian_denoiser(torch.zeros(2, dtype=torch.float64), 1.0)
    cfg = EDMConfig()
    with pytest.raises(ValueError, match="x0"):
        pf_ode_log_likelihood(den, torch.zeros(2), cfg)
    with pytest.raises(TypeError, match="float"):
        pf_ode_log_likelihood(den, torch.zeros(2, 2, dtype=torch.int64), cfg)
    with pytest.raises(ValueError, match="prior_std"):
        pf_ode_log_likelihood(den, torch.zeros(2, 2), cfg, prior_std=0.0)
    with pytest.raises(ValueError, match="shape"):
        denoiser_divergence(lambda x, s: x[:, :1], torch.zeros(2, 2), torch.ones(2))
