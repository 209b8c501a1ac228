"""Distilling the guided teacher into a baseline-shaped student (METHOD.md 5, Eq. 12).

The student ``D_psi`` (same architecture as the baseline; start it from the baseline's weights) matches
the guided teacher ``D_K``::

    L(psi) = E_sigma E_x0 E_eps lambda(sigma) ||D_psi(x_sigma; sigma) - stopgrad(D_K(x_sigma; sigma))||²,
    x_sigma = x0 + sigma eps,  ln sigma ~ U[ln sigma_min, ln sigma_max],
    lambda(sigma) = (sigma² + sigma_data²) / (sigma sigma_data)²

with ``x0`` from the training set (the paper) or from the teacher's own samples
(``DistillConfig.x0_source``). The student then samples at the baseline's cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.diffusion.denoiser import broadcast_to_sample
from genneg.diffusion.edm import EDMConfig, edm_loss_weight
from genneg.pipeline.classifier import lr_factor

__all__ = ["DistillConfig", "distillation_loss", "distillation_x0", "train_distilled"]


@dataclass(frozen=True)
class DistillConfig:
    """Distillation training.

    Attributes:
        iterations: Adam steps (paper, checkerboard: 250k).
        batch_size: ``x0`` per step (paper: 1000), drawn uniformly with replacement.
        lr: Adam learning rate.
        x0_source: ``"train"`` (the training set, the paper's choice) or ``"teacher"`` (teacher samples).
        num_teacher_samples: how many teacher samples to draw when ``x0_source == "teacher"``.
        lr_schedule: ``"constant"`` or ``"cosine"`` decay to ``lr_min_fraction · lr``.
        lr_min_fraction: final learning rate fraction (cosine).
        warmup: linear warm-up steps.
        grad_clip: max gradient norm (0 = off).
    """

    iterations: int = 2000
    batch_size: int = 1000
    lr: float = 1e-3
    x0_source: Literal["train", "teacher"] = "train"
    num_teacher_samples: int = 10_000
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min_fraction: float = 0.05
    warmup: int = 0
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        if self.x0_source not in ("train", "teacher"):
            raise ValueError(f"x0_source must be 'train' or 'teacher', got {self.x0_source!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.iterations < 1 or self.batch_size < 1 or self.num_teacher_samples < 1 or self.warmup < 0:
            raise ValueError(f"need iterations, batch_size, num_teacher_samples >= 1, warmup >= 0: {self}")
        if self.lr <= 0 or not 0 <= self.lr_min_fraction <= 1 or self.grad_clip < 0:
            raise ValueError(f"need lr > 0, 0 <= lr_min_fraction <= 1, grad_clip >= 0: {self}")


def distillation_x0(
    config: DistillConfig, train_x: torch.Tensor, sample_teacher: Callable[[int], torch.Tensor] | None = None
) -> torch.Tensor:
    """The ``x0`` pool for distillation: ``train_x`` or ``config.num_teacher_samples`` teacher samples.

    Args:
        config: selects the source.
        train_x: ``(N, *shape)`` training set.
        sample_teacher: ``n -> (n, *shape)`` samples of the guided teacher (needed for ``"teacher"``).
    """
    if config.x0_source == "train":
        return train_x
    if sample_teacher is None:
        raise ValueError("x0_source='teacher' needs sample_teacher")
    x0 = sample_teacher(config.num_teacher_samples)
    if x0.shape[0] != config.num_teacher_samples or x0.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"sample_teacher returned {tuple(x0.shape)}, expected "
                         f"({config.num_teacher_samples}, {', '.join(map(str, train_x.shape[1:]))})")
    return x0.detach()


def distillation_loss(
    student: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    edm_config: EDMConfig,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 12 on one batch: ``mean_i lambda(sigma_i) ||D_psi(x_i; sigma_i) - D_K(x_i; sigma_i)||²``.

    The teacher runs under ``torch.no_grad`` (a :class:`genneg.guidance.GuidedDenoiser` switches
    gradients on locally for its classifier gradients, which come back detached), so only the student is
    differentiated.

    Args:
        student, teacher: denoisers ``D(x (B, ...), sigma (B,)) -> (B, ...)``.
        x0: ``(B, *shape)`` float clean samples.
        edm_config: noise range and ``sigma_data`` (data units).
        generator: random source of sigma and noise (its device is where they are drawn).

    Returns:
        scalar loss (squared error summed over sample dimensions, averaged over the batch).
    """
    gen_device = generator.device if generator is not None else x0.device
    b = x0.shape[0]
    log_min, log_max = math.log(edm_config.sigma_min), math.log(edm_config.sigma_max)
    u = torch.rand(b, generator=generator, device=gen_device).to(x0.device)
    sigma = torch.exp(log_min + u * (log_max - log_min))
    eps = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device, x0.dtype)
    x = x0 + broadcast_to_sample(sigma.to(x0.dtype), x0) * eps
    with torch.no_grad():
        target = teacher(x, sigma)
    err = (student(x, sigma) - target).pow(2).flatten(1).sum(dim=1)
    return (edm_loss_weight(sigma, edm_config.sigma_data).to(err.dtype) * err).mean()


def train_distilled(
    student: nn.Module,
    teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    config: DistillConfig,
    edm_config: EDMConfig,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``student`` in place to match ``teacher`` (Eq. 12) with Adam.

    Args:
        student: the baseline-shaped denoiser to train (start it from the baseline's weights).
        teacher: the guided denoiser ``D_K`` (not trained).
        x0: ``(N, *shape)`` pool of clean samples (:func:`distillation_x0`), moved to the student's device.
        config: iterations, batch size, optimiser.
        edm_config: noise range and ``sigma_data``.
        generator: random source of indices, sigma and noise.
        progress: show a progress bar.

    Returns:
        the loss of every step, ``config.iterations`` floats.
    """
    if getattr(teacher, "denoiser", None) is student:
        raise ValueError("the student is the teacher's own base denoiser: train a copy (copy.deepcopy)")
    device = next(iter(student.parameters())).device
    pool = x0.to(device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    losses = torch.empty(config.iterations, dtype=torch.float32, device=device)
    was_training = student.training
    student.train()
    bar = tqdm(range(config.iterations), disable=not progress, desc="distillation", leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config.iterations, config.lr_schedule,
                                                config.lr_min_fraction, config.warmup)
        idx = torch.randint(pool.shape[0], (config.batch_size,), generator=generator, device=gen_device)
        loss = distillation_loss(student, teacher, pool[idx.to(device)], edm_config, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        optimizer.step()
        losses[step] = loss.detach()
        if progress and (step % 50 == 0 or step == config.iterations - 1):
            bar.set_postfix(loss=f"{loss.item():.4f}")
    student.train(was_training)
    return losses.tolist()
