"""Evidence lower bounds on held-out data: the VE ELBO of an EDM denoiser and DDPM's r-ELBO.

ELBO (METHOD.md 7; Kingma et al. 2021 in variance-exploding form, Gaussian decoder
``p(x0 | x_{σ_min}) = N(x0; x_{σ_min}, σ_min² I)``, prior ``N(0, σ_max² I)``), for ``x0`` of dimension d::

    ELBO(x0) = -(d/2) log(2πe σ_min²) - ||x0||² / (2 σ_max²)
               - ∫_{σ_min}^{σ_max} E_ε ||D(x0 + σε; σ) - x0||² / σ³ dσ

The three terms are the reconstruction term, the prior KL and the diffusion loss. The integral is estimated
by importance sampling ``σ`` log-uniformly on ``[σ_min, σ_max]`` (density ``1 / (σ L)``,
``L = ln(σ_max / σ_min)``), i.e. as the mean of ``L ||D - x0||² / σ²``: this integrand is bounded at small
σ (``||D - x0||² ≈ σ² ||ε||²`` there). Three variance reductions keep the estimator unbiased:

- ``stratified=True``: the ``K`` levels of each point are drawn one per stratum of ``ln σ``;
- ``control_variate=True``: subtract ``L w(σ) (||ε||² - d)`` with ``w = σ_data⁴ / (σ² + σ_data²)²``, which
  has mean zero for every σ. It cancels the ``χ²_d`` noise of the small-σ region, where any good
  denoiser has ``D - x0 ≈ σ ε`` (for the optimal denoiser of ``N(μ, σ_data² I)`` data it removes the
  part of the error quadratic in ε exactly);
- ``antithetic=True``: every level is used with ``ε`` and ``-ε``, cancelling the error's part linear in ε.

Every point's ``K`` noisy copies are evaluated as rows of one flattened ``(N·K, *shape)`` batch, cut in
chunks of about ``batch_size`` rows (whole points). Sums are in float64; the denoiser sees ``x0``'s dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genneg.diffusion.ddpm import DDPMSchedule, as_denoiser
from genneg.diffusion.denoiser import Denoiser, broadcast_to_sample
from genneg.diffusion.edm import EDMConfig

__all__ = ["ELBOTerms", "elbo", "elbo_terms", "r_elbo"]


@dataclass(frozen=True)
class ELBOTerms:
    """Per-point ELBO and its parts, each ``(N,)`` float64 in nats.

    ``elbo = reconstruction - prior_kl - diffusion``; ``diffusion_stderr`` is the estimated Monte-Carlo
    standard error of the diffusion term: with stratified levels the collapsed-strata estimate
    (``sqrt(Σ_i (g_{2i} - g_{2i+1})²) / J`` over the ``J`` per-level values ``g``, which overstates the error
    by the variation between neighbouring strata), else the sample std over the levels / sqrt(J).
    """

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    prior_kl: torch.Tensor
    diffusion: torch.Tensor
    diffusion_stderr: torch.Tensor


def _check_x0(x0: torch.Tensor, name: str = "x0") -> None:
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"{name} must be (N, *shape) with N >= 1, got shape {tuple(x0.shape)}")
    if not x0.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {x0.dtype}")


def _uniform_draws(n: int, k: int, stratified: bool, generator: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """``(n, k)`` float64 in ``[0, 1)``: iid, or one draw per stratum ``[j/k, (j+1)/k)``."""
    u = torch.rand(n, k, generator=generator, device=device, dtype=torch.float64)
    if stratified:
        u = (torch.arange(k, device=device, dtype=torch.float64) + u) / k
    return u


@torch.no_grad()
def elbo_terms(
    denoiser: Denoiser,
    x0: torch.Tensor,
    config: EDMConfig,
    *,
    num_sigmas: int = 64,
    generator: torch.Generator | None = None,
    batch_size: int = 65536,
    stratified: bool = True,
    control_variate: bool = True,
    antithetic: bool = True,
) -> ELBOTerms:
    """The ELBO of every point and its three terms (see the module docstring).

    Args:
        denoiser: ``D(x (B, ...), sigma (B,)) -> (B, ...)``, plain or guided (guided wrappers enable
            gradients locally; this function runs under ``torch.no_grad``).
        x0: ``(N, *shape)`` float held-out points (data units); the denoiser is called in this dtype.
        config: the model's EDM config: ``sigma_min`` and ``sigma_max`` bound the integral, ``sigma_data``
            sets the control variate.
        num_sigmas: ``K`` denoiser evaluations per point (``K/2`` levels used with ``±ε`` when
            ``antithetic``; then ``K`` must be even).
        generator: random source for σ and ε (on ``x0``'s device). Results depend on ``batch_size``
            through the order in which ε is drawn.
        batch_size: rows per denoiser call, rounded down to whole points (at least one point, ``K`` rows).
        stratified: one log-uniform level per stratum of ``ln σ``.
        control_variate: subtract the zero-mean ``χ²`` control variate (module docstring).
        antithetic: evaluate every level at ``ε`` and ``-ε`` (cancels the part of the error linear in ε).
    """
    _check_x0(x0)
    if num_sigmas < (4 if antithetic else 2) or (antithetic and num_sigmas % 2):
        raise ValueError(
            f"num_sigmas must be >= 2, and even and >= 4 with antithetic=True (the error estimate needs two "
            f"levels), got {num_sigmas}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, k, device = x0.shape[0], num_sigmas, x0.device
    levels = k // 2 if antithetic else k
    d = x0[0].numel()
    smin, smax = config.sigma_min, config.sigma_max
    log_ratio = math.log(smax / smin)
    c2 = config.sigma_data ** 2
    x0_64 = x0.to(torch.float64)

    u = _uniform_draws(n, levels, stratified, generator, device)
    sigma_all = torch.exp(math.log(smin) + u * log_ratio)  # (N, levels)
    per_level = torch.empty(n, levels, dtype=torch.float64, device=device)
    points_per_call = max(1, batch_size // k)
    for start in range(0, n, points_per_call):
        stop = min(start + points_per_call, n)
        p = stop - start
        clean = x0_64[start:stop, None].expand(p, k, *x0.shape[1:]).reshape(p * k, *x0.shape[1:])
        eps = torch.randn((p, levels, *x0.shape[1:]), generator=generator, device=device,
                          dtype=torch.float64)
        sigma = sigma_all[start:stop]
        if antithetic:
            eps = torch.cat([eps, -eps], dim=1)
            sigma = torch.cat([sigma, sigma], dim=1)
        eps = eps.reshape(p * k, *x0.shape[1:])
        s = sigma.reshape(p * k)
        noisy = clean + broadcast_to_sample(s, clean) * eps
        denoised = denoiser(noisy.to(x0.dtype), s.to(x0.dtype)).to(torch.float64)
        if denoised.shape != clean.shape:
            raise ValueError(
                f"denoiser returned shape {tuple(denoised.shape)}, expected {tuple(clean.shape)}"
            )
        term = (denoised - clean).pow(2).flatten(1).sum(dim=1) / (s * s)
        if control_variate:
            term = term - (c2 / (s * s + c2)) ** 2 * (eps.flatten(1).pow(2).sum(dim=1) - d)
        term = log_ratio * term.reshape(p, k)
        per_level[start:stop] = 0.5 * (term[:, :levels] + term[:, levels:]) if antithetic else term
    diffusion = per_level.mean(dim=1)
    if stratified and levels % 2 == 0:  # collapsed strata: neighbouring strata as one stratum of two draws
        diff = per_level[:, 0::2] - per_level[:, 1::2]
        diffusion_stderr = diff.pow(2).sum(dim=1).sqrt() / levels
    else:
        diffusion_stderr = per_level.std(dim=1) / math.sqrt(levels)
    reconstruction = torch.full((n,), -0.5 * d * math.log(2 * math.pi * math.e * smin * smin),
                                dtype=torch.float64, device=device)
    prior_kl = x0_64.flatten(1).pow(2).sum(dim=1) / (2 * smax * smax)
    return ELBOTerms(
        elbo=reconstruction - prior_kl - diffusion,
        reconstruction=reconstruction,
        prior_kl=prior_kl,
        diffusion=diffusion,
        diffusion_stderr=diffusion_stderr,
    )


def elbo(
    denoiser: Denoiser,
    x0: torch.Tensor,
    config: EDMConfig,
    *,
    num_sigmas: int = 64,
    generator: torch.Generator | None = None,
    batch_size: int = 65536,
    stratified: bool = True,
    control_variate: bool = True,
    antithetic: bool = True,
) -> torch.Tensor:
    """Per-point ELBO ``(N,)`` float64 in nats of ``x0`` ``(N, *shape)``; see :func:`elbo_terms`."""
    return elbo_terms(denoiser, x0, config, num_sigmas=num_sigmas, generator=generator,
                      batch_size=batch_size, stratified=stratified, control_variate=control_variate,
                      antithetic=antithetic).elbo


@torch.no_grad()
def r_elbo(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: DDPMSchedule,
    *,
    num_timesteps: int = 64,
    generator: torch.Generator | None = None,
    batch_size: int = 65536,
    stratified: bool = True,
) -> torch.Tensor:
    """DDPM's reweighted ELBO ``-E_{t~U{0..T-1}} E_ε ||ε̂(x_t, t) - ε||²`` per point.

    Uniform weighting over timesteps (not a bound in nats: a score to compare models of one schedule). The
    model is a denoiser in VE coordinates (an ε-network through :class:`~genneg.diffusion.EpsDenoiser`,
    wrapped here by :func:`~genneg.diffusion.as_denoiser`; a guided stack; a distilled student), and
    ``ε̂ = (x - D(x; σ_t)) / σ_t`` at ``x = x_t / sqrt(ᾱ_t) = x0 + σ_t ε``, which for an ε-network is its
    own ``ε_θ(x_t, t)``.

    Args:
        model: ``D(x (B, ...), sigma (B,)) -> (B, ...)`` or an ε-network, plain or guided.
        x0: ``(N, *shape)`` float held-out points; the model is called in this dtype.
        schedule: the model's :class:`DDPMSchedule`.
        num_timesteps: ``K`` timesteps (each with its own ε) per point; stratified over ``[0, T)`` when
            ``stratified``.
        generator, batch_size: as in :func:`elbo_terms`.

    Returns:
        ``(N,)`` float64, summed over sample dimensions.
    """
    _check_x0(x0)
    if num_timesteps < 1 or batch_size < 1:
        raise ValueError(f"num_timesteps and batch_size must be >= 1, got {num_timesteps}, {batch_size}")
    denoiser = as_denoiser(model, schedule)
    n, k, device = x0.shape[0], num_timesteps, x0.device
    T = schedule.num_steps
    u = _uniform_draws(n, k, stratified, generator, device)
    t_all = torch.floor(u * T).to(torch.int64).clamp(max=T - 1).reshape(-1)
    sq_err = torch.empty(n * k, dtype=torch.float64, device=device)
    for start in range(0, n * k, batch_size):
        rows = slice(start, min(start + batch_size, n * k))
        t = t_all[rows]
        clean = x0[torch.arange(rows.start, rows.stop, device=device) // k]
        eps = torch.randn(clean.shape, generator=generator, device=device, dtype=x0.dtype)
        sigma = schedule.sigma_of_t(t).to(device=device, dtype=x0.dtype)
        s = broadcast_to_sample(sigma, clean)
        x = clean + s * eps
        eps_hat = (x - denoiser(x, sigma)) / s
        sq_err[rows] = (eps_hat - eps).to(torch.float64).pow(2).flatten(1).sum(dim=1)
    return -sq_err.reshape(n, k).mean(dim=1)
