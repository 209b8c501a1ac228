"""Gen-neG on traffic scenes (issue 6; METHOD.md 4 "multi-part samples", 7, 8 "Traffic").

A sample is one scene: ``(A, 7)`` normalised vehicle tokens (:mod:`genneg.data.traffic.tokens`) in the
frame of a scene window. Scenes are **conditioned**: the network sees the map crop of the window and which
of the ``A`` vehicle slots are present, and the oracle needs the window's centre and map to judge the
decoded boxes. That conditioning travels with every sample as a dict of tensors (leading dimension ``n``)::

    cond = {"valid": (n, A) bool, "map_raster": (n, 1, C, C) float32,
            "centre_m": (n, 2) float64, "map_index": (n,) int64}

through the generic stages (:mod:`genneg.guidance.guided` documents the convention: every model, classifier
and oracle is called with ``**cond`` and reads the entries it needs). The stages are the checkerboard's:

- data: procedural road maps (:func:`genneg.data.traffic.generate_road_maps`, plus CARLA towns when their
  cache exists), valid training and held-out scenes written once to ``run/data/`` and memory-mapped;
- baseline: DDPM ε-prediction scene transformer, trained with :func:`genneg.diffusion.ddpm.ddpm_loss`;
  padding slots are known to be zero, so :class:`SceneEpsModel` returns their exact ε
  (``x_t / sqrt(1 - ᾱ_t)``): the loss, the r-ELBO and the sampler see no error there (the masked loss)
  and sampled padding stays zero;
- per Gen-neG iteration ``k``: :func:`~genneg.pipeline.balanced.draw_balanced` from the model guided by
  ``c_1..c_{k-1}`` with :class:`TrafficTokenOracle` per-vehicle verdicts (a scene is negative when any real
  vehicle is; padding masked), :func:`~genneg.pipeline.classifier.train_classifier` of ``c_k`` = the same
  transformer with one logit per vehicle (:class:`SceneLogitNet` in a
  :class:`~genneg.guidance.TimeClassifier`, trained in variance-exploding coordinates over the DDPM
  schedule's noise range with ``sigma_data = 1``, so that its input ``x / sqrt(σ² + 1)`` is exactly the
  DDPM ``x_t``), and guidance ``ε_K = ε − sqrt(1 − ᾱ_t) Σ_k ∇ Σ_{real vehicles} log c_k``
  (:class:`~genneg.guidance.GuidedEps`, ``coordinates="ve"``, ``part_mask_key="valid"``);
- ablations after iteration 1: time-independent classifier on the one-step estimate, w/o IS, imbalanced;
- distillation of the stacked model into a baseline-shaped ε-model
  (:func:`~genneg.pipeline.distill.train_distilled` in ε form);
- evaluation of every model on the same held-out contexts and the same noise: collision, offroad and
  infraction rates per scene and per vehicle, r-ELBO on held-out scenes (same draws for every model),
  ``N(r, p)`` with the per-scene rate and its reduction against the baseline, sampling time per batch,
  parameter count; PNG renders; ``report.md``.

Every stage writes its outputs and then its marker in a :class:`~genneg.io.RunDir`; a resumed run reloads
finished stages and reruns the first unfinished one with the same stage-seeded generator.
Profiles: ``tiny`` (the test, well under 90 s), ``quick`` (about 20 minutes with 1 thread on the shared
2-core CPU it was measured on; ``--threads 2`` uses both cores), ``paper`` (sized for one GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.data.traffic import (
    RoadMap,
    RoadNetworkConfig,
    SceneConfig,
    TokenNormalisation,
    TrafficSceneDataset,
    generate_road_maps,
    save_scene_grid,
    tokens_to_scenes,
    write_traffic_dataset,
)
from genneg.diffusion.ddpm import DDPMConfig, DDPMSchedule, ddpm_ancestral_sample, ddpm_loss
from genneg.diffusion.edm import EDMConfig
from genneg.guidance import GuidedEps, TimeClassifier
from genneg.io.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from genneg.io.rundir import RunDir, stage_generator, stage_seed
from genneg.metrics import infraction_rate, num_parallel_samples, r_elbo, reduction
from genneg.models.scene_transformer import SceneTransformer, SceneTransformerConfig
from genneg.oracles.traffic import TrafficOracle, TrafficVerdicts
from genneg.pipeline.balanced import BalancedDataset, draw_balanced, draw_imbalanced
from genneg.pipeline.classifier import ClassifierConfig, train_classifier
from genneg.pipeline.distill import DistillConfig, train_distilled
from genneg.pipeline.optim import ema_update, optimizer_step, set_learning_rate

__all__ = [
    "TRAFFIC_PROFILES",
    "SceneEpsModel",
    "SceneLogitNet",
    "SceneSet",
    "SceneTrainingConfig",
    "TrafficDataConfig",
    "TrafficEvalConfig",
    "TrafficExperimentConfig",
    "TrafficGenNegConfig",
    "TrafficModelConfig",
    "TrafficTask",
    "TrafficTokenOracle",
    "dihedral_augment",
    "evaluate_traffic_model",
    "format_traffic_table",
    "get_traffic_profile",
    "run_traffic",
    "sample_scenes",
    "scene_r_elbo",
    "train_scene_baseline",
    "train_traffic_command",
    "write_traffic_report",
]

Cond = dict[str, torch.Tensor]
TRAFFIC_ABLATIONS = ("time_independent", "no_is", "imbalanced")


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class TrafficDataConfig:
    """Road maps and scenes.

    Attributes:
        num_maps: procedural maps (kinds drawn in turn from :data:`genneg.data.traffic.ROAD_KINDS`).
        map_size_m: edge of each procedural map, metres.
        map_resolution_m: raster cell edge, metres.
        carla_cache_dir: a cache of ``python -m genneg.data.traffic --cache-dir DIR``; when it holds the
            torchdrivesim wheel, its CARLA towns are added to the maps (nothing is downloaded at run time).
        num_train, num_heldout: scenes in the training and held-out sets (all valid).
        window_m: edge of a scene window, metres.
        max_vehicles: vehicle slots per scene ``A``; min_vehicles: smallest target count.
        proposals_per_scene: candidate vehicles per scene in the generator.
        crop_cells: edge of the map crop given to the networks, cells.
        crop_margin_m: the crop reaches this far beyond the scene window on every side, metres (so that a
            box near the window's edge sees the road that continues there; the crop edge is
            ``window_m + 2 · crop_margin_m``).
    """

    num_maps: int = 12
    map_size_m: float = 128.0
    map_resolution_m: float = 0.5
    carla_cache_dir: str = ""
    num_train: int = 20_000
    num_heldout: int = 2000
    window_m: float = 48.0
    max_vehicles: int = 32
    min_vehicles: int = 8
    proposals_per_scene: int = 256
    crop_cells: int = 32
    crop_margin_m: float = 0.0

    def __post_init__(self) -> None:
        if self.num_maps < 1 or self.num_train < 2 or self.num_heldout < 2:
            raise ValueError(f"TrafficDataConfig needs num_maps >= 1, num_train and num_heldout >= 2: {self}")
        if self.crop_cells < 8:
            raise ValueError(f"crop_cells must be >= 8 (the map encoder downsamples by 8), got "
                             f"{self.crop_cells}")

    def scene_config(self) -> SceneConfig:
        """The scene generator's options."""
        return SceneConfig(window_m=self.window_m, max_vehicles=self.max_vehicles,
                           min_vehicles=self.min_vehicles,
                           proposals_per_scene=max(self.proposals_per_scene, self.max_vehicles))


@dataclass(frozen=True)
class TrafficModelConfig:
    """The ε-network and the classifier network (the same transformer, METHOD.md 8).

    Attributes:
        denoiser: the ε-prediction transformer (``head`` is forced to ``"eps"``).
        classifier: the classifier transformer (``head`` forced to ``"logit"``).
        classifier_time_scale: the classifier's time input is ``c_noise · scale`` (``c_noise = ln σ / 4``),
            so that it spans a range like the DDPM step index the ε-network sees.
        classifier_sigma_max: classifiers are trained on ``σ`` log-uniform in
            ``[σ_0, min(σ_{T-1}, classifier_sigma_max)]`` (VE units; tokens have unit scale, so above ~10
            a scene is indistinguishable from noise and training there is wasted); at larger ``σ`` the
            classifier sees this level's time input.
        classifier_shrinkage: time-dependent classifiers see ``x_VE / (σ² + 1)`` (the posterior mean of
            unit-variance Gaussian data, "Wiener" preconditioning) instead of ``x_VE / sqrt(σ² + 1)`` (see
            :class:`SceneLogitNet`).
        classifier_map_samples: the classifier's tokens also carry the drivable raster sampled at each
            box's centre and corners (:func:`box_map_samples`; token width 12 instead of 7).
        classifier_noise: how classifiers draw their training noise level: ``"log_uniform"`` on
            ``[σ_0, classifier_sigma_max]``, or ``"ddpm"``, ``σ_t`` with ``t`` uniform over the DDPM's steps
            (METHOD.md 3 read literally: as in the baseline's training). Measured on the quick profile
            (same baseline and data, iteration 1): ``"ddpm"`` gave 31.4% infracted scenes and r-ELBO
            -1.236 per vehicle, ``"log_uniform"`` 19.5% and -1.130: uniform ``t`` spends 70% of the
            examples at ``σ > 1``, where the label is nearly unpredictable, and 10% below ``σ = 0.34``,
            where the oracle's decision is made.
        denoiser_map_samples: the ε-network's tokens also carry :func:`box_map_samples`, read at the
            posterior-mean position ``sqrt(ᾱ_t) x_t`` (see :class:`SceneEpsModel`).
        classifier_noise_aware: time-dependent classifiers fade the position and distance encodings whose
            wavelengths the noise of their input hides (``position_noise_std`` of
            :class:`~genneg.models.scene_transformer.SceneTransformer`; see :class:`SceneLogitNet`).
    """

    denoiser: SceneTransformerConfig = field(default_factory=SceneTransformerConfig)
    classifier: SceneTransformerConfig = field(default_factory=SceneTransformerConfig)
    classifier_time_scale: float = 250.0
    classifier_sigma_max: float = 20.0
    classifier_shrinkage: bool = True
    classifier_map_samples: bool = True
    classifier_noise_aware: bool = True
    denoiser_map_samples: bool = True
    classifier_noise: Literal["ddpm", "log_uniform"] = "log_uniform"

    def __post_init__(self) -> None:
        if self.classifier_noise not in ("ddpm", "log_uniform"):
            raise ValueError(f"classifier_noise must be 'ddpm' or 'log_uniform', got "
                             f"{self.classifier_noise!r}")
        if not self.classifier_sigma_max > 0 or not self.classifier_time_scale > 0:
            raise ValueError(f"classifier_sigma_max and classifier_time_scale must be > 0: {self}")


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


