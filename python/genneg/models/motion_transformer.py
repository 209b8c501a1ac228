"""Motion transformer: the DDPM ε-network over clips and its classifier twin (in the spirit of MDM).

MDM (Tevet et al., "Human Motion Diffusion Model", ICLR 2023) denoises a whole clip with a transformer
encoder whose tokens are the frames. We follow its layout:

1. Frame tokens: each frame's ``D`` features (standardised joint positions,
   :class:`~genneg.data.motion.features.MotionNormalisation`) -> Linear -> ``width``, plus a fixed
   sinusoidal encoding of the frame index (as MDM's ``PositionalEncoding``).
2. A **condition token** prepended to the frames: the sinusoidal embedding of the diffusion time through an
   MLP (MDM's ``TimestepEmbedder``), plus, with ``num_families > 0``, a learned embedding of the motion-family
   label (MDM's action embedding for action-to-motion); label ``num_families`` (or ``family=None``) means
   "no label", so one network can be trained with label dropout and sampled with or without labels.
3. ``layers`` pre-norm transformer encoder layers (self-attention over all tokens, GELU MLP).
4. Heads, on the frame tokens: ``"eps"`` -> ``(B, F, D)``: a zero-initialised Linear of the frame tokens
   plus a **time-gated linear skip** ``g(t) ⊙ (W x)`` of each frame's input (``W`` starts at the identity,
   the gate ``g``, a Linear of the condition token, at zero, so training starts from ε = 0). The skip
   carries the part of ε that is linear in ``x_t`` (at high noise ``ε ≈ x_t``) past the ``width``-wide
   trunk, which may be narrower than ``D``; the gate lets it vanish at low noise, where ε is not ``x_t``;
   ``"frame_logit"`` -> ``(B, F)`` one logit per frame; ``"clip_logit"`` -> ``(B,)`` from the
   mean of the frame tokens.

The classifier is the same network with a logit head. Per frame is the default for Gen-neG
(:class:`MotionLogitNet`): the oracle's verdict is local in time (a frame is invalid when one of its
joints is below the floor), per-frame labels tell the classifier *where* in the clip the infraction is
(``F`` labels per clip instead of one), and guidance then pushes only the frames that are likely to
penetrate, through ``∇ Σ_frames log c_frame`` (METHOD.md 4, "multi-part samples", the convention the
traffic classifier uses per vehicle). The per-clip head is the exact Bayes target of Eq. 9 for clip
labels; it is there for the comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["MotionEpsNet", "MotionLogitNet", "MotionTransformer", "MotionTransformerConfig"]

Head = Literal["eps", "frame_logit", "clip_logit"]


@dataclass(frozen=True)
class MotionTransformerConfig:
    """Sizes of the motion transformer.

    Attributes:
        feature_dim: features per frame ``D`` (3 × joints).
        max_frames: longest clip the frame encoding covers.
        width: model width; heads: attention heads (divide ``width``); layers: encoder layers.
        mlp_ratio: MLP hidden width as a multiple of ``width``.
        dropout: dropout in the encoder layers (MDM: 0.1).
        time_embed_dim: sinusoidal features of the time input; time_max_period: its longest period.
        num_families: motion-family labels (0 = unconditional).
        head: ``"eps"``, ``"frame_logit"`` or ``"clip_logit"`` (module docstring).
    """

    feature_dim: int = 66
    max_frames: int = 256
    width: int = 128
    heads: int = 4
    layers: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    time_embed_dim: int = 128
    time_max_period: float = 10_000.0
    num_families: int = 0
    head: Head = "eps"

    def __post_init__(self) -> None:
        if self.head not in ("eps", "frame_logit", "clip_logit"):
            raise ValueError(f"head must be 'eps', 'frame_logit' or 'clip_logit', got {self.head!r}")
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        if self.time_embed_dim % 2 or self.time_embed_dim < 2:
            raise ValueError(f"time_embed_dim must be even and >= 2, got {self.time_embed_dim}")
        if self.feature_dim < 1 or self.max_frames < 1 or self.layers < 1 or self.num_families < 0:
            raise ValueError(f"MotionTransformerConfig sizes must be positive: {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MotionTransformerConfig:
        return cls(**json.loads(text))


def _sinusoid(values: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """``(...,)`` -> ``(..., dim)``: ``[sin(v ω_k), cos(v ω_k)]``, ``ω_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device,
                                                           dtype=torch.float32) / half)
    angle = values.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class MotionTransformer(nn.Module):
    """``net(x (B, F, D), time (B,), family (B,) int64 | None) -> (B, F, D) | (B, F) | (B,)``
    (module docstring).

    Raises:
        ValueError: ``x`` not ``(B, F, feature_dim)`` with ``F <= max_frames``, ``time`` not ``(B,)``,
            or a family label outside ``[0, num_families]``.
    """

    def __init__(self, config: MotionTransformerConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.input = nn.Linear(config.feature_dim, w)
        frame_encoding = _sinusoid(torch.arange(config.max_frames).float(), w, 10_000.0)
        self.register_buffer("frame_encoding", frame_encoding, persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.family = nn.Embedding(config.num_families + 1, w) if config.num_families else None
        layer = nn.TransformerEncoderLayer(w, config.heads, config.mlp_ratio * w, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        out = config.feature_dim if config.head == "eps" else 1
        self.output = nn.Linear(w, out)
        self.skip = nn.Linear(config.feature_dim, config.feature_dim) if config.head == "eps" else None
        self.skip_gate = nn.Linear(w, config.feature_dim) if config.head == "eps" else None
        if self.skip is not None and self.skip_gate is not None:
            nn.init.eye_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
            for layer in (self.output, self.skip_gate):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, time: torch.Tensor,
                family: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.feature_dim or not 1 <= x.shape[1] <= cfg.max_frames:
            raise ValueError(f"x must be (B, F <= {cfg.max_frames}, {cfg.feature_dim}), got {tuple(x.shape)}")
        b, f, _ = x.shape
        if time.shape != (b,):
            raise ValueError(f"time must be ({b},), got {tuple(time.shape)}")
        cond = self.time_mlp(_sinusoid(time, cfg.time_embed_dim, cfg.time_max_period).to(x.dtype))
        if self.family is not None:
            if family is None:
                family = torch.full((b,), cfg.num_families, dtype=torch.int64, device=x.device)
            if family.shape != (b,) or bool(((family < 0) | (family > cfg.num_families)).any()):
                raise ValueError(f"family must be ({b},) int64 in [0, {cfg.num_families}] "
                                 f"({cfg.num_families} = no label), got {family.tolist()}")
            cond = cond + self.family(family)
        tokens = self.input(x) + self.frame_encoding[:f].to(x.dtype)
        h = self.encoder(torch.cat([cond[:, None], tokens], dim=1))
        frames = self.norm(h[:, 1:])
        if self.skip is not None and self.skip_gate is not None:
            return self.output(frames) + self.skip_gate(cond)[:, None] * self.skip(x)
        if cfg.head == "frame_logit":
            return self.output(frames)[..., 0]
        return self.output(frames.mean(dim=1))[..., 0]

    def num_parameters(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class MotionEpsNet(nn.Module):
    """The DDPM ε-model of clips: ``eps(x_t (B, F, D), t (B,) int64, *, family=None, **cond) -> (B, F, D)``.

    The time input is the step index as a float (as :class:`~genneg.pipeline.traffic.SceneEpsModel`);
    conditioning entries other than ``family`` (the oracle's, the metrics') are ignored.
    """

    parameterisation = "eps"
    """An ε-network: samplers, guidance and metrics see it through ``genneg.diffusion.EpsDenoiser``."""

    def __init__(self, config: MotionTransformerConfig) -> None:
        super().__init__()
        if config.head != "eps":
            raise ValueError(f"MotionEpsNet needs head='eps', got {config.head!r}")
        self.net = MotionTransformer(config)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, family: torch.Tensor | None = None,
                **context: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t.to(x_t.dtype), family)

    def num_parameters(self) -> int:
        return self.net.num_parameters()


class MotionLogitNet(nn.Module):
    """The classifier network ``F(x_in (B, F, D), c_noise (B,), *, family=None, **cond) -> (B, F)`` (or
    ``(B,)`` with the clip head), to wrap in a :class:`~genneg.guidance.TimeClassifier` with
    ``sigma_data = 1`` (so ``x_in`` is the DDPM ``x_t`` for standardised features, ``c_noise = ln σ / 4``).

    Its time input is ``clamp(c_noise, max=ln(sigma_max) / 4) · time_scale`` (a range like the DDPM step
    index the ε-network sees). With ``shrinkage`` the transformer reads ``x_in / sqrt(σ² + 1)``, the
    posterior mean of unit-variance data, which bounds the guidance step at high noise (the reasoning of
    :class:`~genneg.pipeline.traffic.SceneLogitNet`).
    """

    def __init__(self, config: MotionTransformerConfig, time_scale: float = 250.0, sigma_max: float = 20.0,
                 shrinkage: bool = True) -> None:
        super().__init__()
        if config.head == "eps":
            raise ValueError("MotionLogitNet needs a logit head ('frame_logit' or 'clip_logit')")
        if not (time_scale > 0 and sigma_max > 0):
            raise ValueError(f"time_scale and sigma_max must be > 0, got {time_scale}, {sigma_max}")
        self.net = MotionTransformer(config)
        self.time_scale = float(time_scale)
        self.c_noise_max = math.log(sigma_max) / 4
        self.shrinkage = bool(shrinkage)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, *, family: torch.Tensor | None = None,
                **context: torch.Tensor) -> torch.Tensor:
        c_noise = c_noise.to(x_in.dtype).expand(x_in.shape[0])
        if self.shrinkage:
            x_in = x_in * torch.rsqrt(1 + torch.exp(8 * c_noise))[:, None, None]  # / sqrt(σ² + 1)
        return self.net(x_in, c_noise.clamp(max=self.c_noise_max) * self.time_scale, family)

    def num_parameters(self) -> int:
        return self.net.num_parameters()
