"""Samplers for the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``.

One signature for every sampler, after k-diffusion::

    sample(denoiser, x, sigmas, *, cond=None, callback=None, progress=False) -> x0

with ``x`` ``(B, *shape)`` the initial noise already scaled by ``sigmas[0]``, ``sigmas`` a strictly
decreasing ``(n+1,)`` schedule ending in 0 (``genneg.diffusion.schedules``) and ``cond`` per-sample
conditioning tensors (leading dimension ``B``) passed to every call as ``denoiser(x, sigma, **cond)``.
Every sampler calls the denoiser it is given at every step, so a guided denoiser ``D_K`` (METHOD.md 4)
guides every step, not only the last. Step arithmetic uses the float64 sigmas as Python floats; the state
stays in ``x``'s dtype. The step to ``sigma = 0`` is always first order (``x0 = D(x; sigma_min)``).

Samplers (:data:`SAMPLERS`, by name through :func:`get_sampler`), with ``n`` the number of nonzero levels:

- ``"heun"``: Heun's 2nd-order method (Karras et al. 2022, Alg. 1), ``2n - 1`` denoiser calls.
- ``"euler"``: Euler, 1st order, ``n`` calls. In VE coordinates it *is* DDIM (Song et al. 2021) and
  DPM-Solver++(1) (Lu et al. 2022): ``x' = (sigma'/sigma) x + (1 - sigma'/sigma) D``.
- ``"dpmpp_2m"``: DPM-Solver++(2M) in data-prediction form (Lu et al. 2022, "DPM-Solver++: Fast Solver for
  Guided Sampling of Diffusion Probabilistic Models", Alg. 2), on any sigma schedule (the step-size ratio
  ``r = h_{i-1} / h_i`` enters the coefficients), 2nd order, ``n`` calls.
- ``"unipc"``: UniPC-2M with the B(h) = e^h - 1 ("bh2") variant (Zhao et al. 2023, "UniPC: A Unified
  Predictor-Corrector Framework for Fast Sampling of Diffusion Models", Alg. 2-3): the predictor UniP-2
  is DPM-Solver++(2M); the corrector UniC re-uses the denoiser output at the predicted point (which the
  next predictor needs anyway), so it raises the order to 3 at no extra call, ``n`` calls.

One stochastic sampler shares the signature (plus a ``generator`` for its noise):
:func:`euler_ancestral_sample`, the Euler-ancestral step (k-diffusion's ``sample_euler_ancestral``; Song
et al. 2021 "Score-Based Generative Modeling through SDEs" for the reverse SDE, DDIM's η for the split of
the variance). With ``η = 1`` it draws from the Gaussian bridge ``x_{σ'} | x_σ, x̂0`` of the VE process,
which on a DDPM's discrete levels is exactly DDPM's ancestral step (``genneg.diffusion.ddpm``).

With ``lambda = -log sigma`` and ``h = lambda' - lambda`` the data-prediction update of all the
multistep methods is ``x' = e^{-h} x + (1 - e^{-h}) D_eff`` where ``D_eff`` extrapolates the denoiser's
past outputs (METHOD.md 1: the PF-ODE in VE coordinates, where ``alpha = 1``).

Each step's arithmetic is written once, in place, around a level denoiser ``denoise(x, sigma)``
(:data:`LevelDenoise`): :func:`euler_advance`, :func:`heun_advance` (Euler predictor, optional in-place
``replace`` of the predicted point for inpainting, trapezoidal corrector) and
:func:`euler_ancestral_advance`, each with an optional ``out`` and :class:`StepBuffers` so that a caller
that steps many times (``genneg.planning.FastSampler``, CUDA graphs) allocates nothing per step. The
samplers, the inpainting samplers and the planner all call them, so their results agree bit for bit.

A denoiser may provide its own fused Heun step (``denoiser.heun_step(x, sigma_cur, sigma_next)``, e.g. the
Triton guidance kernels) or Euler-ancestral step (``denoiser.ancestral_step(x, sigma_cur, sigma_next,
noise)``); :func:`heun_step` and :func:`euler_ancestral_step` then call it (unconditioned calls only), so
the fast path changes nothing for callers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from genneg.diffusion.denoiser import Denoiser, expand_sigma
from genneg.diffusion.schedules import check_sigmas
from genneg.profiling import nvtx_range

__all__ = [
    "SAMPLERS",
    "Cond",
    "LevelDenoise",
    "MultistepStep",
    "Sampler",
    "StepBuffers",
    "StepCallback",
    "ancestral_levels",
    "denoiser_calls",
    "dpmpp_2m_sample",
    "euler_advance",
    "euler_ancestral_advance",
    "euler_ancestral_sample",
    "euler_ancestral_step",
    "euler_sample",
    "euler_step",
    "get_sampler",
    "heun_advance",
    "heun_sample",
    "heun_step",
    "multistep_advance",
    "multistep_coefficients",
    "unipc_sample",
]

StepCallback = Callable[[int, torch.Tensor, float, float], None]
"""``callback(i, x_next, sigma_cur, sigma_next)``, called after step ``i``."""

Cond = Mapping[str, torch.Tensor]
"""Per-sample conditioning tensors, leading dimension ``B``, passed as ``denoiser(x, sigma, **cond)``."""


class Sampler(Protocol):
    """``sample(denoiser, x (B, ...), sigmas (n+1,), *, cond, callback, progress) -> (B, ...)``."""

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
                 callback: StepCallback | None = None, progress: bool = False) -> torch.Tensor: ...


def _levels(sigmas: torch.Tensor) -> list[float]:
    """``sigmas`` as Python floats, checked (:func:`~genneg.diffusion.schedules.check_sigmas`)."""
    return check_sigmas(sigmas)


def _call(denoiser: Denoiser, x: torch.Tensor, sigma: float, cond: Cond | None) -> torch.Tensor:
    return denoiser(x, expand_sigma(sigma, x), **(cond or {}))


LevelDenoise = Callable[[torch.Tensor, float], torch.Tensor]
"""``denoise(x, sigma) -> D(x; sigma)`` with the level a Python float: a denoiser bound to its conditioning
(``D(x, sigma, **cond)``) or a caller's own evaluation (e.g. ``genneg.planning.FastSampler``'s, with its
per-level buffers). The step functions below take one; their ``*_step`` forms build it from a denoiser."""


@dataclass(frozen=True)
class StepBuffers:
    """Scratch tensors of the in-place step arithmetic (each of the state's shape, dtype and device), so
    that a caller that steps many times (``FastSampler``, CUDA graphs) allocates nothing per step.

    ``slope`` and ``slope_next`` hold the PF-ODE slopes ``(x - D) / sigma`` of Heun's two evaluations,
    ``scratch`` the products; the Euler-ancestral step uses ``scratch`` only. Without buffers (and without
    ``out``) the steps allocate fresh tensors and stay differentiable; with them, no autograd (``out=``
    forms), but the same kernels, so the same values bit for bit."""

    slope: torch.Tensor
    slope_next: torch.Tensor
    scratch: torch.Tensor

    @classmethod
    def like(cls, x: torch.Tensor) -> StepBuffers:
        """Fresh buffers shaped like ``x``."""
        return cls(torch.empty_like(x), torch.empty_like(x), torch.empty_like(x))


def _bound(denoiser: Denoiser, cond: Cond | None) -> LevelDenoise:
    """``denoiser`` as a :data:`LevelDenoise` with ``cond`` bound."""
    return lambda x, sigma: _call(denoiser, x, sigma, cond)


def _into(op: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor | float,
          out: torch.Tensor | None) -> torch.Tensor:
    """``op(a, b)``, written into ``out`` when given (the in-place form of a step), else a fresh tensor."""
    return op(a, b) if out is None else op(a, b, out=out)


def _check_out(x: torch.Tensor, out: torch.Tensor | None) -> None:
    if out is x:
        raise ValueError("out must not be x: the step reads x after it starts writing out")


def _euler(denoise: LevelDenoise, x: torch.Tensor, sigma_cur: float, sigma_next: float,
           out: torch.Tensor | None, buffers: StepBuffers | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Euler step and its slope ``(x - D) / sigma_cur``."""
    _check_out(x, out)
    slope = _into(torch.sub, x, denoise(x, sigma_cur), None if buffers is None else buffers.slope)
    slope.div_(sigma_cur)
    step = _into(torch.mul, slope, sigma_next - sigma_cur, None if buffers is None else buffers.scratch)
    return _into(torch.add, x, step, out), slope


def euler_advance(denoise: LevelDenoise, x: torch.Tensor, sigma_cur: float, sigma_next: float, *,
                  out: torch.Tensor | None = None, buffers: StepBuffers | None = None) -> torch.Tensor:
    """One Euler step of the PF-ODE, ``x' = x + (sigma_next - sigma_cur) (x - D(x; sigma_cur)) / sigma_cur``.

    Args:
        denoise: ``denoise(x, sigma) -> D(x; sigma)`` (:data:`LevelDenoise`).
        x: ``(B, *shape)`` float state at ``sigma_cur``.
        sigma_cur, sigma_next: levels (data units), ``sigma_cur > sigma_next >= 0``.
        out: ``(B, *shape)`` buffer for the result (never ``x``), or None for a fresh tensor.
        buffers: scratch (:class:`StepBuffers`), or None for fresh tensors.

    Returns:
        The state at ``sigma_next`` (``out`` when given).

    Raises:
        ValueError: ``out`` is ``x``.
    """
    return _euler(denoise, x, sigma_cur, sigma_next, out, buffers)[0]


def heun_advance(denoise: LevelDenoise, x: torch.Tensor, sigma_cur: float, sigma_next: float, *,
                 out: torch.Tensor | None = None, buffers: StepBuffers | None = None,
                 replace: Callable[[torch.Tensor, float], object] | None = None) -> torch.Tensor:
    """One step of Heun's 2nd-order method (Karras et al. 2022, Alg. 1): the Euler predictor
    (:func:`euler_advance`), then, when ``sigma_next > 0``, the trapezoidal corrector
    ``x' = x + (sigma_next - sigma_cur) (d + d') / 2`` with ``d'`` the slope at the predicted point.

    The arithmetic of every Heun step of the package (:func:`heun_sample`, inpainting, the planner).

    Args:
        replace: called as ``replace(x_pred, sigma_next)`` on the predicted point before the corrector's
            denoiser call, to rewrite part of it in place (inpainting's replacement of the known part).
        Others as :func:`euler_advance`.

    Returns:
        The state at ``sigma_next`` (``out`` when given).
    """
    x_pred, slope = _euler(denoise, x, sigma_cur, sigma_next, out, buffers)
    if sigma_next == 0:
        return x_pred
    if replace is not None:
        replace(x_pred, sigma_next)
    slope_buffer = None if buffers is None else buffers.slope_next
    slope_next = _into(torch.sub, x_pred, denoise(x_pred, sigma_next), slope_buffer)
    slope_next.div_(sigma_next)
    mean_slope = _into(torch.add, slope, slope_next, slope_buffer)
    mean_slope.mul_((sigma_next - sigma_cur) * 0.5)
    return _into(torch.add, x, mean_slope, out)


def euler_step(denoiser: Denoiser, x: torch.Tensor, sigma_cur: float, sigma_next: float, *,
               cond: Cond | None = None) -> torch.Tensor:
    """One Euler step of the PF-ODE from ``sigma_cur`` to ``sigma_next`` (may be 0): :func:`euler_advance`
    of ``denoiser(x, sigma, **cond)``."""
    return euler_advance(_bound(denoiser, cond), x, sigma_cur, sigma_next)


def heun_step(denoiser: Denoiser, x: torch.Tensor, sigma_cur: float, sigma_next: float, *,
              cond: Cond | None = None, out: torch.Tensor | None = None, buffers: StepBuffers | None = None,
              replace: Callable[[torch.Tensor, float], object] | None = None) -> torch.Tensor:
    """One step of Heun's 2nd-order method; a plain Euler step when ``sigma_next == 0``: :func:`heun_advance`
    of ``denoiser(x, sigma, **cond)``.

    Delegates to ``denoiser.heun_step(x, sigma_cur, sigma_next)`` when the denoiser has one (fused
    backends), ``cond`` is empty and there is no ``replace`` (a fused step cannot rewrite its predicted
    point); the result is then copied into ``out`` when one is given.

    Args:
        denoiser: ``D(x, sigma, **cond)``.
        out, buffers, replace: as :func:`heun_advance`.
    """
    fused = getattr(denoiser, "heun_step", None)
    if fused is not None and not cond and replace is None:
        x_next = fused(x, sigma_cur, sigma_next)
        return x_next if out is None else out.copy_(x_next)
    return heun_advance(_bound(denoiser, cond), x, sigma_cur, sigma_next, out=out, buffers=buffers,
                        replace=replace)


@torch.no_grad()
def heun_sample(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
                callback: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """Integrate the PF-ODE with Heun steps along ``sigmas`` (Karras et al. 2022, Alg. 1); the step to
    ``sigma = 0`` is Euler.

    Runs under ``torch.no_grad``; guidance wrappers switch gradients on locally for their classifiers.

    Args:
        denoiser: ``D(x, sigma, **cond)``.
        x: ``(B, *shape)`` float, initial noise ``sigmas[0] · N(0, I)``.
        sigmas: ``(n+1,)`` strictly decreasing, ending in 0.
        cond: per-sample conditioning (leading dimension ``B``), or None.
        callback: called as ``callback(i, x_next, sigma_cur, sigma_next)`` after step ``i``.
        progress: show a progress bar.

    Returns:
        ``(B, *shape)`` samples at ``sigma = 0``.

    Raises:
        ValueError: ``sigmas`` not strictly decreasing or not ending in 0.
    """
    levels = _levels(sigmas)
    buffers = StepBuffers.like(x)
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling", leave=False):
        with nvtx_range("sampler.heun_step"):
            x = heun_step(denoiser, x, levels[i], levels[i + 1], cond=cond, buffers=buffers)
        if callback is not None:
            callback(i, x, levels[i], levels[i + 1])
    return x


@torch.no_grad()
def euler_sample(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
                 callback: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """Euler steps along ``sigmas``: 1st order, one denoiser call per step (= DDIM = DPM-Solver++(1) in VE
    coordinates). Arguments, returns and errors as :func:`heun_sample`."""
    levels = _levels(sigmas)
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling", leave=False):
        x = euler_step(denoiser, x, levels[i], levels[i + 1], cond=cond)
        if callback is not None:
            callback(i, x, levels[i], levels[i + 1])
    return x


def ancestral_levels(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an Euler-ancestral step from ``sigma`` to ``sigma_next``: a
    deterministic step to ``sigma_down`` then fresh noise of std ``sigma_up``, with
    ``sigma_down² + sigma_up² = sigma_next²`` and ``sigma_up = min(sigma_next, η sigma_next
    sqrt(1 - sigma_next²/sigma²))`` (k-diffusion's ``get_ancestral_step``). ``(0, 0)`` when
    ``sigma_next == 0``; ``η = 0`` is the deterministic (DDIM) step."""
    if sigma_next == 0.0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2)))
    return math.sqrt(sigma_next * sigma_next - sigma_up * sigma_up), sigma_up


def euler_ancestral_advance(denoise: LevelDenoise, x: torch.Tensor, sigma_cur: float, sigma_next: float,
                            noise: torch.Tensor | None, *, eta: float = 1.0, out: torch.Tensor | None = None,
                            buffers: StepBuffers | None = None) -> torch.Tensor:
    """One Euler-ancestral step: ``x' = D + (sigma_down/sigma)(x - D) + sigma_up · noise`` with
    ``D = D(x; sigma_cur)`` and the levels of :func:`ancestral_levels`; the arithmetic of every
    Euler-ancestral step of the package (:func:`euler_ancestral_sample`, inpainting, the planner).

    Args:
        denoise: ``denoise(x, sigma) -> D(x; sigma)`` (:data:`LevelDenoise`).
        x: ``(B, *shape)`` float state at ``sigma_cur``.
        noise: ``(B, *shape)`` standard normal; unused (may be None) when ``sigma_up == 0``, e.g. the step
            to 0, which returns ``D``.
        eta: 1 for the ancestral (SDE) step, 0 for the deterministic one.
        out, buffers: as :func:`euler_advance`.

    Raises:
        ValueError: ``noise`` None where the step needs it; ``out`` is ``x``.
    """
    _check_out(x, out)
    sigma_down, sigma_up = ancestral_levels(sigma_cur, sigma_next, eta)
    if sigma_up > 0.0 and noise is None:
        raise ValueError(f"a step to sigma_next={sigma_next} with eta={eta} needs noise")
    scratch = None if buffers is None else buffers.scratch
    den = denoise(x, sigma_cur)
    toward = _into(torch.sub, x, den, scratch)
    toward.mul_(sigma_down / sigma_cur)
    x_next = _into(torch.add, den, toward, out)
    if sigma_up > 0.0:
        x_next.add_(_into(torch.mul, noise, sigma_up, scratch))
    return x_next


def euler_ancestral_step(denoiser: Denoiser, x: torch.Tensor, sigma_cur: float, sigma_next: float,
                         noise: torch.Tensor | None, *, cond: Cond | None = None, eta: float = 1.0,
                         out: torch.Tensor | None = None, buffers: StepBuffers | None = None
                         ) -> torch.Tensor:
    """One Euler-ancestral step: :func:`euler_ancestral_advance` of ``denoiser(x, sigma, **cond)``.

    Delegates to ``denoiser.ancestral_step(x, sigma_cur, sigma_next, noise)`` when the denoiser has one
    (fused backends), ``cond`` is empty and ``eta == 1`` (the result then copied into ``out`` when given)."""
    fused = getattr(denoiser, "ancestral_step", None)
    if fused is not None and not cond and eta == 1.0:
        x_next = fused(x, sigma_cur, sigma_next, noise)
        return x_next if out is None else out.copy_(x_next)
    return euler_ancestral_advance(_bound(denoiser, cond), x, sigma_cur, sigma_next, noise, eta=eta, out=out,
                                   buffers=buffers)


@torch.no_grad()
def euler_ancestral_sample(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           cond: Cond | None = None, callback: StepCallback | None = None,
                           progress: bool = False, generator: torch.Generator | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Euler-ancestral sampling along ``sigmas`` (module docstring): one denoiser call and, except for
    the step to 0, one ``randn`` of ``x``'s shape from ``generator`` per step.

    On a DDPM's levels (``DDPMSchedule.sampling_sigmas``) with ``η = 1`` and the initial state
    ``DDPMSchedule.initial_noise`` this is DDPM's ancestral sampler (Ho et al. 2020, Alg. 2; the
    posterior of the visited sub-chain when steps are skipped).

    Args:
        generator: source of the per-step noise (drawn on ``x``'s device in ``x``'s dtype).
        eta: 1 for the ancestral (SDE) step, 0 for the deterministic one, in between to interpolate.
        Others as :func:`heun_sample`.

    Raises:
        ValueError: a bad ``sigmas`` (as :func:`heun_sample`) or ``eta < 0``.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    levels = _levels(sigmas)
    buffers = StepBuffers.like(x)
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling", leave=False):
        sigma, sigma_next = levels[i], levels[i + 1]
        noise = None
        if ancestral_levels(sigma, sigma_next, eta)[1] > 0.0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        with nvtx_range("sampler.euler_ancestral_step"):
            x = euler_ancestral_step(denoiser, x, sigma, sigma_next, noise, cond=cond, eta=eta,
                                     buffers=buffers)
        if callback is not None:
            callback(i, x, sigma, sigma_next)
    return x


def _data_prediction_step(x: torch.Tensor, sigma: float, sigma_next: float, d: torch.Tensor) -> torch.Tensor:
    """``x' = (sigma'/sigma) x + (1 - sigma'/sigma) d``: exact for a constant ``d``."""
    ratio = sigma_next / sigma
    return ratio * x + (1.0 - ratio) * d


@torch.no_grad()
def dpmpp_2m_sample(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
                    callback: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data-prediction form on any sigma schedule.

    Step ``i`` (``lambda = -log sigma``, ``h_i = lambda_{i+1} - lambda_i``, ``r = h_{i-1} / h_i``)::

        D_eff = (1 + 1/(2r)) D(x_i; sigma_i) - 1/(2r) D(x_{i-1}; sigma_{i-1})
        x_{i+1} = (sigma_{i+1}/sigma_i) x_i + (1 - sigma_{i+1}/sigma_i) D_eff

    The first step and the step to ``sigma = 0`` are first order (``D_eff = D(x_i; sigma_i)``), as in the
    paper and k-diffusion's ``sample_dpmpp_2m``. One denoiser call per step, applied as
    :func:`multistep_advance` with the step's :func:`multistep_coefficients`. Arguments, returns and
    errors as :func:`heun_sample`.
    """
    levels = _levels(sigmas)
    return _multistep_sample("dpmpp_2m", multistep_coefficients("dpmpp_2m", levels), denoiser, x, levels,
                             cond, callback, progress)


def multistep_advance(update: tuple[float, tuple[float, ...]], x: torch.Tensor,
                      outputs: Sequence[torch.Tensor], *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a · x + Σ_j c_j outputs[j]``: one predictor or corrector of a one-call-per-level solver from its
    coefficients ``update = (a, (c_0, c_1, ...))`` (a :class:`MultistepStep` field). The arithmetic of
    every DPM-Solver++(2M) and UniPC step of the package (the samplers here and the planner).

    Args:
        update: ``(a, (c_0, c_1, ...))``.
        x: ``(B, *shape)`` the state the update starts from.
        outputs: denoiser outputs ``D_i, D_{i-1}, ...`` (newest first), at least ``len(c)`` of them.
        out: buffer for the result (never ``x`` or an output), or None for a fresh tensor.

    Raises:
        ValueError: fewer outputs than coefficients.
    """
    a, coefficients = update
    if len(outputs) < len(coefficients):
        raise ValueError(f"the update needs {len(coefficients)} denoiser outputs, got {len(outputs)}")
    if a != 0.0:
        result = _into(torch.mul, x, a, out)
    else:
        result = torch.zeros_like(x) if out is None else out.zero_()
    for c, d in zip(coefficients, outputs):
        if c != 0.0:
            result.add_(d, alpha=c)
    return result


def _multistep_sample(name: str, steps: Sequence[MultistepStep], denoiser: Denoiser, x: torch.Tensor,
                      levels: list[float], cond: Cond | None, callback: StepCallback | None,
                      progress: bool) -> torch.Tensor:
    """Run the one-call-per-level solver ``steps`` (:func:`multistep_coefficients`) along ``levels``."""
    outputs: list[torch.Tensor] = []  # newest first
    x_before = x
    for i, step in enumerate(tqdm(steps, disable=not progress, desc="sampling", leave=False)):
        sigma, sigma_next = levels[i], levels[i + 1]
        with nvtx_range(f"sampler.{name}_step"):
            outputs = [_call(denoiser, x, sigma, cond), *outputs][:4]
            if step.corrector is not None:
                x = multistep_advance(step.corrector, x_before, outputs)
            x_before = x
            x = multistep_advance(step.predictor, x, outputs)
        if callback is not None:
            callback(i, x, sigma, sigma_next)
    return x


def _dpmpp_2m_update(x: torch.Tensor, sigma_prev: float | None, sigma: float, sigma_next: float,
                     d: torch.Tensor, d_prev: torch.Tensor | None) -> torch.Tensor:
    """One DPM-Solver++(2M) step (first order without a previous output or to ``sigma_next = 0``)."""
    if d_prev is None or sigma_prev is None or sigma_next == 0.0:
        return _data_prediction_step(x, sigma, sigma_next, d)
    h = math.log(sigma / sigma_next)
    r = math.log(sigma_prev / sigma) / h
    return _data_prediction_step(x, sigma, sigma_next, (1.0 + 0.5 / r) * d - (0.5 / r) * d_prev)


def _unipc_coefficients(rks: list[float], h: float, corrector: bool) -> list[float]:
    """UniPC's ``rho`` (Zhao et al. 2023, Alg. 2-3, B(h) = e^{h} - 1 in the data-prediction sign convention
    of their reference code): solve ``R rho = b`` with ``R[k, m] = rks[m]^k``, ``b_k = k! phi_{k+1}(-h) /
    B(-h)``; ``rks`` are ``(lambda_m - lambda_i) / h`` of the past outputs and 1 (the predicted point).
    The predictor uses the first ``p - 1`` rows and columns (2nd order: the fixed 1/2, which makes
    UniP-2 equal DPM-Solver++(2M)); the corrector all ``p``."""
    p = len(rks)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1.0
    rows, b = [], []
    for k in range(1, p + 1):
        rows.append([rk ** (k - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if corrector:
        if p == 1:
            return [0.5]
        return torch.linalg.solve(torch.tensor(rows, dtype=torch.float64),
                                  torch.tensor(b, dtype=torch.float64)).tolist()
    if p == 1:
        return []
    if p == 2:
        return [0.5]
    return torch.linalg.solve(torch.tensor(rows, dtype=torch.float64)[:-1, :-1],
                              torch.tensor(b[:-1], dtype=torch.float64)).tolist()


def _unipc_update(x: torch.Tensor, sigma: float, sigma_next: float, history: list[tuple[float, torch.Tensor]],
                  d_new: torch.Tensor | None) -> torch.Tensor:
    """UniP (``d_new`` None) or UniC (``d_new`` = the denoiser at the predicted point) from ``x`` at
    ``sigma`` to ``sigma_next``; ``history`` holds ``(sigma_m, D_m)``, newest (``sigma``) last."""
    sigma_0, d_0 = history[-1]
    h = math.log(sigma / sigma_next)
    lam_0 = -math.log(sigma_0)
    past = history[-2::-1]  # older outputs, newest first
    rks = [(-math.log(s_m) - lam_0) / h for s_m, _ in past] + [1.0]
    rhos = _unipc_coefficients(rks, h, corrector=d_new is not None)
    b_h = math.expm1(-h)
    out = _data_prediction_step(x, sigma, sigma_next, d_0)
    for rho, rk, (_, d_m) in zip(rhos, rks, past):
        out = out - (b_h * rho / rk) * (d_m - d_0)
    if d_new is not None:
        out = out - (b_h * rhos[-1]) * (d_new - d_0)
    return out


@torch.no_grad()
def unipc_sample(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Cond | None = None,
                 callback: StepCallback | None = None, progress: bool = False, order: int = 2,
                 use_corrector: bool = True) -> torch.Tensor:
    """UniPC (Zhao et al. 2023) in data-prediction form, B(h) = e^h - 1, on any sigma schedule.

    Each step predicts with UniP-``p`` from the last ``p`` denoiser outputs (``p = min(order, step + 1)``;
    UniP-2 is DPM-Solver++(2M)), then, once the denoiser has been called at the predicted point (the call
    the next step needs anyway), corrects that point with UniC-``p`` (order ``p + 1``). The step to
    ``sigma = 0`` is first order, so the last correction is the one at ``sigma_min``. One denoiser call per
    step. ``use_corrector=False`` leaves UniP alone. Each update is :func:`multistep_advance` with the
    step's :func:`multistep_coefficients`.

    Args:
        order: predictor order, 1-3 (2: UniPC-2M, the default).
        use_corrector: apply UniC after each predicted step.
        Others as :func:`heun_sample`.

    Raises:
        ValueError: a bad ``sigmas`` (as :func:`heun_sample`) or ``order`` outside 1-3.
    """
    levels = _levels(sigmas)
    steps = multistep_coefficients("unipc", levels, order=order, use_corrector=use_corrector)
    return _multistep_sample("unipc", steps, denoiser, x, levels, cond, callback, progress)


@dataclass(frozen=True)
class MultistepStep:
    """Step ``i`` of a one-call-per-level solver as linear combinations, applied by
    :func:`multistep_advance` (the samplers here and ``genneg.planning.FastSampler``). With
    ``D_j = D(x_j; sigma_j)`` the denoiser output at level ``j``:

    - ``corrector`` (or None): ``x_i <- a · x_{i-1} + Σ_j c_j D_{i-j}`` (``(a, (c_0, c_1, ...))``), applied
      once ``D_i`` is known (``x_{i-1}`` is the state the last step started from);
    - ``predictor``: ``x_{i+1} = a · x_i + Σ_j c_j D_{i-j}``.
    """

    predictor: tuple[float, tuple[float, ...]]
    corrector: tuple[float, tuple[float, ...]] | None


def _read_linear(update: torch.Tensor) -> tuple[float, tuple[float, ...]]:
    values = update.reshape(-1).tolist()
    coefficients = values[1:]
    while coefficients and coefficients[-1] == 0.0:
        coefficients.pop()
    return values[0], tuple(coefficients)


def multistep_coefficients(name: str, levels: Sequence[float], *, order: int = 2,
                           use_corrector: bool = True) -> list[MultistepStep]:
    """The coefficients of sampler ``name`` (``"euler"``, ``"dpmpp_2m"``, ``"unipc"``) along ``levels`` (a
    schedule as Python floats, ending in 0), one :class:`MultistepStep` per step.

    They are read off the solvers' update functions applied to unit vectors (the updates are linear in the
    state and the denoiser outputs), so each solver is derived once; :func:`dpmpp_2m_sample` and
    :func:`unipc_sample` apply them with :func:`multistep_advance`, as the planner does.

    Args:
        order, use_corrector: UniPC's predictor order (1-3) and corrector (as :func:`unipc_sample`).

    Raises:
        ValueError: a bad schedule, a sampler that is not one call per level (``"heun"``), or ``order``
            outside 1-3.
    """
    if name not in ("euler", "dpmpp_2m", "unipc"):
        raise ValueError(f"sampler {name!r} has no multistep coefficients; choose euler, dpmpp_2m or unipc")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    checked = tuple(_levels(torch.tensor(levels, dtype=torch.float64)))
    return list(_multistep_coefficients(name, checked, order, use_corrector))


@functools.lru_cache(maxsize=64)
def _multistep_coefficients(name: str, levels: tuple[float, ...], order: int, use_corrector: bool
                            ) -> tuple[MultistepStep, ...]:
    """:func:`multistep_coefficients` on checked levels, cached: a sampler called again and again on one
    schedule (the pipeline's batches, a planner's ticks) derives its coefficients once."""
    e = torch.eye(5, dtype=torch.float64)[:, None, :]  # x, D_i, D_{i-1}, D_{i-2}, D_{i-3}: unit vectors

    def history(i: int, last: int) -> list[tuple[float, torch.Tensor]]:
        """``(sigma_j, D_j)`` for the ``order`` levels up to ``last`` (oldest first), seen from step ``i``."""
        return [(levels[j], e[1 + i - j]) for j in range(max(0, last - order + 1), last + 1)]

    steps = []
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        corrector = None
        if name == "euler":
            predictor = _data_prediction_step(e[0], sigma, sigma_next, e[1])
        elif name == "dpmpp_2m":
            predictor = _dpmpp_2m_update(e[0], levels[i - 1] if i else None, sigma, sigma_next, e[1],
                                         e[2] if i else None)
        else:
            predictor = e[1] if sigma_next == 0.0 else _unipc_update(e[0], sigma, sigma_next, history(i, i),
                                                                     None)
            if use_corrector and i:
                corrector = _read_linear(_unipc_update(e[0], levels[i - 1], sigma, history(i, i - 1), e[1]))
        steps.append(MultistepStep(_read_linear(predictor), corrector))
    return tuple(steps)


SAMPLERS: dict[str, Sampler] = {
    "heun": heun_sample,
    "euler": euler_sample,
    "dpmpp_2m": dpmpp_2m_sample,
    "unipc": unipc_sample,
}
"""Every PF-ODE sampler by name (the ``sampler`` field of ``genneg.pipeline.profiles.SamplingConfig``)."""


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name`` (a key of :data:`SAMPLERS`); ``ValueError`` naming the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def denoiser_calls(name: str, num_steps: int) -> int:
    """Denoiser calls of sampler ``name`` along a schedule of ``num_steps`` nonzero levels (then 0)."""
    get_sampler(name)
    return 2 * num_steps - 1 if name == "heun" else num_steps
