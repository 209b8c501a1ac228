"""Configuration of the traffic experiment: one frozen dataclass tree per run, and its profiles
(``tiny``: the test, well under 90 s; ``quick``: about 50 minutes with 1 thread on a 2-core CPU;
``paper``: sized for one GPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from genneg.data.traffic import SceneConfig
from genneg.diffusion.ddpm import DDPMConfig
from genneg.models.scene_transformer import SceneTransformerConfig
from genneg.pipeline.classifier import ClassifierConfig
from genneg.pipeline.distill import DistillConfig
from genneg.pipeline.scene_training import SceneTrainingConfig

__all__ = [
    "TRAFFIC_ABLATIONS",
    "TRAFFIC_PROFILES",
    "TrafficDataConfig",
    "TrafficEvalConfig",
    "TrafficExperimentConfig",
    "TrafficGenNegConfig",
    "TrafficModelConfig",
    "get_traffic_profile",
]

TRAFFIC_ABLATIONS = ("time_independent", "no_is", "imbalanced")


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
class TrafficGenNegConfig:
    """The Gen-neG loop on scenes.

    Attributes:
        iterations: ``K`` stacked classifiers.
        num_samples: balanced scenes per iteration (half valid, half invalid).
        max_draws: most scenes drawn to collect them.
        guidance_scale: ``gamma`` of every classifier (1 is the method).
        sample_steps: ancestral sampling steps (evenly spaced subsequence of the DDPM's ``T``).
        sample_batch_size: scenes per round of the data stage, the global batch: under torchrun each of
            ``W`` ranks draws ``ceil(sample_batch_size / W)`` per call; in evaluation, scenes per call.
        augment: train every classifier on the 8 dihedral copies of each labelled scene
            (:func:`genneg.pipeline.traffic.dihedral_augment`).
        budget_policy: as :class:`genneg.pipeline.profiles.GenNegConfig`'s (``"raise"``: the fixed-size
            balanced sets of the paper).
        distill_init: the student starts from the baseline's weights or from a fresh initialisation.
    """

    iterations: int = 3
    num_samples: int = 20_000
    max_draws: int = 2_000_000
    guidance_scale: float = 1.0
    sample_steps: int = 100
    sample_batch_size: int = 256
    augment: bool = True
    budget_policy: Literal["raise", "shrink"] = "raise"
    distill_init: Literal["baseline", "random"] = "baseline"

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
    """Sized to show the method on 2 CPU cores (2,499 s of stages at load about 2 with 2048 scenes per
    iteration; 4096 add about 400 s of sampling): scenes of 1-4 vehicles in a 32 m window
    (mean about 2.5), a 6k-step baseline, classifiers averaged over their last steps (EMA). The map crop
    reaches 8 m beyond the window (1 m cells): cropped at the window's edge, 5% of valid vehicles had a
    corner reading "not drivable" and the networks could not learn the offroad rule. With the dense
    scenes of the earlier quick profile (6-12 vehicles in 40 m) the quick-sized baseline put 47% of its
    vehicles in collisions and 94% of its scenes infracted, which left guidance nothing measurable to halve
    in this budget. Each iteration draws 4096 balanced scenes: with 2048 the second classifier cost the
    guided model 3.9-5.3% of its r-ELBO over four runs; on the same baseline and evaluation draws, 4096
    gave 4.3% where 2048 gave 5.2% (benchmarks/results/traffic-quick-cpu), as the paper's Appendix C.2
    finds (the synthetic set must be large enough to avoid distribution shift); with other classifier
    seeds the cost still varies (6.9% with seed 1 on the same baseline)."""
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
        gen_neg=TrafficGenNegConfig(iterations=2, num_samples=4096, max_draws=40_000, sample_steps=40,
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