@dataclass(frozen=True)
class TrafficGenNegConfig:
    """The Gen-neG loop on scenes.

    Attributes:
        iterations: ``K`` stacked classifiers.
        num_samples: balanced scenes per iteration (half valid, half invalid).
        max_draws: most scenes drawn to collect them.
        guidance_scale: ``gamma`` of every classifier (1 is the method).
        sample_steps: ancestral sampling steps (evenly spaced subsequence of the DDPM's ``T``).
        sample_batch_size: scenes per sampler call.
        augment: train every classifier on the 8 dihedral copies of each labelled scene
            (:func:`dihedral_augment`).
    """

    iterations: int = 3
    num_samples: int = 20_000
    max_draws: int = 2_000_000
    guidance_scale: float = 1.0
    sample_steps: int = 100
    sample_batch_size: int = 256
    augment: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"TrafficGenNegConfig needs iterations >= 1, an even num_samples >= 2: {self}")
        if self.sample_steps < 1 or self.sample_batch_size < 1:
            raise ValueError(f"TrafficGenNegConfig needs sample_steps, sample_batch_size >= 1: {self}")


@dataclass(frozen=True)
class TrafficEvalConfig:
    """Evaluation of every model (the same contexts, noise and r-ELBO draws for each).

    Attributes:
        num_scenes: generated scenes per model (held-out contexts, cycled).
        r_elbo_scenes: held-out scenes in the r-ELBO; r_elbo_timesteps: timesteps per scene.
        p: success probability of ``N(r, p)``.
        render_scenes: scenes per PNG grid.
    """

    num_scenes: int = 4096
    r_elbo_scenes: int = 1024
    r_elbo_timesteps: int = 16
    p: float = 0.99999
    render_scenes: int = 8

    def __post_init__(self) -> None:
        if self.num_scenes < 2 or self.r_elbo_scenes < 1 or self.r_elbo_timesteps < 1:
            raise ValueError(f"TrafficEvalConfig sizes too small: {self}")
        if not 0 < self.p < 1:
            raise ValueError(f"TrafficEvalConfig.p must lie in (0, 1), got {self.p}")


@dataclass(frozen=True)
class TrafficExperimentConfig:
    """Everything a traffic run depends on (saved as the run's ``config.json``).

    ``num_threads``: PyTorch intra-op threads during the run (0 = leave PyTorch's setting).
    """

    experiment: str = "traffic"
    profile: str = "paper"
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0
    data: TrafficDataConfig = field(default_factory=TrafficDataConfig)
    model: TrafficModelConfig = field(default_factory=TrafficModelConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    baseline: SceneTrainingConfig = field(default_factory=SceneTrainingConfig)
    gen_neg: TrafficGenNegConfig = field(default_factory=TrafficGenNegConfig)
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(
        iterations=10_000, batch_size=128, lr=5e-4, grad_clip=1.0))
    ablations: tuple[str, ...] = TRAFFIC_ABLATIONS
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(
        iterations=10_000, batch_size=128, lr=2e-4, grad_clip=1.0))
    eval: TrafficEvalConfig = field(default_factory=TrafficEvalConfig)

    def __post_init__(self) -> None:
        if self.experiment != "traffic":
            raise ValueError(f"TrafficExperimentConfig.experiment must be 'traffic', got {self.experiment!r}")
        unknown = [a for a in self.ablations if a not in TRAFFIC_ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; choose from {list(TRAFFIC_ABLATIONS)}")


def _net(width: int, heads: int, blocks: int, head: str, channels: tuple[int, int, int]
         ) -> SceneTransformerConfig:
    """A transformer config; classifiers (``head="logit"``) get coarser position and distance encodings
    (shortest wavelength 0.05 of a half window instead of 0.01): guidance differentiates them, and the
    input gradient of a sinusoidal feature grows with its frequency."""
    return SceneTransformerConfig(width=width, heads=heads, blocks=blocks, time_embed_dim=max(16, width),
                                  distance_embed_dim=16 if width < 64 else 32,
                                  position_embed_dim=16 if width < 64 else 32, map_channels=channels,
                                  min_wavelength=0.05 if head == "logit" else 0.01, head=head)


def _paper() -> TrafficExperimentConfig:
    """METHOD.md 8 at the scale a single GPU trains in hours (the paper's data set is not public)."""
    channels = (32, 64, 128)
    return TrafficExperimentConfig(
        profile="paper",
        data=TrafficDataConfig(num_maps=48, num_train=50_000, num_heldout=2000, window_m=48.0,
                               max_vehicles=32, min_vehicles=8, proposals_per_scene=256, crop_cells=64,
                               crop_margin_m=8.0),
        model=TrafficModelConfig(denoiser=_net(128, 8, 4, "eps", channels),
                                 classifier=_net(128, 8, 4, "logit", channels)),
        ddpm=DDPMConfig(),
        baseline=SceneTrainingConfig(iterations=100_000, batch_size=256, lr=3e-4, warmup=1000,
                                     eval_every=5000, eval_scenes=512, eval_timesteps=16),
        gen_neg=TrafficGenNegConfig(iterations=3, num_samples=20_000, max_draws=2_000_000, sample_steps=100,
                                    sample_batch_size=512),
        classifier=ClassifierConfig(iterations=20_000, batch_size=256, lr=3e-4, grad_clip=1.0,
                                    ema_decay=0.999),
        distill=DistillConfig(iterations=20_000, batch_size=256, lr=1e-4, grad_clip=1.0),
        eval=TrafficEvalConfig(num_scenes=4096, r_elbo_scenes=1024, r_elbo_timesteps=16, render_scenes=8),
    )


def _quick() -> TrafficExperimentConfig:
    """Sized to show the method within 20 minutes on 2 CPU cores: scenes of 1-4 vehicles in a 32 m window
    (mean about 2.5), a 6k-step baseline, classifiers averaged over their last steps (EMA). The map crop
    reaches 8 m beyond the window (1 m cells): cropped at the window's edge, 5% of valid vehicles had a
    corner reading "not drivable" and the networks could not learn the offroad rule. With the dense
    scenes of the earlier quick profile (6-12 vehicles in 40 m) the quick-sized baseline put 47% of its
    vehicles in collisions and 94% of its scenes infracted, which left guidance nothing measurable to halve
    in this budget."""
    channels = (8, 16, 32)
    return TrafficExperimentConfig(
        profile="quick",
        num_threads=1,
        data=TrafficDataConfig(num_maps=8, num_train=4000, num_heldout=512, window_m=32.0, max_vehicles=4,
                               min_vehicles=1, proposals_per_scene=128, crop_cells=48, crop_margin_m=8.0),
        model=TrafficModelConfig(denoiser=_net(64, 4, 2, "eps", channels),
                                 classifier=_net(48, 4, 2, "logit", channels)),
        ddpm=DDPMConfig(),
        baseline=SceneTrainingConfig(iterations=6000, batch_size=64, lr=1e-3, warmup=100, eval_every=1000,
                                     eval_scenes=128, eval_timesteps=8),
        gen_neg=TrafficGenNegConfig(iterations=2, num_samples=2048, max_draws=40_000, sample_steps=40,
                                    sample_batch_size=256),
        classifier=ClassifierConfig(iterations=3000, batch_size=64, lr=1e-3, grad_clip=1.0, ema_decay=0.999),
        ablations=TRAFFIC_ABLATIONS,
        distill=DistillConfig(iterations=1500, batch_size=64, lr=3e-4, grad_clip=1.0),
        eval=TrafficEvalConfig(num_scenes=1024, r_elbo_scenes=512, r_elbo_timesteps=16, render_scenes=8),
    )


def _tiny() -> TrafficExperimentConfig:
    channels = (4, 8, 8)
    return TrafficExperimentConfig(
        profile="tiny",
        num_threads=1,
        data=TrafficDataConfig(num_maps=2, map_size_m=96.0, num_train=96, num_heldout=32, window_m=32.0,
                               max_vehicles=4, min_vehicles=1, proposals_per_scene=32, crop_cells=16,
                               crop_margin_m=4.0),
        model=TrafficModelConfig(denoiser=_net(16, 2, 1, "eps", channels),
                                 classifier=_net(16, 2, 1, "logit", channels)),
        ddpm=DDPMConfig(),
        baseline=SceneTrainingConfig(iterations=400, batch_size=32, lr=3e-3, warmup=10, eval_every=200,
                                     eval_scenes=16, eval_timesteps=2),
        gen_neg=TrafficGenNegConfig(iterations=2, num_samples=16, max_draws=4000, sample_steps=10,
                                    sample_batch_size=64),
        classifier=ClassifierConfig(iterations=15, batch_size=16, lr=3e-3),
        ablations=TRAFFIC_ABLATIONS,
        distill=DistillConfig(iterations=10, batch_size=16, lr=1e-3),
        eval=TrafficEvalConfig(num_scenes=32, r_elbo_scenes=16, r_elbo_timesteps=2, render_scenes=4),
    )


TRAFFIC_PROFILES: dict[str, Callable[[], TrafficExperimentConfig]] = {
    "tiny": _tiny, "quick": _quick, "paper": _paper}


def get_traffic_profile(name: str) -> TrafficExperimentConfig:
    """The named traffic profile (``tiny``, ``quick`` or ``paper``)."""
    if name not in TRAFFIC_PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(TRAFFIC_PROFILES)}")
    return TRAFFIC_PROFILES[name]()


