"""EDM preconditioning, loss weight, loss and noise-level sampling against their formulas; schedules."""

import math

import pytest
import torch
from torch import nn

from genneg.diffusion import (
    EDMConfig,
    EDMPrecond,
    edm_loss,
    edm_loss_weight,
    edm_preconditioning,
    karras_sigmas,
    log_linear_sigmas,
    make_sigmas,
    sample_sigma_log_uniform,
)

SIGMAS = torch.tensor([0.002, 0.05, 0.3, 1.0, 7.5, 80.0], dtype=torch.float64)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_preconditioning_matches_formulas(sigma_data: float) -> None:
    c_skip, c_out, c_in, c_noise = edm_preconditioning(SIGMAS, sigma_data)
    for i, s in enumerate(SIGMAS.tolist()):
        # float64 in, float64 out: agreement to rounding
        assert c_skip[i].item() == pytest.approx(sigma_data**2 / (s**2 + sigma_data**2), rel=1e-14)
        assert c_out[i].item() == pytest.approx(s * sigma_data / math.sqrt(s**2 + sigma_data**2), rel=1e-14)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sigma_data**2), rel=1e-14)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-14)
    # EDM's design identities: unit-variance network input, unit effective training weight
    torch.testing.assert_close(c_in**2 * (SIGMAS**2 + sigma_data**2), torch.ones_like(SIGMAS))
    torch.testing.assert_close(edm_loss_weight(SIGMAS, sigma_data) * c_out**2, torch.ones_like(SIGMAS))


def test_loss_weight_formula() -> None:
    lam = edm_loss_weight(SIGMAS, 0.5)
    torch.testing.assert_close(lam, (SIGMAS**2 + 0.25) / (SIGMAS * 0.5) ** 2, rtol=1e-14, atol=0)


class _Recorder(nn.Module):
    """Raw network that records its inputs and returns a fixed multiple of them."""

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.x_in, self.c_noise = x, c_noise
        return 2.0 * x + c_noise[:, None]


def test_precond_wraps_network_as_specified() -> None:
    net = _Recorder()
    den = EDMPrecond(net, sigma_data=0.7)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.1, 1.0, 10.0, 50.0])
    out = den(x, sigma)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, 0.7)
    torch.testing.assert_close(net.x_in, c_in[:, None] * x)
    torch.testing.assert_close(net.c_noise, c_noise)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None] * (2.0 * c_in[:, None] * x
                                                                          + c_noise[:, None]))
    # a scalar sigma is broadcast to the batch
    torch.testing.assert_close(den(x, 0.3), den(x, torch.full((5,), 0.3)))
    with pytest.raises(ValueError, match="sigma"):
        den(x, torch.ones(4))


def test_edm_loss_of_optimal_denoiser_is_dimension() -> None:
    # For data N(0, sigma_data² I) the optimal denoiser is D = c_skip x, with error variance
    # d σ² σ_d² / (σ² + σ_d²) = d / λ(σ): the weighted loss is exactly d at every σ.
    sd, d, n = 0.8, 3, 40_000
    g = torch.Generator().manual_seed(1)
    x0 = sd * torch.randn(n, d, generator=g, dtype=torch.float64)

    def optimal(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * (sd**2 / (sigma**2 + sd**2))[:, None].to(x.dtype)

    loss = edm_loss(optimal, x0, EDMConfig(0.002, 80.0, sd), generator=g).item()
    # per-sample loss is (σ_d² / v) χ²_d-like with std sqrt(2d); 40k samples -> std of mean ~0.012
    assert loss == pytest.approx(d, abs=0.06)


def test_log_uniform_sigma() -> None:
    g = torch.Generator().manual_seed(2)
    s = sample_sigma_log_uniform(50_000, 0.002, 80.0, generator=g)
    assert s.shape == (50_000,) and s.dtype == torch.float32
    assert s.min() >= 0.002 * (1 - 1e-6) and s.max() <= 80.0 * (1 + 1e-6)
    u = (torch.log(s.double()) - math.log(0.002)) / math.log(80.0 / 0.002)
    # ln σ uniform: each decile holds 10% (binomial std 0.13% at n = 50k)
    counts = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.006


def test_edm_config_validation() -> None:
    with pytest.raises(ValueError, match="sigma_min"):
        EDMConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMConfig(sigma_data=0.0)


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_log_linear_schedule(n: int) -> None:
    s = log_linear_sigmas(n, 0.002, 80.0)
    assert s.shape == (n + 1,) and s.dtype == torch.float64
    assert s[0].item() == pytest.approx(80.0, rel=1e-14) and s[-1].item() == 0.0
    if n > 1:
        assert s[n - 1].item() == pytest.approx(0.002, rel=1e-12)
        ratios = s[1:n] / s[: n - 1]  # geometric spacing: constant ratio
        torch.testing.assert_close(ratios, torch.full_like(ratios, (0.002 / 80.0) ** (1 / (n - 1))))


def test_karras_schedule_formula() -> None:
    n, rho, lo, hi = 9, 7.0, 0.002, 80.0
    s = karras_sigmas(n, lo, hi, rho)
    a, b = hi ** (1 / rho), lo ** (1 / rho)
    expected = [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)]
    torch.testing.assert_close(s[:-1], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert s[-1].item() == 0.0
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())


def test_make_sigmas_dispatch_and_errors() -> None:
    torch.testing.assert_close(make_sigmas("log_linear", 5, 0.01, 10.0), log_linear_sigmas(5, 0.01, 10.0))
    torch.testing.assert_close(make_sigmas("karras", 5, 0.01, 10.0, rho=3.0),
                               karras_sigmas(5, 0.01, 10.0, 3.0))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_sigmas("cosine", 5, 0.01, 10.0)
    with pytest.raises(ValueError, match="num_steps"):
        log_linear_sigmas(0, 0.01, 10.0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(4, 10.0, 0.01)
