"""Scene transformer: the DDPM ε-prediction network (and per-vehicle classifier) for traffic scenes.

Input: per-vehicle tokens ``(x, y, cos h, sin h, length, width, speed)`` normalised in the scene frame
(:mod:`genneg.data.traffic.tokens`: positions relative to the window centre, window = ``[-1, 1]²``), a
diffusion time per scene, a validity mask, and the map raster cropped to the scene window.

Architecture:

1. Vehicle embedding: MLP of ``token ⊕ PE₂(x, y)`` (2-D sinusoidal encoding of the token's position).
2. Time embedding: sinusoidal embedding of ``t`` → MLP, added to the input of every sublayer.
3. Relative positional encoding as an **attention bias**: pairwise distances ``d_ij = ||p_i - p_j||`` of the
   (noisy) token positions are embedded sinusoidally, projected and **summed with a projection of the time
   embedding**, passed through SiLU (shared by all blocks); each block maps it linearly to one bias per
   head that is added to the self-attention logits.
   Relative **values** (Shaw et al. 2018): each attended neighbour also contributes
   ``W_v [f_ij, f_ij Δx_ij, f_ij Δy_ij]``, with ``f_ij`` those pair features and ``Δ_ij = p_i - p_j`` the
   displacement from the neighbour, so a vehicle learns where its neighbours are, not only how much to
   attend to them (a bias alone gives no direction to move away from a too-close neighbour).
4. Map encoder: a small strided CNN on the raster crop → ``(H/8) × (W/8)`` map tokens plus a projected 2-D
   sinusoidal encoding of their cell centres in the same normalised frame.
5. ``blocks`` × [self-attention over vehicles (key padding mask) → cross-attention to map tokens → MLP],
   pre-norm residual.
6. Decoder MLP → ``(B, A, 7)`` (``head="eps"``) or ``(B, A)`` logits (``head="logit"``). Outputs at padding
   slots are zero.

Symmetries. The network is equivariant to permutations of the vehicles, and padding slots change nothing
for real vehicles (masked keys; no cross-vehicle normalisation). Rigid motions: translations of the world
are removed before the network, by expressing every scene in its own window frame, so a scene and its map
shifted together give identical tokens, crops and outputs. Rotations are **not** factored out: the crop is
axis-aligned with the map and the tokens carry absolute ``cos h, sin h``; only the attention bias (built from
distances) is rotation-invariant.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SceneTransformer", "SceneTransformerConfig", "sinusoidal_embedding"]


@dataclass(frozen=True)
class SceneTransformerConfig:
    """Sizes of the scene transformer.

    Attributes:
        token_dim: features per vehicle token (7).
        width: model width ``D``.
        heads: attention heads (must divide ``width``).
        blocks: number of [self-attention, cross-attention, MLP] blocks.
        mlp_ratio: hidden width of MLPs as a multiple of ``width``.
        time_embed_dim: sinusoidal features of the time input.
        time_max_period: longest period of the time embedding (DDPM step indices lie in ``[0, T)``).
        distance_embed_dim: sinusoidal features of each pairwise distance (normalised units).
        position_embed_dim: sinusoidal features of a 2-D position (half for x, half for y).
        min_wavelength, max_wavelength: wavelength range of the distance and position encodings, in
            normalised units (1 = half a window).
        map_channels: channels of the three stride-2 convolutions of the map encoder.
        map_extent: the map crop spans ``[-map_extent, map_extent]²`` in normalised units.
        relative_values: add the relative-position values to self-attention (module docstring, 3).
        output_dim: ε outputs per vehicle (``head="eps"``); 0 = ``token_dim``. Smaller when the tokens
            carry extra input features after the ``output_dim`` predicted ones.
        head: ``"eps"`` (ε-prediction, ``token_dim`` outputs) or ``"logit"`` (one logit per vehicle).
    """

    token_dim: int = 7
    width: int = 64
    heads: int = 4
    blocks: int = 2
    mlp_ratio: int = 2
    time_embed_dim: int = 64
    time_max_period: float = 10_000.0
    distance_embed_dim: int = 32
    position_embed_dim: int = 32
    min_wavelength: float = 0.01
    max_wavelength: float = 8.0
    map_channels: tuple[int, int, int] = (16, 32, 64)
    map_extent: float = 1.0
    relative_values: bool = True
    output_dim: int = 0
    head: str = "eps"

    def __post_init__(self) -> None:
        if self.head not in ("eps", "logit"):
            raise ValueError(f"head must be 'eps' or 'logit', got {self.head!r}")
        if self.width % self.heads != 0:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        for name in ("time_embed_dim", "distance_embed_dim", "position_embed_dim"):
            if getattr(self, name) % 2 != 0 or getattr(self, name) < 2:
                raise ValueError(f"{name} must be even and >= 2, got {getattr(self, name)}")
        if self.position_embed_dim % 4 != 0:
            raise ValueError(f"position_embed_dim must be a multiple of 4, got {self.position_embed_dim}")
        if not 0 <= self.output_dim <= self.token_dim:
            raise ValueError(f"output_dim must lie in [0, token_dim={self.token_dim}], got {self.output_dim}")
        if self.blocks < 1 or self.token_dim < 2:
            raise ValueError(f"need blocks >= 1 and token_dim >= 2, got {self.blocks}, {self.token_dim}")
        if len(self.map_channels) != 3:
            raise ValueError(f"map_channels must have three entries, got {self.map_channels}")

    def to_json(self) -> str:
        """The config as JSON (round-trips through :meth:`from_json`)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SceneTransformerConfig:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        d["map_channels"] = tuple(d["map_channels"])
        return cls(**d)


