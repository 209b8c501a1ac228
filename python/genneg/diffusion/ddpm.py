"""DDPM (Ho et al. 2020): ε-prediction, linear / cosine ᾱ schedules, ancestral sampling.

Variance-preserving forward process with integer timesteps ``t = 0 .. T-1``::

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε,      ᾱ_t = Π_{s<=t} (1 - β_s)

An ε-model is a callable ``eps_model(x_t (B, ...) float32, t (B,) int64) -> (B, ...)``.

The same process in variance-exploding coordinates is ``x_VE = x_t / sqrt(ᾱ_t) = x0 + σ_t ε`` with
``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)``; :class:`EpsDenoiser` uses this to present an ε-model as a denoiser
``D(x, sigma)`` (``genneg.diffusion.denoiser``) so that the Heun sampler, guidance and metrics are
written once for both model families.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.diffusion.denoiser import broadcast_to_sample
from genneg.diffusion.samplers import StepCallback
from genneg.profiling import nvtx_range

__all__ = [
    "DDPMConfig",
    "DDPMSchedule",
    "EpsDenoiser",
    "EpsModel",
    "ddpm_ancestral_sample",
    "ddpm_loss",
    "ddpm_timesteps",
]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class DDPMConfig:
    """A DDPM noise schedule.

    Attributes:
        num_steps: number of diffusion timesteps ``T``.
        schedule: ``"linear"`` (β linear from ``beta_start`` to ``beta_end``, Ho et al.) or ``"cosine"``
            (``ᾱ(t) = cos²(((t/T + s) / (1 + s)) π/2) / cos²(s/(1+s) π/2)``, Nichol & Dhariwal 2021).
        beta_start, beta_end: β range of the linear schedule (per step, unitless).
        cosine_offset: the offset ``s`` of the cosine schedule.
        max_beta: clip of β for the cosine schedule (keeps the last steps finite).
    """

    num_steps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_offset: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"DDPMConfig.num_steps must be >= 1, got {self.num_steps}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"DDPMConfig.schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if not (0 < self.beta_start <= self.beta_end < 1):
            raise ValueError(
                f"DDPMConfig needs 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if not (0 < self.max_beta < 1) or self.cosine_offset < 0:
            raise ValueError(
                f"DDPMConfig needs 0 < max_beta < 1 and cosine_offset >= 0, got {self.max_beta}, "
                f"{self.cosine_offset}"
            )


class DDPMSchedule:
    """Precomputed schedule tensors (all ``(T,)`` float64 on the CPU).

    Attributes:
        betas: ``β_t``.
        alphas_cumprod: ``ᾱ_t = Π_{s<=t} (1 - β_s)``, decreasing in ``t``.
        sigmas: ``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)``, the VE noise level of step ``t``, increasing.
    """

    def __init__(self, config: DDPMConfig = DDPMConfig()) -> None:
        self.config = config
        T = config.num_steps
        if config.schedule == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
        else:
            s = config.cosine_offset
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            abar = f / f[0]
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=config.max_beta)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.sigmas = torch.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)

    @property
    def num_steps(self) -> int:
        """``T``."""
        return self.config.num_steps

    def _check_t(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point:
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_steps - 1}], got range [{int(t.min())}, {int(t.max())}]"
            )
        return t.to(device="cpu", dtype=torch.int64)

    def alpha_cumprod_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """``ᾱ_t`` for integer ``t`` (any shape), float64 on the CPU."""
        return self.alphas_cumprod[self._check_t(t)]

    def sigma_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)`` for integer ``t`` (any shape), float64 on the CPU."""
        return self.sigmas[self._check_t(t)]

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest timestep in ``log σ`` for each VE noise level (any shape, ``> 0``) -> int64, same
        shape and device. Levels outside ``[σ_0, σ_{T-1}]`` map to the end steps."""
        sigma = torch.as_tensor(sigma)
        if bool((sigma <= 0).any()):
            raise ValueError("t_of_sigma needs sigma > 0")
        log_s = torch.log(self.sigmas).to(sigma.device)
        log_q = torch.log(sigma.to(torch.float64)).reshape(-1)
        hi = torch.searchsorted(log_s, log_q).clamp(1, self.num_steps - 1)
        lo = hi - 1
        pick_hi = (log_s[hi] - log_q) < (log_q - log_s[lo])
        t = torch.where(pick_hi, hi, lo)
        if self.num_steps == 1:
            t = torch.zeros_like(t)
        return t.reshape(sigma.shape)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε``: ``x0``, ``eps`` ``(B, ...)``, ``t`` ``(B,)`` int64."""
        abar = self.alpha_cumprod_of_t(t).to(device=x0.device, dtype=x0.dtype)
        abar = broadcast_to_sample(abar, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def ddpm_loss(
    eps_model: EpsModel, x0: torch.Tensor, schedule: DDPMSchedule, *,
    generator: torch.Generator | None = None, rows: slice | None = None,
) -> torch.Tensor:
    """Mean ε-prediction loss ``||ε_model(x_t, t) - ε||²`` (summed over sample dimensions, averaged over
    the batch), ``t ~ U{0..T-1}``, ``ε ~ N(0, I)``. ``x0``: ``(B, *shape)`` float32. Returns a scalar.
    ``rows``: only these rows are evaluated and averaged (a data-parallel rank's share; ``eps_model`` then
    sees those rows only); the noise of the whole batch is drawn all the same."""
    if x0.ndim < 2:
        raise ValueError(f"x0 must be (B, *shape), got shape {tuple(x0.shape)}")
    t = torch.randint(schedule.num_steps, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if rows is not None:
        x0, t, eps = x0[rows], t[rows], eps[rows]
    x_t = schedule.add_noise(x0, t, eps)
    return (eps_model(x_t, t) - eps).pow(2).flatten(1).sum(dim=1).mean()


class EpsDenoiser(nn.Module):
    """Adapts an ε-model to the denoiser interface in VE coordinates.

    ``D(x, sigma)``: ``x`` ``(B, ...)`` is ``x0 + sigma ε`` (VE), ``sigma`` ``(B,)`` or scalar. The model is
    evaluated at ``t`` = the step whose ``σ_t`` is nearest in ``log σ`` and at ``x_t = x / sqrt(1 + σ²)``
    (the VP point with ``ᾱ = 1 / (1 + σ²)``), and ``D = x - σ ε_model(x_t, t)``. On the schedule's own
    levels (``sigma = schedule.sigmas[t]``) this is exact; in between, ``t`` is rounded.
    """

    def __init__(self, eps_model: EpsModel, schedule: DDPMSchedule) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.schedule = schedule

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``x`` ``(B, ...)`` VE coordinates, ``sigma`` ``(B,)`` or scalar -> ``(B, ...)`` x0 estimate."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)  # keep float64 levels exact
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        if sigma.shape != (x.shape[0],):
            raise ValueError(
                f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}"
            )
        t = self.schedule.t_of_sigma(sigma)
        s = broadcast_to_sample(sigma, x)
        x_t = x / torch.sqrt(1 + s * s)
        return x - s * self.eps_model(x_t, t)


def ddpm_timesteps(schedule: DDPMSchedule, num_steps: int | None = None) -> torch.Tensor:
    """Decreasing ``(n,)`` int64 timesteps visited by the ancestral sampler: all ``T`` steps when
    ``num_steps`` is None, else ``num_steps`` evenly spaced ones from ``T-1`` down to 0."""
    T = schedule.num_steps
    if num_steps is None or num_steps == T:
        return torch.arange(T - 1, -1, -1, dtype=torch.int64)
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must lie in [1, {T}], got {num_steps}")
    t = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().to(torch.int64)
    return torch.unique_consecutive(t)


@torch.no_grad()
def ddpm_ancestral_sample(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    schedule: DDPMSchedule,
    *,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling ``x_t -> x_s`` with the posterior ``q(x_s | x_t, x̂0)`` (Ho et al., variance β̃).

    With ``num_steps < T`` the sampler visits an evenly spaced subsequence of timesteps and uses the
    posterior of that coarser chain (``α = ᾱ_t / ᾱ_s``, ``β = 1 - α``)::

        x̂0   = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)
        mean = sqrt(ᾱ_s) β / (1 - ᾱ_t) · x̂0 + sqrt(α) (1 - ᾱ_s) / (1 - ᾱ_t) · x_t
        var  = β (1 - ᾱ_s) / (1 - ᾱ_t)

    and the last step (to ``ᾱ = 1``) returns ``x̂0`` without noise. Runs under ``torch.no_grad``;
    guided ε wrappers switch gradients on locally.

    Args:
        eps_model: ``eps_model(x_t (B, ...), t (B,) int64) -> (B, ...)``, possibly guided.
        x_T: ``(B, *shape)`` float, initial noise ``N(0, I)`` (VP coordinates).
        schedule: the model's :class:`DDPMSchedule`.
        num_steps: number of sampling steps (default ``T``).
        generator: random source of the per-step noise.
        callback: ``callback(i, x_next, sigma_cur, sigma_next)`` after step ``i`` with the VE noise
            levels of the two steps (``sigma_next = 0`` at the end); ``x_next`` is in VP coordinates.
        progress: show a progress bar.

    Returns:
        ``(B, *shape)`` samples ``x_0`` in ``x_T``'s dtype.
    """
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be (B, *shape), got shape {tuple(x_T.shape)}")
    steps = ddpm_timesteps(schedule, num_steps).tolist()
    abars = schedule.alphas_cumprod.tolist()
    x = x_T
    B = x.shape[0]
    for i in tqdm(range(len(steps)), disable=not progress, desc="ddpm sampling", leave=False):
        t = steps[i]
        ab_t = abars[t]
        ab_s = abars[steps[i + 1]] if i + 1 < len(steps) else 1.0
        t_batch = torch.full((B,), t, dtype=torch.int64, device=x.device)
        with nvtx_range("sampler.ddpm_eps"):
            eps = eps_model(x, t_batch)
        x0_hat = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        if i + 1 < len(steps):
            alpha = ab_t / ab_s
            beta = 1 - alpha
            c0 = math.sqrt(ab_s) * beta / (1 - ab_t)
            ct = math.sqrt(alpha) * (1 - ab_s) / (1 - ab_t)
            std = math.sqrt(beta * (1 - ab_s) / (1 - ab_t))
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = c0 * x0_hat + ct * x + std * noise
            sigma_next = math.sqrt((1 - ab_s) / ab_s)
        else:
            x = x0_hat
            sigma_next = 0.0
        if callback is not None:
            callback(i, x, math.sqrt((1 - ab_t) / ab_t), sigma_next)
    return x
