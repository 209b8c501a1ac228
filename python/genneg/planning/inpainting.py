"""Conditioning by inpainting: fix part of a sample and let the sampler fill in the rest.

At every noise level the known part of the state is replaced by the known values carried forward by the
forward process, so the network always sees a state whose known part is exactly what the noising of the
known values would give, and the unknown part is pulled into agreement with it:

Every model is a denoiser in variance-exploding σ coordinates (a DDPM ε-network through its
``EpsDenoiser``), so the known part at level σ is always ``x0_known + σ ε``:

- deterministic samplers (Heun on the PF-ODE, :func:`inpaint_heun_sample`): ``ε`` is the known part of the
  call's unit initial noise at every level, so the known part moves along the straight line ``x0 + σ ε``
  from the initial noise to the data instead of jumping between independent draws. The replacement is
  made after the Euler predictor (so the corrector's network call sees it: the ``replace`` hook of
  :func:`genneg.diffusion.heun_step`) and after the full step.
- the stochastic Euler-ancestral sampler (:func:`inpaint_ancestral_sample`, DDPM's ancestral sampler on a
  DDPM's levels): a fresh ``ε`` at every step (the marginal ``q(x_σ | x0)``, as in RePaint without
  resampling).

Replacement is an approximation: the unknown part learns about the known part only through the
network's estimate at each level. On a correlated Gaussian (correlation 0.9, exact denoiser, 40 Heun
steps) fixing ``x0 = 1`` moves the mean of ``x1`` to 0.445 instead of the exact 0.9 (std 0.73 instead of
0.44; fresh noise at every level instead of the fixed ``ε`` gives 0.450 / 0.67), see
``tests/planning/test_inpainting.py``. It is what a planner can do with an unconditional model; the oracle
still judges every sample, so invalid completions are rejected, not returned.

The last level is ``σ = 0``, where the known part is copied exactly: conditioned samples keep the fixed
part bit for bit.

:class:`InpaintCondition` carries what is fixed (values and mask over one sample), the conditioning dict
``cond`` that every model call receives by keyword (DESIGN.md "One conditioning convention": e.g. a
traffic scene's ``valid`` slots and ``map_raster`` crop; ``model(x, sigma, **cond)``) and the frame the
oracle needs to judge the sample (``frame``). :func:`inpaint_heun_sample` and
:func:`inpaint_ancestral_sample` are the plain reference samplers; their steps are the library's
(:func:`genneg.diffusion.heun_step`, :func:`genneg.diffusion.euler_ancestral_step`), which
:class:`genneg.planning.FastSampler` calls on its preallocated buffers; it is tested against them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from genneg.diffusion.denoiser import Denoiser
from genneg.diffusion.samplers import ancestral_levels, euler_ancestral_step, heun_step

__all__ = [
    "InpaintCondition",
    "batch_cond",
    "check_condition",
    "edm_replace_",
    "fix_coordinates",
    "inpaint_ancestral_sample",
    "inpaint_heun_sample",
]


@dataclass(frozen=True)
class InpaintCondition:
    """What the planner already knows about the sample it asks for.

    Attributes:
        values: ``(*sample_shape)`` float, the known values; entries where ``mask`` is False are ignored
            (they may be anything finite or not).
        mask: ``(*sample_shape)`` bool, True where the value is fixed.
        cond: the conditioning passed by keyword to every model call, ``model(x, sigma, **cond)``: tensors
            with a leading batch dimension of 1 (broadcast to the ``N`` parallel samples) or ``N``; e.g. a
            traffic scene's ``valid (1, A)`` bool and ``map_raster (1, 1, H, W)`` float. Empty for
            unconditioned models.
        frame: anything a conditioned oracle needs to judge samples of this condition (for traffic: the
            scene window's centre and the map, :class:`genneg.planning.traffic.SceneFrame`); None otherwise.
    """

    values: torch.Tensor
    mask: torch.Tensor
    cond: Mapping[str, torch.Tensor] = field(default_factory=dict)
    frame: Any = field(default=None, compare=False)

    @property
    def num_fixed(self) -> int:
        """Number of fixed entries."""
        return int(self.mask.sum())


def fix_coordinates(
    sample_shape: Sequence[int],
    index: Any,
    value: float | torch.Tensor,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    frame: Any = None,
) -> InpaintCondition:
    """A condition fixing ``x[index] = value`` in one sample of shape ``sample_shape``.

    Example: the checkerboard's ``x = 0.5``, ``y`` free: ``fix_coordinates((2,), 0, 0.5)``.

    Args:
        sample_shape: shape of one sample, e.g. ``(2,)``.
        index: any index of a ``sample_shape`` tensor (int, slice, tuple, bool mask).
        value: the fixed value(s), broadcast to ``x[index]``.
    """
    values = torch.zeros(tuple(sample_shape), dtype=torch.float32)
    mask = torch.zeros(tuple(sample_shape), dtype=torch.bool)
    try:
        mask[index] = True
        values[index] = torch.as_tensor(value, dtype=torch.float32)
    except (IndexError, RuntimeError) as err:
        raise ValueError(
            f"cannot fix index {index!r} of a sample of shape {tuple(sample_shape)}: {err}"
        ) from err
    return InpaintCondition(values=values, mask=mask, cond=dict(cond or {}), frame=frame)


def check_condition(condition: InpaintCondition, sample_shape: Sequence[int], num_parallel: int) -> None:
    """Raise ``ValueError`` unless ``condition`` fits samples of ``sample_shape`` drawn ``num_parallel`` at
    a time: shapes, bool mask, floating values, no NaN/inf among the fixed values, ``cond`` a dict of
    tensors with batch 1 or N."""
    shape = tuple(sample_shape)
    if not isinstance(condition, InpaintCondition):
        raise TypeError(f"condition must be an InpaintCondition, got {type(condition).__name__}")
    if tuple(condition.values.shape) != shape:
        raise ValueError(f"condition.values has shape {tuple(condition.values.shape)}, expected {shape}")
    if tuple(condition.mask.shape) != shape:
        raise ValueError(f"condition.mask has shape {tuple(condition.mask.shape)}, expected {shape}")
    if condition.mask.dtype != torch.bool:
        raise ValueError(f"condition.mask must be bool, got {condition.mask.dtype}")
    if not condition.values.is_floating_point():
        raise ValueError(f"condition.values must be floating point, got {condition.values.dtype}")
    bad = condition.mask & ~torch.isfinite(condition.values)
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"condition.values is NaN or infinite at fixed entry {where}")
    if not isinstance(condition.cond, Mapping):
        raise TypeError(f"condition.cond must be a dict of tensors, got {type(condition.cond).__name__}")
    for k, c in condition.cond.items():
        if not isinstance(k, str):
            raise TypeError(f"condition.cond keys must be strings (keyword arguments), got {k!r}")
        if not isinstance(c, torch.Tensor):
            raise ValueError(f"condition.cond[{k!r}] must be a tensor, got {type(c).__name__}")
        if c.ndim == 0 or c.shape[0] not in (1, num_parallel):
            raise ValueError(
                f"condition.cond[{k!r}] must have a leading batch dimension of 1 or {num_parallel}, "
                f"got shape {tuple(c.shape)}"
            )
        if c.is_floating_point() and not bool(torch.isfinite(c).all()):
            raise ValueError(f"condition.cond[{k!r}] holds NaN or infinite values")


def batch_cond(condition: InpaintCondition | None, n: int, device: torch.device | str
               ) -> dict[str, torch.Tensor]:
    """``condition.cond`` on ``device`` with every entry expanded to ``n`` rows (a view, no copy); ``{}``
    without a condition."""
    if condition is None:
        return {}
    out = {}
    for k, c in condition.cond.items():
        c = c.to(device)
        out[k] = c.expand(n, *c.shape[1:])
    return out


def edm_replace_(
    x: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    scratch: torch.Tensor,
) -> torch.Tensor:
    """In place: ``x[mask] = known + sigma · noise`` (EDM forward noise of the known part).

    Args:
        x: ``(N, *shape)`` float state, overwritten where ``mask``.
        known: ``(N or 1, *shape)`` known values.
        mask: ``(N or 1, *shape)`` bool.
        noise: ``(N, *shape)`` the call's ``ε``.
        sigma: noise level (data units); 0 copies ``known`` exactly.
        scratch: ``(N, *shape)`` buffer, overwritten.

    Returns:
        ``x``.
    """
    if sigma == 0.0:
        return torch.where(mask, known, x, out=x)
    torch.mul(noise, sigma, out=scratch)
    scratch.add_(known)
    return torch.where(mask, scratch, x, out=x)


@dataclass(frozen=True)
class _Start:
    """What both reference samplers set up: levels, the known part batched, ``cond`` expanded, a scratch
    buffer and the initial state (its known part already replaced)."""

    levels: list[float]
    known: torch.Tensor
    mask: torch.Tensor
    cond: dict[str, torch.Tensor]
    scratch: torch.Tensor
    x: torch.Tensor


def _start(condition: InpaintCondition, noise: torch.Tensor, sigmas: torch.Tensor,
           start_scale: float) -> _Start:
    levels = [float(s) for s in sigmas]
    check_condition(condition, noise.shape[1:], noise.shape[0])
    known = condition.values.to(device=noise.device, dtype=noise.dtype).unsqueeze(0)
    mask = condition.mask.to(device=noise.device).unsqueeze(0)
    scratch = torch.empty_like(noise)
    x = edm_replace_(noise * start_scale, known, mask, noise, levels[0], scratch)
    return _Start(levels, known, mask, batch_cond(condition, noise.shape[0], noise.device), scratch, x)


@torch.no_grad()
def inpaint_heun_sample(
    denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, condition: InpaintCondition
) -> torch.Tensor:
    """Reference: Heun sampling of the PF-ODE with the known part replaced at every level (module doc).

    Args:
        denoiser: ``D(x (N, *shape), sigma (N,), **condition.cond) -> (N, *shape)``.
        noise: ``(N, *shape)`` float ``ε ~ N(0, I)``; the start is ``sigmas[0] · ε``.
        sigmas: ``(n+1,)`` decreasing schedule ending in 0.
        condition: what is fixed, and the conditioning.

    Returns:
        ``(N, *shape)`` samples whose fixed part equals ``condition.values`` exactly.
    """
    st = _start(condition, noise, sigmas, float(sigmas[0]))

    def replace(x_pred: torch.Tensor, sigma: float) -> torch.Tensor:
        return edm_replace_(x_pred, st.known, st.mask, noise, sigma, st.scratch)

    x = st.x
    for s, s_next in itertools.pairwise(st.levels):
        x = replace(heun_step(denoiser, x, s, s_next, cond=st.cond, replace=replace), s_next)
    return x


@torch.no_grad()
def inpaint_ancestral_sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    condition: InpaintCondition,
    *,
    start_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reference: Euler-ancestral sampling (η = 1, :func:`genneg.diffusion.euler_ancestral_sample`) with the
    known part replaced by ``known + σ' ε`` with a fresh ``ε`` after every step (module doc). On a DDPM's
    levels (``DDPMSchedule.sampling_sigmas``, ``start_scale = sqrt(1 + σ_T²)``) this is DDPM's ancestral
    sampler with RePaint's replacement.

    Random draws, in order: for every step but the last, the ancestral noise then the replacement noise
    (both ``noise``'s shape), from ``generator``.

    Args:
        denoiser: ``D(x (N, *shape), sigma (N,), **condition.cond) -> (N, *shape)``.
        noise: ``(N, *shape)`` float unit initial noise; the start is ``start_scale · noise`` with its
            known part ``known + sigmas[0] · noise``.
        sigmas: ``(n+1,)`` decreasing schedule ending in 0.
        condition: what is fixed, and the conditioning.
        start_scale: scale of the initial state (default ``sigmas[0]``).
        generator: random source.

    Returns:
        ``(N, *shape)`` samples whose fixed part equals ``condition.values`` exactly.
    """
    st = _start(condition, noise, sigmas, float(sigmas[0]) if start_scale is None else float(start_scale))
    x = st.x
    for s, s_next in itertools.pairwise(st.levels):
        if ancestral_levels(s, s_next)[1] > 0.0:
            step_noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = euler_ancestral_step(denoiser, x, s, s_next, step_noise, cond=st.cond)
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            edm_replace_(x, st.known, st.mask, fresh, s_next, st.scratch)
        else:
            x = euler_ancestral_step(denoiser, x, s, s_next, None, cond=st.cond)
            x = edm_replace_(x, st.known, st.mask, x, s_next, st.scratch)
    return x
