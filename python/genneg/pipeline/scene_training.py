"""Stages of the traffic task's DDPM over scenes: ancestral sampling in contexts, the per-scene r-ELBO,
and training of the baseline ε-model (METHOD.md 3, 7, 8 "Traffic")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from genneg.data.traffic.scene_set import Cond, SceneSet
from genneg.diffusion.conditioning import bind_cond
from genneg.diffusion.ddpm import DDPMSchedule, as_denoiser
from genneg.diffusion.samplers import euler_ancestral_sample
from genneg.io.rundir import stage_seed
from genneg.metrics import r_elbo
from genneg.models.scene_networks import SceneEpsModel
from genneg.pipeline.ddpm_training import train_ddpm
from genneg.pipeline.distributed import map_batches

__all__ = ["SceneTrainingConfig", "mean_per_vehicle", "sample_scenes", "scene_r_elbo", "train_scene_baseline"]



@dataclass(frozen=True)
class SceneTrainingConfig:
    """Training of the baseline ε-model.

    Attributes:
        iterations, batch_size, lr, lr_schedule, lr_min_fraction, warmup, grad_clip: Adam on the DDPM loss.
        eval_every: held-out r-ELBO every this many steps; the best weights are kept (0 = keep the last).
        eval_scenes, eval_timesteps: held-out scenes and timesteps per scene of that r-ELBO.
        ema_decay: the evaluated and kept weights are an exponential moving average of the trained ones
            with this decay (warm-up ``min(decay, (1 + step) / (10 + step))``); 0 = the trained weights.
    """

    iterations: int = 20_000
    batch_size: int = 128
    lr: float = 5e-4
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min_fraction: float = 0.05
    warmup: int = 200
    grad_clip: float = 1.0
    eval_every: int = 2000
    eval_scenes: int = 256
    eval_timesteps: int = 8
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"SceneTrainingConfig.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.iterations < 1 or self.batch_size < 1 or self.eval_every < 0 or self.lr <= 0:
            raise ValueError(f"SceneTrainingConfig needs iterations, batch_size >= 1, lr > 0: {self}")





def sample_scenes(
    eps_model: Callable[..., torch.Tensor],
    cond: Cond,
    schedule: DDPMSchedule,
    *,
    num_steps: int,
    batch_size: int,
    generator: torch.Generator,
    progress: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """Ancestral DDPM samples of scenes in the contexts ``cond`` (one scene per row): the Euler-ancestral
    sampler on the schedule's levels (``genneg.diffusion.ddpm``).

    Args:
        eps_model: a denoiser ``D(x, sigma, **cond)`` (guided stack, distilled student) or an ε-network
            (wrapped in its ``EpsDenoiser``).
        cond: ``n`` contexts (see the module docstring).
        schedule: the DDPM schedule; num_steps: sampler steps.
        batch_size: scenes per sampler call.
        generator: source of the initial and per-step noise (drawn on the CPU, in batch order, so that a
            batch's noise does not depend on the model).
        progress: progress bar over batches.

    Returns:
        ``tokens (n, A, 7)`` float32 (padding exactly 0) and the wall seconds of each batch.
    """
    valid = cond["valid"]
    n, a = valid.shape
    device = valid.device
    denoiser = as_denoiser(eps_model, schedule)
    out, seconds = [], []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, disable=not progress or len(starts) < 2, desc="sampling scenes", leave=False):
        rows = slice(start, min(start + batch_size, n))
        batch = {k: v[rows] for k, v in cond.items()}
        m = batch["valid"].shape[0]
        x_T = schedule.initial_noise((m, a, 7), generator=generator, num_steps=num_steps).to(device)
        step_gen = torch.Generator(device=device)
        step_gen.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        t0 = time.perf_counter()
        x = euler_ancestral_sample(denoiser, x_T, schedule.sampling_sigmas(num_steps), cond=batch,
                                   generator=step_gen)
        seconds.append(time.perf_counter() - t0)
        out.append(torch.where(batch["valid"][..., None], x, torch.zeros_like(x)))
    return torch.cat(out), seconds


def scene_r_elbo(
    eps_model: Callable[..., torch.Tensor],
    scenes: SceneSet,
    schedule: DDPMSchedule,
    *,
    num_timesteps: int,
    seed: int,
    batch_scenes: int = 64,
) -> torch.Tensor:
    """r-ELBO (METHOD.md 7) of each scene: :func:`genneg.metrics.r_elbo` with the scene's conditioning.

    ``r_elbo`` evaluates the ``K = num_timesteps`` draws of point ``i`` in rows ``i·K .. i·K + K - 1`` of its
    batch, so each chunk of scenes is bound to its conditioning repeated ``K`` times per row
    (``repeat_interleave``). Padding slots contribute exactly 0 (:class:`SceneEpsModel`).

    Data-parallel: the scenes are cut into chunks of ``batch_scenes``, each chunk's draws seeded by ``seed``
    and the chunk's first row, and the chunks are shared among the ranks
    (:func:`genneg.pipeline.distributed.map_batches`): every rank returns the same values, which do not
    depend on the world size. Every rank must call it (a collective; one process: a plain call).

    Returns:
        ``(S,)`` float64, summed over the real vehicles' token dimensions.

    Raises:
        ValueError: ``batch_scenes < 1``.
    """
    device = scenes.tokens.device

    def chunk_r_elbo(start: int, m: int) -> torch.Tensor:
        chunk = scenes.rows(torch.arange(start, start + m, device=device))
        cond = {k: v.repeat_interleave(num_timesteps, dim=0) for k, v in chunk.cond.items()}
        generator = torch.Generator().manual_seed(stage_seed(seed, f"rows{start}"))
        return r_elbo(bind_cond(as_denoiser(eps_model, schedule), cond), chunk.tokens, schedule,
                      num_timesteps=num_timesteps, generator=generator, batch_size=m * num_timesteps)

    if len(scenes) == 0:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.cat([v.to(device) for v in map_batches(len(scenes), batch_scenes, chunk_r_elbo)])


def mean_per_vehicle(values: torch.Tensor, valid: torch.Tensor) -> float:
    """Sum of per-scene values over the number of real vehicles."""
    return float(values.sum()) / max(int(valid.sum()), 1)


def train_scene_baseline(
    eps_model: SceneEpsModel,
    train: SceneSet,
    heldout: SceneSet,
    config: SceneTrainingConfig,
    schedule: DDPMSchedule,
    generator: torch.Generator,
    *,
    seed: int,
    progress: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the ε-model in place with :func:`~genneg.pipeline.ddpm_training.train_ddpm` (the DDPM loss,
    masked by :class:`SceneEpsModel`'s exact padding ε), keeping the (EMA) weights of the best held-out
    r-ELBO; batches are rows of scenes with their conditioning.

    Args:
        eps_model: the model; train/heldout: scenes; config: optimiser and selection.
        schedule: the DDPM schedule.
        generator: CPU source of batches, timesteps and noise.
        seed: seed of the held-out r-ELBO draws (the same at every evaluation).
        progress: progress bar; on_eval: called with each evaluation's record.

    Returns:
        ``{"best_iteration", "best_r_elbo" (per vehicle), "iterations_run", "final_loss"}``.
    """
    device = train.tokens.device
    held = heldout.rows(torch.arange(min(config.eval_scenes, len(heldout)), device=device))

    def draw_batch(g: torch.Generator, b: int) -> tuple[torch.Tensor, Cond]:
        batch = train.rows(torch.randint(len(train), (b,), generator=g).to(device))
        return batch.tokens, batch.cond

    def evaluate(weights: torch.nn.Module) -> float:
        return mean_per_vehicle(scene_r_elbo(weights, held, schedule, num_timesteps=config.eval_timesteps,
                                             seed=seed), held.cond["valid"])

    return train_ddpm(eps_model, draw_batch, evaluate, config, schedule, generator,
                      metric="r_elbo_per_vehicle", progress=progress, on_eval=on_eval)
