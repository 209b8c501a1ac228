"""Infraction rate and its Wilson interval: known values, exact coverage, verdict handling."""

import math

import numpy as np
import pytest
import torch

from genneg.metrics import RateEstimate, infraction_rate, wilson_interval


def test_wilson_known_values() -> None:
    # published values (e.g. statsmodels proportion_confint(method="wilson"))
    low, high = wilson_interval(5, 10)
    assert float(low) == pytest.approx(0.236593, abs=1e-6)
    assert float(high) == pytest.approx(0.763407, abs=1e-6)
    low, high = wilson_interval(0, 10)  # upper end z² / (n + z²)
    z2 = 1.959963984540054**2
    assert float(low) == 0.0 and float(high) == pytest.approx(z2 / (10 + z2), rel=1e-12)
    low, high = wilson_interval(10, 10)
    assert float(high) == 1.0 and float(low) == pytest.approx(10 / (10 + z2), rel=1e-12)
    # wider at higher confidence, and symmetric under count -> total - count
    lo99, hi99 = wilson_interval(30, 100, confidence=0.99)
    lo95, hi95 = wilson_interval(30, 100)
    assert lo99 < lo95 and hi99 > hi95
    lo_s, hi_s = wilson_interval(70, 100)
    assert float(lo_s) == pytest.approx(1 - float(hi95)) and float(hi_s) == pytest.approx(1 - float(lo95))


def _exact_coverage(n: int, p: float) -> float:
    k = np.arange(n + 1)
    log_pmf = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        + i * math.log(p) + (n - i) * math.log(1 - p) for i in k])
    low, high = wilson_interval(k, n)
    return float(np.exp(log_pmf)[(low <= p) & (p <= high)].sum())


def test_wilson_coverage_is_near_nominal() -> None:
    # exact binomial coverage (no simulation). Wilson oscillates around 95% and dips a little at small
    # n·p (0.92 at n = 50, p = 0.02); it converges to 95% as n grows.
    for n in (50, 200):
        for p in (0.02, 0.1, 0.3, 0.5):
            assert 0.915 <= _exact_coverage(n, p) <= 0.975, (n, p)
    for p in (0.02, 0.1, 0.3, 0.5):
        assert abs(_exact_coverage(1000, p) - 0.95) < 0.006
    mean_cov = np.mean([_exact_coverage(200, p) for p in np.linspace(0.05, 0.95, 19)])
    assert abs(mean_cov - 0.95) < 0.01


def test_infraction_rate_counts_invalid() -> None:
    verdicts = torch.tensor([True, False, True, True, False, True, True, True])  # True = valid
    est = infraction_rate(verdicts)
    assert isinstance(est, RateEstimate)
    assert (est.count, est.total, est.rate) == (2, 8, 0.25)
    low, high = wilson_interval(2, 8)
    assert (est.low, est.high) == (float(low), float(high))
    assert est.low < est.rate < est.high
    assert infraction_rate(verdicts.numpy()) == est  # NumPy verdicts from a user's oracle


def test_infraction_rate_per_sample_and_part() -> None:
    parts = torch.tensor([[True, True, False], [True, True, True], [False, False, True], [True, True, True]])
    per_sample = infraction_rate(parts)
    assert (per_sample.count, per_sample.total) == (2, 4)
    per_part = infraction_rate(parts, per="part")
    assert (per_part.count, per_part.total) == (3, 12)


def test_infraction_rate_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="bool"):
        infraction_rate(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one"):
        infraction_rate(torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="per"):
        infraction_rate(torch.ones(2, 2, dtype=torch.bool), per="vehicle")
    with pytest.raises(ValueError, match="count"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, confidence=1.0)
