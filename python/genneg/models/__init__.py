"""Networks: the residual MLP (checkerboard) and the scene transformer (traffic)."""

from genneg.models.mlp import ResidualBlock, ResidualMLP, ResidualMLPConfig, SinusoidalEmbedding

__all__ = ["ResidualBlock", "ResidualMLP", "ResidualMLPConfig", "SinusoidalEmbedding"]
