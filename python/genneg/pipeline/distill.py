"""Distilling the guided teacher into a baseline-shaped student (METHOD.md 5, Eq. 12).

The student ``D_psi`` (same architecture as the baseline; start it from the baseline's weights) matches
the guided teacher ``D_K``::

    L(psi) = E_sigma E_x0 E_eps lambda(sigma) ||D_psi(x_sigma; sigma) - stopgrad(D_K(x_sigma; sigma))||²,
    x_sigma = x0 + sigma eps,  ln sigma ~ U[ln sigma_min, ln sigma_max],
    lambda(sigma) = (sigma² + sigma_data²) / (sigma sigma_data)²

with ``x0`` from the training set (the paper) or from the teacher's own samples
(``DistillConfig.x0_source``). The student then samples at the baseline's cost.

DDPM ε-networks (traffic, motion) are distilled in the same σ form, through their
:class:`~genneg.diffusion.ddpm.EpsDenoiser`: ``sigma = sigma_t`` with ``t ~ U{0..T-1}`` and
``lambda(sigma) = 1 / sigma²``, which is ``E_t ||eps_psi(x_t, t) - stopgrad(eps_K(x_t, t))||²``, the
weighting of :func:`genneg.diffusion.ddpm.ddpm_loss` (``D = x - sigma eps``). :func:`distillation_noise`
draws the levels and weights from the noise argument (an ``EDMConfig`` or a ``DDPMSchedule``).
Conditioned samples pass their conditioning (``cond``, rows aligned with ``x0``) to student and teacher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.diffusion.ddpm import DDPMSchedule, as_denoiser
from genneg.diffusion.denoiser import broadcast_to_sample
from genneg.diffusion.edm import EDMConfig, edm_loss_weight
from genneg.pipeline.distributed import ddp, global_mean_losses, shard_rows, world
from genneg.pipeline.optim import optimizer_step, set_learning_rate

__all__ = ["DistillConfig", "distillation_loss", "distillation_noise", "distillation_x0", "train_distilled"]


@dataclass(frozen=True)
class DistillConfig:
    """Distillation training.

    Attributes:
        iterations: Adam steps (paper, checkerboard: 250k); 0 = skip distillation (the Gen-neG loop then
            trains no student and :func:`train_distilled` returns no losses).
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
        if self.iterations < 0 or self.batch_size < 1 or self.num_teacher_samples < 1 or self.warmup < 0:
            raise ValueError(f"need iterations >= 0 (0 = skip distillation), batch_size, num_teacher_samples "
                             f">= 1, warmup >= 0: {self}")
        # Written as the good range so that NaN fails too.
        good = self.lr > 0 and 0 <= self.lr_min_fraction <= 1 and self.grad_clip >= 0
        if not good or self.lr == math.inf:
            raise ValueError(f"need finite lr > 0, 0 <= lr_min_fraction <= 1, grad_clip >= 0: {self}")


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


