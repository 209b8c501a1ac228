"""Input checks shared by every metric, so that each refuses bad numbers the same way.

A comparison such as ``value <= 0`` is False for NaN, so a NaN would slip through a check written as
``if value <= 0: raise``; these helpers test the good range instead (``not value > 0``) and raise
``ValueError`` naming the argument and its value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["check_counts", "check_positive"]


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float after checking it is finite and > 0; else ``ValueError`` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real number, got {value!r}") from e
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_counts(count: Any, total: Any) -> tuple[np.ndarray, np.ndarray]:
    """``count`` and ``total`` as float64 arrays of whole numbers with ``0 <= count <= total`` and
    ``total >= 1``; NaN, inf, fractions and bool/complex inputs raise ``ValueError``/``TypeError``."""
    arrays = []
    for name, value in (("count", count), ("total", total)):
        a = np.asarray(value)
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold integer counts, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold finite whole numbers, got {value!r}")
        arrays.append(a)
    k, n = arrays
    if not (np.all(n >= 1) and np.all(k >= 0) and np.all(k <= n)):
        raise ValueError(
            f"counts need total >= 1 and 0 <= count <= total, got count={count!r}, total={total!r}"
        )
    return k, n
