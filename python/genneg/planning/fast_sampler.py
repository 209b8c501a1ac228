"""A low-latency sampler for planners: a valid sample within a deadline, built once, called every tick.

A planner draws ``N`` samples in parallel and keeps a valid one; with the model's infraction rate ``r``
and required success probability ``p``, ``N = N(r, p) = ceil(log(1 - p) / log r)`` (METHOD.md 7).
:class:`FastSampler` makes that call cheap and predictable:

- **Built once.** Schedules, per-step coefficients and per-step noise-level vectors are computed at
  construction; the state, noise and scratch buffers, and the buffers that keep every round's
  samples and verdicts, are allocated on the first call (or :meth:`FastSampler.warmup`) and reused: after
  warm-up a call allocates no sampler state, only what the network itself allocates (nothing either under
  a CUDA graph) and the small result tensors.
- **No autograd bookkeeping.** Network calls run under ``torch.inference_mode``; only the classifier
  gradients of guidance run with autograd (under ``no_grad`` with a local ``enable_grad``, on buffers
  created outside inference mode, since inference tensors can never enter autograd).
- **Specialised paths on the CPU** (``SamplerConfig.fast_paths``): an ``EDMPrecond(ResidualMLP)``
  denoiser runs as :class:`~genneg.planning.mlp_plan.ResidualMLPDenoiserPlan` (time branch and
  preconditioning precomputed per noise level, ~15 kernels per call instead of ~40 eager operations), and
  a residual-MLP classifier stack's guidance as the analytic batched gradient
  (:mod:`genneg.guidance.analytic`, no autograd, so the guided call stays in inference mode).
- **The library's steps.** Every step is the one of :mod:`genneg.diffusion.samplers` (``heun_advance``,
  ``euler_advance``, ``euler_ancestral_advance``, ``multistep_advance`` with ``multistep_coefficients``;
  the fused ``heun_step`` / ``ancestral_step`` of a Triton guidance backend through ``heun_step`` /
  ``euler_ancestral_step``), run on this sampler's buffers (their ``out=`` and ``StepBuffers``); what is
  this sampler's own is the buffers, the level-indexed network calls, the deadline, the rounds, the
  oracle and the CUDA graphs.
- **Reproducible.** One ``torch.Generator`` per sampler, reseeded at every call (``seed=`` or a counter),
  so a call is a function of its seed. With ``fast_paths=False`` results are equal bit for bit to the
  library samplers' (``genneg.diffusion.heun_sample``, ``euler_sample``, ``dpmpp_2m_sample``,
  ``unipc_sample``, ``euler_ancestral_sample``, ``genneg.planning.inpainting``); with the fast paths they
  agree to float32 rounding. Either way they are equal bit for bit to this sampler's ``preallocate=False``
  mode.
- **CUDA graphs** on a GPU (models without autograd guidance: plain, distilled, fused-guidance steps): one
  graph per condition layout captured on first use; the noise is drawn into static buffers before each
  replay. Never used off CUDA.
- **The fused guidance backend** when a :class:`~genneg.guidance.GuidedDenoiser` resolves to Triton (its
  ``heun_step``, or its ``ancestral_step`` on a DDPM's levels) for calls without ``cond``; an inpainting
  condition takes the library's Heun step around the fused ``D_K`` (the fused step cannot replace the
  known part of its predicted point).
- **The oracle** is called as ``oracle(x, **cond)`` with the ``cond`` the model got, through
  :func:`genneg.oracles.evaluate_oracle` (which checks its answer), as in the pipeline's balanced draw.
- **Deadline and rounds.** The clock is read before every step and before the oracle; a call returns
  ``ok=False, reason="deadline"`` instead of starting work after the deadline (so it overruns by at most
  one step), or ``reason="max_rounds"`` when every round was rejected (``"non_finite"`` when some samples
  were NaN/inf: a broken model rather than bad luck; a non-finite sample is never returned as valid).
  Under a CUDA graph the whole round is one replay, so the check is a prediction from the replay time
  measured at capture.
- **Conditioning** by inpainting (:mod:`genneg.planning.inpainting`): fix part of the sample per call.
- **Threads.** A call holds the sampler's lock: two threads may call one sampler at once (they are
  served one after the other, each result correct). For parallel planners give each thread its own
  sampler (:meth:`FastSampler.clone`: shares the weights, owns its buffers and generator).

Model forms (one noise formalism, one conditioning convention): every model is a denoiser
``D(x, sigma, **cond)`` in VE coordinates (plain, distilled, or a guided ``GuidedDenoiser`` stack), called
with the condition's ``cond`` dict by keyword. An EDM model samples with Heun's method (or,
``SamplerConfig.solver``, a few-step solver of :mod:`genneg.diffusion.samplers`: Euler, DPM-Solver++(2M),
UniPC-2M, one (guided) denoiser call per level) on ``config``'s sigma schedule; with ``ddpm_schedule=``
the model lives on that DDPM's discrete levels (an ε-network is wrapped in its
:class:`~genneg.diffusion.EpsDenoiser`) and samples with the Euler-ancestral step there (DDPM's ancestral
sampler), with the library's step coefficients (:func:`genneg.diffusion.ancestral_levels`).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from genneg.diffusion.ddpm import DDPMSchedule, as_denoiser
from genneg.diffusion.samplers import (
    StepBuffers,
    ancestral_levels,
    euler_advance,
    euler_ancestral_advance,
    euler_ancestral_step,
    heun_advance,
    heun_step,
    multistep_advance,
    multistep_coefficients,
)
from genneg.diffusion.schedules import check_sigmas, make_sigmas
from genneg.guidance.guided import GuidedDenoiser, guidance_gradient
from genneg.metrics.parallel import num_parallel_samples
from genneg.oracles.base import evaluate_oracle, sample_verdicts
from genneg.planning.inpainting import InpaintCondition, batch_cond, check_condition, edm_replace_
from genneg.planning.mlp_plan import ResidualMLPDenoiserPlan, supports_mlp_plan
from genneg.planning.result import SampleResult, StageTimes

__all__ = ["FastSampler", "SamplerConfig", "parallel_samples_for", "success_probability"]

_MAX_BUFFER_ELEMENTS = 1 << 28
_RING = 4  # denoiser outputs a multistep update may read (MultistepStep: D_i .. D_{i-3})


def parallel_samples_for(p: float, infraction_rate: float) -> int:
    """``N(r, p)``: parallel samples needed for at least one valid one with probability ``p``, given the
    infraction rate ``r`` (fraction). Same as :func:`genneg.metrics.num_parallel_samples`."""
    return num_parallel_samples(infraction_rate, p)


def success_probability(num_parallel: int, infraction_rate: float) -> float:
    """``1 - r^N``: probability that at least one of ``N`` independent samples is valid."""
    if num_parallel < 1:
        raise ValueError(f"num_parallel must be >= 1, got {num_parallel}")
    if not 0.0 <= infraction_rate <= 1.0:
        raise ValueError(f"infraction_rate must lie in [0, 1], got {infraction_rate}")
    return 1.0 - infraction_rate**num_parallel


@dataclass(frozen=True)
class SamplerConfig:
    """Options of a :class:`FastSampler` (fixed at construction).

    Attributes:
        num_parallel: ``N``, samples per round. Give this or ``p``.
        p: required probability of at least one valid sample per round; ``N = N(infraction_rate, p)``.
        infraction_rate: the model's measured infraction rate ``r`` (fraction), needed with ``p``.
        max_parallel: refuse an ``N`` above this (memory guard), e.g. from a rate close to 1.
        num_steps: EDM: solver steps (noise levels before the final 0); DDPM: visited discrete levels.
        solver: EDM: ``"heun"`` (2 denoiser calls per level), or one call per level: ``"euler"``,
            ``"dpmpp_2m"`` (DPM-Solver++(2M), Lu et al. 2022), ``"unipc"`` (UniPC-2M, Zhao et al. 2023):
            the library's steps (``genneg.diffusion.samplers``), so the library's samplers of the same name
            bit for bit with ``fast_paths=False``. DDPM models sample with the Euler-ancestral sampler on
            their levels (``"heun"``, the default, stands for it; the others are refused). Inpainting
            conditions need ``"heun"``.
        schedule: EDM sigma schedule, ``"log_linear"`` (the paper's) or ``"karras"``.
        sigma_min, sigma_max, rho: EDM schedule range (data units) and Karras ``rho``.
        sigmas: an explicit EDM schedule instead of ``schedule``/``sigma_min``/``sigma_max``/``rho``
            (e.g. ``genneg.diffusion.fit_schedule(...).sigmas``): ``num_steps + 1`` levels, strictly
            decreasing, ending in 0 (a tensor or sequence; kept as a tuple of float). None: the named
            schedule.
        deadline_ms: default deadline of a call, milliseconds from its entry; None = none.
        max_rounds: rounds of ``N`` samples tried before giving up (``ok=False, reason="max_rounds"``).
        k_best: rows of :attr:`SampleResult.best`.
        cuda_graphs: capture CUDA graphs on a GPU (ignored elsewhere).
        fast_paths: use the specialised paths when the model allows: the level-specialised residual-MLP
            denoiser (:mod:`genneg.planning.mlp_plan`) and the analytic batched guidance gradient
            (:mod:`genneg.guidance.analytic`). Equal to the generic path to float32 rounding, not bit for
            bit; False gives the library samplers' results exactly.
        copy_samples: return copies of every sample and verdict (else views of the buffers, overwritten by
            the next call).
        compile_guidance: with ``fast_paths``, run a residual-MLP stack's guidance gradient as one
            ``torch.compile`` graph per call (:mod:`genneg.guidance.compiled`; compiled at the first call,
            eager with a warning where compilation fails). Equal to the analytic path to float32 rounding.
    """

    num_parallel: int | None = None
    p: float | None = None
    infraction_rate: float | None = None
    max_parallel: int = 65_536
    num_steps: int = 25
    solver: Literal["heun", "euler", "dpmpp_2m", "unipc"] = "heun"
    schedule: Literal["log_linear", "karras"] = "log_linear"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigmas: tuple[float, ...] | None = None
    deadline_ms: float | None = None
    max_rounds: int = 1
    k_best: int = 1
    cuda_graphs: bool = True
    fast_paths: bool = True
    copy_samples: bool = True
    compile_guidance: bool = False

    def __post_init__(self) -> None:
        if (self.num_parallel is None) == (self.p is None):
            raise ValueError("give exactly one of num_parallel and p")
        if self.num_parallel is not None and self.num_parallel < 1:
            raise ValueError(f"num_parallel must be >= 1, got {self.num_parallel}")
        if self.p is not None:
            if not 0.0 < self.p < 1.0:
                raise ValueError(f"p must lie in (0, 1), got {self.p}")
            if self.infraction_rate is None:
                raise ValueError("p needs the model's infraction_rate (or build with FastSampler.from_run)")
        if self.infraction_rate is not None and not 0.0 <= self.infraction_rate < 1.0:
            raise ValueError(f"infraction_rate must lie in [0, 1), got {self.infraction_rate}")
        if self.num_steps < 1 or self.max_rounds < 1 or self.k_best < 1 or self.max_parallel < 1:
            raise ValueError(
                f"num_steps, max_rounds, k_best and max_parallel must be >= 1, got {self.num_steps}, "
                f"{self.max_rounds}, {self.k_best}, {self.max_parallel}"
            )
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ValueError(f"deadline_ms must be > 0 or None, got {self.deadline_ms}")
        if self.solver not in ("heun", "euler", "dpmpp_2m", "unipc"):
            raise ValueError(f"solver must be 'heun', 'euler', 'dpmpp_2m' or 'unipc', got {self.solver!r}")
        if self.sigmas is not None:
            # a FittedSchedule (genneg.diffusion.fit_schedule) is taken for its levels
            levels = tuple(check_sigmas(getattr(self.sigmas, "sigmas", self.sigmas)))
            if len(levels) != self.num_steps + 1:
                raise ValueError(f"sigmas has {len(levels)} levels but num_steps = {self.num_steps} needs "
                                 f"{self.num_steps + 1}: pass num_steps={len(levels) - 1}")
            object.__setattr__(self, "sigmas", levels)

    def resolved_num_parallel(self) -> int:
        """``N``: ``num_parallel``, or ``N(infraction_rate, p)``."""
        if self.num_parallel is not None:
            n = self.num_parallel
        else:
            assert self.p is not None and self.infraction_rate is not None  # checked in __post_init__
            n = num_parallel_samples(self.infraction_rate, self.p)
        if n > self.max_parallel:
            raise ValueError(
                f"N = {n} parallel samples exceeds max_parallel = {self.max_parallel} "
                f"(infraction_rate={self.infraction_rate}, p={self.p})"
            )
        return n


class _Clock:
    """Deadline checks and per-stage time accumulation of one call (milliseconds)."""

    __slots__ = ("deadline_s", "guidance_ms", "model_ms", "oracle_ms", "split")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.model_ms = 0.0
        self.guidance_ms = 0.0
        self.oracle_ms = 0.0
        self.split = True

    def expired(self) -> bool:
        return time.perf_counter() >= self.deadline_s


class _NoClock(_Clock):
    """Used while capturing a CUDA graph: no checks, no timing."""

    def __init__(self) -> None:
        super().__init__(math.inf)

    def expired(self) -> bool:
        return False


class _Workspace:
    """Every buffer of one sampler, allocated once (outside inference mode, so that guidance can use them)."""

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        device: torch.device,
        max_rounds: int,
        levels: Sequence[float],
    ) -> None:
        full = (n, *shape)
        opts = {"dtype": torch.float32, "device": device}
        self.x = torch.empty(full, **opts)
        self.x_next = torch.empty(full, **opts)
        self.noise = torch.empty(full, **opts)
        self.fill_noise = torch.empty(full, **opts)
        self.step_draw = torch.empty(full, **opts)  # the per-step ancestral noise (eager path)
        self.den = torch.empty(full, **opts)
        self.scratch = torch.empty(full, **opts)  # inpainting's replacement
        # the library steps' scratch (genneg.diffusion.samplers.StepBuffers)
        self.step = StepBuffers.like(self.x)
        # multistep solvers: the last denoiser outputs (a ring; a step reads at most four) and the state
        # before the last step
        self.history = [torch.empty(full, **opts) for _ in range(_RING)]
        self.x_before = torch.empty(full, **opts)
        self.known = torch.zeros((1, *shape), **opts)
        self.mask = torch.zeros((1, *shape), dtype=torch.bool, device=device)
        self.samples = torch.empty((max_rounds * n, *shape), **opts)
        self.verdicts: torch.Tensor | None = None
        bshape = (n, *([1] * len(shape)))
        # per-level (N,) noise-level vectors and (N, 1, ..) sigma² for the guidance combination
        self.sigma = [torch.full((n,), s, **opts) for s in levels]
        self.sigma_sq = [(v**2).reshape(bshape) for v in self.sigma]
        self.step_noise: torch.Tensor | None = None  # (steps, N, ...) for CUDA graphs (ancestral)
        self.step_fill_noise: torch.Tensor | None = None

    def verdict_buffer(self, like: torch.Tensor, rounds: int) -> torch.Tensor:
        rows = self.samples.shape[0]
        want = (rows, *like.shape[1:])
        if self.verdicts is None or tuple(self.verdicts.shape) != want or self.verdicts.device != like.device:
            self.verdicts = torch.zeros(want, dtype=torch.bool, device=like.device)
        return self.verdicts


def _is_time_dependent(classifier: Any) -> bool:
    return bool(getattr(classifier, "time_dependent", True))


class FastSampler:
    """First valid sample within a deadline, conditioned on what the planner knows (module docstring).

    Args:
        model: a denoiser ``D(x (N, *shape), sigma (N,), **cond) -> (N, *shape)`` (plain, distilled, or a
            :class:`~genneg.guidance.GuidedDenoiser` stack); with ``ddpm_schedule`` also a DDPM
            ε-network (``parameterisation = "eps"``), wrapped in its ``EpsDenoiser``.
        oracle: ``oracle(x (N, *shape), **cond) -> bool (N,) or (N, P)`` (True = valid), called with the
            same ``cond`` the model gets (the condition's, each entry expanded to ``N`` rows; none without
            one), through :func:`genneg.oracles.evaluate_oracle` (which checks its answer): an oracle
            written for the pipeline's balanced draw works unchanged. An oracle with a
            ``check_condition(condition)`` method (e.g. :class:`genneg.planning.traffic.SceneTokenOracle`)
            has it called on every call's condition (or None) before sampling.
        sample_shape: shape of one sample, e.g. ``(2,)`` or ``(A, 7)``.
        config: :class:`SamplerConfig`.
        ddpm_schedule: the DDPM schedule whose levels the model samples on (Euler-ancestral); None for an
            EDM denoiser.
        device: where buffers live (default: the model's parameters' device, else CPU).
        seed: base seed; the ``i``-th call without ``seed=`` (counting from 0, calls with an explicit
            seed and :meth:`warmup` not counted) uses ``seed + i``.
        preallocate: False allocates fresh buffers at every call (same arithmetic, same results; for
            tests and for measuring what preallocation saves).

    Call: ``sampler(condition=None, *, seed=None, deadline_ms=config.deadline_ms) -> SampleResult``.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        oracle: Callable[..., Any],
        *,
        sample_shape: Sequence[int],
        config: SamplerConfig,
        ddpm_schedule: DDPMSchedule | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        preallocate: bool = True,
    ) -> None:
        if not isinstance(config, SamplerConfig):
            raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
        shape = tuple(int(s) for s in sample_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"sample_shape must be non-empty with positive sizes, got {tuple(sample_shape)}")
        if ddpm_schedule is not None and not isinstance(ddpm_schedule, DDPMSchedule):
            raise TypeError(f"ddpm_schedule must be a DDPMSchedule, got {type(ddpm_schedule).__name__}")
        model = as_denoiser(model, ddpm_schedule)
        self.model = model
        self.oracle = oracle
        self.sample_shape = shape
        self.config = config
        self.ddpm_schedule = ddpm_schedule
        self.num_parallel = config.resolved_num_parallel()
        self.device = torch.device(device) if device is not None else self._model_device(model)
        self.seed = int(seed)
        self.preallocate = bool(preallocate)
        n_elem = config.max_rounds * self.num_parallel * math.prod(shape)
        if n_elem > _MAX_BUFFER_ELEMENTS:
            raise ValueError(
                f"max_rounds * N * prod(sample_shape) = {n_elem} elements is too large to keep every round's "
                f"samples; lower max_rounds ({config.max_rounds}) or N ({self.num_parallel})"
            )
        self._lock = threading.Lock()
        self._calls = itertools.count()
        self._generator = torch.Generator(device=self.device)
        self._workspace: _Workspace | None = None
        # condition layout -> (graph, output buffer, replay ms, static cond), or None: capture failed
        self._graphs: dict[Any, tuple[Any, torch.Tensor, float, dict[str, torch.Tensor]] | None] = {}
        # Euler-ancestral steps (DDPM levels): whether step i draws noise (sigma_up > 0)
        self._draws_noise: list[bool] = []
        if ddpm_schedule is None:
            if config.sigmas is not None:
                self.levels: list[float] = list(config.sigmas)
            else:
                sigmas = make_sigmas(
                    config.schedule, config.num_steps, config.sigma_min, config.sigma_max, config.rho
                )
                self.levels = [float(s) for s in sigmas]
            self._start_scale = self.levels[0]
            self._multistep = (None if config.solver in ("heun", "euler")
                               else multistep_coefficients(config.solver, self.levels))
        else:
            if config.sigmas is not None:
                raise ValueError("sigmas= is an EDM schedule; a model on a DDPM's levels samples on those "
                                 "levels")
            if config.solver != "heun":
                raise ValueError(f"solver {config.solver!r} is for EDM denoisers; a model on a DDPM's "
                                 "levels samples with the Euler-ancestral (DDPM ancestral) step "
                                 "(solver='heun')")
            self._multistep = None
            if config.num_steps > ddpm_schedule.num_steps:
                raise ValueError(
                    f"num_steps {config.num_steps} exceeds the schedule's {ddpm_schedule.num_steps}"
                )
            self.levels = [float(s) for s in ddpm_schedule.sampling_sigmas(config.num_steps)]
            self._start_scale = math.sqrt(1.0 + self.levels[0] ** 2)  # x_T / sqrt(ᾱ_T), x_T ~ N(0, I)
            self._draws_noise = [ancestral_levels(s, s_next)[1] > 0.0
                                 for s, s_next in itertools.pairwise(self.levels)]
        self._level_index = {s: i for i, s in enumerate(self.levels)}
        self._mode, self._net_fn = self._classify(model)
        self._plan, self._analytic = self._fast_paths(model)

    # construction helpers ------------------------------------------------------------------------------
    @staticmethod
    def _model_device(model: Any) -> torch.device:
        params = getattr(model, "parameters", None)
        if callable(params):
            for p in params():
                return p.device
        return torch.device("cpu")

    def _classify(self, model: Any) -> tuple[str, Any]:
        """``(mode, net)``. ``mode``: ``plain`` (no autograd), ``split`` (denoiser + guidance gradient,
        timed apart), ``whole`` (a guided model called as one), ``fused`` (the model has its own fused
        step: Heun, or Euler-ancestral on DDPM levels, which the library's ``heun_step`` /
        ``euler_ancestral_step`` delegate to for calls without ``cond``; otherwise they call the model
        whole). ``net``: what ``plain`` and ``whole`` call."""
        heun = self.config.solver == "heun"
        step_name = "ancestral_step" if self.ddpm_schedule is not None else "heun_step"
        if isinstance(model, GuidedDenoiser):
            if heun and getattr(model, step_name) is not None:
                return "fused", model
            active = [(c, s) for c, s in zip(model.classifiers, model.scales) if s != 0.0]
            if not active:
                return "plain", model.denoiser
            if all(_is_time_dependent(c) for c, _ in active):
                return "split", None
            return "whole", model
        if heun and getattr(model, step_name, None) is not None:
            return "fused", model
        return "plain", model

    def _fast_paths(self, model: Any) -> tuple[ResidualMLPDenoiserPlan | None, Any]:
        """The level-specialised MLP denoiser and the analytic guidance, where they apply."""
        if not self.config.fast_paths or self._mode not in ("plain", "split"):
            return None, None
        base = model.denoiser if isinstance(model, GuidedDenoiser) else model
        plan = None
        if self.kind == "edm" and supports_mlp_plan(base) and len(self.sample_shape) == 1:
            plan = ResidualMLPDenoiserPlan(base, self.levels, self.num_parallel, self.device)
        analytic = None
        if self._mode == "split":
            from genneg.guidance.analytic import build_analytic_guidance

            active = [(c, s) for c, s in zip(model.classifiers, model.scales) if s != 0.0]
            if self.config.compile_guidance:
                from genneg.guidance.compiled import build_compiled_guidance

                analytic = build_compiled_guidance([c for c, _ in active], [s for _, s in active])
                if analytic is not None:
                    return plan, analytic
            analytic = build_analytic_guidance([c for c, _ in active], [s for _, s in active])
        return plan, analytic

    @property
    def fast_path(self) -> str:
        """Which specialised paths run: ``"mlp_plan"``, ``"analytic_guidance"`` (or ``"compiled_guidance"``),
        both joined by ``+``, or ``"none"``."""
        from genneg.guidance.compiled import CompiledMLPGuidance

        compiled = isinstance(self._analytic, CompiledMLPGuidance)
        guidance = "compiled_guidance" if compiled else "analytic_guidance"
        names = [n for n, on in (("mlp_plan", self._plan), (guidance, self._analytic)) if on]
        return "+".join(names) or "none"

    @property
    def kind(self) -> Literal["edm", "ddpm"]:
        """``"edm"`` (Heun or a few-step solver on the PF-ODE) or ``"ddpm"`` (Euler-ancestral on a DDPM's
        levels)."""
        return "edm" if self.ddpm_schedule is None else "ddpm"

    @property
    def mode(self) -> str:
        """How the model is called: ``plain``, ``split``, ``whole`` or ``fused`` (see ``_classify``)."""
        return self._mode

    @property
    def uses_cuda_graphs(self) -> bool:
        """True when rounds replay CUDA graphs (CUDA device, ``config.cuda_graphs``, no autograd guidance)."""
        return (
            self.device.type == "cuda"
            and self.config.cuda_graphs
            and self.preallocate
            and self._mode in ("plain", "fused")
        )

    def clone(self) -> FastSampler:
        """A sampler with the same model, oracle and config but its own buffers, generator and lock (for
        another planner thread)."""
        return FastSampler(
            self.model,
            self.oracle,
            sample_shape=self.sample_shape,
            config=self.config,
            ddpm_schedule=self.ddpm_schedule,
            device=self.device,
            seed=self.seed,
            preallocate=self.preallocate,
        )

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        model: str = "baseline",
        *,
        p: float | None = None,
        num_parallel: int | None = None,
        num_steps: int | None = None,
        schedule: Literal["log_linear", "karras"] | None = None,
        deadline_ms: float | None = None,
        max_rounds: int = 1,
        k_best: int = 1,
        rate: Literal["estimate", "upper"] = "estimate",
        guidance_backend: Literal["torch", "triton", "auto"] = "auto",
        device: torch.device | str | None = None,
        seed: int = 0,
        oracle: Callable[..., Any] | None = None,
        drivable_map: Any = None,
        **config_overrides: Any,
    ) -> FastSampler:
        """A sampler for a model of a finished Gen-neG run (any task: checkerboard, traffic, a user's).

        Args:
            run_dir: the run directory.
            model: ``"baseline"``, ``"guided"`` (the baseline guided by the whole classifier stack),
                ``"distilled"``, or any model name of the run (``iter<k>``, ``ablation_<mode>``).
            p: required success probability; ``N = N(r, p)`` with ``r`` the model's infraction rate
                measured by the run's evaluation (its point estimate, or with ``rate="upper"`` the upper
                end of its 95% Wilson interval: a safer ``N`` when few infractions were seen).
            num_parallel: ``N`` directly (instead of ``p``).
            num_steps, schedule: sampler steps and schedule (default: the run's).
            deadline_ms, max_rounds, k_best: as in :class:`SamplerConfig`.
            guidance_backend: backend of the rebuilt guided stack (``"auto"``: fused Triton on CUDA).
            device: where to run (default: the run's device).
            oracle: for a user array task whose oracle has no importable reference (a lambda).
            drivable_map: traffic runs: the map the planner drives on (default: the run's first road
                map); calls take a :func:`genneg.planning.traffic.scene_condition` on it.
            config_overrides: further :class:`SamplerConfig` fields.

        Raises:
            ValueError: a model the run does not have or has not evaluated.

        Traffic runs (DDPM scene transformers, guided stacks included) sample on the schedule's levels
        and take the planner's :func:`genneg.planning.traffic.scene_condition`: its ``cond`` (present
        slots, map crop) reaches the network and every classifier by keyword.
        """
        from genneg.pipeline.experiment import load_model
        from genneg.pipeline.traffic import TrafficTask

        if rate not in ("estimate", "upper"):
            raise ValueError(f"rate must be 'estimate' or 'upper', got {rate!r}")
        task, run_config, net = load_model(run_dir, model, oracle=oracle)
        sampling = getattr(run_config, "sampling", None)
        if sampling is not None and "solver" not in config_overrides:
            config_overrides["solver"] = sampling.sampler
        name = {"guided": f"iter{run_config.gen_neg.iterations}"}.get(model, model)
        records = [r for r in _read_records(Path(run_dir)) if r.get("stage") == f"eval/{name}"]
        if not records:
            raise ValueError(f"run {run_dir} has no evaluation of model {name!r}")
        record = records[-1]
        r = float(record["infraction_high"] if rate == "upper" else record["infraction"])
        target = torch.device(device) if device is not None else task.device
        common = {"num_parallel": num_parallel, "p": p, "infraction_rate": r if p is not None else None,
                  "deadline_ms": deadline_ms, "max_rounds": max_rounds, "k_best": k_best}
        if isinstance(task, TrafficTask):
            from genneg.oracles.traffic import TrafficOracle
            from genneg.planning.traffic import SceneTokenOracle

            net = _rebuild_guided(net, guidance_backend).to(target).eval()
            drivable = task.road_maps[0].drivable_map if drivable_map is None else drivable_map
            steps = run_config.gen_neg.sample_steps if num_steps is None else num_steps
            config = SamplerConfig(num_steps=steps, **common, **config_overrides)
            sampler = cls(net, SceneTokenOracle(TrafficOracle(drivable), norm=task.norm),
                          sample_shape=tuple(task.train.tokens.shape[1:]), config=config,
                          ddpm_schedule=task.schedule, device=target, seed=seed)
        else:
            net = _rebuild_guided(net, guidance_backend)
            if hasattr(net, "to"):
                net = net.to(target)
            net.eval()
            edm = task.edm
            if num_steps is None and config_overrides.get("sigmas") is not None:
                # an explicit schedule carries its step count
                num_steps = len(check_sigmas(getattr(config_overrides["sigmas"], "sigmas",
                                                     config_overrides["sigmas"]))) - 1
            sampling_sigma_max = run_config.sampling.sigma_max
            config_overrides.setdefault("sigma_max", edm.sigma_max if sampling_sigma_max is None
                                        else sampling_sigma_max)
            config = SamplerConfig(
                num_steps=run_config.sampling.num_steps if num_steps is None else num_steps,
                schedule=run_config.sampling.schedule if schedule is None else schedule,
                sigma_min=edm.sigma_min, rho=run_config.sampling.rho,
                **common, **config_overrides,
            )
            sampler = cls(net, task.oracle, sample_shape=task.sample_shape, config=config, device=target,
                          seed=seed)
        sampler.infraction_rate = r
        sampler.run_model = name
        return sampler

    infraction_rate: float | None = None
    """The model's measured infraction rate when built by :meth:`from_run` (else None)."""
    run_model: str | None = None
    """The run's model name when built by :meth:`from_run`."""

    # public calls --------------------------------------------------------------------------------------
    def warmup(self, condition: InpaintCondition | None = None, calls: int = 2) -> None:
        """Allocate the buffers, run ``calls`` calls (and capture the CUDA graph for this condition's
        layout) so that later calls allocate nothing of the sampler's own."""
        for _ in range(calls):
            self(condition, seed=self.seed, deadline_ms=math.inf)

    def __call__(
        self,
        condition: InpaintCondition | None = None,
        *,
        seed: int | None = None,
        deadline_ms: float | None = None,
    ) -> SampleResult:
        """Draw rounds of ``N`` samples until one is valid, the deadline passes or ``max_rounds`` is reached.

        Args:
            condition: what is fixed (:class:`~genneg.planning.inpainting.InpaintCondition`), or None.
            seed: reseeds the sampler's generator (default: ``self.seed + i`` for the ``i``-th call
                without a seed).
            deadline_ms: milliseconds from entry (default ``config.deadline_ms``; ``math.inf`` = none).

        Returns:
            :class:`~genneg.planning.result.SampleResult`; ``ok=False`` with the reason when no valid
            sample was found in time or in ``max_rounds`` rounds.

        Raises:
            ValueError: a condition that does not fit (shape, NaN, ``cond`` batch, a map that is not the
                oracle's), or a bad deadline. Never for an unlucky draw.
        """
        t_enter = time.perf_counter()
        deadline_ms = self.config.deadline_ms if deadline_ms is None else deadline_ms
        if deadline_ms is not None and not deadline_ms > 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        if condition is not None:
            check_condition(condition, self.sample_shape, self.num_parallel)
        check_oracle_condition = getattr(self.oracle, "check_condition", None)
        if check_oracle_condition is not None:  # e.g. a scene oracle: the condition's map is its map
            check_oracle_condition(condition)
        if condition is not None and condition.num_fixed > 0 and self.config.solver != "heun":
            raise ValueError(f"inpainting conditions need solver='heun', this sampler has "
                             f"{self.config.solver!r}")
        deadline_s = math.inf if deadline_ms is None else t_enter + deadline_ms / 1e3
        with self._lock:
            seed = self.seed + next(self._calls) if seed is None else int(seed)
            return self._call(condition, seed, deadline_s, t_enter)

    # the call ------------------------------------------------------------------------------------------
    def _workspace_for_call(self) -> _Workspace:
        if self.preallocate and self._workspace is not None:
            return self._workspace
        with torch.inference_mode(False):  # buffers must be able to enter autograd (guidance)
            ws = _Workspace(
                self.num_parallel,
                self.sample_shape,
                self.device,
                self.config.max_rounds,
                self.levels,
            )
        if self.preallocate:
            self._workspace = ws
        return ws

    def _call(
        self, condition: InpaintCondition | None, seed: int, deadline_s: float, t_enter: float
    ) -> SampleResult:
        ws = self._workspace_for_call()
        self._generator.manual_seed(seed)
        clock = _Clock(deadline_s)
        conditioned = condition is not None and condition.num_fixed > 0
        if condition is not None:
            with torch.no_grad():
                ws.known.copy_(condition.values.unsqueeze(0))
                ws.mask.copy_(condition.mask.unsqueeze(0))
        cond = batch_cond(condition, self.num_parallel, self.device)
        n = self.num_parallel
        rounds = 0
        first_valid = -1
        reason = "max_rounds"
        nonfinite = False
        verdicts: torch.Tensor | None = None
        for r in range(self.config.max_rounds):
            x = self._round(ws, cond, conditioned, clock)
            if x is None or clock.expired():
                reason = "deadline"
                break
            t0 = time.perf_counter()
            v = evaluate_oracle(self.oracle, x, cond)  # oracle(x, **cond), its answer checked
            finite = torch.isfinite(x).flatten(1).all(1)
            if not bool(finite.all()):  # a NaN/inf sample is never valid, whatever the oracle says
                v = v & (finite if v.ndim == 1 else finite[:, None])
                nonfinite = True
            verdicts = ws.verdict_buffer(v, self.config.max_rounds)
            verdicts[r * n : (r + 1) * n].copy_(v)
            ws.samples[r * n : (r + 1) * n].copy_(x)
            valid = sample_verdicts(v)
            clock.oracle_ms += 1e3 * (time.perf_counter() - t0)
            rounds += 1
            if bool(valid.any()):
                first_valid = r * n + int(torch.argmax(valid.to(torch.uint8)))
                reason = ""
                break
        if reason == "max_rounds" and nonfinite:
            reason = "non_finite"
        return self._result(ws, verdicts, rounds, first_valid, reason, seed, clock, t_enter)

    def _result(
        self,
        ws: _Workspace,
        verdicts: torch.Tensor | None,
        rounds: int,
        first_valid: int,
        reason: str,
        seed: int,
        clock: _Clock,
        t_enter: float,
    ) -> SampleResult:
        m = rounds * self.num_parallel
        samples = ws.samples[:m]
        if verdicts is None:
            verdicts = torch.zeros((0,), dtype=torch.bool, device=self.device)
        verdicts = verdicts[:m]
        if self.config.copy_samples or not self.preallocate:
            samples, verdicts = samples.clone(), verdicts.clone()
        if m:
            part_ok = (
                verdicts.to(torch.float32) if verdicts.ndim == 1 else verdicts.to(torch.float32).mean(dim=1)
            )
            order = torch.sort(part_ok, descending=True, stable=True).indices[: self.config.k_best]
            best = samples[order].clone()
            best_valid = sample_verdicts(verdicts)[order]
        else:
            best = samples[:0].clone()
            best_valid = torch.zeros((0,), dtype=torch.bool, device=self.device)
        sample = samples[first_valid].clone() if first_valid >= 0 else None
        times = StageTimes(
            model_ms=clock.model_ms,
            guidance_ms=clock.guidance_ms,
            oracle_ms=clock.oracle_ms,
            total_ms=1e3 * (time.perf_counter() - t_enter),
            split=clock.split,
        )
        return SampleResult(
            ok=first_valid >= 0,
            reason=reason,
            sample=sample,
            best=best,
            best_valid=best_valid,
            samples=samples,
            verdicts=verdicts,
            rounds=rounds,
            num_parallel=self.num_parallel,
            seed=seed,
            times=times,
        )

    def _round(
        self,
        ws: _Workspace,
        cond: dict[str, torch.Tensor],
        conditioned: bool,
        clock: _Clock,
    ) -> torch.Tensor | None:
        """One round of ``N`` samples into a workspace buffer, or None when the deadline passed."""
        if self.uses_cuda_graphs and not (cond and self._mode == "fused"):
            return self._graph_round(ws, cond, conditioned, clock)
        needs_autograd = (self._mode == "whole" or (self._mode == "fused" and cond)
                          or (self._mode == "split" and (self._analytic is None or cond)))
        if needs_autograd:  # guidance needs autograd, even inside a caller's inference_mode
            with torch.inference_mode(False), torch.no_grad():
                return self._trajectory(ws, cond, conditioned, clock)
        with torch.inference_mode():
            return self._trajectory(ws, cond, conditioned, clock)

    def _trajectory(
        self, ws: _Workspace, cond: dict[str, torch.Tensor], conditioned: bool, clock: _Clock
    ) -> torch.Tensor | None:
        """Draw the round's initial noise from the generator and integrate (CPU / eager path)."""
        ws.noise.normal_(generator=self._generator)
        if self.kind == "ddpm":
            return self._ancestral_trajectory(ws, cond, conditioned, clock, pre_drawn=False)
        if self._multistep is not None:
            return self._multistep_trajectory(ws, cond, clock)
        return self._edm_trajectory(ws, cond, conditioned, clock)

    # EDM ------------------------------------------------------------------------------------------------
    def _denoise(
        self, ws: _Workspace, x: torch.Tensor, level: int, cond: dict[str, torch.Tensor], clock: _Clock
    ) -> torch.Tensor:
        """``D(x; sigma_level)`` (guided when the model is), timed into the clock's stages."""
        sigma = ws.sigma[level]
        t0 = time.perf_counter()
        if self._mode == "plain":
            if self._plan is not None and not cond:
                out = self._plan.denoise(x, level, ws.den)
            else:
                out = self._net_fn(x, sigma, **cond)
            clock.model_ms += 1e3 * (time.perf_counter() - t0)
            return out
        if self._mode == "split":
            guided: GuidedDenoiser = self.model  # type: ignore[assignment]
            with torch.inference_mode():
                if self._plan is not None and not cond:
                    den = self._plan.denoise(x, level, ws.den)
                else:
                    den = guided.denoiser(x, sigma, **cond)
            t1 = time.perf_counter()
            if self._analytic is not None and not cond:
                grad = self._analytic.gradient(x, sigma)
            else:
                grad = guidance_gradient(guided.classifiers, x, sigma, guided.scales, cond=cond,
                                         part_mask_key=guided.part_mask_key)
            t2 = time.perf_counter()
            with torch.inference_mode():
                grad.mul_(ws.sigma_sq[level])
                den = den + grad
            t3 = time.perf_counter()
            clock.model_ms += 1e3 * ((t1 - t0) + (t3 - t2))
            clock.guidance_ms += 1e3 * (t2 - t1)
            return den
        out = self._net_fn(x, sigma, **cond)  # "whole" (or "fused" with cond): the guided model as one
        clock.guidance_ms += 1e3 * (time.perf_counter() - t0)
        clock.split = False
        return out

    def _level_denoise(
        self, ws: _Workspace, cond: dict[str, torch.Tensor], clock: _Clock
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """:meth:`_denoise` as the library steps' ``denoise(x, sigma)`` (the level found by its value)."""
        index = self._level_index
        return lambda x, sigma: self._denoise(ws, x, index[sigma], cond, clock)

    @staticmethod
    def _add_step_arithmetic(clock: _Clock, t0: float, counted_ms: float) -> None:
        """Add to ``model_ms`` what a step spent since ``t0`` outside its denoiser calls (which the clock
        had at ``counted_ms`` before the step)."""
        spent_ms = clock.model_ms + clock.guidance_ms - counted_ms
        clock.model_ms += 1e3 * (time.perf_counter() - t0) - spent_ms

    def _edm_trajectory(
        self, ws: _Workspace, cond: dict[str, torch.Tensor], conditioned: bool, clock: _Clock
    ) -> torch.Tensor | None:
        """Heun (or, ``config.solver == "euler"``, Euler) along ``self.levels`` from ``sigma_max ·
        ws.noise``: the library's step (``genneg.diffusion.heun_step`` / ``heun_advance`` /
        ``euler_advance``) on the workspace's buffers, as ``heun_sample`` / ``euler_sample`` (and
        ``inpaint_heun_sample`` when conditioned). Returns the buffer holding the samples, or None."""
        levels = self.levels
        x, x_next = ws.x, ws.x_next
        torch.mul(ws.noise, levels[0], out=x)
        replace = None
        if conditioned:
            edm_replace_(x, ws.known, ws.mask, ws.noise, levels[0], ws.scratch)
            replace = lambda y, sigma: edm_replace_(y, ws.known, ws.mask, ws.noise, sigma, ws.scratch)  # noqa: E731
        denoise = self._level_denoise(ws, cond, clock)
        euler = self.config.solver == "euler"
        for i in range(len(levels) - 1):
            if clock.expired():
                return None
            s, s_next = levels[i], levels[i + 1]
            t0 = time.perf_counter()
            if self._mode == "fused":  # the model's own step (or, with cond or replace, the model whole)
                heun_step(self.model, x, s, s_next, cond=cond, out=x_next, buffers=ws.step, replace=replace)
                clock.guidance_ms += 1e3 * (time.perf_counter() - t0)
                clock.split = False
            else:
                counted = clock.model_ms + clock.guidance_ms
                if euler:
                    euler_advance(denoise, x, s, s_next, out=x_next, buffers=ws.step)
                else:
                    heun_advance(denoise, x, s, s_next, out=x_next, buffers=ws.step, replace=replace)
                self._add_step_arithmetic(clock, t0, counted)
            if conditioned:
                edm_replace_(x_next, ws.known, ws.mask, ws.noise, s_next, ws.scratch)
            x, x_next = x_next, x
        return x

    def _multistep_trajectory(
        self, ws: _Workspace, cond: dict[str, torch.Tensor], clock: _Clock
    ) -> torch.Tensor | None:
        """A one-call-per-level solver (``config.solver``: DPM-Solver++(2M) or UniPC) along ``self.levels``
        from ``sigma_max · ws.noise``: the library's updates (``genneg.diffusion.multistep_advance`` with
        ``multistep_coefficients``) on the workspace's buffers, as ``dpmpp_2m_sample`` / ``unipc_sample``;
        a corrector, where the solver has one, first rewrites the state from the one before the last step.
        Returns the buffer holding the samples, or None."""
        assert self._multistep is not None
        levels = self.levels
        x, x_next = ws.x, ws.x_next
        torch.mul(ws.noise, levels[0], out=x)
        for i, step in enumerate(self._multistep):
            if clock.expired():
                return None
            den = self._denoise(ws, x, i, cond, clock)
            t0 = time.perf_counter()
            ws.history[i % _RING].copy_(den)
            outputs = [ws.history[(i - j) % _RING] for j in range(min(i + 1, _RING))]  # newest first
            if step.corrector is not None:
                multistep_advance(step.corrector, ws.x_before, outputs, out=x)
            if self._multistep_needs_before:
                ws.x_before.copy_(x)
            multistep_advance(step.predictor, x, outputs, out=x_next)
            clock.model_ms += 1e3 * (time.perf_counter() - t0)
            x, x_next = x_next, x
        return x

    @property
    def _multistep_needs_before(self) -> bool:
        return self.config.solver == "unipc"

    # Euler-ancestral (DDPM levels) ---------------------------------------------------------------------
    def _ancestral_trajectory(
        self,
        ws: _Workspace,
        cond: dict[str, torch.Tensor],
        conditioned: bool,
        clock: _Clock,
        *,
        pre_drawn: bool,
    ) -> torch.Tensor | None:
        """Euler-ancestral steps along ``self.levels`` from ``sqrt(1 + σ_0²) · ws.noise``: the library's
        step (``genneg.diffusion.euler_ancestral_step`` / ``euler_ancestral_advance``) on the workspace's
        buffers, as ``euler_ancestral_sample`` (and ``inpaint_ancestral_sample`` when conditioned).
        ``pre_drawn``: per-step noise from ``ws.step_noise`` (CUDA graphs) instead of the generator.
        Returns the buffer holding the samples, or None."""
        levels = self.levels
        x, out = ws.x, ws.x_next
        torch.mul(ws.noise, self._start_scale, out=x)
        if conditioned:
            edm_replace_(x, ws.known, ws.mask, ws.noise, levels[0], ws.scratch)
        denoise = self._level_denoise(ws, cond, clock)
        for i, draws_noise in enumerate(self._draws_noise):
            if clock.expired():
                return None
            s, s_next = levels[i], levels[i + 1]
            noise = None
            if draws_noise:
                noise = ws.step_noise[i] if pre_drawn else ws.step_draw.normal_(generator=self._generator)
            t0 = time.perf_counter()
            if self._mode == "fused":  # the model's own step (or, with cond, the model whole)
                euler_ancestral_step(self.model, x, s, s_next, noise, cond=cond, out=out, buffers=ws.step)
                clock.guidance_ms += 1e3 * (time.perf_counter() - t0)
                clock.split = False
            else:
                counted = clock.model_ms + clock.guidance_ms
                euler_ancestral_advance(denoise, x, s, s_next, noise, out=out, buffers=ws.step)
                self._add_step_arithmetic(clock, t0, counted)
            if conditioned:
                if s_next > 0.0:
                    fill = (ws.step_fill_noise[i] if pre_drawn
                            else ws.fill_noise.normal_(generator=self._generator))
                    edm_replace_(out, ws.known, ws.mask, fill, s_next, ws.scratch)
                else:
                    edm_replace_(out, ws.known, ws.mask, out, 0.0, ws.scratch)
            x, out = out, x
        return x

    # CUDA graphs ----------------------------------------------------------------------------------------
    def _graph_round(
        self, ws: _Workspace, cond: dict[str, torch.Tensor], conditioned: bool, clock: _Clock
    ) -> torch.Tensor | None:
        """One round as a CUDA-graph replay (captured on first use per condition layout). The noise is
        drawn into static buffers first; the deadline check predicts the replay from its measured time."""
        key = (conditioned, tuple((k, tuple(c.shape), c.dtype) for k, c in sorted(cond.items())))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(ws, cond, conditioned)
            except RuntimeError as err:  # an op that cannot be captured (a host sync in a kernel launcher)
                warnings.warn(
                    f"FastSampler: CUDA graph capture failed ({err}); running eagerly",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._graphs[key] = None
        entry = self._graphs[key]
        if entry is None:
            with torch.inference_mode():
                return self._trajectory(ws, cond, conditioned, clock)
        graph, out, replay_ms, static_cond = entry
        if time.perf_counter() + replay_ms / 1e3 >= clock.deadline_s:
            return None
        t0 = time.perf_counter()
        with torch.no_grad():
            self._draw_graph_noise(ws, conditioned)
            for key_name, dst in static_cond.items():
                dst.copy_(cond[key_name])
        graph.replay()
        torch.cuda.synchronize(self.device)
        clock.model_ms += 1e3 * (time.perf_counter() - t0)
        clock.split = self._mode == "plain"
        return out

    def _draw_graph_noise(self, ws: _Workspace, conditioned: bool) -> None:
        g = self._generator
        ws.noise.normal_(generator=g)
        if self.kind == "edm":
            return
        steps = len(self._draws_noise)
        if ws.step_noise is None:
            ws.step_noise = torch.empty(
                (max(steps - 1, 1), *ws.x.shape), dtype=ws.x.dtype, device=ws.x.device
            )
            ws.step_fill_noise = torch.empty_like(ws.step_noise)
        ws.step_noise.normal_(generator=g)
        if conditioned:
            ws.step_fill_noise.normal_(generator=g)

    def _capture(self, ws: _Workspace, cond: dict[str, torch.Tensor], conditioned: bool) -> Any:
        """Warm up on a side stream, capture one whole round, measure one replay (milliseconds)."""
        static_cond = {k: c.clone().contiguous() for k, c in cond.items()}

        def trajectory() -> torch.Tensor:
            with torch.inference_mode():
                if self._multistep is not None:
                    out = self._multistep_trajectory(ws, static_cond, _NoClock())
                elif self.kind == "edm":
                    out = self._edm_trajectory(ws, static_cond, conditioned, _NoClock())
                else:
                    out = self._ancestral_trajectory(ws, static_cond, conditioned, _NoClock(), pre_drawn=True)
            assert out is not None
            return out

        self._draw_graph_noise(ws, conditioned)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                trajectory()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = trajectory()
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize(self.device)
        replay_ms = 1e3 * (time.perf_counter() - t0)
        return graph, out, replay_ms, static_cond


def _rebuild_guided(net: Any, backend: str) -> Any:
    """A guided stack rebuilt with the planner's guidance backend (same denoiser, classifiers, scales and
    part mask); any other model as is."""
    if not isinstance(net, GuidedDenoiser):
        return net
    return GuidedDenoiser(net.denoiser, list(net.classifiers), net.scales, backend=backend,
                          part_mask_key=net.part_mask_key)


def _read_records(root: Path) -> list[dict[str, Any]]:
    """The run's metric records (read-only: unlike ``RunDir(resume=True)``, nothing is rewritten)."""
    import json

    path = root / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
