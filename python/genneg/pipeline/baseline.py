"""Training an EDM denoiser with Adam, stopping on the held-out ELBO (METHOD.md 1 and 8).

The paper trains the checkerboard baseline full-batch on its 1,000 points and stops "before the held-out
ELBO worsens" (Appendix D.5: the model overfits after ~30k iterations). :func:`train_denoiser` evaluates
the held-out ELBO every ``eval_every`` iterations with the same noise draws each time (common random
numbers, so that successive evaluations are compared without Monte-Carlo jitter), keeps the weights of
the best evaluation, and stops after ``patience`` evaluations without improvement.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.diffusion.edm import EDMConfig, edm_loss
from genneg.io.rundir import stage_seed
from genneg.pipeline.distributed import ddp, global_mean, map_batches, shard_rows, world
from genneg.pipeline.optim import optimizer_step, set_learning_rate

__all__ = ["BaselineConfig", "TrainResult", "heldout_elbo", "train_denoiser"]


@dataclass(frozen=True)
class BaselineConfig:
    """Denoiser training.

    Attributes:
        iterations: maximum number of Adam steps.
        batch_size: examples per step; 0 = full batch (the paper's checkerboard setting).
        lr: Adam learning rate.
        lr_schedule: ``"constant"``, or ``"cosine"`` decay to ``lr_min_fraction · lr`` at ``iterations``.
        lr_min_fraction: final learning rate as a fraction of ``lr`` for the cosine schedule.
        warmup: linear warm-up steps.
        eval_every: evaluate the held-out ELBO every this many steps (and after the last); 0 = never
            (keep the final weights).
        eval_num_sigmas: noise levels per held-out point in each ELBO estimate.
        eval_seed: seed of the fixed noise draws shared by all ELBO evaluations.
        patience: stop after this many evaluations without a new best; 0 = never stop early.
        grad_clip: max gradient norm (0 = off).
    """

    iterations: int = 30_000
    batch_size: int = 0
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min_fraction: float = 0.05
    warmup: int = 0
    eval_every: int = 1000
    eval_num_sigmas: int = 64
    eval_seed: int = 12345
    patience: int = 0
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "eval_every", "eval_num_sigmas", "patience", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"BaselineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"BaselineConfig.lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    """Outcome of :func:`train_denoiser`.

    Attributes:
        history: one dict per evaluation: ``iteration``, ``loss`` (mean training loss since the last
            evaluation), ``heldout_elbo`` (nats per point).
        best_iteration: the iteration whose weights were kept.
        best_elbo: held-out ELBO of the kept weights (nan when never evaluated).
        iterations_run: steps actually taken (< ``iterations`` after an early stop).
    """

    history: list[dict[str, float]]
    best_iteration: int
    best_elbo: float
    iterations_run: int


def heldout_elbo(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    edm_config: EDMConfig,
    *,
    num_sigmas: int,
    seed: int,
    batch_size: int = 4096,
    chunk_points: int = 128,
) -> float:
    """Mean ELBO (nats per sample) of ``x0`` ``(N, *shape)`` under ``denoiser``, with noise drawn from
    generators seeded with ``seed`` (so that two denoisers are compared on the same draws).

    The points are cut into chunks of ``chunk_points`` rows, each chunk's noise drawn from a generator
    seeded by ``seed`` and the chunk's first row, and the chunks are shared among the data-parallel ranks
    (:func:`genneg.pipeline.distributed.map_batches`): every rank returns the same value, and the value
    does not depend on the world size. Every rank must call it (it is a collective)."""
    from genneg.metrics import elbo

    def chunk(start: int, m: int) -> torch.Tensor:
        g = torch.Generator(device=x0.device)
        g.manual_seed(stage_seed(seed, f"elbo/rows{start}"))
        return elbo(denoiser, x0[start:start + m], edm_config, num_sigmas=num_sigmas, generator=g,
                    batch_size=batch_size)

    values = [v.to(x0.device) for v in map_batches(x0.shape[0], chunk_points, chunk)]
    return float(torch.cat(values).mean())


def train_denoiser(
    denoiser: nn.Module,
    train_x: torch.Tensor,
    heldout_x: torch.Tensor | None,
    config: BaselineConfig,
    edm_config: EDMConfig,
    generator: torch.Generator,
    *,
    progress: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``denoiser`` in place on ``train_x`` with the EDM loss; keep the best held-out weights.

    Args:
        denoiser: an ``EDMPrecond``-style module ``D(x, sigma)``; its parameters are trained.
        train_x: ``(N, *shape)`` float32 training data.
        heldout_x: ``(M, *shape)`` float32 held-out data for the ELBO, or None (no evaluation).
        config: iterations, batch, learning rate, evaluation cadence.
        edm_config: noise range and ``sigma_data`` of the loss and the ELBO.
        generator: source of all training randomness (minibatches, noise levels, noise).
        progress: show a progress bar.
        on_eval: called with each history entry as it is made (logging).

    Returns:
        :class:`TrainResult`. On return ``denoiser`` holds the best weights (by held-out ELBO) or the
        final ones when never evaluated.

    Data-parallel (:mod:`genneg.pipeline.distributed`): the batch is global; each rank evaluates its
    share of rows (the noise of the whole batch drawn on every rank from the same ``generator``) through
    ``DistributedDataParallel``, so the weights follow the one-process run up to the order of
    floating-point sums. The held-out ELBO is sharded over the ranks and gathered (:func:`heldout_elbo`),
    so every rank keeps the same best weights and stops at the same step.
    """
    if train_x.ndim < 2 or train_x.shape[0] == 0:
        raise ValueError(f"train_x must be (N, *shape) with N > 0, got {tuple(train_x.shape)}")
    if heldout_x is not None and heldout_x.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"heldout_x has sample shape {tuple(heldout_x.shape[1:])}, train_x "
                         f"{tuple(train_x.shape[1:])}")
    n = train_x.shape[0]
    batch = n if config.batch_size == 0 else min(config.batch_size, n)
    w = world()
    rows = shard_rows(batch, w)
    share = (rows.stop - rows.start) * w.world_size / batch  # this rank's loss scale (1 for one process)
    model = ddp(denoiser)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.lr)
    evaluate = heldout_x is not None and config.eval_every > 0
    history: list[dict[str, float]] = []
    best_elbo, best_iteration, best_state = -math.inf, 0, None
    stale = 0
    loss_sum, loss_count = 0.0, 0
    step = 0
    denoiser.train()
    bar = tqdm(range(config.iterations), disable=not progress, desc="baseline", leave=False)
    for step in bar:
        set_learning_rate(optimizer, config.lr, step, config.iterations, config.lr_schedule,
                          config.lr_min_fraction, config.warmup)
        x0 = train_x if batch == n else train_x[torch.randint(n, (batch,), generator=generator)]
        rank_loss = edm_loss(model, x0, edm_config, generator=generator, rows=rows) * share
        optimizer_step(optimizer, rank_loss, denoiser.parameters(), config.grad_clip)
        loss_sum += float(rank_loss.detach())  # this rank's scaled share; reduced at each evaluation
        loss_count += 1
        last = step + 1 == config.iterations
        if evaluate and ((step + 1) % config.eval_every == 0 or last):
            denoiser.eval()
            value = heldout_elbo(denoiser, heldout_x, edm_config, num_sigmas=config.eval_num_sigmas,
                                 seed=config.eval_seed)
            denoiser.train()
            mean_loss = global_mean(torch.tensor(loss_sum, dtype=torch.float64)) / loss_count
            entry = {"iteration": step + 1, "loss": mean_loss, "heldout_elbo": value}
            history.append(entry)
            if on_eval is not None:
                on_eval(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", elbo=f"{value:.3f}")
            loss_sum, loss_count = 0.0, 0
            if value > best_elbo:
                best_elbo, best_iteration, stale = value, step + 1, 0
                best_state = copy.deepcopy(denoiser.state_dict())
            else:
                stale += 1
                if config.patience and stale >= config.patience:
                    break
    bar.close()
    iterations_run = step + 1 if config.iterations else 0
    if best_state is not None:
        denoiser.load_state_dict(best_state)
    else:
        best_iteration = iterations_run
        best_elbo = math.nan
    denoiser.eval()
    return TrainResult(history=history, best_iteration=best_iteration, best_elbo=best_elbo,
                       iterations_run=iterations_run)
