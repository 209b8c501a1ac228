"""Few-step PF-ODE samplers (Euler, DPM-Solver++(2M), UniPC) against the exact flow of Gaussian data,
each other where they must coincide, and a stack of exact classifiers (guidance at every step).

One test body runs over every sampler of ``genneg.diffusion.SAMPLERS`` where the property is shared.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genneg.diffusion import SAMPLERS, dpmpp_2m_sample, euler_sample, get_sampler, make_sigmas, unipc_sample
from genneg.guidance import GuidedDenoiser
from genneg.metrics import gaussian_denoiser

MU = torch.tensor([0.7, -0.3, 1.2], dtype=torch.float64)
S = 0.6
SIGMA_MIN, SIGMA_MAX = 0.01, 20.0


def _exact(x_T: torch.Tensor) -> torch.Tensor:
    """Exact PF-ODE flow of N(μ, s² I) from σ_max to σ_min, then the final first-order step
    ``x0 = D(x; σ_min)`` that every sampler takes: the value a solver converges to."""
    at_min = MU + (x_T - MU) * math.sqrt((S * S + SIGMA_MIN**2) / (S * S + SIGMA_MAX**2))
    return MU + (at_min - MU) * S * S / (S * S + SIGMA_MIN**2)


def _error(name: str, n: int, **kwargs: object) -> float:
    x_T = SIGMA_MAX * torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = make_sigmas("log_linear", n, SIGMA_MIN, SIGMA_MAX)
    sampler = get_sampler(name)
    x0 = sampler(gaussian_denoiser(MU, S), x_T, sigmas, **kwargs)
    return float((x0 - _exact(x_T)).abs().max())


# Measured orders (log2 of the error ratio when the step count doubles, 32 -> 64 log-linear levels).
# Asymptotic orders: Euler 1, Heun 2, DPM-Solver++(2M) 2, UniPC-2M 3 (predictor 2 + corrector).
@pytest.mark.parametrize(("name", "order"), [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("unipc", 3)])
def test_order_of_convergence_on_gaussian(name: str, order: int) -> None:
    e1, e2 = _error(name, 32), _error(name, 64)
    measured = math.log2(e1 / e2)
    # the order is reached from above or below by a few tenths at these step counts (pre-asymptotic)
    assert measured > order - 0.3, f"{name}: measured order {measured:.2f} (errors {e1:.2e}, {e2:.2e})"


def test_few_step_error_ranking() -> None:
    """At planner step counts the multistep solvers beat Euler with as many denoiser calls and Heun with
    at most as many; the corrector beats the predictor alone once the steps are small enough."""
    # measured max errors (10 levels): Euler 0.43, Heun (5 levels, 9 calls) 3.1/0.97 at 4/6 levels,
    # DPM-Solver++(2M) 0.068, UniPC 0.075; 16 levels: DPM-Solver++(2M) 0.032, UniPC 0.021
    for n in (8, 10, 16):
        dpm, unipc = _error("dpmpp_2m", n), _error("unipc", n)
        assert max(dpm, unipc) < 0.3 * _error("euler", n), n
        assert max(dpm, unipc) < 0.3 * _error("heun", n // 2), n
    for n in (16, 32):
        assert _error("unipc", n) < 0.7 * _error("dpmpp_2m", n), n


def test_coincidences() -> None:
    """Where the methods must agree exactly (up to float64 rounding)."""
    den = gaussian_denoiser(MU, S)
    x_T = 5.0 * torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # one nonzero level: every multistep method is its first-order step, i.e. Euler (= DDIM)
    one = make_sigmas("log_linear", 1, SIGMA_MIN, 5.0)
    for name in ("dpmpp_2m", "unipc", "heun"):
        torch.testing.assert_close(get_sampler(name)(den, x_T, one), euler_sample(den, x_T, one),
                                   rtol=1e-12, atol=1e-12)
    sig = make_sigmas("karras", 9, SIGMA_MIN, 5.0)
    # UniP-2 without the corrector is DPM-Solver++(2M) on any schedule
    torch.testing.assert_close(unipc_sample(den, x_T, sig, use_corrector=False),
                               dpmpp_2m_sample(den, x_T, sig), rtol=1e-12, atol=1e-12)
    # order 1 without the corrector is Euler
    torch.testing.assert_close(unipc_sample(den, x_T, sig, order=1, use_corrector=False),
                               euler_sample(den, x_T, sig), rtol=1e-12, atol=1e-12)
    # a constant denoiser D = c: the data-prediction update is exact, every solver lands on c
    c = torch.tensor([0.3, -2.0, 1.0], dtype=torch.float64)

    def constant(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return c.expand_as(x)

    for name in SAMPLERS:
        torch.testing.assert_close(get_sampler(name)(constant, x_T, sig), c.expand_as(x_T))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_signature_cond_and_callback(name: str) -> None:
    """Every sampler passes ``cond`` to every call, reports each step and rejects a bad schedule."""
    seen: list[tuple[int, float, float]] = []
    calls: list[float] = []
    offset = torch.arange(4, dtype=torch.float64)[:, None]

    def conditioned(x: torch.Tensor, sigma: torch.Tensor, *, shift: torch.Tensor) -> torch.Tensor:
        assert shift.shape[0] == x.shape[0]
        calls.append(float(sigma[0]))
        return shift.expand_as(x)

    sig = make_sigmas("log_linear", 5, 0.01, 10.0)
    x = get_sampler(name)(conditioned, torch.zeros(4, 2, dtype=torch.float64), sig, cond={"shift": offset},
                          callback=lambda i, x_next, a, b: seen.append((i, a, b)))
    torch.testing.assert_close(x, offset.expand(4, 2))
    assert [i for i, _, _ in seen] == list(range(5))
    assert seen[0][1] == pytest.approx(10.0) and seen[-1][2] == 0.0
    assert len(calls) == (9 if name == "heun" else 5)
    with pytest.raises(ValueError, match="decreasing"):
        get_sampler(name)(conditioned, x, torch.tensor([1.0, 2.0, 0.0]), cond={"shift": offset})
    with pytest.raises(ValueError, match="end in 0"):
        get_sampler(name)(conditioned, x, torch.tensor([2.0, 1.0]), cond={"shift": offset})


def test_unknown_sampler_and_order() -> None:
    with pytest.raises(ValueError, match="dpmpp_2m"):
        get_sampler("dpm")
    with pytest.raises(ValueError, match="order"):
        unipc_sample(gaussian_denoiser(MU, S), torch.zeros(2, 3), make_sigmas("log_linear", 3, 0.1, 1.0),
                     order=4)


# ------------------------------------------------------------------------------------------------------
# stacked guidance: 1-D Gaussian data tilted twice by Gaussian "validity" factors


class _TiltClassifier(nn.Module):
    """Bayes-optimal ``c(x, σ) = P(valid | x_σ = x)`` for data ``N(m0, v0)`` (the model it was trained
    on) and ``P(valid | x0) = κ exp(-(x0 - m)² / (2 τ²))``: with the posterior ``x0 | x_σ = x`` ~
    ``N(a, w)``, ``a = (v0 x + σ² m0) / (v0 + σ²)``, ``w = v0 σ² / (v0 + σ²)``,
    ``c = κ sqrt(τ² / (w + τ²)) exp(-(a - m)² / (2 (w + τ²)))``. Returns the logit ``log c - log(1 - c)``,
    so that ``logsigmoid(logit) = log c`` exactly."""

    def __init__(self, m0: float, v0: float, m: float, tau: float, kappa: float = 0.5) -> None:
        super().__init__()
        self.m0, self.v0, self.m, self.tau2, self.kappa = m0, v0, m, tau * tau, kappa

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma[:, None].to(x.dtype) ** 2
        a = (self.v0 * x + s2 * self.m0) / (self.v0 + s2)
        w = self.v0 * s2 / (self.v0 + s2)
        log_c = (math.log(self.kappa) + 0.5 * torch.log(self.tau2 / (w + self.tau2))
                 - (a - self.m) ** 2 / (2 * (w + self.tau2)))
        return (log_c - torch.log(-torch.expm1(log_c)))[:, 0]


def _tilt(m0: float, v0: float, m: float, tau: float) -> tuple[float, float]:
    """``N(m0, v0) · exp(-(x - m)² / (2 τ²))`` normalised: ``(mean, variance)``."""
    v = 1.0 / (1.0 / v0 + 1.0 / tau**2)
    return v * (m0 / v0 + m / tau**2), v


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_stacked_guidance_at_every_step_lands_on_tilted_gaussian(name: str) -> None:
    """Theorem 3.1 twice: ``D_2 = D + σ² (∇ log c_1 + ∇ log c_2)`` with exact classifiers samples the
    twice-tilted Gaussian; the flow is affine in ``x_T``, so with the same noise the sampler's output is
    compared with the exact affine map of the target (mean and std of the pushed-forward noise)."""
    m0, v0 = 0.5, 1.0
    m1, v1 = _tilt(m0, v0, 2.0, 0.8)
    m2, v2 = _tilt(m1, v1, 0.0, 1.0)
    base = gaussian_denoiser(torch.tensor([m0], dtype=torch.float64), math.sqrt(v0))
    guided = GuidedDenoiser(base, [_TiltClassifier(m0, v0, 2.0, 0.8), _TiltClassifier(m1, v1, 0.0, 1.0)])
    x_T = SIGMA_MAX * torch.randn(4000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = m2 + (x_T - m2) * math.sqrt(v2 / (v2 + SIGMA_MAX**2))  # exact flow (the σ_min end: ~1e-4)

    def error(model: nn.Module, n: int) -> float:
        x0 = get_sampler(name)(model, x_T, make_sigmas("log_linear", n, SIGMA_MIN, SIGMA_MAX))
        return float((x0 - target).abs().max())

    # measured max errors, of a target std of 0.53: 10 levels 0.060 (dpmpp_2m) / 0.067 (unipc), 40 levels
    # 4.3e-3 / 8.5e-4 (Heun: 0.22 and 9.6e-3); the once-guided model is 0.74 away, the unguided one 2.4
    assert error(guided, 10) < 0.1
    assert error(guided, 40) < 0.01
    assert error(GuidedDenoiser(base, [_TiltClassifier(m0, v0, 2.0, 0.8)]), 10) > 0.5