def distillation_noise(
    noise: EDMConfig | DDPMSchedule, batch: int, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, lambda(sigma))``, each ``(batch,)`` float32 on ``device``, of Eq. 12's noise levels.

    An ``EDMConfig``: ``ln sigma ~ U[ln sigma_min, ln sigma_max]``, ``lambda = (sigma² + sigma_data²) /
    (sigma sigma_data)²``. A ``DDPMSchedule``: ``sigma = sigma_t``, ``t ~ U{0..T-1}``, ``lambda = 1/sigma²``
    (the ε loss). Drawn on ``generator``'s device.

    Raises:
        TypeError: ``noise`` of another type.
    """
    gen_device = generator.device if generator is not None else torch.device(device)
    if isinstance(noise, DDPMSchedule):
        t = torch.randint(noise.num_steps, (batch,), generator=generator, device=gen_device)
        sigma64 = noise.sigmas.to(t.device)[t]
        return sigma64.to(device, torch.float32), (1.0 / sigma64.square()).to(device, torch.float32)
    if not isinstance(noise, EDMConfig):
        raise TypeError(f"noise must be an EDMConfig or a DDPMSchedule, got {type(noise).__name__}")
    log_min, log_max = math.log(noise.sigma_min), math.log(noise.sigma_max)
    u = torch.rand(batch, generator=generator, device=gen_device).to(device)
    sigma = torch.exp(log_min + u * (log_max - log_min))
    return sigma, edm_loss_weight(sigma, noise.sigma_data)


def distillation_loss(
    student: Callable[..., torch.Tensor],
    teacher: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    noise: EDMConfig | DDPMSchedule,
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, torch.Tensor] | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """Eq. 12 on one batch: ``mean_i lambda(sigma_i) ||D_psi(x_i; sigma_i) - D_K(x_i; sigma_i)||²``.

    The teacher runs under ``torch.no_grad`` (a :class:`genneg.guidance.GuidedDenoiser` switches
    gradients on locally for its classifier gradients, which come back detached), so only the student is
    differentiated.

    Args:
        student, teacher: denoisers ``D(x (B, ...), sigma (B,), **cond) -> (B, ...)`` (a DDPM ε-network
            through :class:`~genneg.diffusion.ddpm.EpsDenoiser`).
        x0: ``(B, *shape)`` float clean samples.
        noise: an ``EDMConfig`` or a ``DDPMSchedule`` (:func:`distillation_noise`).
        generator: random source of sigma and noise (its device is where they are drawn).
        cond: conditioning tensors of the ``B`` samples (leading dimension ``B``), or None.
        rows: only these rows are evaluated and averaged (a data-parallel rank's share); the noise of the
            whole batch is drawn all the same.

    Returns:
        scalar loss (squared error summed over sample dimensions, averaged over the batch or ``rows``).
    """
    cond = {} if cond is None else dict(cond)
    gen_device = generator.device if generator is not None else x0.device
    sigma, weight = distillation_noise(noise, x0.shape[0], generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device, x0.dtype)
    x = x0 + broadcast_to_sample(sigma.to(x0.dtype), x0) * eps
    if rows is not None:
        x, sigma, weight = x[rows], sigma[rows], weight[rows]
        cond = {k: v[rows] for k, v in cond.items()}
    with torch.no_grad():
        target = teacher(x, sigma, **cond)
    err = (student(x, sigma, **cond) - target).pow(2).flatten(1).sum(dim=1)
    return (weight.to(err.dtype) * err).mean()


def train_distilled(
    student: nn.Module,
    teacher: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    config: DistillConfig,
    edm_config: EDMConfig | DDPMSchedule,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    cond: Mapping[str, torch.Tensor] | None = None,
) -> list[float]:
    """Train ``student`` in place to match ``teacher`` (Eq. 12) with Adam.

    Args:
        student: the baseline-shaped denoiser (or ε-network, trained through its ``EpsDenoiser``) to train
            (start it from the baseline's weights).
        teacher: the guided denoiser ``D_K``, not trained.
        x0: ``(N, *shape)`` pool of clean samples (:func:`distillation_x0`), moved to the student's device.
        config: iterations, batch size, optimiser.
        edm_config: an ``EDMConfig`` (noise range and ``sigma_data``) or a ``DDPMSchedule`` (the ε loss):
            :func:`distillation_noise`.
        generator: random source of indices, sigma and noise.
        progress: show a progress bar.
        cond: conditioning tensors of the pool (leading dimension ``N``), or None.

    Returns:
        the loss of every step, ``config.iterations`` floats (none, and the student untouched, when
        ``config.iterations == 0``).

    Data-parallel (:mod:`genneg.pipeline.distributed`): ``config.batch_size`` is the global batch; each
    rank evaluates student and teacher on its share of rows through ``DistributedDataParallel`` (the
    randomness of the whole batch drawn on every rank from the same ``generator``), so the student follows
    the one-process run up to the order of floating-point sums.
    """
    base = getattr(teacher, "denoiser", None)
    if base is student or getattr(base, "eps_model", None) is student:
        raise ValueError("the student is the teacher's own base model (denoiser): train a copy "
                         "(copy.deepcopy)")
    device = next(iter(student.parameters())).device
    pool = x0.to(device)
    pool_cond = {k: v.to(device) for k, v in (cond or {}).items()}
    for key, value in pool_cond.items():
        if value.shape[0] != pool.shape[0]:
            raise ValueError(f"cond[{key!r}] has {value.shape[0]} rows for a pool of {pool.shape[0]}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    w = world()
    rows = shard_rows(config.batch_size, w)
    share = (rows.stop - rows.start) * w.world_size / config.batch_size
    student_denoiser = as_denoiser(ddp(student), edm_config if isinstance(edm_config, DDPMSchedule) else None)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    losses = torch.empty(config.iterations, dtype=torch.float32, device=device)
    was_training = student.training
    student.train()
    bar = tqdm(range(config.iterations), disable=not progress, desc="distillation", leave=False)
    for step in bar:
        set_learning_rate(optimizer, config.lr, step, config.iterations, config.lr_schedule,
                          config.lr_min_fraction, config.warmup)
        idx = torch.randint(pool.shape[0], (config.batch_size,), generator=generator, device=gen_device)
        idx = idx.to(device)
        batch_cond = {k: v[idx] for k, v in pool_cond.items()}
        loss = distillation_loss(student_denoiser, teacher, pool[idx], edm_config, generator=generator,
                                 cond=batch_cond, rows=rows) * share
        optimizer_step(optimizer, loss, student.parameters(), config.grad_clip)
        losses[step] = loss.detach()
        if progress and (step % 50 == 0 or step == config.iterations - 1):
            bar.set_postfix(loss=f"{loss.item():.4f}")
    student.train(was_training)
    return global_mean_losses(losses)
