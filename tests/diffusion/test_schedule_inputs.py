"""Every entry point that takes an explicit schedule refuses a malformed one with the same clear error.

The kind of fault: a NaN or infinite level (or an unsorted one) slipped past checks written as
``any(a <= b ...)``, which is False for NaN, and gave NaN samples or misleading errors downstream.
"""

from __future__ import annotations

import math

import pytest
import torch

from genneg.diffusion import SAMPLERS, check_sigmas, make_sigmas
from genneg.diffusion.fitted_schedule import (
    FittedSchedule,
    ScheduleFitConfig,
    fit_schedule,
    trajectory_error,
)
from genneg.pipeline.profiles import SamplingConfig
from genneg.planning import SamplerConfig

BAD = {
    "nan": [80.0, math.nan, 1.0, 0.0],
    "inf first": [math.inf, 5.0, 1.0, 0.0],
    "increasing": [1.0, 5.0, 0.5, 0.0],
    "repeated": [5.0, 5.0, 1.0, 0.0],
    "no final zero": [80.0, 5.0, 1.0, 0.5],
    "one level": [0.0],
    "2-D": [[80.0, 0.0]],
}


def _denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of N(0, I) data."""
    return x / (1 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def _fitted(levels: list) -> dict:
    good = [80.0, 1.0, 0.0]
    return {"sigmas": levels, "initial_sigmas": good, "error": 0.1, "initial_error": 0.2, "solver": "euler",
            "initial": "log_linear", "rho": 7.0, "evaluations": 1, "seconds": 0.0, "config": {}}


ENTRY_POINTS = {
    "check_sigmas": lambda levels: check_sigmas(levels),
    **{f"sampler {name}": (lambda levels, name=name: SAMPLERS[name](
        _denoiser, torch.randn(3, 2) * 80, torch.tensor(levels, dtype=torch.float64)))
       for name in sorted(SAMPLERS)},
    "trajectory_error": lambda levels: trajectory_error(
        _denoiser, "euler", torch.tensor(levels, dtype=torch.float64), torch.randn(4, 2),
        torch.randn(4, 2)),
    "FittedSchedule.from_dict": lambda levels: FittedSchedule.from_dict(_fitted(levels)),
    "SamplerConfig": lambda levels: SamplerConfig(num_parallel=4, sigmas=levels,
                                                  num_steps=max(1, len(levels) - 1)),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_schedule_is_refused(entry, case):
    with pytest.raises(ValueError, match=r"1-D|finite, strictly decreasing and end in 0"):
        ENTRY_POINTS[entry](BAD[case])


def test_a_good_schedule_passes_every_entry_point():
    levels = [float(s) for s in make_sigmas("log_linear", 4, 0.002, 80.0)]
    assert check_sigmas(torch.tensor(levels, dtype=torch.float64)) == levels
    config = SamplerConfig(num_parallel=4, sigmas=levels, num_steps=4)
    assert config.sigmas == tuple(levels)


def test_sampler_config_takes_a_fitted_schedule_and_names_the_step_count():
    fitted = FittedSchedule.from_dict(_fitted([80.0, 1.0, 0.0]))
    assert SamplerConfig(num_parallel=4, sigmas=fitted, num_steps=2).sigmas == (80.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="pass num_steps=2"):
        SamplerConfig(num_parallel=4, sigmas=fitted, num_steps=5)


@pytest.mark.parametrize("sigma_max", [math.inf, math.nan])
def test_an_infinite_range_is_refused_before_any_work(sigma_max):
    with pytest.raises(ValueError, match=r"sigma_min < sigma_max < inf"):
        make_sigmas("log_linear", 4, 0.002, sigma_max)
    with pytest.raises(ValueError, match=r"must be finite and > 0"):
        SamplingConfig(sigma_max=sigma_max)


SMALL_FIT = ScheduleFitConfig(num_samples=16, reference_steps=8, sweeps=1, evaluations_per_knot=2)


def test_fit_refuses_a_denoiser_without_finite_solutions():
    def broken(x: torch.Tensor, sigma: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return x * math.nan

    with pytest.raises(ValueError, match="non-finite values in 16 of 16 samples"):
        fit_schedule(broken, "dpmpp_2m", 4, sample_shape=(2,), sigma_min=0.002, sigma_max=80.0,
                     config=SMALL_FIT)


@pytest.mark.parametrize("mask", [torch.ones(3, dtype=torch.bool), torch.ones(16, 2)])
def test_fit_refuses_a_mask_of_the_wrong_shape_or_dtype(mask):
    with pytest.raises(ValueError, match=r"mask must be bool and broadcastable to \(16, 2\)"):
        fit_schedule(_denoiser, "euler", 4, sample_shape=(2,), sigma_min=0.002, sigma_max=80.0,
                     config=SMALL_FIT, mask=mask)
