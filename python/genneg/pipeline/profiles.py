"""Experiment configuration: one frozen dataclass tree per run, and named profiles.

``ExperimentConfig`` holds everything a Gen-neG run depends on (data, networks, EDM, baseline training,
sampling, the Gen-neG loop, classifier training, ablations, distillation, evaluation) and is saved as
``config.json`` in the run directory. Profiles are starting points; any field can be overridden with
``genneg train ... --set classifier.iterations=500``.

- ``tiny``: the whole pipeline in well under a minute on 2 CPU cores (tests).
- ``quick``: baseline, 3 Gen-neG iterations, one ablation, distillation and the report in under 10 minutes
  on 2 CPU cores (the README's demo).
- ``paper``: METHOD.md 8 (1,000 training points, 30k full-batch baseline iterations with ELBO-based
  selection, 100k balanced samples and 20k classifier iterations at batch 8192 per iteration, 100 Heun
  steps, 5 iterations, all three ablations, 250k distillation iterations).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from genneg.diffusion.edm import EDMConfig
from genneg.models.mlp import ResidualMLPConfig
from genneg.pipeline.baseline import BaselineConfig
from genneg.pipeline.classifier import ClassifierConfig
from genneg.pipeline.distill import DistillConfig

__all__ = [
    "ABLATIONS",
    "PROFILES",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GenNegConfig",
    "SamplingConfig",
    "get_profile",
]

ABLATIONS = ("imbalanced", "no_is", "time_independent")


@dataclass(frozen=True)
class DataConfig:
    """The checkerboard data set: a ``grid × grid`` board on ``[low, high]²`` (data units)."""

    grid: int = 4
    low: float = -2.0
    high: float = 2.0
    num_train: int = 1000
    num_heldout: int = 10_000

    def __post_init__(self) -> None:
        if self.num_train < 2 or self.num_heldout < 2:
            raise ValueError(f"DataConfig needs num_train, num_heldout >= 2, got {self}")


@dataclass(frozen=True)
class SamplingConfig:
    """PF-ODE sampling: ``num_steps`` noise levels from ``edm.sigma_max`` to ``edm.sigma_min``, then a
    first-order step to 0; ``batch_size`` samples per round of the data stage (the global batch: under
    torchrun each of ``W`` ranks draws ``ceil(batch_size / W)`` per call), per call in evaluation.

    ``sampler``: a key of ``genneg.diffusion.SAMPLERS``: ``"heun"`` (the paper's, the default),
    ``"euler"``, ``"dpmpp_2m"`` (DPM-Solver++(2M)) or ``"unipc"`` (UniPC-2M); the few-step solvers call the
    (guided) denoiser once per level, Heun twice. ``sigma_max``: the schedule's first level (data units;
    None: ``edm.sigma_max``). A few-step schedule wastes fewer levels where ``D`` is only the data mean
    when it starts lower (from ``sigma_max · N(0, I)``, which is within ``s² / (2 sigma_max²)`` of the
    noised data's variance, ``s²`` the data's).
    """

    num_steps: int = 100
    schedule: Literal["log_linear", "karras"] = "log_linear"
    rho: float = 7.0
    batch_size: int = 20_000
    sampler: Literal["heun", "euler", "dpmpp_2m", "unipc"] = "heun"
    sigma_max: float | None = None

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.batch_size < 1:
            raise ValueError(f"SamplingConfig needs num_steps, batch_size >= 1, got {self}")
        if self.sigma_max is not None and not 0 < self.sigma_max < math.inf:
            raise ValueError(f"SamplingConfig.sigma_max must be finite and > 0 (or None), got "
                             f"{self.sigma_max}")


@dataclass(frozen=True)
class GenNegConfig:
    """The Gen-neG loop (Algorithm 1).

    Attributes:
        iterations: ``K``, the number of stacked classifiers.
        num_samples: balanced examples per iteration (``N/2`` valid and ``N/2`` invalid).
        max_draws: most model samples drawn to collect them (else ``InfractionBudgetError``).
        guidance_scale: ``gamma`` of every classifier (1 is the method).
        distill_init: the student starts from the baseline's weights or from a fresh initialisation.
        budget_policy: when ``num_samples / 2`` negatives would need more than ``max_draws`` draws:
            ``"raise"`` (``InfractionBudgetError``, the paper's fixed-size sets) or ``"shrink"`` (draw
            exactly ``max_draws``, keep every example of the rare class and ``N/2`` of the other; the
            priors come from every draw and the weights ``pi_y / f_y`` from the actual mix).
    """

    iterations: int = 5
    num_samples: int = 100_000
    max_draws: int = 20_000_000
    guidance_scale: float = 1.0
    distill_init: Literal["baseline", "random"] = "baseline"
    budget_policy: Literal["raise", "shrink"] = "raise"

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.num_samples < 2 or self.num_samples % 2:
            raise ValueError(f"GenNegConfig needs iterations >= 1 and an even num_samples >= 2, got {self}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of every model.

    Attributes:
        num_samples: model samples for the infraction rate and MMD (the same initial noise for every model).
        elbo_points: held-out points in the ELBO (the first ones).
        elbo_num_sigmas: noise levels per point in the ELBO estimate (same draws for every model).
        mmd_points: samples and held-out points in the MMD.
        p: success probability of ``N(r, p)``.
        plot_sigmas: noise levels of the classifier probability maps.
    """

    num_samples: int = 100_000
    elbo_points: int = 10_000
    elbo_num_sigmas: int = 128
    mmd_points: int = 5000
    p: float = 0.99999
    plot_sigmas: tuple[float, ...] = (0.02, 0.1, 0.3, 1.0)

    def __post_init__(self) -> None:
        if self.num_samples < 2 or self.elbo_points < 1 or self.elbo_num_sigmas < 2 or self.mmd_points < 2:
            raise ValueError(f"EvalConfig sizes too small: {self}")
        if not 0 < self.p < 1:
            raise ValueError(f"EvalConfig.p must lie in (0, 1), got {self.p}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run depends on (saved as the run's ``config.json``).

    ``num_threads``: PyTorch intra-op threads during the run (0 = leave PyTorch's setting). The networks
    are small, so one thread is the robust choice on a shared CPU (two threads of tiny matrix products
    can be many times slower than one when the cores are busy).
    """

    experiment: str = "checkerboard"
    profile: str = "paper"
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    denoiser: ResidualMLPConfig = field(default_factory=lambda: ResidualMLPConfig(dim_in=2, dim_out=2))
    classifier_net: ResidualMLPConfig = field(default_factory=lambda: ResidualMLPConfig(dim_in=2, dim_out=1))
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    gen_neg: GenNegConfig = field(default_factory=GenNegConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    ablations: tuple[str, ...] = ABLATIONS
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; choose from {list(ABLATIONS)}")
        if self.classifier_net.dim_in != self.denoiser.dim_in:
            raise ValueError(f"classifier_net.dim_in={self.classifier_net.dim_in} must equal "
                             f"denoiser.dim_in={self.denoiser.dim_in}")


def _paper() -> ExperimentConfig:
    return ExperimentConfig(
        profile="paper",
        baseline=BaselineConfig(iterations=30_000, batch_size=0, lr=1e-3, eval_every=1000,
                                eval_num_sigmas=64),
        sampling=SamplingConfig(num_steps=100),
        gen_neg=GenNegConfig(iterations=5, num_samples=100_000),
        classifier=ClassifierConfig(iterations=20_000, batch_size=8192, lr=1e-3),
        distill=DistillConfig(iterations=250_000, batch_size=1000, lr=1e-4, x0_source="train"),
    )


def _quick() -> ExperimentConfig:
    hidden = 128
    return ExperimentConfig(
        profile="quick",
        num_threads=1,
        data=DataConfig(num_heldout=5000),
        denoiser=ResidualMLPConfig(dim_in=2, dim_out=2, hidden=hidden, embedding_dim=64),
        classifier_net=ResidualMLPConfig(dim_in=2, dim_out=1, hidden=hidden, embedding_dim=64),
        baseline=BaselineConfig(iterations=3000, batch_size=0, lr=2e-3, lr_schedule="cosine", warmup=100,
                                eval_every=250, eval_num_sigmas=32),
        sampling=SamplingConfig(num_steps=32, batch_size=20_000),
        gen_neg=GenNegConfig(iterations=3, num_samples=8000, max_draws=80_000, budget_policy="shrink"),
        classifier=ClassifierConfig(iterations=1500, batch_size=2048, lr=2e-3),
        ablations=("no_is",),
        distill=DistillConfig(iterations=1500, batch_size=1000, lr=1e-3, x0_source="train"),
        eval=EvalConfig(num_samples=30_000, elbo_points=2000, elbo_num_sigmas=64, mmd_points=2000),
    )


def _tiny() -> ExperimentConfig:
    return ExperimentConfig(
        profile="tiny",
        num_threads=1,
        data=DataConfig(num_train=500, num_heldout=1000),
        denoiser=ResidualMLPConfig(dim_in=2, dim_out=2, hidden=64, embedding_dim=32),
        classifier_net=ResidualMLPConfig(dim_in=2, dim_out=1, hidden=64, embedding_dim=32),
        baseline=BaselineConfig(iterations=600, batch_size=0, lr=3e-3, lr_schedule="cosine", eval_every=200,
                                eval_num_sigmas=16),
        sampling=SamplingConfig(num_steps=12, batch_size=4000),
        gen_neg=GenNegConfig(iterations=2, num_samples=2000, max_draws=60_000),
        classifier=ClassifierConfig(iterations=250, batch_size=512, lr=3e-3),
        ablations=("no_is",),
        distill=DistillConfig(iterations=150, batch_size=500, lr=5e-4, x0_source="train"),
        eval=EvalConfig(num_samples=4000, elbo_points=500, elbo_num_sigmas=16, mmd_points=500),
    )


PROFILES = {"tiny": _tiny, "quick": _quick, "paper": _paper}


def get_profile(name: str, experiment: str = "checkerboard") -> ExperimentConfig:
    """The named profile's config (``tiny``, ``quick`` or ``paper``) for ``experiment``."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    if experiment != "checkerboard":
        raise ValueError(f"no profiles for experiment {experiment!r}; known: ['checkerboard']")
    return dataclasses.replace(PROFILES[name](), experiment=experiment)
