"""DDPM's ancestral sampler is the Euler-ancestral (η = 1) step of an ε-network's EpsDenoiser on the
schedule's levels: one step against the closed form of Ho et al. (same noise), whole chains against the
closed-form chain, and a trained tiny model's samples against the closed-form chain's by distribution."""

import math

import pytest
import torch
from torch import nn

from genneg.diffusion import (
    DDPMConfig,
    DDPMSchedule,
    EpsDenoiser,
    ancestral_levels,
    as_denoiser,
    ddpm_loss,
    ddpm_timesteps,
    euler_ancestral_sample,
    euler_ancestral_step,
)
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig


class TinyEps(nn.Module):
    """A small ε-network ``eps(x_t (B, 2), t (B,) int64)``."""

    parameterisation = "eps"

    def __init__(self, num_steps: int, hidden: int = 64) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.net = ResidualMLP(ResidualMLPConfig(dim_in=2, dim_out=2, hidden=hidden, num_blocks=1,
                                                 embedding_dim=32))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t.to(x_t.dtype) / self.num_steps)


def closed_form_step(eps: torch.Tensor, x_t: torch.Tensor, ab_t: float, ab_s: float,
                     noise: torch.Tensor) -> torch.Tensor:
    """Ho et al.'s posterior step ``x_t -> x_s`` in VP coordinates (the sub-chain's β̃), written out."""
    x0_hat = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    if ab_s >= 1.0:
        return x0_hat
    alpha = ab_t / ab_s
    beta = 1 - alpha
    c0 = math.sqrt(ab_s) * beta / (1 - ab_t)
    ct = math.sqrt(alpha) * (1 - ab_s) / (1 - ab_t)
    std = math.sqrt(beta * (1 - ab_s) / (1 - ab_t))
    return c0 * x0_hat + ct * x_t + std * noise


@torch.no_grad()
def closed_form_chain(eps_model: nn.Module, x_T: torch.Tensor, schedule: DDPMSchedule, num_steps: int,
                      generator: torch.Generator) -> torch.Tensor:
    """The closed-form ancestral chain in VP coordinates (noise drawn after each model call but the last)."""
    steps = ddpm_timesteps(schedule, num_steps).tolist()
    abars = schedule.alphas_cumprod.tolist()
    x = x_T
    for i, t in enumerate(steps):
        ab_s = abars[steps[i + 1]] if i + 1 < len(steps) else 1.0
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.int64))
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) if ab_s < 1.0 else None
        x = closed_form_step(eps, x, abars[t], ab_s, noise)
    return x


SCHEDULE = DDPMSchedule(DDPMConfig(num_steps=100, beta_start=1e-3, beta_end=0.15))


@pytest.mark.parametrize(("t", "s"), [(99, 98), (60, 41), (5, 0), (0, None), (99, None)])
def test_one_step_equals_ddpm_closed_form(t: int, s: int | None) -> None:
    torch.manual_seed(0)
    eps_model = TinyEps(SCHEDULE.num_steps).double()
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(64, 2, generator=g, dtype=torch.float64) * 1.3
    noise = torch.randn(64, 2, generator=g, dtype=torch.float64)
    abars = SCHEDULE.alphas_cumprod.tolist()
    ab_t, ab_s = abars[t], (abars[s] if s is not None else 1.0)
    expected = closed_form_step(eps_model(x_t, torch.full((64,), t)), x_t, ab_t, ab_s, noise)
    sigma, sigma_next = float(SCHEDULE.sigmas[t]), (float(SCHEDULE.sigmas[s]) if s is not None else 0.0)
    x_ve = x_t / math.sqrt(ab_t)  # VE coordinates of the same point
    got_ve = euler_ancestral_step(EpsDenoiser(eps_model, SCHEDULE), x_ve, sigma, sigma_next, noise)
    # float64 throughout: the two are one formula rearranged, equal to rounding
    torch.testing.assert_close(got_ve * math.sqrt(ab_s), expected, rtol=1e-10, atol=1e-10)
    down, up = ancestral_levels(sigma, sigma_next)
    assert down * down + up * up == pytest.approx(sigma_next * sigma_next, rel=1e-12, abs=1e-300)


def test_whole_chain_equals_closed_form_chain_float32() -> None:
    """Same generator, same draws: the σ-form chain is the closed-form chain to float32 rounding."""
    torch.manual_seed(0)
    eps_model = TinyEps(SCHEDULE.num_steps)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(256, 2, generator=g)
    expected = closed_form_chain(eps_model, x_T, SCHEDULE, 30, torch.Generator().manual_seed(3))
    sigmas = SCHEDULE.sampling_sigmas(30)
    x_ve = x_T * math.sqrt(1 + float(sigmas[0]) ** 2)
    got = euler_ancestral_sample(as_denoiser(eps_model, SCHEDULE), x_ve, sigmas,
                                 generator=torch.Generator().manual_seed(3))
    # float32 state: x_VE reaches |x| ~ σ_T ≈ 45 here, so absolute rounding ~1e-5 per step
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    start = SCHEDULE.initial_noise((256, 2), generator=torch.Generator().manual_seed(2), num_steps=30)
    torch.testing.assert_close(start, x_ve)  # the same draw, scaled to VE coordinates


def _mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two Gaussian blobs at (±1, 0.5·sign), std 0.25."""
    side = torch.randint(2, (n, 1), generator=generator).to(torch.float32) * 2 - 1
    return torch.cat([side, 0.5 * side], dim=1) + 0.25 * torch.randn(n, 2, generator=generator)


def test_trained_tiny_model_keeps_its_statistics() -> None:
    """A trained ε-network sampled through the σ form (EpsDenoiser, Euler-ancestral) and through the
    closed-form ε chain with independent noise: the same distribution (means, stds, mode shares)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    data = _mixture(2048, g)
    model = TinyEps(SCHEDULE.num_steps)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(500):
        loss = ddpm_loss(model, data[torch.randint(2048, (256,), generator=g)], SCHEDULE, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    n = 4000
    old = closed_form_chain(model, torch.randn(n, 2, generator=g), SCHEDULE, 50, g)
    new = euler_ancestral_sample(as_denoiser(model, SCHEDULE),
                                 SCHEDULE.initial_noise((n, 2), generator=g, num_steps=50),
                                 SCHEDULE.sampling_sigmas(50), generator=g)
    # two independent samples of n: the std error of a difference of means is sqrt(2/n)·std <= 0.025
    # (std <= 1.1 here); of stds ~0.018; of a share ~0.011. 4 standard errors.
    torch.testing.assert_close(new.mean(0), old.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(new.std(0), old.std(0), atol=0.075, rtol=0)
    share_new, share_old = float((new[:, 0] > 0).float().mean()), float((old[:, 0] > 0).float().mean())
    assert abs(share_new - share_old) < 0.045
    # and the model learned the data (so the comparison is of a real distribution, not of noise)
    assert 0.35 < share_new < 0.65 and float(new[:, 0].abs().mean()) > 0.6
