"""EDM (Karras et al. 2022) preconditioning and training loss, with log-uniform noise levels.

Preconditioning with ``sigma_data``::

    c_skip = sigma_data² / (sigma² + sigma_data²)
    c_out  = sigma · sigma_data / sqrt(sigma² + sigma_data²)
    c_in   = 1 / sqrt(sigma² + sigma_data²)
    c_noise = ln(sigma) / 4
    D(x; sigma) = c_skip · x + c_out · F(c_in · x, c_noise)

Loss ``E_sigma E_{x0,eps} lambda(sigma) ||D(x0 + sigma eps; sigma) - x0||²`` with
``lambda(sigma) = (sigma² + sigma_data²) / (sigma · sigma_data)²`` and ``sigma`` drawn log-uniformly on
``[sigma_min, sigma_max]`` (the paper's choice: small noise matters for sharp constraint boundaries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from genneg.diffusion.denoiser import broadcast_to_sample, expand_sigma

__all__ = [
    "EDMConfig",
    "EDMPrecond",
    "edm_loss",
    "edm_loss_weight",
    "edm_preconditioning",
    "sample_sigma_log_uniform",
]


@dataclass(frozen=True)
class EDMConfig:
    """Noise range and data scale of an EDM model (units of the data)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max) or self.sigma_data <= 0:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max and sigma_data > 0, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}, sigma_data={self.sigma_data}"
            )


def edm_preconditioning(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in, c_noise)``, each with ``sigma``'s shape and dtype."""
    s2 = sigma * sigma
    d2 = sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + d2)
    c_in = 1.0 / torch.sqrt(s2 + d2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(sigma) = (sigma² + sigma_data²) / (sigma · sigma_data)²``, shape of ``sigma``."""
    return (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """Wraps a raw network ``F(x_in, c_noise)`` into the EDM denoiser ``D(x, sigma)``.

    Args:
        net: module mapping ``(B, *shape)`` and ``(B,)`` (and, for conditioned models, ``**cond``) to
            ``(B, *shape)``.
        sigma_data: standard deviation of the data, in data units.
    """

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, *shape)`` float32, ``sigma`` ``(B,)`` or scalar -> ``(B, *shape)``; ``cond``
        (per-sample conditioning, leading dimension ``B``) is passed to the network by keyword."""
        sigma = expand_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        f = self.net(broadcast_to_sample(c_in, x) * x, c_noise, **cond)
        return broadcast_to_sample(c_skip, x) * x + broadcast_to_sample(c_out, x) * f


def sample_sigma_log_uniform(
    n: int, sigma_min: float, sigma_max: float, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(n,)`` float32 noise levels, ``ln sigma ~ U[ln sigma_min, ln sigma_max]``."""
    u = torch.rand(n, generator=generator, device=device)
    return torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))


def edm_loss(
    denoiser: nn.Module, x0: torch.Tensor, config: EDMConfig, *, generator: torch.Generator | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    """Mean EDM loss over a batch: ``lambda(sigma) ||D(x0 + sigma eps; sigma) - x0||²``, summed over
    sample dimensions, averaged over the batch. ``x0``: ``(B, *shape)`` float32. Returns a scalar.
    ``rows``: only these rows are evaluated and averaged (a data-parallel rank's share); the noise of the
    whole batch is drawn all the same, so each share sees the draws of a one-process run."""
    sigma = sample_sigma_log_uniform(
        x0.shape[0], config.sigma_min, config.sigma_max, generator=generator, device=x0.device
    )
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    if rows is not None:
        x0, sigma, eps = x0[rows], sigma[rows], eps[rows]
    x = x0 + broadcast_to_sample(sigma, x0) * eps
    err = (denoiser(x, sigma) - x0).pow(2).flatten(1).sum(dim=1)
    return (edm_loss_weight(sigma, config.sigma_data) * err).mean()
