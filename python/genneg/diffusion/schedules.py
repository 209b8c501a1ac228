"""Noise-level schedules for samplers: pure functions returning a decreasing sigma tensor.

Every schedule returns ``(num_steps + 1,)`` float64 on the CPU, from ``sigma_max`` down to ``sigma_min``,
followed by a final 0 (the last step, from ``sigma_min`` to 0, is an Euler step).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

__all__ = ["check_sigmas", "karras_sigmas", "log_linear_sigmas", "make_sigmas"]


def _check(num_steps: int, sigma_min: float, sigma_max: float) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")


def check_sigmas(sigmas: object, *, name: str = "sigmas") -> list[float]:
    """An explicit schedule as Python floats, checked: the one check of every sampler and schedule input.

    Args:
        sigmas: a 1-D tensor or sequence of noise levels (data units).
        name: what to call it in the error.

    Returns:
        the levels as floats.

    Raises:
        ValueError: not 1-D, fewer than 2 levels, a NaN or infinite level, not strictly decreasing, or not
            ending in 0 (the message shows the levels).
    """
    tensor = sigmas if isinstance(sigmas, torch.Tensor) else None
    try:
        tensor = torch.as_tensor(sigmas, dtype=torch.float64) if tensor is None else tensor.double()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of noise levels, got {sigmas!r}") from err
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    levels = [float(v) for v in tensor.tolist()]
    if len(levels) < 2 or not all(math.isfinite(v) for v in levels) or levels[-1] != 0.0 or any(
            not a > b for a, b in pairwise(levels)):
        shown = levels if len(levels) <= 8 else [*levels[:4], "...", *levels[-2:]]
        raise ValueError(f"{name} must be finite, strictly decreasing and end in 0, got {shown}")
    return levels


def log_linear_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-linear (geometric) spacing, the paper's schedule: ``num_steps`` levels then 0."""
    _check(num_steps, sigma_min, sigma_max)
    if num_steps == 1:
        levels = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        levels = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps,
                                          dtype=torch.float64))
    return torch.cat([levels, levels.new_zeros(1)])


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's rho-schedule: ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``."""
    _check(num_steps, sigma_min, sigma_max)
    if num_steps == 1:
        levels = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        levels = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([levels, levels.new_zeros(1)])


def make_sigmas(kind: str, num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0
                ) -> torch.Tensor:
    """Schedule by name: ``"log_linear"`` or ``"karras"``."""
    if kind == "log_linear":
        return log_linear_sigmas(num_steps, sigma_min, sigma_max)
    if kind == "karras":
        return karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    raise ValueError(f"unknown schedule {kind!r}; expected 'log_linear' or 'karras'")
