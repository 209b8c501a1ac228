"""How many samples must be drawn in parallel to get one valid sample with high probability.

With infraction rate ``r`` (each draw independently invalid with probability ``r``) and required
success probability ``p``, the smallest ``N`` with ``1 - r^N >= p`` is
``N(r, p) = ceil( log(1 - p) / log(r) )`` (METHOD.md 7). The paper reports the relative drop of ``N``
against the baseline (``1 - N_model / N_baseline``).
"""

from __future__ import annotations

import math

__all__ = ["num_parallel_samples", "reduction"]


def num_parallel_samples(r: float, p: float) -> int:
    """``N(r, p)``: smallest number of independent draws such that at least one is valid with
    probability ``>= p``.

    Args:
        r: infraction rate, a fraction in ``[0, 1)`` (``r = 0`` gives 1).
        p: required success probability in ``(0, 1)``, e.g. ``0.99999``.

    Returns:
        ``N >= 1``. The closed form is checked against the definition ``r^N <= 1 - p`` so that ratios that
        are integers up to rounding (``r = 0.1, p = 0.999``) are not pushed one step up.
    """
    if not 0.0 <= r < 1.0:
        raise ValueError(f"infraction rate r must lie in [0, 1) for N(r, p) to be finite, got {r}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"success probability p must lie in (0, 1), got {p}")
    if r == 0.0:
        return 1
    target = 1.0 - p
    n = max(1, math.ceil(math.log(target) / math.log(r)))

    def enough(k: int) -> bool:  # r^k <= 1 - p up to a relative rounding error
        return k * math.log(r) <= math.log(target) + 1e-12 * abs(math.log(target))

    while n > 1 and enough(n - 1):
        n -= 1
    while not enough(n):
        n += 1
    return n


def reduction(n_model: float, n_baseline: float) -> float:
    """Relative reduction ``1 - n_model / n_baseline`` (0.47 = 47% fewer samples than the baseline;
    negative when the model needs more). Both counts must be positive."""
    if not (math.isfinite(n_model) and n_model > 0 and math.isfinite(n_baseline) and n_baseline > 0):
        raise ValueError(f"sample counts must be positive, got n_model={n_model}, n_baseline={n_baseline}")
    return 1.0 - n_model / n_baseline
