"""The one trainer of DDPM ε-models (traffic scenes, motion clips): Adam on the ε-prediction loss with a
learning-rate schedule, EMA weights, and the weights of the best held-out r-ELBO kept (METHOD.md 1, 7).

What differs between tasks is how a batch is drawn (``draw_batch``: rows of scenes with their map and
vehicle slots, clips with their family label and label dropout) and how the held-out r-ELBO is measured
(``evaluate``); the loop is written once, data-parallel once (:mod:`genneg.pipeline.distributed`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.diffusion.conditioning import bind_cond
from genneg.diffusion.ddpm import DDPMSchedule, ddpm_loss
from genneg.pipeline.distributed import ddp, global_mean_losses, shard_rows, world
from genneg.pipeline.optim import ema_update, optimizer_step, set_learning_rate

__all__ = ["DDPMTrainingFields", "DrawBatch", "train_ddpm"]

Cond = dict[str, torch.Tensor]
DrawBatch = Callable[[torch.Generator, int], tuple[torch.Tensor, Cond | None]]
"""``draw_batch(generator, b) -> (x0 (b, ...), cond or None)``: one training batch, drawn from ``generator``
only (every rank draws the same global batch)."""


class DDPMTrainingFields(Protocol):
    """The fields of a task's training config that :func:`train_ddpm` reads (``SceneTrainingConfig``,
    ``MotionTrainingConfig``)."""

    iterations: int
    batch_size: int
    lr: float
    lr_schedule: str
    lr_min_fraction: float
    warmup: int
    grad_clip: float
    eval_every: int
    ema_decay: float



def train_ddpm(
    eps_model: nn.Module,
    draw_batch: DrawBatch,
    evaluate: Callable[[nn.Module], float],
    config: DDPMTrainingFields,
    schedule: DDPMSchedule,
    generator: torch.Generator,
    *,
    metric: str,
    progress: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``eps_model`` in place with Adam on :func:`~genneg.diffusion.ddpm.ddpm_loss`, keeping the
    (EMA) weights of the best held-out r-ELBO.

    Args:
        eps_model: ``eps(x_t, t, **cond)``; its parameters are trained.
        draw_batch: the global batch of a step (:data:`DrawBatch`).
        evaluate: ``evaluate(weights) -> float``, the held-out r-ELBO of the weights (the same draws at
            every call); larger is better.
        config: iterations, batch, optimiser, evaluation cadence, EMA (:class:`DDPMTrainingFields`).
        schedule: the DDPM schedule.
        generator: CPU source of batches, timesteps and noise.
        metric: the name of the r-ELBO in the evaluation records (``r_elbo_per_vehicle``, ...).
        progress: progress bar; on_eval: called with each evaluation's record
            ``{"iteration", metric, "loss"}``.

    Returns:
        ``{"best_iteration", "best_r_elbo", "iterations_run", "final_loss"}``.

    Data-parallel: ``config.batch_size`` is the global batch; each rank evaluates its share of rows
    (the whole batch's timesteps and noise drawn on every rank from the same ``generator``) through
    ``DistributedDataParallel``; every rank calls ``evaluate`` with the same weights (the tasks' r-ELBO
    shares its chunks among the ranks and returns the same value on every rank), so all keep the same best
    weights.
    """
    w = world()
    rows = shard_rows(config.batch_size, w)
    share = (rows.stop - rows.start) * w.world_size / config.batch_size
    model = ddp(eps_model)
    optimizer = torch.optim.Adam(eps_model.parameters(), lr=config.lr)
    best: dict[str, Any] = {"iteration": 0, "r_elbo": -math.inf, "state": None}
    losses = torch.empty(config.iterations, dtype=torch.float32)
    ema = copy.deepcopy(eps_model).eval().requires_grad_(False) if config.ema_decay > 0 else None
    weights = ema if ema is not None else eps_model

    def recent_loss(step: int) -> float | None:
        return float(np.mean(global_mean_losses(losses[max(0, step - 100):step]))) if step else None

    def run_eval(step: int) -> None:
        weights.eval()
        value = evaluate(weights)
        eps_model.train()
        record = {"iteration": step, metric: value, "loss": recent_loss(step)}
        if on_eval is not None:
            on_eval(record)
        if value > best["r_elbo"]:
            best.update(iteration=step, r_elbo=value, state=copy.deepcopy(weights.state_dict()))

    eps_model.train()
    bar = tqdm(range(config.iterations), disable=not progress, desc="baseline (DDPM)", leave=False)
    for step in bar:
        set_learning_rate(optimizer, config.lr, step, config.iterations, config.lr_schedule,
                          config.lr_min_fraction, config.warmup)
        x0, cond = draw_batch(generator, config.batch_size)
        share_cond = None if cond is None else {k: v[rows] for k, v in cond.items()}
        loss = ddpm_loss(bind_cond(model, share_cond), x0, schedule, generator=generator, rows=rows) * share
        optimizer_step(optimizer, loss, eps_model.parameters(), config.grad_clip)
        if ema is not None:
            ema_update(ema, eps_model, config.ema_decay, step)
        losses[step] = loss.detach().cpu()
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(losses[max(0, step - 49):step + 1].mean()):.3f}")
        if config.eval_every and (step + 1) % config.eval_every == 0:
            run_eval(step + 1)
    if not config.eval_every or config.iterations % config.eval_every:
        run_eval(config.iterations)
    if best["state"] is not None:
        eps_model.load_state_dict(best["state"])
    eps_model.eval()
    return {"best_iteration": best["iteration"], "best_r_elbo": best["r_elbo"],
            "iterations_run": config.iterations, "final_loss": recent_loss(config.iterations)}
