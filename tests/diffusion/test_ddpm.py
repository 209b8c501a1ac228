"""DDPM schedules, loss, the VE denoiser adapter and timestep selection."""

import math

import pytest
import torch

from genneg.diffusion import (
    DDPMConfig,
    DDPMSchedule,
    EpsDenoiser,
    ddpm_loss,
    ddpm_timesteps,
    heun_sample,
    make_sigmas,
)
from genneg.metrics import gaussian_denoiser, gaussian_eps

MU = torch.tensor([0.4, -1.1], dtype=torch.float64)
S = 0.8


def test_linear_schedule_formulas() -> None:
    cfg = DDPMConfig(num_steps=50, beta_start=1e-3, beta_end=0.05)
    sched = DDPMSchedule(cfg)
    assert sched.betas.dtype == torch.float64 and sched.betas.shape == (50,)
    assert sched.betas[0].item() == pytest.approx(1e-3) and sched.betas[-1].item() == pytest.approx(0.05)
    expected = [math.prod(1 - b for b in sched.betas[: t + 1].tolist()) for t in range(50)]
    torch.testing.assert_close(sched.alphas_cumprod, torch.tensor(expected, dtype=torch.float64))
    t = torch.tensor([0, 7, 49])
    ab = sched.alphas_cumprod[t]
    torch.testing.assert_close(sched.sigma_of_t(t), torch.sqrt((1 - ab) / ab))


def test_cosine_schedule_formula() -> None:
    T, s = 100, 0.008
    sched = DDPMSchedule(DDPMConfig(num_steps=T, schedule="cosine"))

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # ᾱ_t = f(t+1)/f(0) wherever β was not clipped (all but the very last steps)
    unclipped = (sched.betas < 0.999).nonzero().flatten().tolist()
    assert len(unclipped) >= T - 2
    for t in unclipped[:-1]:
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())


def test_t_of_sigma_round_trip_and_nearest() -> None:
    sched = DDPMSchedule(DDPMConfig(num_steps=300))
    assert torch.equal(sched.t_of_sigma(sched.sigmas), torch.arange(300))
    # geometric midpoints slightly above/below go to the nearer level
    mid = torch.sqrt(sched.sigmas[10] * sched.sigmas[11])
    assert sched.t_of_sigma(mid * 0.999).item() == 10 and sched.t_of_sigma(mid * 1.001).item() == 11
    assert sched.t_of_sigma(torch.tensor([1e-9, 1e9])).tolist() == [0, 299]
    with pytest.raises(ValueError, match="sigma > 0"):
        sched.t_of_sigma(torch.tensor([0.0]))


def test_add_noise_and_timestep_checks() -> None:
    sched = DDPMSchedule(DDPMConfig(num_steps=10))
    x0, eps = torch.ones(2, 3, dtype=torch.float64), torch.full((2, 3), 2.0, dtype=torch.float64)
    t = torch.tensor([0, 9])
    ab = sched.alphas_cumprod[t][:, None]
    torch.testing.assert_close(sched.add_noise(x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    with pytest.raises(ValueError, match="timesteps"):
        sched.sigma_of_t(torch.tensor([10]))
    with pytest.raises(TypeError, match="integers"):
        sched.sigma_of_t(torch.tensor([1.0]))


def test_ddpm_loss_of_exact_eps() -> None:
    # E||E[ε|x_t] - ε||² = d Var(ε | x_t) = d ᾱ s² / (ᾱ s² + 1 - ᾱ), averaged over uniform t
    sched = DDPMSchedule(DDPMConfig(num_steps=200))
    ab = sched.alphas_cumprod
    expected = float((2 * ab * S * S / (ab * S * S + 1 - ab)).mean())
    g = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(40_000, 2, generator=g, dtype=torch.float64)
    loss = ddpm_loss(gaussian_eps(MU, S, sched), x0, sched, generator=g).item()
    # per-sample loss std <~ 2 (χ²_2-like times <= 1): std of the mean over 40k <= 0.01
    assert loss == pytest.approx(expected, abs=0.04)


def test_eps_denoiser_is_exact_on_schedule_levels() -> None:
    sched = DDPMSchedule(DDPMConfig(num_steps=400, schedule="cosine"))
    den = EpsDenoiser(gaussian_eps(MU, S, sched), sched)
    exact = gaussian_denoiser(MU, S)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 50, 200, 399])
    sigma = sched.sigmas[t]
    x = MU + torch.sqrt(S * S + sigma[:, None] ** 2) * torch.randn(4, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(den(x, sigma), exact(x, sigma), rtol=1e-9, atol=1e-9)


def test_eps_denoiser_drives_heun_sampler() -> None:
    # an ε-model, adapted, samples its data with the EDM Heun sampler on its own σ range
    sched = DDPMSchedule(DDPMConfig(num_steps=1000))
    den = EpsDenoiser(gaussian_eps(MU, S, sched), sched)
    smin, smax = float(sched.sigmas[0]), float(sched.sigmas[-1])
    g = torch.Generator().manual_seed(2)
    x_T = smax * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    x0 = heun_sample(den, x_T, make_sigmas("log_linear", 48, smin, smax))
    # rounding σ to the nearest of 1000 levels (spacing < 1.3% in σ) shifts D slightly; MC std of
    # the mean 0.013, of the std 0.009
    torch.testing.assert_close(x0.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(x0.std(0), torch.full((2,), S, dtype=torch.float64), atol=0.04, rtol=0)


def test_ddpm_timesteps() -> None:
    sched = DDPMSchedule(DDPMConfig(num_steps=100))
    assert torch.equal(ddpm_timesteps(sched), torch.arange(99, -1, -1))
    t = ddpm_timesteps(sched, 10)
    assert t[0].item() == 99 and t[-1].item() == 0 and t.numel() == 10
    assert bool((t[1:] < t[:-1]).all())
    with pytest.raises(ValueError, match="num_steps"):
        ddpm_timesteps(sched, 101)


def test_ddpm_config_validation() -> None:
    with pytest.raises(ValueError, match="schedule"):
        DDPMConfig(schedule="sigmoid")
    with pytest.raises(ValueError, match="beta_start"):
        DDPMConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="num_steps"):
        DDPMConfig(num_steps=0)
