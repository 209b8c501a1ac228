"""Residual MLP with a sinusoidal noise-level embedding: the checkerboard denoiser and classifier.

The architecture is fixed here because the fused Triton guidance kernel (``genneg.kernels``) mirrors it
layer for layer:

    e   = sinusoidal(c_noise)                                  (B, E)
    t   = W_t2 · silu(W_t1 · e + b_t1) + b_t2                  (B, H)
    h   = W_in · x + b_in + t                                  (B, H)
    h   = h + W_b2 · silu(W_b1 · silu(h) + b_b1) + b_b2        (B, H), once per residual block
    out = W_out · silu(h) + b_out                              (B, D_out)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResidualBlock", "ResidualMLP", "ResidualMLPConfig", "SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """``(B,)`` float noise conditioning -> ``(B, dim)`` features ``[cos(s·c·f_k), sin(s·c·f_k)]``.

    ``f_k = max_period^(-k / (dim/2))`` for ``k = 0..dim/2-1`` and ``s = scale``: the transformer
    positional embedding of ``scale · c``.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"embedding dim must be a positive even number, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * scale, persistent=False)
        self.dim = dim

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        args = c_noise.to(torch.float32)[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResidualBlock(nn.Module):
    """``h + W2 · silu(W1 · silu(h) + b1) + b2``, width ``H``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(h))))


@dataclass(frozen=True)
class ResidualMLPConfig:
    """Sizes of a :class:`ResidualMLP` (paper, checkerboard: 2 blocks, hidden 256, embedding 128)."""

    dim_in: int = 2
    dim_out: int = 2
    hidden: int = 256
    num_blocks: int = 2
    embedding_dim: int = 128
    embedding_scale: float = 1000.0


class ResidualMLP(nn.Module):
    """``F(x, c_noise)``: ``x`` ``(B, dim_in)`` float32, ``c_noise`` ``(B,)`` -> ``(B, dim_out)``.

    The raw network; EDM preconditioning (``genneg.diffusion.EDMPrecond``) and classifiers wrap it.
    """

    def __init__(self, config: ResidualMLPConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.embedding = SinusoidalEmbedding(config.embedding_dim, scale=config.embedding_scale)
        self.time_fc1 = nn.Linear(config.embedding_dim, h)
        self.time_fc2 = nn.Linear(h, h)
        self.input_fc = nn.Linear(config.dim_in, h)
        self.blocks = nn.ModuleList(ResidualBlock(h) for _ in range(config.num_blocks))
        self.output_fc = nn.Linear(h, config.dim_out)

    def time_features(self, c_noise: torch.Tensor) -> torch.Tensor:
        """``(B,)`` -> ``(B, H)``: the embedding MLP's output, added to the input projection."""
        return self.time_fc2(F.silu(self.time_fc1(self.embedding(c_noise))))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h = self.input_fc(x) + self.time_features(c_noise)
        for block in self.blocks:
            h = block(h)
        return self.output_fc(F.silu(h))

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
