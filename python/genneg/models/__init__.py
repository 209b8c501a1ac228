"""Networks: the residual MLP (checkerboard) and the scene transformer (traffic)."""

from genneg.models.mlp import ResidualBlock, ResidualMLP, ResidualMLPConfig, SinusoidalEmbedding
from genneg.models.scene_transformer import SceneTransformer, SceneTransformerConfig

__all__ = [
    "ResidualBlock",
    "ResidualMLP",
    "ResidualMLPConfig",
    "SceneTransformer",
    "SceneTransformerConfig",
    "SinusoidalEmbedding",
]
