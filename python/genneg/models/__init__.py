"""Networks: the residual MLP (checkerboard), the scene transformer (traffic), the motion transformer."""

from genneg.models.mlp import ResidualBlock, ResidualMLP, ResidualMLPConfig, SinusoidalEmbedding
from genneg.models.motion_transformer import (
    MotionEpsNet,
    MotionLogitNet,
    MotionTransformer,
    MotionTransformerConfig,
)
from genneg.models.scene_transformer import SceneTransformer, SceneTransformerConfig

__all__ = [
    "MotionEpsNet",
    "MotionLogitNet",
    "MotionTransformer",
    "MotionTransformerConfig",
    "ResidualBlock",
    "ResidualMLP",
    "ResidualMLPConfig",
    "SceneTransformer",
    "SceneTransformerConfig",
    "SinusoidalEmbedding",
]
