"""Conditioning by inpainting: fix part of a sample and let the sampler fill in the rest.

At every noise level the known part of the state is replaced by the known values carried forward by the
forward process, so the network always sees a state whose known part is exactly what the noising of the
known values would give, and the unknown part is pulled into agreement with it:

- EDM / variance-exploding (Heun on the PF-ODE): ``x_known(σ) = x0_known + σ ε``, with ``ε`` the known
  part of the call's initial noise (``x(σ_max) = σ_max ε``). The same ``ε`` at every level: on the
  deterministic PF-ODE the known part then moves along the straight line ``x0 + σ ε`` from the initial
  noise to the data, instead of jumping between independent draws. The replacement is made after the
  Euler predictor (so the corrector's network call sees it) and after the full step.
- DDPM / variance-preserving (ancestral sampler): ``x_known(t) = sqrt(ᾱ_t) x0_known + sqrt(1 - ᾱ_t) ε_t``
  with a fresh ``ε_t`` at every step (the marginal ``q(x_t | x0)``, as in RePaint without resampling).

Replacement is an approximation: the unknown part learns about the known part only through the
network's estimate at each level. On a correlated Gaussian (correlation 0.9, exact denoiser, 40 Heun
steps) fixing ``x0 = 1`` moves the mean of ``x1`` to 0.445 instead of the exact 0.9 (std 0.73 instead of
0.44; fresh noise at every level instead of the fixed ``ε`` gives 0.450 / 0.67), see
``tests/planning/test_inpainting.py``. It is what a planner can do with an unconditional model; the oracle
still judges every sample, so invalid completions are rejected, not returned.

The last level is ``σ = 0`` (``ᾱ = 1``), where the known part is copied exactly: conditioned samples keep
the fixed part bit for bit.

:class:`InpaintCondition` carries what is fixed (values and mask over one sample), extra per-sample
network inputs (``context``, e.g. a traffic scene's vehicle mask and map crop) and the frame the oracle
needs to judge the sample (``frame``). :func:`inpaint_heun_sample` and :func:`inpaint_ddpm_sample` are the
plain reference samplers; :class:`genneg.planning.FastSampler` runs the same arithmetic on preallocated
buffers and is tested against them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from genneg.diffusion.ddpm import DDPMSchedule, EpsModel, ddpm_timesteps
from genneg.diffusion.denoiser import Denoiser, expand_sigma

__all__ = [
    "InpaintCondition",
    "check_condition",
    "ddpm_replace_",
    "edm_replace_",
    "fix_coordinates",
    "inpaint_ddpm_sample",
    "inpaint_heun_sample",
]


@dataclass(frozen=True)
class InpaintCondition:
    """What the planner already knows about the sample it asks for.

    Attributes:
        values: ``(*sample_shape)`` float, the known values; entries where ``mask`` is False are ignored
            (they may be anything finite or not).
        mask: ``(*sample_shape)`` bool, True where the value is fixed.
        context: extra network inputs after ``(x, sigma_or_t)``, each with a leading batch dimension of 1
            (broadcast to the ``N`` parallel samples) or ``N``; e.g. a traffic scene's ``valid (1, A)`` bool
            and ``map_raster (1, 1, H, W)`` float. Empty for models that take only ``(x, sigma)``.
        frame: anything a conditioned oracle needs to judge samples of this condition (for traffic: the
            scene window's centre and the map, :class:`genneg.planning.traffic.SceneFrame`); None otherwise.
    """

    values: torch.Tensor
    mask: torch.Tensor
    context: tuple[torch.Tensor, ...] = ()
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
    context: tuple[torch.Tensor, ...] = (),
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
    return InpaintCondition(values=values, mask=mask, context=context, frame=frame)


def check_condition(condition: InpaintCondition, sample_shape: Sequence[int], num_parallel: int) -> None:
    """Raise ``ValueError`` unless ``condition`` fits samples of ``sample_shape`` drawn ``num_parallel`` at
    a time: shapes, bool mask, floating values, no NaN/inf among the fixed values, context batch 1 or N."""
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
    for k, c in enumerate(condition.context):
        if not isinstance(c, torch.Tensor):
            raise ValueError(f"condition.context[{k}] must be a tensor, got {type(c).__name__}")
        if c.ndim == 0 or c.shape[0] not in (1, num_parallel):
            raise ValueError(
                f"condition.context[{k}] must have a leading batch dimension of 1 or {num_parallel}, "
                f"got shape {tuple(c.shape)}"
            )
        if c.is_floating_point() and not bool(torch.isfinite(c).all()):
            raise ValueError(f"condition.context[{k}] holds NaN or infinite values")


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


def ddpm_replace_(
    x: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: float,
    scratch: torch.Tensor,
) -> torch.Tensor:
    """In place: ``x[mask] = sqrt(ᾱ) known + sqrt(1 - ᾱ) noise`` (DDPM forward noise of the known part).

    Shapes as in :func:`edm_replace_`; ``alpha_bar`` in ``(0, 1]`` (1 copies ``known`` exactly); ``noise``
    is a fresh draw.
    """
    if alpha_bar >= 1.0:
        return torch.where(mask, known, x, out=x)
    torch.mul(noise, math.sqrt(1.0 - alpha_bar), out=scratch)
    scratch.add_(known, alpha=math.sqrt(alpha_bar))
    return torch.where(mask, scratch, x, out=x)


def _batched(condition: InpaintCondition, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    known = condition.values.to(device=x.device, dtype=x.dtype).unsqueeze(0)
    mask = condition.mask.to(device=x.device).unsqueeze(0)
    return known, mask


@torch.no_grad()
def inpaint_heun_sample(
    denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, condition: InpaintCondition
) -> torch.Tensor:
    """Reference: Heun sampling of the PF-ODE with the known part replaced at every level (module doc).

    Args:
        denoiser: ``D(x (N, *shape), sigma (N,), *condition.context) -> (N, *shape)``.
        noise: ``(N, *shape)`` float ``ε ~ N(0, I)``; the start is ``sigmas[0] · ε``.
        sigmas: ``(n+1,)`` decreasing schedule ending in 0.
        condition: what is fixed.

    Returns:
        ``(N, *shape)`` samples whose fixed part equals ``condition.values`` exactly.
    """
    levels = [float(s) for s in sigmas]
    check_condition(condition, noise.shape[1:], noise.shape[0])
    known, mask = _batched(condition, noise)
    ctx = condition.context
    scratch = torch.empty_like(noise)
    x = noise * levels[0]
    edm_replace_(x, known, mask, noise, levels[0], scratch)
    for s, s_next in itertools.pairwise(levels):
        d = (x - denoiser(x, expand_sigma(s, x), *ctx)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            edm_replace_(x_next, known, mask, noise, s_next, scratch)
            d_next = (x_next - denoiser(x_next, expand_sigma(s_next, x), *ctx)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = edm_replace_(x_next, known, mask, noise, s_next, scratch)
    return x


@torch.no_grad()
def inpaint_ddpm_sample(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    schedule: DDPMSchedule,
    condition: InpaintCondition,
    *,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reference: DDPM ancestral sampling (as :func:`genneg.diffusion.ddpm_ancestral_sample`) with the
    known part replaced by its forward noise after every step (module doc).

    Random draws, in order: for every step but the last, the ancestral noise then the replacement noise
    (both ``x_T``'s shape), from ``generator``.

    Args:
        eps_model: ``eps_model(x_t (N, *shape), t (N,) int64, *condition.context) -> (N, *shape)``.
        x_T: ``(N, *shape)`` float initial noise ``N(0, I)`` (its known part is replaced first, with
            ``x_T``'s own values as the noise).
        schedule: the model's schedule.
        condition: what is fixed.
        num_steps: visited timesteps (default all).
        generator: random source.

    Returns:
        ``(N, *shape)`` samples whose fixed part equals ``condition.values`` exactly.
    """
    check_condition(condition, x_T.shape[1:], x_T.shape[0])
    known, mask = _batched(condition, x_T)
    ctx = condition.context
    steps = ddpm_timesteps(schedule, num_steps).tolist()
    abars = schedule.alphas_cumprod.tolist()
    scratch = torch.empty_like(x_T)
    x = x_T.clone()
    ddpm_replace_(x, known, mask, x_T, abars[steps[0]], scratch)
    for i, t in enumerate(steps):
        ab_t = abars[t]
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = eps_model(x, t_batch, *ctx)
        x0_hat = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        if i + 1 < len(steps):
            ab_s = abars[steps[i + 1]]
            alpha = ab_t / ab_s
            beta = 1 - alpha
            c0 = math.sqrt(ab_s) * beta / (1 - ab_t)
            ct = math.sqrt(alpha) * (1 - ab_s) / (1 - ab_t)
            std = math.sqrt(beta * (1 - ab_s) / (1 - ab_t))
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = c0 * x0_hat + ct * x + std * noise
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            ddpm_replace_(x, known, mask, fresh, ab_s, scratch)
        else:
            x = ddpm_replace_(x0_hat, known, mask, x0_hat, 1.0, scratch)
    return x
