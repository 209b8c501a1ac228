"""Samplers with the exact denoiser / ε-model of Gaussian data land on the right distribution."""

import math

import pytest
import torch

from genneg.diffusion import (
    DDPMConfig,
    DDPMSchedule,
    EpsDenoiser,
    euler_ancestral_sample,
    euler_step,
    heun_sample,
    heun_step,
    make_sigmas,
)
from genneg.metrics import gaussian_denoiser, gaussian_eps

MU = torch.tensor([0.7, -0.3, 1.2], dtype=torch.float64)
S = 0.6


def _exact_flow(x_T: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """PF-ODE solution from sigma_max to 0 for N(μ, s² I): x0 = μ + (x_T - μ) s / sqrt(s² + σ_max²)."""
    return MU + (x_T - MU) * S / math.sqrt(S * S + sigma_max**2)


@pytest.mark.parametrize("kind", ["log_linear", "karras"])
def test_heun_exact_denoiser_lands_on_gaussian(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    n, smax = 8000, 80.0
    x_T = smax * torch.randn(n, 3, generator=g, dtype=torch.float64)
    x0 = heun_sample(gaussian_denoiser(MU, S), x_T, make_sigmas(kind, 64, 0.002, smax))
    # trajectory accuracy: 64 Heun steps follow the exact flow to < 2% of s
    assert (x0 - _exact_flow(x_T, smax)).abs().max() < 0.02 * S
    # moments: MC std of the mean s/sqrt(n) = 0.0067, of the std s/sqrt(2n) = 0.0047; starting from
    # N(0, σ_max²) instead of N(μ, s² + σ_max²) shifts the mean by μ s / σ_max <= 0.009
    torch.testing.assert_close(x0.mean(0), MU, atol=0.035, rtol=0)
    torch.testing.assert_close(x0.std(0), torch.full((3,), S, dtype=torch.float64), atol=0.025, rtol=0)


def test_heun_is_second_order() -> None:
    g = torch.Generator().manual_seed(1)
    x_T = 10.0 * torch.randn(256, 3, generator=g, dtype=torch.float64)
    den = gaussian_denoiser(MU, S)
    # end at sigma_min (no final Euler step): compare with the exact flow to sigma_min
    def run(n: int) -> float:
        sig = make_sigmas("log_linear", n, 0.05, 10.0)[:-1]
        x = x_T
        for a, b in zip(sig[:-1].tolist(), sig[1:].tolist()):
            x = heun_step(den, x, a, b)
        exact = MU + (x_T - MU) * math.sqrt((S * S + 0.05**2) / (S * S + 100.0))
        return float((x - exact).abs().max())

    e1, e2 = run(16), run(32)
    assert e1 / e2 > 3.3  # second order: halving the step divides the error by ~4 (Euler: ~2)


def test_heun_step_delegates_to_fused_step() -> None:
    class Fused:
        def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the generic path must not run when a fused step exists")

        def heun_step(self, x: torch.Tensor, s_cur: float, s_next: float) -> torch.Tensor:
            return x * (s_next + 1.0)

    x = torch.ones(2, 2)
    assert torch.equal(heun_step(Fused(), x, 1.0, 0.5), x * 1.5)


def test_last_step_is_euler_and_callback() -> None:
    den = gaussian_denoiser(MU, S)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(heun_step(den, x, 0.01, 0.0), euler_step(den, x, 0.01, 0.0))
    seen: list[tuple[int, float, float]] = []
    sig = make_sigmas("log_linear", 5, 0.01, 10.0)
    heun_sample(den, x * 10, sig, callback=lambda i, x_next, a, b: seen.append((i, a, b)))
    assert [i for i, _, _ in seen] == list(range(5))
    assert seen[-1][2] == 0.0 and seen[0][1] == pytest.approx(10.0)


def test_heun_rejects_bad_schedule() -> None:
    den = gaussian_denoiser(MU, S)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="decreasing"):
        heun_sample(den, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="end in 0"):
        heun_sample(den, x, torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_ancestral_exact_eps_lands_on_gaussian(schedule: str) -> None:
    """DDPM's ancestral sampler = Euler-ancestral (η = 1) on the schedule's levels, through EpsDenoiser."""
    sched = DDPMSchedule(DDPMConfig(num_steps=1000, schedule=schedule))
    g = torch.Generator().manual_seed(3)
    n = 6000
    sigmas = sched.sampling_sigmas()
    x_T = torch.randn(n, 3, generator=g, dtype=torch.float64) * math.sqrt(1 + float(sigmas[0]) ** 2)
    x0 = euler_ancestral_sample(EpsDenoiser(gaussian_eps(MU, S, sched), sched), x_T, sigmas, generator=g)
    # MC std of the mean 0.008, of the std 0.0055. The β̃ posterior variance ignores the uncertainty
    # of x̂0, which shrinks the std by ~1% with 1000 steps (measured 0.595 for s = 0.6).
    torch.testing.assert_close(x0.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(x0.std(0), torch.full((3,), S, dtype=torch.float64), atol=0.03, rtol=0)


def test_ancestral_sampler_is_seeded_and_strided() -> None:
    sched = DDPMSchedule(DDPMConfig(num_steps=200))
    den = EpsDenoiser(gaussian_eps(MU, S, sched), sched)
    sigmas = sched.sampling_sigmas(20)
    x_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    calls: list[tuple[float, float]] = []
    a = euler_ancestral_sample(den, x_T, sigmas, generator=torch.Generator().manual_seed(5),
                               callback=lambda i, x, s_cur, s_next: calls.append((s_cur, s_next)))
    b = euler_ancestral_sample(den, x_T, sigmas, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert len(calls) == 20 and calls[-1][1] == 0.0
    assert calls[0][0] == pytest.approx(float(sched.sigmas[-1]))
    # consecutive steps chain: each step starts at the level the previous one ended at
    assert all(calls[i][1] == pytest.approx(calls[i + 1][0]) for i in range(19))
    with pytest.raises(ValueError, match="eta"):
        euler_ancestral_sample(den, x_T, sigmas, eta=-1.0)
