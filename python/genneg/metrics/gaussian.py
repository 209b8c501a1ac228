"""Closed forms for Gaussian data ``N(μ, s² I)``: the yardstick samplers and metrics are tested against.

VE: ``x_σ ~ N(μ, (s² + σ²) I)``; the exact denoiser is
``D(x; σ) = E[x0 | x_σ = x] = (s² x + σ² μ) / (s² + σ²)``.
VP: ``x_t ~ N(sqrt(ᾱ) μ, (ᾱ s² + 1 - ᾱ) I)``; the exact ε-model is
``E[ε | x_t] = sqrt(1-ᾱ) (x_t - sqrt(ᾱ) μ) / (ᾱ s² + 1 - ᾱ)``.
With the exact denoiser, ``E_ε ||D(x0 + σε; σ) - x0||² = (σ⁴ ||μ - x0||² + d s⁴ σ²) / (s² + σ²)²`` and the
ELBO integral (``genneg.metrics.elbo``) has a closed form (:func:`gaussian_elbo`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genneg.diffusion.ddpm import DDPMSchedule
from genneg.metrics._checks import check_positive

__all__ = ["gaussian_denoiser", "gaussian_elbo", "gaussian_eps", "gaussian_log_density"]


def gaussian_denoiser(mu: torch.Tensor, s: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact ``D(x (B, d), sigma (B,)) -> (B, d)`` of ``N(μ, s² I)`` data (``μ`` ``(d,)``, ``s`` data
    units); computed in float64, returned in ``x``'s dtype."""
    s = check_positive("data std s", s)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])[:, None] ** 2
        m = mu.to(device=x.device, dtype=torch.float64)
        return ((s * s * x.to(torch.float64) + s2 * m) / (s * s + s2)).to(x.dtype)

    return denoise


def gaussian_eps(mu: torch.Tensor, s: float, schedule: DDPMSchedule
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact ``eps(x_t (B, d), t (B,) int64) -> (B, d) = E[ε | x_t]`` of ``N(μ, s² I)`` data under
    ``schedule``; computed in float64, returned in ``x_t``'s dtype."""
    s = check_positive("data std s", s)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alpha_cumprod_of_t(t).to(device=x.device)[:, None]
        m = mu.to(device=x.device, dtype=torch.float64)
        out = (1 - ab).sqrt() * (x.to(torch.float64) - ab.sqrt() * m) / (ab * s * s + 1 - ab)
        return out.to(x.dtype)

    return eps


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, var: float) -> torch.Tensor:
    """``log N(x; μ, var I)`` per row of ``x`` ``(N, d)``: ``(N,)`` float64 nats; ``var`` finite > 0."""
    var = check_positive("var", var)
    x = x.to(torch.float64)
    d = x.shape[1]
    return -0.5 * d * math.log(2 * math.pi * var) - (x - mu.to(x)).pow(2).sum(dim=1) / (2 * var)


def gaussian_elbo(x0: torch.Tensor, mu: torch.Tensor, s: float, sigma_min: float, sigma_max: float
                  ) -> torch.Tensor:
    """Exact ELBO (METHOD.md 7) of ``x0`` ``(N, d)`` under the exact denoiser of ``N(μ, s² I)``, in nats.

    ``∫ E||D - x0||² / σ³ dσ = ||μ - x0||² [1/(2(s²+v))]_{v=σ_max²}^{σ_min²}
    + (d/2) [ln(v / (s² + v)) + s² / (s² + v)]_{v=σ_min²}^{σ_max²}``. Returns ``(N,)`` float64.
    """
    s = check_positive("data std s", s)
    sigma_min, sigma_max = check_positive("sigma_min", sigma_min), check_positive("sigma_max", sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"need sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    x0 = x0.to(torch.float64)
    d = x0.shape[1]
    s2, a, b = s * s, sigma_min**2, sigma_max**2
    m2 = (x0 - mu.to(x0)).pow(2).sum(dim=1)
    linear = m2 * (1 / (2 * (s2 + a)) - 1 / (2 * (s2 + b)))

    def antiderivative(v: float) -> float:
        return math.log(v / (s2 + v)) + s2 / (s2 + v)

    quadratic = 0.5 * d * (antiderivative(b) - antiderivative(a))
    reconstruction = -0.5 * d * math.log(2 * math.pi * math.e * a)
    prior_kl = x0.pow(2).sum(dim=1) / (2 * b)
    return reconstruction - prior_kl - linear - quadratic
