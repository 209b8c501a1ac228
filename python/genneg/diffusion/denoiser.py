"""The one denoiser interface every sampler, guidance wrapper and metric uses.

A denoiser is a callable ``D(x, sigma, **cond) -> x0_hat``:

- ``x``: ``(B, *sample_shape)`` float32, a noisy sample in variance-exploding coordinates
  ``x = x0 + sigma · eps``;
- ``sigma``: ``(B,)`` float32, the noise level of each sample (same units as ``x``);
- ``cond``: per-sample conditioning tensors (leading dimension ``B``) passed by keyword; none for
  unconditioned models;
- returns ``(B, *sample_shape)``, the estimate of ``E[x0 | x_sigma = x]``.

Its score is ``(D(x, sigma) - x) / sigma²``. DDPM ε-networks enter this interface through
``genneg.diffusion.ddpm.EpsDenoiser`` (the one noise formalism), so that samplers, guidance, inpainting,
distillation, metrics and the planner are written once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "broadcast_to_sample", "expand_sigma"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x (B, ...), sigma (B,)) -> (B, ...)``, see the module docstring."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def expand_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a noise level to ``(B,)`` on ``x``'s device, ``B = x.shape[0]``, in ``x``'s dtype when
    that is floating point (float32 otherwise).

    Accepts a Python float, a 0-d tensor or a ``(B,)`` tensor.
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    s = torch.as_tensor(sigma, dtype=dtype, device=x.device)
    if s.ndim == 0:
        return s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s


def broadcast_to_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` so that it multiplies ``x`` of shape ``(B, *sample_shape)``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))
