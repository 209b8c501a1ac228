"""Exact log-likelihood under the probability-flow ODE, with the exact (Hutchinson-free) divergence.

The VE PF-ODE ``dx/dσ = (x - D(x; σ)) / σ`` carries ``p_σ`` forward, and along a trajectory
``d log p_σ(x(σ)) / dσ = -div_x [(x - D(x; σ)) / σ] = -(d - div_x D(x; σ)) / σ``. In ``u = ln σ``::

    dx/du = x - D(x; σ)
    log p_{σ_min}(x0) = log p_prior(x(σ_max)) + ∫_{ln σ_min}^{ln σ_max} (d - div_x D) du

with ``x(σ_min) = x0``. The prior is the sampler's own starting distribution ``N(0, σ_max² I)`` (the
Heun sampler draws ``x = σ_max · N(0, I)``), so this is the density of the model one samples from, at
noise level ``σ_min`` (a ``σ_min``-smoothed ``p_0``). For Gaussian data ``N(μ, s² I)`` and the exact
denoiser it equals ``log N(x0; μ, (s² + σ_min²) I)`` up to the prior's mismatch at ``σ_max``.

The ODE is integrated from ``σ_min`` up to ``σ_max`` with fixed Heun steps, uniform in ``ln σ``, state and
log-density in float64. The state is carried as ``y = x / sqrt(σ² + σ_data²)``, for which
``dy/du = (x σ_data² / (σ² + σ_data²) - D) / sqrt(σ² + σ_data²)`` stays small at both ends (``x`` itself grows
like ``σ`` at large ``σ``, which a fixed step follows poorly); this changes only the discretisation.
``div_x D`` is exact: ``d`` backward passes per evaluation (one per coordinate), so this is meant for
low-dimensional data (the checkerboard, d = 2).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from genneg.diffusion.denoiser import Denoiser
from genneg.diffusion.edm import EDMConfig
from genneg.metrics._checks import check_positive

__all__ = ["denoiser_divergence", "pf_ode_log_likelihood"]


def denoiser_divergence(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``D(x; σ)`` and its exact divergence ``Σ_i ∂D_i / ∂x_i``.

    Args:
        denoiser: differentiable ``D(x (B, ...), sigma (B,)) -> (B, ...)``.
        x: ``(B, *shape)`` float, the denoiser's dtype.
        sigma: ``(B,)`` noise levels in ``x``'s dtype.

    Returns:
        ``(D (B, *shape) detached, div (B,))`` in ``x``'s dtype. Costs one forward and ``d`` backward passes.
        Works in every grad mode: under ``torch.inference_mode`` (which records no graph) it leaves
        inference mode for the derivatives, with inference-tensor inputs cloned.
    """
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return denoiser_divergence(denoiser, x.clone(), sigma.clone())
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        out = denoiser(xi, sigma)
        if out.shape != x.shape:
            raise ValueError(f"denoiser returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
        flat = out.flatten(1)
        d = flat.shape[1]
        div = torch.zeros(x.shape[0], dtype=out.dtype, device=x.device)
        for i in range(d):  # one backward pass per coordinate, batched over samples
            (grad,) = torch.autograd.grad(flat[:, i].sum(), xi, retain_graph=i < d - 1)
            div = div + grad.flatten(1)[:, i]
    return out.detach(), div


def pf_ode_log_likelihood(
    denoiser: Denoiser,
    x0: torch.Tensor,
    config: EDMConfig,
    *,
    num_steps: int = 256,
    batch_size: int = 4096,
    prior_std: float | None = None,
) -> torch.Tensor:
    """Exact PF-ODE log-likelihood ``log p_{σ_min}(x0)`` of every point, in nats.

    Args:
        denoiser: differentiable ``D(x, sigma)``; guided denoisers must keep their guidance gradient in
            the graph (``create_graph``) for the divergence to include it.
        x0: ``(N, *shape)`` float points (data units); the denoiser is called in this dtype.
        config: ``sigma_min``, ``sigma_max`` of the integration.
        num_steps: Heun steps, uniform in ``ln σ`` (two denoiser evaluations each).
        batch_size: points integrated together.
        prior_std: standard deviation of the Gaussian prior at ``σ_max`` (default ``σ_max``).

    Returns:
        ``(N,)`` float64 log-densities in nats.
    """
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be (N, *shape) with N >= 1, got shape {tuple(x0.shape)}")
    if not x0.dtype.is_floating_point:
        raise TypeError(f"x0 must be a float tensor, got dtype {x0.dtype}")
    if num_steps < 1 or batch_size < 1:
        raise ValueError(f"num_steps and batch_size must be >= 1, got {num_steps}, {batch_size}")
    prior_std = config.sigma_max if prior_std is None else float(prior_std)
    prior_std = check_positive("prior_std", prior_std)
    log_sigmas = torch.linspace(math.log(config.sigma_min), math.log(config.sigma_max), num_steps + 1,
                                dtype=torch.float64).tolist()
    d = x0[0].numel()
    c2 = config.sigma_data ** 2
    out = []
    for start in range(0, x0.shape[0], batch_size):
        x = x0[start:start + batch_size].to(torch.float64)
        b = x.shape[0]

        def velocity(y: torch.Tensor, log_sigma: float, b: int = b) -> tuple[torch.Tensor, torch.Tensor]:
            """``(dy/du, d - div D)`` at ``u = ln σ`` for the scaled state ``y``, float64."""
            s2 = math.exp(2 * log_sigma)
            scale = math.sqrt(s2 + c2)
            x = y * scale
            sigma = torch.full((b,), math.exp(log_sigma), dtype=x0.dtype, device=x0.device)
            den, div = denoiser_divergence(denoiser, x.to(x0.dtype), sigma)
            dy = (x * (c2 / (s2 + c2)) - den.to(torch.float64)) / scale
            return dy, d - div.to(torch.float64)

        y = x / math.sqrt(math.exp(2 * log_sigmas[0]) + c2)
        integral = torch.zeros(b, dtype=torch.float64, device=x0.device)
        for u_cur, u_next in pairwise(log_sigmas):
            h = u_next - u_cur
            v1, g1 = velocity(y, u_cur)
            v2, g2 = velocity(y + h * v1, u_next)
            y = y + 0.5 * h * (v1 + v2)
            integral = integral + 0.5 * h * (g1 + g2)
        x = y * math.sqrt(math.exp(2 * log_sigmas[-1]) + c2)
        log_prior = (-0.5 * d * math.log(2 * math.pi * prior_std ** 2)
                     - x.flatten(1).pow(2).sum(dim=1) / (2 * prior_std ** 2))
        out.append(log_prior + integral)
    return torch.cat(out)