# --------------------------------------------------------------------------------------------------
# networks


class SceneEpsModel(nn.Module):
    """The DDPM ε-model of scenes: ``eps(x_t (B, A, 7), t (B,) int64, **cond) -> (B, A, 7)``.

    Real vehicle slots get the transformer's prediction (time input: the step index as a float). Padding
    slots hold the known token 0, so their ε is known exactly, ``ε = x_t / sqrt(1 - ᾱ_t)``, and is returned
    as such: the DDPM loss has no error there (it is the loss masked by ``valid``), and the ancestral
    sampler's ``x̂0`` is 0 there at every step.

    With ``map_samples`` (the token normalisation) each token is extended by :func:`box_map_samples` read at
    ``sqrt(ᾱ_t) x_t``, the posterior mean of the token for unit-variance data (the point the classifiers
    read too): at low noise the network sees whether each corner of its box is on the road, at the crop's
    resolution (the map tokens of the cross-attention are 8 cells wide).

    Args:
        config: the transformer (``head="eps"``; ``token_dim = 7 + MAP_SAMPLES`` and ``output_dim = 7``
            with map samples).
        schedule: the DDPM schedule (for ``ᾱ_t``).
        map_samples: the token normalisation, to add the map samples; None: plain tokens.
    """

    def __init__(self, config: SceneTransformerConfig, schedule: DDPMSchedule,
                 map_samples: TokenNormalisation | None = None) -> None:
        super().__init__()
        if config.head != "eps":
            raise ValueError(f"SceneEpsModel needs head='eps', got {config.head!r}")
        width = 7 + (MAP_SAMPLES if map_samples is not None else 0)
        if config.token_dim != width or (config.output_dim or config.token_dim) != 7:
            raise ValueError(f"SceneEpsModel needs token_dim={width} and 7 outputs, got token_dim="
                             f"{config.token_dim}, output_dim={config.output_dim}")
        self.net = SceneTransformer(config)
        self.map_samples = map_samples
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.to(torch.float32), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, valid: torch.Tensor, map_raster: torch.Tensor,
                **context: torch.Tensor) -> torch.Tensor:
        """``x_t`` ``(B, A, 7)``, ``t`` ``(B,)`` int64, ``valid`` ``(B, A)`` bool, ``map_raster``
        ``(B, 1, C, C)`` -> ``(B, A, 7)`` ε. Other conditioning entries (``centre_m``, ``map_index``: the
        oracle's) are not network inputs and are ignored."""
        alpha_bar = self.alphas_cumprod.to(x_t.device)[t].to(x_t.dtype)
        x_in = x_t
        if self.map_samples is not None:
            x_mean = x_t * alpha_bar.sqrt()[:, None, None]
            reads = box_map_samples(x_mean, map_raster, self.map_samples, extent=self.net.config.map_extent)
            x_in = torch.cat([x_t, reads], dim=-1)
        out = self.net(x_in, t.to(x_t.dtype), valid, map_raster)
        padding_eps = x_t / torch.sqrt(1 - alpha_bar)[:, None, None]
        return torch.where(valid[..., None], out, padding_eps)

    def num_parameters(self) -> int:
        """Trainable parameters."""
        return self.net.num_parameters()


