"""Infraction rate: the fraction of model samples the oracle rejects, with a Wilson score interval."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from genneg.metrics._checks import check_counts

__all__ = ["RateEstimate", "infraction_rate", "wilson_interval"]


@dataclass(frozen=True)
class RateEstimate:
    """A binomial proportion ``count / total`` and its confidence interval ``[low, high]`` (fractions)."""

    rate: float
    low: float
    high: float
    count: int
    total: int


def wilson_interval(count: np.ndarray | int, total: np.ndarray | int, confidence: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion, vectorised over arrays of counts.

    ``center = (p + z²/2n) / (1 + z²/n)``, ``half = z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)`` with
    ``p = count / total`` and ``z`` the two-sided normal quantile of ``confidence``.

    Args:
        count: successes (here: infractions), int array or scalar, ``0 <= count <= total``.
        total: trials, ``>= 1``, broadcastable against ``count``.
        confidence: two-sided coverage in ``(0, 1)``.

    Returns:
        ``(low, high)`` float64 arrays with the broadcast shape, inside ``[0, 1]``.

    Raises:
        ValueError: a count that is NaN, inf, fractional, negative or above its total; total < 1;
            confidence outside ``(0, 1)``. TypeError: non-numeric counts.
    """
    if not 0 < confidence < 1:  # False for NaN too
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    k, n = check_counts(count, total)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))  # exact ends instead of rounding
    high = np.where(k == n, 1.0, np.clip(center + half, 0.0, 1.0))
    return low, high


def infraction_rate(verdicts: torch.Tensor | np.ndarray, *, per: str = "sample", confidence: float = 0.95
                    ) -> RateEstimate:
    """Fraction of invalid samples with its Wilson interval.

    Args:
        verdicts: bool ``(N,)`` (True = valid, the oracle protocol) or ``(N, P)`` per part (vehicle).
        per: for ``(N, P)`` verdicts, ``"sample"`` (a sample infracts when any part does) or ``"part"``
            (every part counts once, ``N·P`` trials).
        confidence: coverage of the interval.

    Returns:
        :class:`RateEstimate` with ``count`` = number of infractions and ``total`` = number of trials.
    """
    v = torch.as_tensor(np.asarray(verdicts) if not isinstance(verdicts, torch.Tensor) else verdicts)
    if v.dtype != torch.bool:
        raise TypeError(f"verdicts must be bool (True = valid), got dtype {v.dtype}")
    if v.ndim == 2:
        if per == "sample":
            v = v.all(dim=1)
        elif per == "part":
            v = v.reshape(-1)
        else:
            raise ValueError(f"per must be 'sample' or 'part', got {per!r}")
    elif v.ndim != 1:
        raise ValueError(f"verdicts must be (N,) or (N, P), got shape {tuple(v.shape)}")
    total = v.numel()
    if total == 0:
        raise ValueError("infraction_rate needs at least one verdict")
    count = int((~v).sum())
    low, high = wilson_interval(count, total, confidence)
    return RateEstimate(rate=count / total, low=float(low), high=float(high), count=count, total=total)