def sinusoidal_embedding(
    values: torch.Tensor, dim: int, min_wavelength: float, max_wavelength: float,
    noise_std: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[sin(2π v / λ_k), cos(2π v / λ_k)]`` for ``dim / 2`` wavelengths ``λ_k`` geometric in
    ``[min_wavelength, max_wavelength]``.

    Args:
        values: ``(...)`` float tensor.
        dim: even number of output features.
        noise_std: optional std of Gaussian noise on ``values`` (broadcastable to ``values``). Each
            feature is then multiplied by ``exp(-2π² noise_std² / λ_k²)``, its expectation over that noise
            (``E sin(2π(v + n)/λ) = sin(2π v/λ) exp(-2π² s²/λ²)``): features finer than the noise carry no
            information and are faded out, so they add no input gradient either.

    Returns:
        ``(..., dim)`` tensor of ``values``' dtype (float32 for integer input).
    """
    half = dim // 2
    dtype = values.dtype if values.dtype == torch.float64 else torch.float32
    k = torch.arange(half, device=values.device, dtype=dtype) / max(half - 1, 1)
    wavelength = max_wavelength * (min_wavelength / max_wavelength) ** k
    angle = values.to(dtype)[..., None] * (2 * math.pi / wavelength)
    out = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    if noise_std is not None:
        std = torch.broadcast_to(noise_std.to(dtype), values.shape)[..., None]
        fade = torch.exp(-2 * math.pi**2 * (std / wavelength) ** 2)
        out = out * torch.cat([fade, fade], dim=-1)
    return out.to(values.dtype) if values.is_floating_point() else out


def _time_embedding(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """DDPM/transformer time embedding: frequencies ``max_period^(-k/half)``; ``(B,) -> (B, dim)``
    (float64 for float64 input, else float32)."""
    half = dim // 2
    dtype = t.dtype if t.dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    angle = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def _position_embedding(xy: torch.Tensor, cfg: SceneTransformerConfig,
                        noise_std: torch.Tensor | None = None) -> torch.Tensor:
    """``(..., 2)`` normalised positions -> ``(..., position_embed_dim)``; ``noise_std`` as in
    :func:`sinusoidal_embedding` (per coordinate)."""
    half = cfg.position_embed_dim // 2
    ex = sinusoidal_embedding(xy[..., 0], half, cfg.min_wavelength, cfg.max_wavelength, noise_std)
    ey = sinusoidal_embedding(xy[..., 1], half, cfg.min_wavelength, cfg.max_wavelength, noise_std)
    return torch.cat([ex, ey], dim=-1)


class _Attention(nn.Module):
    """Multi-head attention with an optional additive bias ``(B, H, Q, K)``, a key mask ``(B, Q, K)`` and
    optional per-pair values ``(B, Q, K, width)`` added to the values of the keys."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        bias: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        pair_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, q_len, d = x.shape
        k_len = context.shape[1]
        h = self.heads
        q = self.q(x).view(b, q_len, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, k_len, 2, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if bias is not None:
            scores = scores + bias
        if allowed is not None:
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        out = (attn @ v).transpose(1, 2)  # (B, Q, H, d/h)
        if pair_values is not None:
            rel = pair_values.view(b, q_len, k_len, h, d // h)
            out = out + torch.einsum("bhqk,bqkhc->bqhc", attn, rel)
        return self.out(out.reshape(b, q_len, d))


class _Block(nn.Module):
    def __init__(self, cfg: SceneTransformerConfig) -> None:
        super().__init__()
        d = cfg.width
        self.norm_self = nn.LayerNorm(d)
        self.norm_cross = nn.LayerNorm(d)
        self.norm_mlp = nn.LayerNorm(d)
        self.time_self = nn.Linear(d, d)
        self.time_cross = nn.Linear(d, d)
        self.time_mlp = nn.Linear(d, d)
        self.bias = nn.Linear(cfg.distance_embed_dim, cfg.heads)
        self.pair_value = nn.Linear(3 * cfg.distance_embed_dim, d) if cfg.relative_values else None
        self.self_attn = _Attention(d, cfg.heads)
        self.cross_attn = _Attention(d, cfg.heads)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.SiLU(), nn.Linear(cfg.mlp_ratio * d, d))

    def forward(
        self,
        h: torch.Tensor,
        temb: torch.Tensor,
        pair: torch.Tensor,
        pair_directed: torch.Tensor | None,
        allowed: torch.Tensor,
        map_tokens: torch.Tensor,
    ) -> torch.Tensor:
        bias = self.bias(pair).permute(0, 3, 1, 2)  # (B, heads, A, A)
        values = self.pair_value(pair_directed) if self.pair_value is not None else None
        x = self.norm_self(h) + self.time_self(temb)[:, None]
        h = h + self.self_attn(x, x, bias=bias, allowed=allowed, pair_values=values)
        x = self.norm_cross(h) + self.time_cross(temb)[:, None]
        h = h + self.cross_attn(x, map_tokens)
        x = self.norm_mlp(h) + self.time_mlp(temb)[:, None]
        return h + self.mlp(x)


class SceneTransformer(nn.Module):
    """ε-prediction network (``head="eps"``) or per-vehicle classifier (``head="logit"``) for scenes.

    See the module docstring for the architecture and its symmetries.
    """

    def __init__(self, config: SceneTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else SceneTransformerConfig()
        d = cfg.width
        self.embed = nn.Sequential(
            nn.Linear(cfg.token_dim + cfg.position_embed_dim, d), nn.SiLU(), nn.Linear(d, d)
        )
        self.time = nn.Sequential(nn.Linear(cfg.time_embed_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.pair_distance = nn.Linear(cfg.distance_embed_dim, cfg.distance_embed_dim)
        self.pair_time = nn.Linear(d, cfg.distance_embed_dim)
        c1, c2, c3 = cfg.map_channels
        self.map_encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c3, d, 1),
        )
        self.map_position = nn.Linear(cfg.position_embed_dim, d)
        self.map_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.blocks)])
        self.out_norm = nn.LayerNorm(d)
        out_dim = (cfg.output_dim or cfg.token_dim) if cfg.head == "eps" else 1
        self.decoder = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, out_dim))

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """``(B,)`` times -> ``(B, width)`` embedding."""
        return self.time(_time_embedding(t, self.config.time_embed_dim, self.config.time_max_period))

    def pair_features(self, x_tokens: torch.Tensor, temb: torch.Tensor,
                      noise_std: torch.Tensor | None = None) -> torch.Tensor:
        """Relative-position features ``SiLU(W_d PE(d_ij) + W_t temb)``, ``(B, A, A, distance_embed_dim)``.

        Depends on the token positions only through their pairwise distances (so it is invariant to
        rotations and translations of the positions). ``noise_std`` ``(B,)``: per-coordinate noise of the
        positions; a distance then carries about ``sqrt(2)`` times that (:func:`sinusoidal_embedding`).
        """
        xy = x_tokens[..., :2]
        diff = xy[:, :, None, :] - xy[:, None, :, :]
        # sqrt has an infinite gradient at 0 (the diagonal): a small floor keeps guidance gradients finite.
        dist = torch.sqrt((diff * diff).sum(-1) + 1e-8)
        cfg = self.config
        std = None if noise_std is None else math.sqrt(2) * noise_std[:, None, None]
        emb = sinusoidal_embedding(dist, cfg.distance_embed_dim, cfg.min_wavelength, cfg.max_wavelength, std)
        return F.silu(self.pair_distance(emb) + self.pair_time(temb)[:, None, None, :])

    @staticmethod
    def directed_pair_features(x_tokens: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """``[f_ij, f_ij Δx_ij, f_ij Δy_ij]`` ``(B, A, A, 3 · distance_embed_dim)`` with ``Δ_ij = p_i - p_j``
        (normalised units): the input of the relative values. Invariant to translations of the positions."""
        xy = x_tokens[..., :2]
        diff = xy[:, :, None, :] - xy[:, None, :, :]
        return torch.cat([pair, pair * diff[..., :1], pair * diff[..., 1:]], dim=-1)

    def encode_map(self, map_raster: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` crop -> ``(B, ceil(H/8)·ceil(W/8), width)`` map tokens with 2-D positions."""
        feat = self.map_encoder(map_raster)  # (B, D, h, w)
        h, w = feat.shape[2:]
        ext = self.config.map_extent
        ys = ((torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5) / h * 2 - 1) * ext
        xs = ((torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5) / w * 2 - 1) * ext
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)
        pos = self.map_position(_position_embedding(grid, self.config))
        tokens = feat.flatten(2).transpose(1, 2) + pos[None]
        return self.map_norm(tokens)

    def forward(
        self,
        x_tokens: torch.Tensor,
        t_or_noise: torch.Tensor,
        valid: torch.Tensor,
        map_raster: torch.Tensor,
        position_noise_std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ε (or per-vehicle logits) for a batch of noisy scenes.

        Args:
            x_tokens: ``(B, A, token_dim)`` float, normalised tokens (noisy at ``t``).
            t_or_noise: ``(B,)`` float or int, diffusion time (DDPM step index) per scene.
            valid: ``(B, A)`` bool, True for real vehicles.
            map_raster: ``(B, 1, H, W)`` float, drivable crop of the scene window (1 = drivable);
                ``H, W >= 8``.
            position_noise_std: optional ``(B,)`` std of the noise on the token positions (input units);
                the position and distance encodings then fade the wavelengths it hides
                (:func:`sinusoidal_embedding`). None: no fading.

        Returns:
            ``(B, A, output_dim or token_dim)`` ε prediction, or ``(B, A)`` logits for ``head="logit"``;
            zero at padding.
        """
        cfg = self.config
        if x_tokens.ndim != 3 or x_tokens.shape[-1] != cfg.token_dim:
            raise ValueError(f"x_tokens must have shape (B, A, {cfg.token_dim}), got {tuple(x_tokens.shape)}")
        b, a, _ = x_tokens.shape
        if valid.shape != (b, a) or valid.dtype != torch.bool:
            raise ValueError(
                f"valid must be a bool tensor of shape ({b}, {a}), got {valid.dtype} {tuple(valid.shape)}"
            )
        if t_or_noise.shape != (b,):
            raise ValueError(f"t_or_noise must have shape ({b},), got {tuple(t_or_noise.shape)}")
        if map_raster.ndim != 4 or map_raster.shape[:2] != (b, 1) or min(map_raster.shape[2:]) < 8:
            raise ValueError(
                f"map_raster must have shape ({b}, 1, H>=8, W>=8), got {tuple(map_raster.shape)}"
            )
        temb = self.time_embedding(t_or_noise.to(x_tokens.dtype))
        std = None if position_noise_std is None else position_noise_std.to(x_tokens.dtype)
        pos_std = None if std is None else std[:, None]
        h = self.embed(torch.cat([x_tokens, _position_embedding(x_tokens[..., :2], cfg, pos_std)], dim=-1))
        pair = self.pair_features(x_tokens, temb, std)
        directed = self.directed_pair_features(x_tokens, pair) if cfg.relative_values else None
        # Real queries see real keys; a padding query sees the real keys and itself (never an empty row).
        eye = torch.eye(a, dtype=torch.bool, device=x_tokens.device)[None]
        allowed = valid[:, None, :] | eye
        map_tokens = self.encode_map(map_raster.to(x_tokens.dtype))
        for block in self.blocks:
            h = block(h, temb, pair, directed, allowed, map_tokens)
        out = self.decoder(self.out_norm(h))
        out = out.masked_fill(~valid[..., None], 0.0)
        return out if cfg.head == "eps" else out[..., 0]
