"""The optimiser plumbing every training loop of the pipeline shares: learning-rate schedule, step, and
the exponential moving average of the weights."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ema_update", "lr_factor", "optimizer_step", "set_learning_rate"]


def lr_factor(step: int, iterations: int, schedule: str, min_fraction: float, warmup: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up over ``warmup`` steps, then
    ``"constant"`` or ``"cosine"`` decay to ``min_fraction`` at ``iterations``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, iterations - warmup)
    return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, step: int, iterations: int,
                      schedule: str, min_fraction: float, warmup: int) -> None:
    """Set every parameter group's learning rate to ``base_lr · lr_factor(...)``."""
    factor = lr_factor(step, iterations, schedule, min_fraction, warmup)
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Iterable[nn.Parameter],
                   grad_clip: float) -> None:
    """Back-propagate ``loss``, clip the gradient norm of ``parameters`` to ``grad_clip`` (0 = off), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema ← d · ema + (1 - d) · model`` over the parameters, ``d = min(decay, (1 + step) / (10 + step))``
    (a short warm-up, so the average forgets the initial weights quickly); ``step`` is 0-based."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1 - d)
