"""Issue 16, kind 9: every metric validates its numbers the same way: NaN, inf and out-of-range values
raise ValueError (a check written as ``x <= 0`` lets NaN through; the metrics test the good range)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genneg.metrics import (
    denoiser_divergence,
    gaussian_denoiser,
    gaussian_elbo,
    gaussian_log_density,
    mmd,
    num_parallel_samples,
    reduction,
    wilson_interval,
)

BAD = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("count,total", [(math.nan, 10), (3, math.nan), (math.inf, 10), (2.5, 10),
                                         (-1, 10), (11, 10), (0, 0), (np.array([1, np.nan]), 10)])
def test_wilson_interval_refuses_bad_counts(count, total) -> None:
    with pytest.raises(ValueError):
        wilson_interval(count, total)


def test_wilson_interval_refuses_non_numbers() -> None:
    with pytest.raises(TypeError):
        wilson_interval("3", 10)
    with pytest.raises(ValueError):
        wilson_interval(3, 10, confidence=math.nan)
    low, high = wilson_interval(np.array([0, 3, 10]), 10)  # whole-number floats and ints are fine
    assert low[0] == 0.0 and high[2] == 1.0 and 0 < low[1] < 0.3 < high[1] < 1


@pytest.mark.parametrize("value", BAD)
def test_every_metric_refuses_nan_and_inf(value: float) -> None:
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    mu = torch.zeros(2)
    calls = [
        lambda: num_parallel_samples(value, 0.99),
        lambda: num_parallel_samples(0.1, value),
        lambda: reduction(value, 10.0),
        lambda: reduction(10.0, value),
        lambda: mmd(x, x + 1, bandwidths=[1.0, value]),
        lambda: gaussian_denoiser(mu, value),
        lambda: gaussian_log_density(x, mu, value),
        lambda: gaussian_elbo(x, mu, value, 0.01, 10.0),
        lambda: gaussian_elbo(x, mu, 1.0, value, 10.0),
        lambda: gaussian_elbo(x, mu, 1.0, 0.01, value),
    ]
    for k, call in enumerate(calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"call {k} accepted {value}")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_denoiser_divergence_in_every_grad_mode(mode: str) -> None:
    """Same kind as guidance: a derivative-based metric must not depend on the caller's grad mode."""
    denoiser = gaussian_denoiser(torch.zeros(3), 0.5)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((4,), 2.0)
    expected = torch.full((4,), 3 * 0.25 / (0.25 + 4.0))  # D = s²/(s²+σ²) x: divergence d s²/(s²+σ²)
    with getattr(torch, mode)():
        _, div = denoiser_divergence(denoiser, x, sigma)
    torch.testing.assert_close(div, expected)