class SceneLogitNet(nn.Module):
    """The per-vehicle classifier network ``F(x_in (B, A, 7), c_noise (B,), **cond) -> (B, A)`` logits.

    The same transformer as the ε-model with one logit per vehicle (zero at padding); wrap it in a
    :class:`~genneg.guidance.TimeClassifier` with ``sigma_data = 1``, which hands it
    ``x_in = x_VE / sqrt(σ² + 1)`` (the DDPM ``x_t``) and ``c_noise = ln σ / 4``. Its time input is
    ``clamp(c_noise, max=ln(sigma_max) / 4) · time_scale``.

    With ``shrinkage`` the transformer reads ``x_in / sqrt(σ² + 1) = x_VE / (σ² + 1)``, the posterior mean
    of ``x0`` for unit-variance Gaussian data. Why: the guided one-step estimate moves by
    ``σ² ∇_{x_VE} log c``; for the Bayes-optimal classifier that shift is bounded by the data's spread
    (it is a difference of conditional means), but a network whose input gradient is O(1) at every noise
    level (nothing in Eq. 9 penalises input sensitivity where labels are unpredictable) moves it by
    ``O(σ)`` when it reads ``x_VE / sqrt(σ² + 1)``, and by ``O(1)`` when it reads ``x_VE / (σ² + 1)``. A
    time-independent classifier (``shrinkage=False``) reads its input as given.

    With ``map_samples`` (the token normalisation) each token is extended by :func:`box_map_samples`: the
    drivable raster at the box's centre and corners, so that the classifier sees the road at the
    resolution of the crop (the transformer's map tokens are 8 cells wide).

    With ``noise_aware`` (time-dependent classifiers only) the transformer is told how far the clean
    positions may lie from those it reads, the posterior std ``σ / sqrt(σ² + 1)`` of ``x0`` for unit-variance
    data, and fades the encodings finer than it (each feature becomes its expectation over that
    uncertainty); the map samples read the crop blurred by it. Why: guidance
    differentiates the classifier, and a sinusoidal feature of wavelength ``λ`` has an input gradient
    ``∝ 1/λ`` (a sharp raster read bilinearly, ``∝ 1/cell``); features the noise hides carry no information
    about the label, but a trained network keeps small weights on them, which is enough to make
    ``∇ log c`` large and erratic at high noise (measured without fading: the guided ε moved by ~1 per
    coordinate at ``σ ≈ 1-3``, where the Bayes-optimal classifier is nearly flat), costing r-ELBO for nothing.
    """

    def __init__(self, config: SceneTransformerConfig, time_scale: float, sigma_max: float,
                 shrinkage: bool = False, map_samples: TokenNormalisation | None = None,
                 noise_aware: bool = False) -> None:
        super().__init__()
        if config.head != "logit":
            raise ValueError(f"SceneLogitNet needs head='logit', got {config.head!r}")
        expected = 7 + (MAP_SAMPLES if map_samples is not None else 0)
        if config.token_dim != expected:
            raise ValueError(f"SceneLogitNet needs token_dim={expected}, got {config.token_dim}")
        self.net = SceneTransformer(config)
        self.time_scale = float(time_scale)
        self.c_noise_max = math.log(sigma_max) / 4
        self.shrinkage = bool(shrinkage)
        self.map_samples = map_samples
        self.noise_aware = bool(noise_aware)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, *, valid: torch.Tensor,
                map_raster: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, A)``; other conditioning entries are ignored (as in :class:`SceneEpsModel`)."""
        c_noise = c_noise.to(x_in.dtype)
        sigma = torch.exp(4 * c_noise)
        # how far the clean token may lie from what the network reads: the posterior std of x0 for
        # unit-variance data, σ / sqrt(σ² + 1), whether it reads the posterior mean (shrinkage) or not
        noise_std = sigma * torch.rsqrt(1 + sigma**2)
        if self.shrinkage:
            x_in = x_in * torch.rsqrt(1 + sigma**2)[:, None, None]  # / sqrt(σ² + 1)
        if self.map_samples is not None:
            map_std = noise_std if self.noise_aware else None
            reads = box_map_samples(x_in, map_raster, self.map_samples, noise_std=map_std,
                                    extent=self.net.config.map_extent)
            x_in = torch.cat([x_in, reads], dim=-1)
        return self.net(x_in, c_noise.clamp(max=self.c_noise_max) * self.time_scale, valid, map_raster,
                        position_noise_std=noise_std if self.noise_aware else None)


MAP_BLUR_CELLS = (0.0, 1.5, 4.0)
"""Gaussian blurs (std, crop cells) of the drivable crop read by :func:`box_map_samples`: the sharp raster,
then two smoothed copies whose values still change a few metres away from a road edge, so that a box
off the road reads (and, differentiated, points) towards it."""
MAP_SAMPLES = 5 * len(MAP_BLUR_CELLS)


def blurred_crops(map_raster: torch.Tensor, blur_cells: Sequence[float] = MAP_BLUR_CELLS,
                  noise_cells: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 1, C, C)`` crops -> ``(B, len(blur_cells), C, C)``: each blurred by a Gaussian of that std
    (cells; 0 = unchanged), outside the crop counted as not drivable (zero padding).

    ``noise_cells`` ``(B,)``: std (cells) of Gaussian noise on the reading point; each level's std becomes
    ``sqrt(blur² + noise²)``, so the crop read at a noisy point gives the expected reading over the noise
    (the same idea as the faded encodings of :func:`genneg.models.scene_transformer.sinusoidal_embedding`).
    """
    b, _, c, _ = map_raster.shape
    levels = torch.as_tensor(blur_cells, dtype=map_raster.dtype, device=map_raster.device)
    if noise_cells is None:
        std = levels[None].expand(b, -1)
    else:
        std = torch.sqrt(levels[None] ** 2 + noise_cells.to(map_raster.dtype)[:, None] ** 2)
    std = std.detach().clamp(max=c / 4)  # (B, L); wider blurs are about flat over the crop anyway
    x = map_raster.expand(-1, len(blur_cells), -1, -1).reshape(b * len(blur_cells), 1, c, c)
    std = std.reshape(-1)
    out = x.clone()
    # Fine blurs run at full resolution (radius <= 3 · _COARSE_BLUR_CELLS). Wider ones run on the crop
    # average-pooled by 4 (pooling is itself a blur of variance (4² - 1) / 12 cells², removed from the
    # requested one) and are upsampled back: a per-sample kernel of radius 3 s at full resolution cost
    # more than the whole classifier at s ≈ 12.
    fine = (std > 0) & (std <= _COARSE_BLUR_CELLS)
    if bool(fine.any()):
        out[fine] = _gaussian_blur(x[fine], std[fine])
    coarse = std > _COARSE_BLUR_CELLS
    if bool(coarse.any()):
        small = nn.functional.adaptive_avg_pool2d(x[coarse], (max(1, c // 4), max(1, c // 4)))
        residual = torch.sqrt((std[coarse] ** 2 - (4**2 - 1) / 12).clamp_min(0)) / 4
        small = _gaussian_blur(small, residual)
        out[coarse] = nn.functional.interpolate(small, size=(c, c), mode="bilinear", align_corners=False)
    return out.reshape(b, len(blur_cells), c, c)


_COARSE_BLUR_CELLS = 4.0


def _gaussian_blur(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` images, each blurred by a Gaussian of its own ``std`` ``(N,)`` (cells; > 0), zero
    padding; one grouped separable convolution."""
    n, _, h, w = x.shape
    radius = max(1, math.ceil(3 * float(std.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / std[:, None].clamp_min(1e-3)) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).reshape(n, 1, 1, 2 * radius + 1)
    y = nn.functional.conv2d(x.reshape(1, n, h, w), kernel, padding=(0, radius), groups=n)
    y = nn.functional.conv2d(y, kernel.transpose(-1, -2), padding=(radius, 0), groups=n)
    return y.reshape(n, 1, h, w)


def box_map_samples(tokens: torch.Tensor, map_raster: torch.Tensor, norm: TokenNormalisation,
                    blur_cells: Sequence[float] = MAP_BLUR_CELLS,
                    noise_std: torch.Tensor | None = None, extent: float = 1.0) -> torch.Tensor:
    """The drivable crop, sharp and blurred (:func:`blurred_crops`), read at each box's centre and four
    corners (bilinear, differentiable in the token).

    Args:
        tokens: ``(B, A, 7)`` normalised tokens (scene frame; the window is ``[-1, 1]²``).
        map_raster: ``(B, 1, C, C)`` float crop, 1 = drivable (row = y, as :func:`crop_maps`).
        norm: the token normalisation (box sizes in metres -> normalised units).
        blur_cells: blur stds, cells.
        noise_std: optional ``(B,)`` std of the noise on the token positions (normalised units); the
            crop is then blurred further by it (:func:`blurred_crops`).
        extent: the crop spans ``[-extent, extent]²`` in normalised units (1: exactly the window).

    Returns:
        ``(B, A, 5 · len(blur_cells))`` in ``[-1, 1]``: ``2 · drivable - 1``, five points (centre, four
        corners) per blur level in order; points outside the crop read -1 (not drivable).
    """
    cx, cy = tokens[..., 0], tokens[..., 1]
    heading = torch.sqrt(tokens[..., 2] ** 2 + tokens[..., 3] ** 2 + 1e-6)  # finite gradient at (0, 0)
    cos_h, sin_h = tokens[..., 2] / heading, tokens[..., 3] / heading
    scale = 2 * norm.position_scale_m
    half_l = ((tokens[..., 4] * norm.length_std_m + norm.length_mean_m) / scale).clamp_min(0)
    half_w = ((tokens[..., 5] * norm.width_std_m + norm.width_mean_m) / scale).clamp_min(0)
    points = [torch.stack([cx, cy], dim=-1)]
    for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        points.append(torch.stack([cx + a * half_l * cos_h - b * half_w * sin_h,
                                   cy + a * half_l * sin_h + b * half_w * cos_h], dim=-1))
    grid = torch.stack(points, dim=2) / extent  # (B, A, 5, 2) as (x, y), the crop is [-1, 1]²
    cells = map_raster.shape[-1]
    noise_cells = None if noise_std is None else noise_std * (cells / (2 * extent))
    fields = blurred_crops(map_raster.to(tokens.dtype), blur_cells, noise_cells)
    drivable = nn.functional.grid_sample(fields, grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False)  # (B, S, A, 5)
    return (2 * drivable - 1).permute(0, 2, 1, 3).flatten(2)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# scenes as tensors, the oracle


@dataclass(frozen=True)
class SceneSet:
    """Scenes as tensors: tokens and their conditioning.

    Attributes:
        tokens: ``(S, A, 7)`` float32 normalised tokens (zero at padding).
        cond: ``valid (S, A)`` bool, ``map_raster (S, 1, C, C)`` float32, ``centre_m (S, 2)`` float64,
            ``map_index (S,)`` int64.
    """

    tokens: torch.Tensor
    cond: Cond

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_dataset(cls, dataset: TrafficSceneDataset, device: torch.device | str = "cpu") -> SceneSet:
        """Read a written data set (memory-mapped) into tensors on ``device``."""
        a = dataset.arrays
        cond = {
            "valid": torch.from_numpy(np.array(a["valid"], dtype=bool)),
            "map_raster": torch.from_numpy(np.array(a["map_crops"], dtype=np.float32))[:, None],
            "centre_m": torch.from_numpy(np.array(a["centre_m"], dtype=np.float64)),
            "map_index": torch.from_numpy(np.array(a["map_index"], dtype=np.int64)),
        }
        tokens = torch.from_numpy(np.array(a["tokens"], dtype=np.float32))
        return cls(tokens.to(device), {k: v.to(device) for k, v in cond.items()})

    def rows(self, index: torch.Tensor) -> SceneSet:
        """The scenes ``index`` (``(n,)`` int64)."""
        return SceneSet(self.tokens[index], {k: v[index] for k, v in self.cond.items()})

    def contexts(self, index: torch.Tensor) -> Cond:
        """The conditioning of scenes ``index``."""
        return {k: v[index] for k, v in self.cond.items()}


class TrafficTokenOracle:
    """Per-vehicle verdicts of scene tokens on their maps: ``oracle(tokens, **cond) -> (n, A)`` bool.

    Tokens are decoded to world-frame boxes with :func:`genneg.data.traffic.tokens_to_scenes` around each
    scene's ``centre_m`` and judged by a :class:`~genneg.oracles.TrafficOracle` (the C++ extension on the
    CPU) of the scene's map. Absent slots are valid. A vehicle with a non-finite token is counted as both
    colliding and offroad (the model produced no box).

    Args:
        road_maps: the maps ``map_index`` refers to.
        norm: the token normalisation.
        min_size_m: smallest decoded length and width, metres.
    """

    def __init__(self, road_maps: Sequence[RoadMap], norm: TokenNormalisation,
                 min_size_m: float = 0.1) -> None:
        self.road_maps = list(road_maps)
        self.norm = norm
        self.min_size_m = float(min_size_m)
        self._oracles = [TrafficOracle(m.drivable_map) for m in self.road_maps]

    def details(self, tokens: torch.Tensor, *, valid: torch.Tensor, centre_m: torch.Tensor,
                map_index: torch.Tensor, **context: torch.Tensor) -> TrafficVerdicts:
        """Collision and offroad masks ``(n, A)`` bool tensors on ``tokens.device`` (True = infraction).

        Args:
            tokens: ``(n, A, 7)`` float; valid: ``(n, A)`` bool; centre_m: ``(n, 2)`` metres;
            map_index: ``(n,)`` int64 into ``road_maps``. Other entries are ignored.
        """
        if tokens.ndim != 3 or tokens.shape[:2] != valid.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and valid {tuple(valid.shape)} disagree")
        tok = tokens.detach().cpu().to(torch.float64).numpy()
        present = valid.detach().cpu().numpy().astype(bool)
        finite = np.isfinite(tok).all(axis=-1)
        broken = present & ~finite
        tok = np.where(finite[..., None], tok, 0.0)
        boxes, _ = tokens_to_scenes(tok, centre_m.detach().cpu().numpy(), self.norm, self.min_size_m)
        judged = present & finite
        collision = np.zeros(present.shape, dtype=bool)
        offroad = np.zeros(present.shape, dtype=bool)
        maps = map_index.detach().cpu().numpy()
        for m in np.unique(maps):
            if not 0 <= m < len(self._oracles):
                raise ValueError(f"map_index {int(m)} out of range for {len(self._oracles)} maps")
            rows = np.flatnonzero(maps == m)
            v = self._oracles[int(m)].details(boxes[rows], judged[rows])
            collision[rows], offroad[rows] = v.collision, v.offroad
        collision |= broken
        offroad |= broken
        device = tokens.device
        return TrafficVerdicts(torch.from_numpy(collision).to(device), torch.from_numpy(offroad).to(device))

    def __call__(self, tokens: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """``(n, A)`` bool, True = the vehicle is present and fine, or absent."""
        v = self.details(tokens, **cond)
        return ~(v.collision | v.offroad)


def dihedral_augment(dataset: BalancedDataset) -> BalancedDataset:
    """The 8 images of every scene under the symmetries of the square window (rotations by multiples of
    90° and reflections), tokens and map crop transformed together.

    The oracle's verdicts are invariant under rigid motions of the world (map and vehicles together), so
    each copy keeps its scene's labels, weights and priors; it is a scene in a rotated or mirrored world,
    and the crop is the exact image of the original crop (a square raster). The oracle-only entries of the
    conditioning (``centre_m``, ``map_index``) are copied unchanged: the classifier does not read them.

    Args:
        dataset: labelled scenes ``x (N, A, 7)`` with ``cond["map_raster"] (N, 1, C, C)``.

    Returns:
        ``8 N`` examples (the originals first); ``num_drawn`` is raised to at least ``8 N``.
    """
    if dataset.cond is None or "map_raster" not in dataset.cond:
        raise ValueError("dihedral_augment needs scenes with a map_raster conditioning entry")
    xs, crops = [dataset.x], [dataset.cond["map_raster"]]
    for flip in (False, True):
        x, crop = dataset.x, dataset.cond["map_raster"]
        if flip:  # x -> -x: cos h -> -cos h; columns reversed
            x = x * torch.tensor([-1, 1, -1, 1, 1, 1, 1], dtype=x.dtype, device=x.device)
            crop = crop.flip(-1)
            xs.append(x)
            crops.append(crop)
        for _ in range(3):  # (x, y) -> (-y, x), (cos, sin) -> (-sin, cos); crop'[i, j] = crop[C-1-j, i]
            x = torch.cat([-x[..., 1:2], x[..., 0:1], -x[..., 3:4], x[..., 2:3], x[..., 4:]], dim=-1)
            crop = torch.rot90(crop, k=-1, dims=(-2, -1))
            xs.append(x)
            crops.append(crop)
    repeat = len(xs)

    def tile(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.repeat(repeat, *([1] * (t.ndim - 1)))

    valid = dataset.part_mask if dataset.part_mask is not None else dataset.cond.get("valid")
    x_all = torch.cat(xs) * tile(valid)[..., None] if valid is not None else torch.cat(xs)
    cond = {k: tile(v) for k, v in dataset.cond.items()}
    cond["map_raster"] = torch.cat(crops)
    return BalancedDataset(x_all, tile(dataset.labels), tile(dataset.part_labels), dataset.pi_pos,
                           dataset.pi_neg, max(dataset.num_drawn, repeat * len(dataset)),
                           part_mask=tile(dataset.part_mask), balanced=dataset.balanced,
                           example_weights=tile(dataset.example_weights),
                           extra={**dataset.extra, "dihedral_copies": repeat}, cond=cond)


def _part_mask(x: torch.Tensor, *, valid: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
    """``part_mask_fn`` of :func:`draw_balanced`: real vehicles are the parts."""
    return valid


# --------------------------------------------------------------------------------------------------
# sampling, r-ELBO, baseline training


def _bind(model: Callable[..., torch.Tensor], cond: Cond
          ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model(x, t, **cond)`` as ``f(x, t)`` for the samplers and metrics written for ``eps(x, t)``."""
    return lambda x, t: model(x, t, **cond)


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
    """Ancestral DDPM samples of scenes in the contexts ``cond`` (one scene per row).

    Args:
        eps_model: ``eps(x_t, t, **cond)``, plain or guided.
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
    out, seconds = [], []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, disable=not progress or len(starts) < 2, desc="sampling scenes", leave=False):
        rows = slice(start, min(start + batch_size, n))
        batch = {k: v[rows] for k, v in cond.items()}
        m = batch["valid"].shape[0]
        x_T = torch.randn((m, a, 7), generator=generator).to(device)
        step_gen = torch.Generator(device=device)
        step_gen.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        t0 = time.perf_counter()
        x = ddpm_ancestral_sample(_bind(eps_model, batch), x_T, schedule, num_steps=num_steps,
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

    Returns:
        ``(S,)`` float64, summed over the real vehicles' token dimensions.
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(scenes), batch_scenes):
        stop = min(start + batch_scenes, len(scenes))
        chunk = scenes.rows(torch.arange(start, stop, device=scenes.tokens.device))
        cond = {k: v.repeat_interleave(num_timesteps, dim=0) for k, v in chunk.cond.items()}
        out.append(r_elbo(_bind(eps_model, cond), chunk.tokens, schedule, num_timesteps=num_timesteps,
                          generator=generator, batch_size=len(chunk) * num_timesteps))
    return torch.cat(out)


def _mean_per_vehicle(values: torch.Tensor, valid: torch.Tensor) -> float:
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
    """Train the ε-model in place with Adam on :func:`~genneg.diffusion.ddpm.ddpm_loss` (masked by
    :class:`SceneEpsModel`'s exact padding ε), keeping the (EMA) weights of the best held-out r-ELBO.

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
    optimizer = torch.optim.Adam(eps_model.parameters(), lr=config.lr)
    held = heldout.rows(torch.arange(min(config.eval_scenes, len(heldout)), device=device))
    best = {"iteration": 0, "r_elbo": -math.inf, "state": None}
    losses: list[float] = []
    ema = copy.deepcopy(eps_model).eval().requires_grad_(False) if config.ema_decay > 0 else None
    weights = ema if ema is not None else eps_model

    def evaluate(step: int) -> None:
        weights.eval()
        value = _mean_per_vehicle(scene_r_elbo(weights, held, schedule, num_timesteps=config.eval_timesteps,
                                               seed=seed), held.cond["valid"])
        eps_model.train()
        record = {"iteration": step, "r_elbo_per_vehicle": value,
                  "loss": float(np.mean(losses[-100:])) if losses else None}
        if on_eval is not None:
            on_eval(record)
        if value > best["r_elbo"]:
            best.update(iteration=step, r_elbo=value, state=copy.deepcopy(weights.state_dict()))

    eps_model.train()
    bar = tqdm(range(config.iterations), disable=not progress, desc="baseline (DDPM)", leave=False)
    for step in bar:
        set_learning_rate(optimizer, config.lr, step, config.iterations, config.lr_schedule,
                          config.lr_min_fraction, config.warmup)
        idx = torch.randint(len(train), (config.batch_size,), generator=generator).to(device)
        batch = train.rows(idx)
        loss = ddpm_loss(_bind(eps_model, batch.cond), batch.tokens, schedule, generator=generator)
        optimizer_step(optimizer, loss, eps_model.parameters(), config.grad_clip)
        if ema is not None:
            ema_update(ema, eps_model, config.ema_decay, step)
        losses.append(float(loss.detach()))
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if config.eval_every and (step + 1) % config.eval_every == 0:
            evaluate(step + 1)
    if not config.eval_every or config.iterations % config.eval_every:
        evaluate(config.iterations)
    if best["state"] is not None:
        eps_model.load_state_dict(best["state"])
    eps_model.eval()
    return {"best_iteration": best["iteration"], "best_r_elbo": best["r_elbo"],
            "iterations_run": config.iterations, "final_loss": float(np.mean(losses[-100:]))}


# --------------------------------------------------------------------------------------------------
# the task


class TrafficTask:
    """Data, oracle, networks and sampler of one traffic run.

    Attributes:
        config: the run's config; schedule: the DDPM schedule; road_maps; norm: token normalisation;
        train, heldout: :class:`SceneSet` s; oracle: :class:`TrafficTokenOracle`;
        classifier_noise: the ``EDMConfig`` the classifiers are trained over (the DDPM's VE noise range,
        ``sigma_data = 1``); device.
    """

    def __init__(self, config: TrafficExperimentConfig, data_dir: Path) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.schedule = DDPMSchedule(config.ddpm)
        train_set = TrafficSceneDataset(data_dir / "train")
        heldout_set = TrafficSceneDataset(data_dir / "heldout")
        self.road_maps = train_set.road_maps()
        self.norm = train_set.norm
        self.train = SceneSet.from_dataset(train_set, self.device)
        self.heldout = SceneSet.from_dataset(heldout_set, self.device)
        self.oracle = TrafficTokenOracle(self.road_maps, self.norm)
        self.crop_extent = float(train_set.crop_extent)
        sig = self.schedule.sigmas
        top = min(float(sig[-1]), config.model.classifier_sigma_max)
        if not top > float(sig[0]):
            raise ValueError(f"model.classifier_sigma_max={config.model.classifier_sigma_max} must exceed "
                             f"the schedule's smallest noise level {float(sig[0]):.3g}")
        self.classifier_noise = EDMConfig(sigma_min=float(sig[0]), sigma_max=top, sigma_data=1.0)
        #: the noise levels classifiers are trained on (None: log-uniform over ``classifier_noise``)
        self.classifier_noise_levels = sig.clone() if config.model.classifier_noise == "ddpm" else None

    def new_eps_model(self) -> SceneEpsModel:
        """A fresh baseline-shaped ε-model."""
        model = self.config.model
        extra = MAP_SAMPLES if model.denoiser_map_samples else 0
        cfg = dataclasses.replace(model.denoiser, head="eps", token_dim=7 + extra, output_dim=7,
                                  map_extent=self.crop_extent)
        return SceneEpsModel(cfg, self.schedule,
                             map_samples=self.norm if model.denoiser_map_samples else None).to(self.device)

    def new_classifier(self, time_dependent: bool) -> TimeClassifier:
        """A fresh per-vehicle classifier (time-independent for the ablation). Its output layer starts at
        zero: ``c = 1/2`` everywhere, no guidance until it has learned something."""
        model = self.config.model
        cfg = dataclasses.replace(model.classifier, head="logit",
                                  token_dim=7 + (MAP_SAMPLES if model.classifier_map_samples else 0),
                                  map_extent=self.crop_extent)
        net = SceneLogitNet(cfg, model.classifier_time_scale, self.classifier_noise.sigma_max,
                            shrinkage=time_dependent and model.classifier_shrinkage,
                            map_samples=self.norm if model.classifier_map_samples else None,
                            noise_aware=time_dependent and model.classifier_noise_aware)
        last = net.net.decoder[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return TimeClassifier(net, sigma_data=1.0, time_dependent=time_dependent).to(self.device)

    def guide(self, eps_model: nn.Module, classifiers: Sequence[nn.Module]) -> nn.Module:
        """``ε_K``: the stack's guidance (sum over real vehicles of ``log c_k``), or the model itself."""
        if not classifiers:
            return eps_model
        gamma = self.config.gen_neg.guidance_scale
        return GuidedEps(eps_model, self.schedule, list(classifiers), [gamma] * len(classifiers),
                         coordinates="ve", part_mask_key="valid")

    def sample(self, model: Callable[..., torch.Tensor], cond: Cond, generator: torch.Generator, *,
               progress: bool = False) -> tuple[torch.Tensor, list[float]]:
        """Scenes of ``model`` in the contexts ``cond`` (:func:`sample_scenes` with the run's settings)."""
        g = self.config.gen_neg
        return sample_scenes(model, cond, self.schedule, num_steps=g.sample_steps,
                             batch_size=g.sample_batch_size, generator=generator, progress=progress)

    def context_sampler(self, model: Callable[..., torch.Tensor], generator: torch.Generator, *,
                        progress: bool = False) -> Callable[[int], tuple[torch.Tensor, Cond]]:
        """``sample_fn(n) -> (tokens, cond)`` for :func:`draw_balanced`: ``n`` training contexts drawn
        uniformly (with replacement), then a scene of ``model`` in each."""

        def sample_fn(n: int) -> tuple[torch.Tensor, Cond]:
            idx = torch.randint(len(self.train), (n,), generator=generator).to(self.device)
            cond = self.train.contexts(idx)
            x, _ = self.sample(model, cond, generator, progress=progress)
            return x, cond

        return sample_fn

    def eval_contexts(self) -> Cond:
        """The evaluation contexts: the first held-out scenes' contexts, cycled to ``eval.num_scenes``."""
        n = self.config.eval.num_scenes
        idx = torch.arange(n, device=self.device) % len(self.heldout)
        return self.heldout.contexts(idx)


def build_traffic_data(config: TrafficExperimentConfig, data_dir: Path, *, progress: bool = False
                       ) -> dict[str, Any]:
    """Write the run's road maps and its training and held-out scene sets under ``data_dir``."""
    d = config.data
    network = RoadNetworkConfig(size_m=d.map_size_m, resolution_m=d.map_resolution_m)
    maps = generate_road_maps(network, d.num_maps, seed=stage_seed(config.seed, "data/maps") % 2**31)
    carla = 0
    if d.carla_cache_dir:
        cache = Path(d.carla_cache_dir)
        if any(cache.glob("torchdrivesim-*.whl")):
            from genneg.data.traffic import fetch_carla_maps

            towns = fetch_carla_maps(cache, d.map_resolution_m)
            maps += list(towns)
            carla = len(towns)
        elif progress:
            print(f"[genneg] no torchdrivesim wheel in {cache}: procedural maps only", file=sys.stderr)
    scene_cfg = d.scene_config()
    norm = TokenNormalisation(position_scale_m=0.5 * d.window_m)
    info = {"maps": len(maps), "carla_maps": carla}
    for split, n in (("train", d.num_train), ("heldout", d.num_heldout)):
        target = data_dir / split
        if target.exists():
            import shutil

            shutil.rmtree(target)
        write_traffic_dataset(target, maps, n, scene_cfg, seed=stage_seed(config.seed, f"data/{split}"),
                              norm=norm, crop_cells=d.crop_cells, crop_margin_m=d.crop_margin_m,
                              extra_config={"road_network": dataclasses.asdict(network)})
        valid = np.load(target / "valid.npy", mmap_mode="r")
        info[f"{split}_scenes"] = n
        info[f"{split}_vehicles_per_scene"] = float(np.asarray(valid).sum(1).mean())
    return info


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate_traffic_model(
    task: TrafficTask, model: Callable[..., torch.Tensor], *, seed: int, progress: bool = False
) -> tuple[dict[str, Any], torch.Tensor, Cond, TrafficVerdicts]:
    """Infraction metrics, r-ELBO and sampling time of one model on the run's evaluation contexts.

    The noise (from ``seed``'s ``eval/noise`` stream) and the r-ELBO draws are the same for every model of a
    run (paired comparisons).

    Returns:
        ``(metrics, tokens (n, A, 7), cond, verdicts)``.
    """
    cfg = task.config.eval
    cond = task.eval_contexts()
    generator = stage_generator(seed, "eval/noise")
    tokens, seconds = task.sample(model, cond, generator, progress=progress)
    verdicts = task.oracle.details(tokens, **cond)
    valid = cond["valid"]
    collision, offroad = verdicts.collision, verdicts.offroad
    ok = ~(collision | offroad)
    scene = infraction_rate(ok | ~valid)
    vehicle = infraction_rate(ok[valid])
    held = task.heldout.rows(torch.arange(min(cfg.r_elbo_scenes, len(task.heldout)), device=task.device))
    r = scene_r_elbo(model, held, task.schedule, num_timesteps=cfg.r_elbo_timesteps,
                     seed=stage_seed(seed, "eval/r_elbo"))
    n_parallel = num_parallel_samples(scene.rate, cfg.p) if scene.rate < 1 else None
    metrics = {
        "infraction": scene.rate, "infraction_low": scene.low, "infraction_high": scene.high,
        "infraction_vehicle": vehicle.rate, "infraction_vehicle_low": vehicle.low,
        "infraction_vehicle_high": vehicle.high,
        "collision": float((collision & valid).any(1).float().mean()),
        "offroad": float((offroad & valid).any(1).float().mean()),
        "collision_vehicle": float(collision[valid].float().mean()),
        "offroad_vehicle": float(offroad[valid].float().mean()),
        "r_elbo": _mean_per_vehicle(r, held.cond["valid"]),
        "n_parallel": n_parallel, "num_scenes": int(tokens.shape[0]),
        "batch_size": task.config.gen_neg.sample_batch_size,
        "sample_seconds_per_batch": float(np.median(seconds)) if seconds else None,
    }
    return metrics, tokens, cond, verdicts


# --------------------------------------------------------------------------------------------------
# the loop


class _TrafficRunner:
    """Runs the stages in order, skipping finished ones (module docstring)."""

    def __init__(self, task: TrafficTask, run: RunDir, progress: bool) -> None:
        self.task, self.run, self.progress = task, run, progress
        self.config = task.config
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[genneg traffic {time.perf_counter() - self.started:7.1f}s] {text}", file=sys.stderr,
                  flush=True)

    def stage(self, name: str, body: Callable[[torch.Generator], dict[str, Any] | None]) -> None:
        if self.run.is_done(name):
            self.say(f"{name}: done earlier, loaded")
            return
        self.say(f"{name}: start")
        t0 = time.perf_counter()
        info = body(stage_generator(self.config.seed, name)) or {}
        self.run.mark_done(name, {"seconds": time.perf_counter() - t0, **info})
        self.say(f"{name}: done in {time.perf_counter() - t0:.1f}s")

    # models on disk --------------------------------------------------------------------------------
    def _eps_path(self, name: str) -> Path:
        return self.run.path("checkpoints", f"{name}.safetensors")

    def _classifier_path(self, name: str) -> Path:
        return self.run.path("checkpoints", f"classifier_{name}.safetensors")

    def load_eps(self, name: str) -> SceneEpsModel:
        model = self.task.new_eps_model()
        load_checkpoint(self._eps_path(name), model)
        return model.eval()

    def load_classifier(self, name: str) -> TimeClassifier:
        _, meta = load_checkpoint(self._classifier_path(name))
        classifier = self.task.new_classifier(bool(meta.get("time_dependent", True)))
        load_checkpoint(self._classifier_path(name), classifier)
        return classifier.eval()

    # stages ----------------------------------------------------------------------------------------
    def baseline(self) -> SceneEpsModel:
        task, cfg = self.task, self.config

        def body(g: torch.Generator) -> dict[str, Any]:
            torch.manual_seed(stage_seed(cfg.seed, "baseline/init"))
            model = task.new_eps_model()
            summary = train_scene_baseline(
                model, task.train, task.heldout, cfg.baseline, task.schedule, g,
                seed=stage_seed(cfg.seed, "baseline/r_elbo"), progress=self.progress,
                on_eval=lambda rec: self.run.log("baseline", {"kind": "train", **rec}))
            save_checkpoint(self._eps_path("baseline"), model, {"stage": "baseline", **summary})
            return summary

        self.stage("baseline", body)
        return self.load_eps("baseline")

    def evaluate(self, name: str, group: str, iteration: int, model: nn.Module, parameters: int,
                 baseline_n: int | None) -> dict[str, Any]:
        stage = f"eval/{name}"

        def body(g: torch.Generator) -> dict[str, Any]:
            metrics, tokens, _, verdicts = evaluate_traffic_model(self.task, model, seed=self.config.seed,
                                                                  progress=self.progress)
            save_tensors(self.run.path("samples", f"{name}.safetensors"),
                         {"tokens": tokens, "collision": verdicts.collision, "offroad": verdicts.offroad})
            n = metrics["n_parallel"]
            red = 0.0 if group == "baseline" else (
                reduction(n, baseline_n) if n is not None and baseline_n is not None else None)
            self.run.log(stage, {"kind": "eval", "model": name, "group": group, "iteration": iteration,
                                 "reduction": red, "parameters": parameters, **metrics})
            return {"infraction": metrics["infraction"]}

        self.stage(stage, body)
        record = self.run.records(stage)[-1]
        self.say(f"{name}: infraction {100 * record['infraction']:.1f}% per scene, "
                 f"{100 * record['infraction_vehicle']:.2f}% per vehicle, r-ELBO {record['r_elbo']:.3f}, "
                 f"N={record['n_parallel']}")
        return record

    def data(self, stage: str, model: nn.Module, balanced: bool) -> BalancedDataset:
        cfg = self.config.gen_neg
        path = self.run.path(stage, "dataset.safetensors")

        def body(g: torch.Generator) -> dict[str, Any]:
            sample_fn = self.task.context_sampler(model, g)
            if balanced:
                dataset = draw_balanced(sample_fn, self.task.oracle, cfg.num_samples,
                                        batch_size=cfg.sample_batch_size, max_draws=cfg.max_draws,
                                        part_mask_fn=_part_mask, generator=g, progress=self.progress)
            else:
                dataset = draw_imbalanced(sample_fn, self.task.oracle, cfg.num_samples,
                                          batch_size=cfg.sample_batch_size, part_mask_fn=_part_mask,
                                          progress=self.progress)
            dataset.save(path)
            info = {"pi_neg": dataset.pi_neg, "num_drawn": dataset.num_drawn, "num_pos": dataset.num_pos,
                    "num_neg": dataset.num_neg, "balanced": balanced}
            self.run.log(stage, {"kind": "data", **info})
            return info

        self.stage(stage, body)
        return BalancedDataset.load(path, device=self.task.device)

    def classifier(self, stage: str, name: str, dataset: BalancedDataset, mode: str) -> TimeClassifier:
        cfg, task = self.config, self.task
        time_dependent = mode != "time_independent"

        def body(g: torch.Generator) -> dict[str, Any]:
            torch.manual_seed(stage_seed(cfg.seed, f"{stage}/init"))
            classifier = task.new_classifier(time_dependent)
            data = dihedral_augment(dataset) if cfg.gen_neg.augment else dataset
            history = train_classifier(classifier, data, dataclasses.replace(cfg.classifier, mode=mode),
                                       task.classifier_noise, generator=g, progress=self.progress,
                                       noise_levels=task.classifier_noise_levels)
            tail = history[-max(1, len(history) // 10):]
            info = {"mode": mode, "time_dependent": time_dependent, "final_loss": float(np.mean(tail))}
            save_checkpoint(self._classifier_path(name), classifier, {"stage": stage, **info})
            self.run.log(stage, {"kind": "classifier", **info})
            return info

        self.stage(stage, body)
        return self.load_classifier(name)

    def distill(self, teacher: nn.Module) -> SceneEpsModel:
        cfg, task = self.config, self.task

        def body(g: torch.Generator) -> dict[str, Any]:
            student = self.load_eps("baseline").train()
            if cfg.distill.x0_source == "teacher":
                idx = torch.randint(len(task.train), (cfg.distill.num_teacher_samples,), generator=g)
                cond = task.train.contexts(idx.to(task.device))
                x0, _ = task.sample(teacher, cond, g, progress=self.progress)
            else:
                x0, cond = task.train.tokens, task.train.cond
            history = train_distilled(student, teacher, x0, cfg.distill, task.schedule, generator=g,
                                      progress=self.progress, cond=cond)
            info = {"x0_source": cfg.distill.x0_source, "num_x0": int(x0.shape[0]),
                    "final_loss": float(np.mean(history[-50:]))}
            save_checkpoint(self._eps_path("distilled"), student, {"stage": "distill", **info})
            self.run.log("distill", {"kind": "distill", **info})
            return info

        self.stage("distill", body)
        return self.load_eps("distilled")

    def renders(self, baseline: nn.Module, guided: nn.Module, guided_name: str) -> list[str]:
        """PNG grids: samples of each model coloured by verdict; the same noise without/with guidance, at
        contexts where the baseline infracts."""
        task, cfg = self.task, self.config
        files = []
        k = min(cfg.eval.render_scenes, cfg.eval.num_scenes)
        cond = {key: v[:k] for key, v in task.eval_contexts().items()}
        half = 0.5 * cfg.data.window_m
        centres = cond["centre_m"].cpu().numpy()
        windows = np.stack([centres[:, 0] - half, centres[:, 0] + half,
                            centres[:, 1] - half, centres[:, 1] + half], axis=1)
        maps = [task.road_maps[int(m)].drivable_map for m in cond["map_index"].cpu().numpy()]

        def grid(path: Path, tokens: torch.Tensor, cond_: Cond, maps_: list, windows_: np.ndarray,
                 titles: list[str]) -> None:
            v = task.oracle.details(tokens, **cond_)
            boxes, _ = tokens_to_scenes(torch.nan_to_num(tokens).cpu().numpy(),
                                        cond_["centre_m"].cpu().numpy(), task.norm)
            verdicts = [{"collision": v.collision[i].cpu().numpy(), "offroad": v.offroad[i].cpu().numpy()}
                        for i in range(tokens.shape[0])]
            save_scene_grid(path, maps_, boxes, cond_["valid"].cpu().numpy(), verdicts, windows_,
                            columns=min(4, tokens.shape[0]), titles=titles)

        for row in _eval_rows(self.run.records()):
            file = self.run.path("samples", f"{row['model']}.safetensors")
            if not file.is_file():
                continue
            tokens = load_tensors(file)["tokens"][:k].to(task.device)
            name = f"scenes_{row['model']}.png"
            grid(self.run.path(name), tokens, cond, maps, windows, [f"{row['model']} #{i}" for i in range(k)])
            files.append(name)
        # The same noise without and with guidance: the evaluation samples of both models (one noise draw
        # per context, shared by every model), at the first contexts where the baseline infracts.
        base_file = self.run.path("samples", "baseline.safetensors")
        guided_file = self.run.path("samples", f"{guided_name}.safetensors")
        all_cond = task.eval_contexts()
        if base_file.is_file() and guided_file.is_file():
            saved = load_tensors(base_file)
            bad = ((saved["collision"] | saved["offroad"]) & all_cond["valid"].cpu()).any(1)
            order = torch.cat([torch.nonzero(bad).flatten(), torch.nonzero(~bad).flatten()])
            pick = order[: min(4, order.numel())]
            both = [saved["tokens"][pick], load_tensors(guided_file)["tokens"][pick]]
        else:
            pick = torch.arange(min(4, k))
            sub = {key: v[pick] for key, v in all_cond.items()}
            both = [task.sample(m, sub, stage_generator(cfg.seed, "render/noise"))[0].cpu()
                    for m in (baseline, guided)]
        pair_cond = {key: v[pick.to(v.device)] for key, v in all_cond.items()}
        tokens = torch.cat(both).to(task.device)
        cond2 = {key: torch.cat([v, v]) for key, v in pair_cond.items()}
        centres2 = pair_cond["centre_m"].cpu().numpy()
        windows2 = np.stack([centres2[:, 0] - half, centres2[:, 0] + half,
                             centres2[:, 1] - half, centres2[:, 1] + half], axis=1)
        maps2 = [task.road_maps[int(m)].drivable_map for m in pair_cond["map_index"].cpu().numpy()]
        titles = [f"{name}, scene {int(i)}" for name in ("baseline", guided_name) for i in pick]
        grid(self.run.path("guided_vs_baseline.png"), tokens, cond2, maps2 * 2,
             np.concatenate([windows2, windows2]), titles)
        files.append("guided_vs_baseline.png")
        return files


def _eval_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One evaluation record per model (the last wins), ordered as Table 1: baseline, ablations
    (time-independent, w/o IS, imbalanced), Gen-neG iterations, distilled."""
    by_model: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "eval":
            by_model[r["model"]] = dict(r)
    group_order = {"baseline": 0, "ablation": 1, "gen_neg": 2, "distilled": 3}
    ablation_order = {f"ablation_{m}": i for i, m in enumerate(TRAFFIC_ABLATIONS)}

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        return (group_order.get(r["group"], 9), ablation_order.get(r["model"], 0), r.get("iteration") or 0)

    return sorted(by_model.values(), key=key)


_LABELS = {"ablation_time_independent": "time-independent guidance", "ablation_no_is": "w/o IS",
           "ablation_imbalanced": "imbalanced", "baseline": "baseline", "distilled": "distilled"}


def format_traffic_table(rows: Sequence[dict[str, Any]], p: float) -> str:
    """The Table-1-like Markdown table of evaluation rows."""
    def pct(x: float | None, digits: int = 1) -> str:
        return "n/a" if x is None else f"{100 * x:.{digits}f}%"

    def num(x: float | None) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"

    header = ("| model | collision (scene / vehicle) | offroad (scene / vehicle) "
              "| infraction per scene (95% CI) | infraction per vehicle | r-ELBO / vehicle "
              f"| N(r, {p:g}) | reduction | s / batch | parameters |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        label = _LABELS.get(r["model"], f"Gen-neG iteration {r.get('iteration')}")
        red = "—" if r["group"] == "baseline" else pct(r.get("reduction"), 0)
        secs = r.get("sample_seconds_per_batch")
        lines.append(
            f"| {label} | {pct(r['collision'])} / {pct(r['collision_vehicle'], 2)} | "
            f"{pct(r['offroad'])} / {pct(r['offroad_vehicle'], 2)} | "
            f"{pct(r['infraction'])} [{pct(r['infraction_low'])}, {pct(r['infraction_high'])}] | "
            f"{pct(r['infraction_vehicle'], 2)} | {num(r['r_elbo'])} | {r.get('n_parallel') or 'n/a'} | "
            f"{red} | "
            f"{'n/a' if secs is None else f'{secs:.2f}'} (batch {r.get('batch_size')}) | "
            f"{r['parameters']:,} |")
    return "\n".join(lines) + "\n"


def write_traffic_report(run: RunDir, plots: Sequence[str] | None = None) -> Path:
    """(Re)write ``report.md`` of a traffic run from its records; ``plots``: PNG names to embed (default:
    the renders found in the run directory)."""
    config = run.read_config(TrafficExperimentConfig)
    if plots is None:
        plots = [p.name for p in sorted(run.root.glob("scenes_*.png"))]
        plots += ["guided_vs_baseline.png"] if (run.root / "guided_vs_baseline.png").is_file() else []
    rows = _eval_rows(run.records())
    if not rows:
        raise ValueError(f"{run.root}: no evaluation records to report")
    seconds = sum(run.stage_info(s).get("seconds", 0.0) for s in run.completed_stages())
    data = run.stage_info("data") if run.is_done("data") else {}
    base = run.stage_info("baseline") if run.is_done("baseline") else {}
    notes = [
        f"experiment `traffic`, profile `{config.profile}`, seed {config.seed}, device `{config.device}`, "
        f"{config.num_threads or torch.get_num_threads()} threads",
        f"compute time over all stages: {seconds:.0f} s",
        f"data: {data.get('maps', '?')} road maps ({data.get('carla_maps', 0)} CARLA), "
        f"{config.data.num_train} training and {config.data.num_heldout} held-out scenes, "
        f"{data.get('train_vehicles_per_scene', float('nan')):.1f} vehicles per scene "
        f"(≤ {config.data.max_vehicles} slots), window {config.data.window_m:g} m",
        f"DDPM: T = {config.ddpm.num_steps} ({config.ddpm.schedule}), {config.gen_neg.sample_steps} "
        f"ancestral sampling steps; baseline {base.get('iterations_run', '?')} iterations, weights of "
        f"iteration {base.get('best_iteration', '?')} kept (best held-out r-ELBO)",
        f"Gen-neG: {config.gen_neg.iterations} iterations of {config.gen_neg.num_samples} balanced scenes, "
        f"classifier {config.classifier.iterations} iterations (batch {config.classifier.batch_size}), "
        f"guidance scale {config.gen_neg.guidance_scale:g}",
        f"evaluation: {config.eval.num_scenes} scenes per model on held-out contexts (same noise for every "
        f"model); r-ELBO on {config.eval.r_elbo_scenes} held-out scenes × {config.eval.r_elbo_timesteps} "
        "timesteps (same draws), per real vehicle; N(r, p) from the per-scene rate",
    ]
    for k in range(1, config.gen_neg.iterations + 1):
        recs = run.records(f"iter{k}/data")
        if recs:
            notes.append(f"iteration {k} data: {recs[-1]['num_drawn']} scenes drawn, estimated per-scene "
                         f"infraction rate {100 * recs[-1]['pi_neg']:.1f}%")
    by_model = {r["model"]: r for r in rows}
    base_elbo = by_model.get("baseline", {}).get("r_elbo")
    for r in rows:
        value = r.get("r_elbo")
        if base_elbo is not None and value is not None and (not math.isfinite(value)
                                                              or value < 100 * min(base_elbo, -1e-3)):
            notes.append(f"{_LABELS.get(r['model'], r['model'])}: sampling diverged (r-ELBO {value:.3g} per "
                         "vehicle, over 100× the baseline's): its guidance term moves ε by orders of "
                         "magnitude more than the noise; for the time-independent classifier the gradient of "
                         "log c(x̂0) is taken through x̂0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)")
    if "baseline" in by_model and "iter2" in by_model:
        b, i2 = by_model["baseline"], by_model["iter2"]
        ratio = i2["infraction"] / b["infraction"] if b["infraction"] > 0 else math.nan
        elbo_change = (i2["r_elbo"] - b["r_elbo"]) / abs(b["r_elbo"]) if b["r_elbo"] else math.nan
        notes.append(f"after two iterations: infraction {ratio:.2f}× the baseline's (target ≤ 0.5: "
                     f"{'met' if ratio <= 0.5 else 'NOT met'}), r-ELBO change {100 * elbo_change:+.1f}% "
                     f"(target ≥ -5%: {'met' if elbo_change >= -0.05 else 'NOT met'})")
    text = [f"# Gen-neG on traffic scenes ({config.profile} profile)\n"]
    text += [f"- {n}" for n in notes]
    text += ["", format_traffic_table(rows, config.eval.p)]
    text += [f"![{name}]({name})\n" for name in plots]
    path = run.path("report.md")
    atomic_write_text(path, "\n".join(text))
    return path


def run_traffic(config: TrafficExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                overwrite: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the traffic experiment into ``run_dir``; returns the evaluation rows.

    Stages: ``data``, ``baseline``, ``eval/baseline``, ``iter{k}/data``, ``iter{k}/classifier``,
    ``eval/iter{k}``, after ``k = 1`` ``ablation/{mode}/...`` and ``eval/ablation_{mode}``, ``distill``,
    ``eval/distilled``, then the renders and ``report.md``.
    """
    run = RunDir(run_dir, resume=resume, overwrite=overwrite)
    run.write_config(config)
    previous_threads = torch.get_num_threads()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    try:
        data_dir = run.root / "data"
        data_dir.mkdir(exist_ok=True)
        if not run.is_done("data"):
            t0 = time.perf_counter()
            info = build_traffic_data(config, data_dir, progress=progress)
            run.mark_done("data", {"seconds": time.perf_counter() - t0, **info})
        task = TrafficTask(config, data_dir)
        runner = _TrafficRunner(task, run, progress)
        baseline = runner.baseline()
        base_params = baseline.num_parameters()
        base_record = runner.evaluate("baseline", "baseline", 0, baseline, base_params, None)
        baseline_n = base_record["n_parallel"]
        classifiers: list[nn.Module] = []
        for k in range(1, config.gen_neg.iterations + 1):
            dataset = runner.data(f"iter{k}/data", task.guide(baseline, classifiers), balanced=True)
            classifiers.append(runner.classifier(f"iter{k}/classifier", f"iter{k}", dataset,
                                                 config.classifier.mode))
            params = base_params + sum(_parameters(c) for c in classifiers)
            runner.evaluate(f"iter{k}", "gen_neg", k, task.guide(baseline, classifiers), params, baseline_n)
            if k == 1:
                for mode in config.ablations:
                    data = dataset
                    if mode == "imbalanced":
                        data = runner.data("ablation/imbalanced/data", baseline, balanced=False)
                    clf = runner.classifier(f"ablation/{mode}/classifier", f"ablation_{mode}", data, mode)
                    runner.evaluate(f"ablation_{mode}", "ablation", 1, task.guide(baseline, [clf]),
                                    base_params + _parameters(clf), baseline_n)
        teacher = task.guide(baseline, classifiers)
        if config.distill.iterations > 0:
            student = runner.distill(teacher)
            runner.evaluate("distilled", "distilled", config.gen_neg.iterations, student,
                            student.num_parameters(), baseline_n)
        runner.say("renders and report")
        plots = runner.renders(baseline, teacher, f"iter{config.gen_neg.iterations}")
        write_traffic_report(run, plots)
        return _eval_rows(run.records())
    finally:
        torch.set_num_threads(previous_threads)


def train_traffic_command(
    run_dir: Path,
    *,
    profile: str | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> int:
    """``genneg train traffic``: run (or resume) a traffic profile, print the table; returns 0.

    On ``resume`` the saved config is used (a different ``profile`` is refused); ``overrides`` are
    ``key.sub=value`` strings (:func:`genneg.io.config.apply_overrides`).
    """
    from genneg.io.config import apply_overrides

    if resume and (run_dir / "config.json").is_file():
        config = RunDir(run_dir, resume=True).read_config(TrafficExperimentConfig)
        if profile is not None and profile != config.profile:
            raise ValueError(f"{run_dir} was run with profile '{config.profile}', not '{profile}'")
    else:
        config = get_traffic_profile(profile or "quick")
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    if threads is not None:
        config = dataclasses.replace(config, num_threads=threads)
    config = apply_overrides(config, list(overrides))
    start = time.perf_counter()
    rows = run_traffic(config, run_dir, resume=resume, overwrite=overwrite, progress=not quiet)
    print(format_traffic_table(rows, config.eval.p))
    print(f"report: {run_dir / 'report.md'}  ({time.perf_counter() - start:.0f} s)")
    return 0
