"""DDPM (Ho et al. 2020) as a preconditioned denoiser in variance-exploding σ coordinates.

Variance-preserving forward process with integer timesteps ``t = 0 .. T-1``::

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε,      ᾱ_t = Π_{s<=t} (1 - β_s)

An ε-network is a callable ``eps_model(x_t (B, ...) float32, t (B,) int64, **cond) -> (B, ...)``; it is
trained with :func:`ddpm_loss` and saved as is. Everything downstream (samplers, guidance, inpainting,
distillation, metrics, the planner) sees it only through :class:`EpsDenoiser`, the one noise formalism of
the package (DESIGN.md "One noise formalism"): the same process in VE coordinates is
``x = x_t / sqrt(ᾱ_t) = x0 + σ_t ε`` with ``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)``, and

    D(x; σ) = x - σ ε_θ(x / sqrt(1 + σ²), t(σ))

(EDM's ``VPPrecond``, Karras et al. 2022 Table 1, with ``c_skip = 1``, ``c_out = -σ``,
``c_in = 1 / sqrt(1 + σ²)``; k-diffusion's ``DiscreteEpsDDPMDenoiser`` on the discrete levels). DDPM's
ancestral sampler is then the stochastic Euler-ancestral step (η = 1) of
:func:`genneg.diffusion.samplers.euler_ancestral_sample` on the levels :meth:`DDPMSchedule.sampling_sigmas`:
the Gaussian bridge ``x_{σ'} | x_σ, x̂0 ~ N(x̂0 + (σ'²/σ²)(x_σ - x̂0), σ'² (1 - σ'²/σ²) I)`` is the DDPM
posterior ``q(x_s | x_t, x̂0)`` (variance β̃) written in VE coordinates. Its initial state is
``x_T / sqrt(ᾱ_T) = sqrt(1 + σ_T²) N(0, I)`` (:meth:`DDPMSchedule.initial_noise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genneg.diffusion.denoiser import broadcast_to_sample, expand_sigma

__all__ = [
    "DDPMConfig",
    "DDPMSchedule",
    "EpsDenoiser",
    "EpsModel",
    "as_denoiser",
    "ddpm_loss",
    "ddpm_timesteps",
]

EpsModel = Callable[..., torch.Tensor]
"""``eps_model(x_t (B, ...), t (B,) int64, **cond) -> (B, ...)``."""

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

    def sampling_sigmas(self, num_steps: int | None = None) -> torch.Tensor:
        """The ancestral sampler's levels: ``(n + 1,)`` float64, ``σ_t`` at the timesteps of
        :func:`ddpm_timesteps` (decreasing) and a final 0, the shape every sampler takes."""
        t = ddpm_timesteps(self, num_steps)
        return torch.cat([self.sigmas[t], self.sigmas.new_zeros(1)])

    def initial_noise(self, shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", num_steps: int | None = None) -> torch.Tensor:
        """The sampler's initial state in VE coordinates, ``(*shape)`` float32: ``x_T / sqrt(ᾱ_T)`` with
        ``x_T ~ N(0, I)`` drawn from ``generator`` on ``device`` (``T`` = the first visited timestep)."""
        sigma_max = float(self.sampling_sigmas(num_steps)[0])
        noise = torch.randn(tuple(shape), generator=generator, device=device)
        return noise * math.sqrt(1.0 + sigma_max * sigma_max)


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
    """An ε-network as a denoiser in VE coordinates (module docstring; EDM's ``VPPrecond``).

    ``D(x, sigma, **cond)``: ``x`` ``(B, ...)`` is ``x0 + sigma ε`` (VE), ``sigma`` ``(B,)`` or scalar. The
    network is evaluated at ``t`` = the step whose ``σ_t`` is nearest in ``log σ`` and at
    ``x_t = x / sqrt(1 + σ²)`` (the VP point with ``ᾱ = 1 / (1 + σ²)``), with ``cond`` passed on by
    keyword, and ``D = x - σ ε_θ(x_t, t, **cond)``. On the schedule's own levels
    (``sigma = schedule.sigmas[t]``) this is exact; in between, ``t`` is rounded.

    The ε-network stays the saved model (checkpoints hold its weights); the wrapper holds no parameters
    of its own and is applied when a model is loaded or sampled (:func:`as_denoiser`).

    Args:
        eps_model: ``eps_model(x_t (B, ...), t (B,) int64, **cond) -> (B, ...)``.
        schedule: its :class:`DDPMSchedule`.
    """

    def __init__(self, eps_model: EpsModel, schedule: DDPMSchedule) -> None:
        super().__init__()
        if not isinstance(schedule, DDPMSchedule):
            raise TypeError(f"schedule must be a DDPMSchedule, got {type(schedule).__name__}")
        self.eps_model = eps_model
        self.schedule = schedule

    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: torch.Tensor) -> torch.Tensor:
        """``ε_θ(x / sqrt(1 + σ²), t(σ), **cond)`` ``(B, ...)`` for VE ``x`` ``(B, ...)``."""
        sigma = expand_sigma(sigma, x)
        t = self.schedule.t_of_sigma(sigma)
        s = broadcast_to_sample(sigma, x)
        return self.eps_model(x / torch.sqrt(1 + s * s), t, **cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, ...)`` VE coordinates, ``sigma`` ``(B,)`` or scalar -> ``(B, ...)`` x0 estimate.

        Raises:
            ValueError: ``sigma`` of another batch size, or ``sigma <= 0``.
        """
        sigma = expand_sigma(sigma, x)
        return x - broadcast_to_sample(sigma, x) * self.eps(x, sigma, **cond)


def as_denoiser(model: Callable[..., torch.Tensor], schedule: DDPMSchedule | None
                ) -> Callable[..., torch.Tensor]:
    """``model`` as a denoiser ``D(x, sigma, **cond)``: an ε-network (a module whose ``parameterisation``
    attribute is ``"eps"``) is wrapped in :class:`EpsDenoiser` with ``schedule``; a denoiser (an
    :class:`EpsDenoiser`, an EDM model, a guided stack) is returned as is. A ``DistributedDataParallel``
    wrapper is looked through for the attribute (and kept, so that gradients are averaged over ranks).

    Raises:
        ValueError: an ε-network without a schedule.
    """
    if getattr(getattr(model, "module", model), "parameterisation", "denoiser") != "eps":
        return model
    if schedule is None:
        raise ValueError(f"{type(model).__name__} is an ε-network: pass its DDPMSchedule to wrap it")
    return EpsDenoiser(model, schedule)


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
