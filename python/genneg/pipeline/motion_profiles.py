"""Configuration of the motion experiment (issue 15; METHOD.md 8 "Motion"): one frozen dataclass tree per
run, and its profiles (``tiny``: the test; ``quick``: sized for 2 CPU cores; ``paper``: sized for one GPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from genneg.data.motion.procedural import MOTION_FAMILIES
from genneg.diffusion.ddpm import DDPMConfig
from genneg.metrics.motion import MotionQualityConfig
from genneg.models.motion_transformer import MotionTransformerConfig
from genneg.oracles.motion import GroundPenetrationConfig
from genneg.pipeline.classifier import ClassifierConfig
from genneg.pipeline.distill import DistillConfig

__all__ = [
    "MOTION_ABLATIONS",
    "MOTION_PROFILES",
    "MotionDataConfig",
    "MotionEvalConfig",
    "MotionExperimentConfig",
    "MotionGenNegConfig",
    "MotionModelConfig",
    "MotionTrainingConfig",
    "get_motion_profile",
]

MOTION_ABLATIONS = ("time_independent", "no_is", "imbalanced")


@dataclass(frozen=True)
class MotionDataConfig:
    """Where the clips come from.

    Attributes:
        source: ``"procedural"`` (:mod:`genneg.data.motion.procedural`) or ``"deepmimic"`` (the clips of
            the pybullet wheel in ``pybullet_cache_dir``; fetch it first with ``python -m
            genneg.data.motion deepmimic --cache-dir DIR --output DIR``: nothing is downloaded at run time).
        num_train, num_heldout: procedural clips in each set (DeepMimic: all windows of each part).
        fps, frames: frame rate (frames per second) and clip length (frames).
        families: procedural motion families.
        height_range_m: procedural body heights, metres.
        pybullet_cache_dir: directory holding the ``pybullet-*.whl`` (DeepMimic).
        heldout_fraction: DeepMimic: the last fraction of each clip's duration is held out.
        window_stride: DeepMimic: frames between window starts; warps: playback speeds; mirrored: add the
            mirror image of every window.
    """

    source: Literal["procedural", "deepmimic"] = "procedural"
    num_train: int = 8000
    num_heldout: int = 1000
    fps: float = 20.0
    frames: int = 60
    families: tuple[str, ...] = MOTION_FAMILIES
    height_range_m: tuple[float, float] = (1.5, 1.95)
    pybullet_cache_dir: str = ""
    heldout_fraction: float = 0.3
    window_stride: int = 5
    warps: tuple[float, ...] = (0.9, 1.0, 1.1)
    mirrored: bool = True

    def __post_init__(self) -> None:
        if self.source not in ("procedural", "deepmimic"):
            raise ValueError(f"source must be 'procedural' or 'deepmimic', got {self.source!r}")
        if self.num_train < 2 or self.num_heldout < 2 or self.frames < 2 or not self.fps > 0:
            raise ValueError(f"MotionDataConfig needs num_train, num_heldout, frames >= 2 and fps > 0: "
                             f"{self}")
        if self.source == "deepmimic" and not self.pybullet_cache_dir:
            raise ValueError("source='deepmimic' needs pybullet_cache_dir (a directory holding the pybullet "
                             "wheel)")


@dataclass(frozen=True)
class MotionModelConfig:
    """The ε-network and the classifier (the same transformer, :mod:`genneg.models.motion_transformer`).

    Attributes:
        denoiser: the ε transformer (``head``, ``feature_dim``, ``max_frames`` and ``num_families`` are set
            from the data).
        classifier: the classifier transformer (``head`` ``"frame_logit"`` or ``"clip_logit"``; per frame
            is the default, see the module docstring of :mod:`genneg.models.motion_transformer`).
        classifier_time_scale, classifier_sigma_max, classifier_shrinkage: as in
            :class:`~genneg.models.motion_transformer.MotionLogitNet`; classifiers are trained on ``σ``
            log-uniform in ``[σ_0, min(σ_{T-1}, classifier_sigma_max)]`` (VE units).
        condition_on_family: the networks see the motion-family label (label ``num_families`` = none);
            training drops the label with probability ``family_dropout``.
    """

    denoiser: MotionTransformerConfig = field(default_factory=MotionTransformerConfig)
    classifier: MotionTransformerConfig = field(
        default_factory=lambda: MotionTransformerConfig(head="frame_logit"))
    classifier_time_scale: float = 250.0
    classifier_sigma_max: float = 20.0
    classifier_shrinkage: bool = True
    condition_on_family: bool = False
    family_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.classifier.head == "eps":
            raise ValueError("model.classifier.head must be 'frame_logit' or 'clip_logit'")
        if not 0 <= self.family_dropout < 1:
            raise ValueError(f"family_dropout must lie in [0, 1), got {self.family_dropout}")


@dataclass(frozen=True)
class MotionTrainingConfig:
    """Training of the baseline ε-model: Adam on the DDPM loss, held-out r-ELBO every ``eval_every`` steps
    on ``eval_clips × eval_timesteps`` draws, the best EMA weights kept (as the traffic baseline)."""

    iterations: int = 20_000
    batch_size: int = 64
    lr: float = 5e-4
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min_fraction: float = 0.05
    warmup: int = 200
    grad_clip: float = 1.0
    eval_every: int = 2000
    eval_clips: int = 256
    eval_timesteps: int = 8
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.eval_every < 0 or not self.lr > 0:
            raise ValueError(f"MotionTrainingConfig needs iterations, batch_size >= 1, lr > 0: {self}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class MotionGenNegConfig:
    """The Gen-neG loop on clips (fields as in
    :class:`~genneg.pipeline.traffic_profiles.TrafficGenNegConfig`)."""

    iterations: int = 1
    num_samples: int = 10_000
    max_draws: int = 1_000_000
    guidance_scale: float = 1.0
    sample_steps: int = 100
    sample_batch_size: int = 256
    budget_policy: Literal["raise", "shrink"] = "raise"
    distill_init: Literal["baseline", "random"] = "baseline"

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"MotionGenNegConfig needs iterations >= 1, an even num_samples >= 2: {self}")
        if self.sample_steps < 1 or self.sample_batch_size < 1:
            raise ValueError(f"MotionGenNegConfig needs sample_steps, sample_batch_size >= 1: {self}")


@dataclass(frozen=True)
class MotionEvalConfig:
    """Evaluation of every model (the same noise and r-ELBO draws for each).

    Attributes:
        num_clips: generated clips per model.
        r_elbo_clips, r_elbo_timesteps: held-out clips and timesteps per clip of the r-ELBO.
        p: success probability of ``N(r, p)``.
        quality: foot-skating and floating thresholds (:class:`~genneg.metrics.motion.MotionQualityConfig`;
            its ``fps`` is replaced by the data's).
        encoder_steps, encoder_channels: training steps and channels of the FID/KID encoder.
        kid_subsets, kid_subset_size: KID's subsets.
        render_clips: clips per filmstrip.
    """

    num_clips: int = 2048
    r_elbo_clips: int = 512
    r_elbo_timesteps: int = 16
    p: float = 0.99999
    quality: MotionQualityConfig = field(default_factory=MotionQualityConfig)
    encoder_steps: int = 1000
    encoder_channels: tuple[int, int, int] = (64, 64, 64)
    kid_subsets: int = 10
    kid_subset_size: int = 1000
    render_clips: int = 4

    def __post_init__(self) -> None:
        if self.num_clips < 2 or self.r_elbo_clips < 1 or self.r_elbo_timesteps < 1 or self.render_clips < 1:
            raise ValueError(f"MotionEvalConfig sizes too small: {self}")
        if not 0 < self.p < 1:
            raise ValueError(f"MotionEvalConfig.p must lie in (0, 1), got {self.p}")


@dataclass(frozen=True)
class MotionExperimentConfig:
    """Everything a motion run depends on (saved as the run's ``config.json``)."""

    experiment: str = "motion"
    profile: str = "paper"
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0
    data: MotionDataConfig = field(default_factory=MotionDataConfig)
    oracle: GroundPenetrationConfig = field(default_factory=GroundPenetrationConfig)
    model: MotionModelConfig = field(default_factory=MotionModelConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    baseline: MotionTrainingConfig = field(default_factory=MotionTrainingConfig)
    gen_neg: MotionGenNegConfig = field(default_factory=MotionGenNegConfig)
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(
        iterations=10_000, batch_size=128, lr=5e-4, grad_clip=1.0))
    ablations: tuple[str, ...] = ("no_is",)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(
        iterations=10_000, batch_size=128, lr=2e-4, grad_clip=1.0))
    eval: MotionEvalConfig = field(default_factory=MotionEvalConfig)

    def __post_init__(self) -> None:
        if self.experiment != "motion":
            raise ValueError(f"MotionExperimentConfig.experiment must be 'motion', got {self.experiment!r}")
        unknown = [a for a in self.ablations if a not in MOTION_ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; choose from {list(MOTION_ABLATIONS)}")
        if not self.oracle.per_frame:
            raise ValueError("the motion task labels frames: oracle.per_frame must be True")


def _net(width: int, heads: int, layers: int, head: str) -> MotionTransformerConfig:
    return MotionTransformerConfig(width=width, heads=heads, layers=layers, mlp_ratio=2 if width < 128 else 4,
                                   time_embed_dim=max(16, width), head=head)


def _paper() -> MotionExperimentConfig:
    """MDM's scale (8 layers; width 256 here instead of 512) on 3-second clips at 20 fps; one Gen-neG
    iteration as in the paper's motion experiment."""
    return MotionExperimentConfig(
        profile="paper",
        data=MotionDataConfig(num_train=50_000, num_heldout=2000, frames=60),
        model=MotionModelConfig(denoiser=_net(256, 4, 8, "eps"), classifier=_net(256, 4, 8, "frame_logit")),
        baseline=MotionTrainingConfig(iterations=200_000, batch_size=128, lr=2e-4, warmup=1000,
                                      eval_every=10_000, eval_clips=512, eval_timesteps=16),
        gen_neg=MotionGenNegConfig(iterations=1, num_samples=20_000, max_draws=2_000_000, sample_steps=100,
                                   sample_batch_size=512),
        classifier=ClassifierConfig(iterations=20_000, batch_size=256, lr=2e-4, grad_clip=1.0,
                                    ema_decay=0.999),
        distill=DistillConfig(iterations=20_000, batch_size=256, lr=1e-4, grad_clip=1.0),
        eval=MotionEvalConfig(num_clips=4096, r_elbo_clips=1024, r_elbo_timesteps=16, encoder_steps=3000),
    )


def _quick() -> MotionExperimentConfig:
    """Sized for a shared 2-core CPU (measured: see benchmarks/results/motion-quick-cpu/): 2-second clips at
    20 fps, a 2-layer width-64 transformer, one Gen-neG iteration, the w/o-IS ablation, a short
    distillation. The classifier sees 4096 balanced clips for 3000 steps: with 1024 clips and 1000 steps
    one iteration gave 0.65x the baseline's infraction, with 2048 and 2000 steps 0.52x, with 4096 and 3000
    steps 0.48x (same baseline and seed)."""
    return MotionExperimentConfig(
        profile="quick",
        num_threads=1,
        data=MotionDataConfig(num_train=3000, num_heldout=400, frames=40),
        model=MotionModelConfig(denoiser=_net(64, 4, 2, "eps"), classifier=_net(48, 4, 2, "frame_logit")),
        baseline=MotionTrainingConfig(iterations=2000, batch_size=64, lr=1e-3, warmup=100, eval_every=500,
                                      eval_clips=64, eval_timesteps=4),
        gen_neg=MotionGenNegConfig(iterations=1, num_samples=4096, max_draws=20_000, sample_steps=40,
                                   sample_batch_size=256),
        classifier=ClassifierConfig(iterations=3000, batch_size=64, lr=1e-3, grad_clip=1.0, ema_decay=0.999),
        distill=DistillConfig(iterations=400, batch_size=64, lr=3e-4, grad_clip=1.0),
        eval=MotionEvalConfig(num_clips=512, r_elbo_clips=128, r_elbo_timesteps=8, encoder_steps=400),
    )


def _tiny() -> MotionExperimentConfig:
    """The test: 1-second clips (no jumps: they need 2 s), a one-layer transformer, a few steps of each
    stage, every ablation; a 15 cm tolerance, so that the barely trained baseline has valid clips too."""
    return MotionExperimentConfig(
        profile="tiny",
        num_threads=1,
        oracle=GroundPenetrationConfig(tolerance_m=0.15),
        data=MotionDataConfig(num_train=64, num_heldout=32, frames=20,
                              families=("walk", "run", "turn", "crouch", "wave")),
        model=MotionModelConfig(denoiser=_net(32, 2, 1, "eps"), classifier=_net(16, 2, 1, "frame_logit")),
        baseline=MotionTrainingConfig(iterations=400, batch_size=16, lr=3e-3, warmup=10, eval_every=200,
                                      eval_clips=8, eval_timesteps=2),
        gen_neg=MotionGenNegConfig(iterations=2, num_samples=16, max_draws=2000, sample_steps=20,
                                   sample_batch_size=64, budget_policy="shrink"),
        classifier=ClassifierConfig(iterations=10, batch_size=16, lr=3e-3),
        ablations=MOTION_ABLATIONS,
        distill=DistillConfig(iterations=8, batch_size=16, lr=1e-3),
        eval=MotionEvalConfig(num_clips=32, r_elbo_clips=8, r_elbo_timesteps=2, encoder_steps=20,
                              encoder_channels=(8, 8, 8), kid_subsets=2, kid_subset_size=16, render_clips=2),
    )


MOTION_PROFILES: dict[str, Callable[[], MotionExperimentConfig]] = {
    "tiny": _tiny, "quick": _quick, "paper": _paper}


def get_motion_profile(name: str) -> MotionExperimentConfig:
    """The named motion profile (``tiny``, ``quick`` or ``paper``)."""
    if name not in MOTION_PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(MOTION_PROFILES)}")
    return MOTION_PROFILES[name]()
