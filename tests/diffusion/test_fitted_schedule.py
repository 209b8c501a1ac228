"""Schedules fitted by trajectory matching (``genneg.diffusion.fitted_schedule``): on Gaussian data with the
exact denoiser, where the PF-ODE solution and, for one free level, the optimum are known in closed form."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genneg.diffusion import (
    SAMPLERS,
    FittedSchedule,
    ScheduleFitConfig,
    fit_schedule,
    make_sigmas,
    trajectory_error,
)
from genneg.metrics import gaussian_denoiser

MU = torch.tensor([0.4, -0.8], dtype=torch.float64)
S = 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
DENOISER = gaussian_denoiser(MU, S)


def _exact_end(x_T: torch.Tensor) -> torch.Tensor:
    """The PF-ODE of N(μ, s² I) solved exactly from σ_max to 0."""
    return MU + (x_T - MU) * S / math.sqrt(S * S + SIGMA_MAX**2)


def _fit(solver: str, num_steps: int, **options: object) -> FittedSchedule:
    config = ScheduleFitConfig(num_samples=64, reference_steps=256, **options)
    return fit_schedule(DENOISER, solver, num_steps, sample_shape=(2,), sigma_min=SIGMA_MIN,
                        sigma_max=SIGMA_MAX, config=config, dtype=torch.float64)


@pytest.mark.parametrize("solver", sorted(SAMPLERS))
@pytest.mark.parametrize("free_last_level", [True, False])
def test_fit_keeps_the_endpoints_and_never_loses(solver: str, free_last_level: bool) -> None:
    fit = _fit(solver, 6, free_last_level=free_last_level)
    levels = fit.sigmas.tolist()
    assert fit.sigmas.dtype == torch.float64 and len(levels) == 7 and fit.num_steps == 6
    assert levels[0] == SIGMA_MAX and levels[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(levels)), levels
    assert levels[-2] >= SIGMA_MIN and (free_last_level or levels[-2] == SIGMA_MIN)
    assert fit.initial_sigmas.tolist() == pytest.approx(
        [SIGMA_MAX * (SIGMA_MIN / SIGMA_MAX) ** (i / 5) for i in range(6)] + [0.0], rel=1e-12)
    # moves are kept only when they lower the error: the fitted error is at most the initial one, and on
    # this problem (log-linear levels waste calls at tiny sigma) strictly below it
    assert fit.error < fit.initial_error
    # the reported error is the trajectory error of the returned levels against the reference solution
    # (256 Heun levels); against the exact solution of the ODE it differs by at most the reference's own
    # error (triangle inequality, sample by sample)
    noise = torch.randn((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact_end = _exact_end(noise * SIGMA_MAX)
    reference = SAMPLERS["heun"](DENOISER, noise * SIGMA_MAX, make_sigmas("log_linear", 256, SIGMA_MIN,
                                                                        SIGMA_MAX))
    assert trajectory_error(DENOISER, solver, fit.sigmas, noise, reference) == pytest.approx(fit.error,
                                                                                             rel=1e-12)
    reference_error = float((reference - exact_end).norm(dim=1).mean())
    exact = trajectory_error(DENOISER, solver, fit.sigmas, noise, exact_end)
    assert abs(exact - fit.error) <= reference_error * (1 + 1e-9)


def test_one_free_level_reaches_the_closed_form_optimum() -> None:
    """Euler with 3 levels (σ_max, s, σ_min) and the exact denoiser maps ``x_T - μ`` linearly:
    ``x_K - μ = a(s) (x_T - μ)``, so the trajectory error is ``|a(s) - a*| mean ||x_T - μ||`` with
    ``a* = s_data / sqrt(s_data² + σ_max²)``. The fit must find the minimum of a dense scan of ``a(s)``."""

    def factor(sigma: float, sigma_next: float) -> float:  # one Euler step of the Gaussian's PF-ODE
        ratio = sigma_next / sigma
        return ratio + (1 - ratio) * S * S / (S * S + sigma * sigma)

    def a(s: float) -> float:
        return factor(SIGMA_MAX, s) * factor(s, SIGMA_MIN) * S * S / (S * S + SIGMA_MIN**2)

    a_star = S / math.sqrt(S * S + SIGMA_MAX**2)
    grid = torch.logspace(math.log10(SIGMA_MIN), math.log10(SIGMA_MAX), 20001, dtype=torch.float64)[1:-1]
    scan = [abs(a(float(s)) - a_star) for s in grid]
    best = min(range(len(scan)), key=scan.__getitem__)
    noise = torch.randn((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean_norm = float((noise * SIGMA_MAX - MU).norm(dim=1).mean())
    fit = fit_schedule(DENOISER, "euler", 3, sample_shape=(2,), sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                       config=ScheduleFitConfig(num_samples=64, free_last_level=False,
                                                evaluations_per_knot=30),
                       dtype=torch.float64, reference=_exact_end(noise * SIGMA_MAX))
    s_fit = float(fit.sigmas[1])
    assert fit.error == pytest.approx(abs(a(s_fit) - a_star) * mean_norm, rel=1e-9)
    # the golden-section search lands on the scan's optimum to within a grid cell or two (log spacing
    # 5.3e-4 in log10) and its error is no larger than the scan's up to that resolution
    assert abs(math.log10(s_fit) - math.log10(float(grid[best]))) < 2e-3, (s_fit, float(grid[best]))
    assert fit.error <= scan[best] * mean_norm * 1.01 + 1e-12
    assert fit.error <= fit.initial_error


def test_json_round_trip_and_sampler_use(tmp_path) -> None:
    fit = _fit("dpmpp_2m", 4)
    path = fit.save(tmp_path / "schedule.json")
    again = FittedSchedule.load(path)
    assert torch.equal(again.sigmas, fit.sigmas) and again.config == fit.config and again.error == fit.error
    x = SAMPLERS["dpmpp_2m"](DENOISER, torch.zeros(3, 2, dtype=torch.float64) + 5.0, again.sigmas)
    assert x.shape == (3, 2)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        _fit("euler", 0)
    with pytest.raises(ValueError, match="sigma_min"):
        fit_schedule(DENOISER, "euler", 4, sample_shape=(2,), sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="unknown sampler"):
        _fit("rk45", 4)
    with pytest.raises(ValueError, match="reference"):
        ScheduleFitConfig(reference_solver="rk45")
    with pytest.raises(ValueError, match="shape"):
        fit_schedule(DENOISER, "euler", 4, sample_shape=(2,), sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                     config=ScheduleFitConfig(num_samples=8), reference=torch.zeros(7, 2))
    with pytest.raises(ValueError, match="decreasing"):
        trajectory_error(DENOISER, "euler", torch.tensor([1.0, 2.0, 0.0]), torch.zeros(2, 2),
                         torch.zeros(2, 2))


def test_mask_counts_only_the_selected_entries() -> None:
    """``mask`` leaves out entries (a scene's padding slots): all out gives 0, one coordinate gives the
    mean absolute error of that coordinate."""
    noise = torch.randn((16, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas = make_sigmas("log_linear", 5, SIGMA_MIN, SIGMA_MAX)
    reference = _exact_end(noise * float(sigmas[0]))
    x = SAMPLERS["euler"](DENOISER, noise * float(sigmas[0]), sigmas)
    none = torch.zeros(1, 2, dtype=torch.bool)
    first = torch.tensor([[True, False]])
    assert trajectory_error(DENOISER, "euler", sigmas, noise, reference, mask=none) == 0.0
    assert trajectory_error(DENOISER, "euler", sigmas, noise, reference, mask=first) == pytest.approx(
        float((x - reference)[:, 0].abs().mean()), rel=1e-12)
