"""Time-dependent classifiers ``c(x, sigma) ≈ P(O(x0) = 1 | x_sigma = x)`` that return logits.

A classifier wraps a raw network ``F(x_in, c_noise)`` (e.g. :class:`genneg.models.ResidualMLP` with one
output, or a transformer with one output per part) with the same EDM input scaling as the denoiser::

    logits = F(c_in(sigma) · x, c_noise(sigma)),   c_in = 1 / sqrt(sigma² + sigma_data²),
                                                   c_noise = ln(sigma) / 4

so that the network sees unit-variance inputs at every noise level. A time-independent classifier (the
paper's ablation) ignores ``sigma``: it sees ``x / sigma_data`` and ``c_noise = 0``; it is trained on clean
samples and, during guidance, applied to the one-step estimate ``D(x; sigma)``.

Conditioned samples pass their conditioning tensors on: ``c(x, sigma, **cond)`` calls
``F(x_in, c_noise, **cond)`` (see :mod:`genneg.guidance.guided`).
"""

from __future__ import annotations

import torch
from torch import nn

from genneg.diffusion.denoiser import broadcast_to_sample, expand_sigma
from genneg.diffusion.edm import edm_preconditioning

__all__ = ["TimeClassifier"]


class TimeClassifier(nn.Module):
    """Logits of the probability that a noisy sample's clean origin is valid.

    Declares ``noise_coordinates = "ve"``: it takes ``sigma`` (variance-exploding coordinates), never an
    integer DDPM timestep (a DDPM model is guided in VE coordinates through its ``EpsDenoiser``);
    :class:`genneg.guidance.GuidedDenoiser` reads this and refuses a classifier that declares otherwise.

    Args:
        net: raw network ``F(x_in (B, *shape), c_noise (B,), **cond) -> (B, 1)``, ``(B,)`` or ``(B, P)``
            (one logit per part, e.g. per vehicle); ``cond`` only for conditioned samples.
        sigma_data: standard deviation of the data, in data units (same as the denoiser's).
        time_dependent: False for the time-independent ablation: ``sigma`` is ignored.
    """

    noise_coordinates = "ve"

    def __init__(self, net: nn.Module, sigma_data: float, time_dependent: bool = True) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.time_dependent = bool(time_dependent)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: torch.Tensor) -> torch.Tensor:
        """Logits of ``P(valid | x_sigma = x)``.

        Args:
            x: ``(B, *shape)`` float, noisy samples in variance-exploding coordinates.
            sigma: ``(B,)`` or scalar noise level (data units); ignored when not ``time_dependent``.
            cond: per-sample conditioning tensors (leading dimension ``B``), passed to the network.

        Returns:
            ``(B,)`` logits for single-part samples (a trailing output dimension of 1 is dropped), or
            ``(B, P)`` logits, one per part.
        """
        if self.time_dependent:
            sigma = expand_sigma(sigma, x)
            _, _, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
            x_in = broadcast_to_sample(c_in.to(x.dtype), x) * x
        else:
            x_in = x / self.sigma_data
            c_noise = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        logits = self.net(x_in, c_noise, **cond)
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim not in (1, 2) or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"classifier network returned shape {tuple(logits.shape)} for a batch of {x.shape[0]}; "
                f"expected ({x.shape[0]},), ({x.shape[0]}, 1) or ({x.shape[0]}, P)"
            )
        return logits
