"""The scene networks of the traffic task (METHOD.md 8 "Traffic"): the DDPM ε-model of scenes, the
per-vehicle classifier network, and the drivable-map reads both take at each box.

Both wrap :class:`~genneg.models.scene_transformer.SceneTransformer` and follow the package's conditioning
convention: ``model(x, t_or_c_noise, **cond)`` reading ``valid (B, A)`` and ``map_raster (B, 1, C, C)`` and
ignoring the oracle-only entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from genneg.data.traffic import TokenNormalisation
from genneg.diffusion.ddpm import DDPMSchedule
from genneg.models.scene_transformer import SceneTransformer, SceneTransformerConfig

__all__ = ["MAP_BLUR_CELLS", "MAP_SAMPLES", "SceneEpsModel", "SceneLogitNet", "blurred_crops",
           "box_map_samples"]


class SceneEpsModel(nn.Module):
    """The DDPM ε-model of scenes: ``eps(x_t (B, A, 7), t (B,) int64, **cond) -> (B, A, 7)``.

    Real vehicle slots get the transformer's prediction (time input: the step index as a float). Padding
    slots hold the known token 0, so their ε is known exactly, ``ε = x_t / sqrt(1 - ᾱ_t)``, and is returned
    as such: the DDPM loss has no error there (it is the loss masked by ``valid``), and the ancestral
    sampler's ``x̂0`` is 0 there at every step.

    With ``map_samples`` (the token normalisation) each token is extended by :func:`box_map_samples` read at
    ``sqrt(ᾱ_t) x_t``, the posterior mean of the token for unit-variance data (the point the classifiers
    read too): at low noise the network sees whether each corner of its box is on the road, at the crop's
    resolution (the map tokens of the cross-attention are 8 cells wide).

    Args:
        config: the transformer (``head="eps"``; ``token_dim = 7 + MAP_SAMPLES`` and ``output_dim = 7``
            with map samples).
        schedule: the DDPM schedule (for ``ᾱ_t``).
        map_samples: the token normalisation, to add the map samples; None: plain tokens.
    """

    parameterisation = "eps"
    """An ε-network: samplers, guidance and metrics see it through ``genneg.diffusion.EpsDenoiser``."""

    def __init__(self, config: SceneTransformerConfig, schedule: DDPMSchedule,
                 map_samples: TokenNormalisation | None = None) -> None:
        super().__init__()
        if config.head != "eps":
            raise ValueError(f"SceneEpsModel needs head='eps', got {config.head!r}")
        width = 7 + (MAP_SAMPLES if map_samples is not None else 0)
        if config.token_dim != width or (config.output_dim or config.token_dim) != 7:
            raise ValueError(f"SceneEpsModel needs token_dim={width} and 7 outputs, got token_dim="
                             f"{config.token_dim}, output_dim={config.output_dim}")
        self.net = SceneTransformer(config)
        self.map_samples = map_samples
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.to(torch.float32), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, valid: torch.Tensor, map_raster: torch.Tensor,
                **context: torch.Tensor) -> torch.Tensor:
        """``x_t`` ``(B, A, 7)``, ``t`` ``(B,)`` int64, ``valid`` ``(B, A)`` bool, ``map_raster``
        ``(B, 1, C, C)`` -> ``(B, A, 7)`` ε. Other conditioning entries (``centre_m``, ``map_index``: the
        oracle's) are not network inputs and are ignored."""
        alpha_bar = self.alphas_cumprod.to(x_t.device)[t].to(x_t.dtype)
        x_in = x_t
        if self.map_samples is not None:
            x_mean = x_t * alpha_bar.sqrt()[:, None, None]
            reads = box_map_samples(x_mean, map_raster, self.map_samples, extent=self.net.config.map_extent)
            x_in = torch.cat([x_t, reads], dim=-1)
        out = self.net(x_in, t.to(x_t.dtype), valid, map_raster)
        padding_eps = x_t / torch.sqrt(1 - alpha_bar)[:, None, None]
        return torch.where(valid[..., None], out, padding_eps)

    def num_parameters(self) -> int:
        """Trainable parameters."""
        return self.net.num_parameters()


class SceneLogitNet(nn.Module):
    """The per-vehicle classifier network ``F(x_in (B, A, 7), c_noise (B,), **cond) -> (B, A)`` logits.

    The same transformer as the ε-model with one logit per vehicle (zero at padding); wrap it in a
    :class:`~genneg.guidance.TimeClassifier` with ``sigma_data = 1``, which hands it
    ``x_in = x_VE / sqrt(σ² + 1)`` (the DDPM ``x_t``) and ``c_noise = ln σ / 4``. Its time input is
    ``clamp(c_noise, max=ln(sigma_max) / 4) · time_scale``.

    With ``shrinkage`` the transformer reads ``x_in / sqrt(σ² + 1) = x_VE / (σ² + 1)``, the posterior mean
    of ``x0`` for unit-variance Gaussian data. Why: the guided one-step estimate moves by
    ``σ² ∇_{x_VE} log c``; for the Bayes-optimal classifier that shift is bounded by the data's spread
    (it is a difference of conditional means), but a network whose input gradient is O(1) at every noise
    level (nothing in Eq. 9 penalises input sensitivity where labels are unpredictable) moves it by
    ``O(σ)`` when it reads ``x_VE / sqrt(σ² + 1)``, and by ``O(1)`` when it reads ``x_VE / (σ² + 1)``. A
    time-independent classifier (``shrinkage=False``) reads its input as given.

    With ``map_samples`` (the token normalisation) each token is extended by :func:`box_map_samples`: the
    drivable raster at the box's centre and corners, so that the classifier sees the road at the
    resolution of the crop (the transformer's map tokens are 8 cells wide).

    With ``noise_aware`` (time-dependent classifiers only) the transformer is told how far the clean
    positions may lie from those it reads, the posterior std ``σ / sqrt(σ² + 1)`` of ``x0`` for unit-variance
    data, and fades the encodings finer than it (each feature becomes its expectation over that
    uncertainty); the map samples read the crop blurred by it. Why: guidance
    differentiates the classifier, and a sinusoidal feature of wavelength ``λ`` has an input gradient
    ``∝ 1/λ`` (a sharp raster read bilinearly, ``∝ 1/cell``); features the noise hides carry no information
    about the label, but a trained network keeps small weights on them, which is enough to make
    ``∇ log c`` large and erratic at high noise (measured without fading: the guided ε moved by ~1 per
    coordinate at ``σ ≈ 1-3``, where the Bayes-optimal classifier is nearly flat), costing r-ELBO for nothing.
    """

    def __init__(self, config: SceneTransformerConfig, time_scale: float, sigma_max: float,
                 shrinkage: bool = False, map_samples: TokenNormalisation | None = None,
                 noise_aware: bool = False) -> None:
        super().__init__()
        if config.head != "logit":
            raise ValueError(f"SceneLogitNet needs head='logit', got {config.head!r}")
        expected = 7 + (MAP_SAMPLES if map_samples is not None else 0)
        if config.token_dim != expected:
            raise ValueError(f"SceneLogitNet needs token_dim={expected}, got {config.token_dim}")
        self.net = SceneTransformer(config)
        self.time_scale = float(time_scale)
        self.c_noise_max = math.log(sigma_max) / 4
        self.shrinkage = bool(shrinkage)
        self.map_samples = map_samples
        self.noise_aware = bool(noise_aware)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, *, valid: torch.Tensor,
                map_raster: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, A)``; other conditioning entries are ignored (as in :class:`SceneEpsModel`)."""
        c_noise = c_noise.to(x_in.dtype)
        sigma = torch.exp(4 * c_noise)
        # how far the clean token may lie from what the network reads: the posterior std of x0 for
        # unit-variance data, σ / sqrt(σ² + 1), whether it reads the posterior mean (shrinkage) or not
        noise_std = sigma * torch.rsqrt(1 + sigma**2)
        if self.shrinkage:
            x_in = x_in * torch.rsqrt(1 + sigma**2)[:, None, None]  # / sqrt(σ² + 1)
        if self.map_samples is not None:
            map_std = noise_std if self.noise_aware else None
            reads = box_map_samples(x_in, map_raster, self.map_samples, noise_std=map_std,
                                    extent=self.net.config.map_extent)
            x_in = torch.cat([x_in, reads], dim=-1)
        return self.net(x_in, c_noise.clamp(max=self.c_noise_max) * self.time_scale, valid, map_raster,
                        position_noise_std=noise_std if self.noise_aware else None)


MAP_BLUR_CELLS = (0.0, 1.5, 4.0)
"""Gaussian blurs (std, crop cells) of the drivable crop read by :func:`box_map_samples`: the sharp raster,
then two smoothed copies whose values still change a few metres away from a road edge, so that a box
off the road reads (and, differentiated, points) towards it."""
MAP_SAMPLES = 5 * len(MAP_BLUR_CELLS)


def blurred_crops(map_raster: torch.Tensor, blur_cells: Sequence[float] = MAP_BLUR_CELLS,
                  noise_cells: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 1, C, C)`` crops -> ``(B, len(blur_cells), C, C)``: each blurred by a Gaussian of that std
    (cells; 0 = unchanged), outside the crop counted as not drivable (zero padding).

    ``noise_cells`` ``(B,)``: std (cells) of Gaussian noise on the reading point; each level's std becomes
    ``sqrt(blur² + noise²)``, so the crop read at a noisy point gives the expected reading over the noise
    (the same idea as the faded encodings of :func:`genneg.models.scene_transformer.sinusoidal_embedding`).
    """
    b, _, c, _ = map_raster.shape
    levels = torch.as_tensor(blur_cells, dtype=map_raster.dtype, device=map_raster.device)
    if noise_cells is None:
        std = levels[None].expand(b, -1)
    else:
        std = torch.sqrt(levels[None] ** 2 + noise_cells.to(map_raster.dtype)[:, None] ** 2)
    std = std.detach().clamp(max=c / 4)  # (B, L); wider blurs are about flat over the crop anyway
    x = map_raster.expand(-1, len(blur_cells), -1, -1).reshape(b * len(blur_cells), 1, c, c)
    std = std.reshape(-1)
    out = x.clone()
    # Fine blurs run at full resolution (radius <= 3 · _COARSE_BLUR_CELLS). Wider ones run on the crop
    # average-pooled by 4 (pooling is itself a blur of variance (4² - 1) / 12 cells², removed from the
    # requested one) and are upsampled back: a per-sample kernel of radius 3 s at full resolution cost
    # more than the whole classifier at s ≈ 12.
    fine = (std > 0) & (std <= _COARSE_BLUR_CELLS)
    if bool(fine.any()):
        out[fine] = _gaussian_blur(x[fine], std[fine])
    coarse = std > _COARSE_BLUR_CELLS
    if bool(coarse.any()):
        small = nn.functional.adaptive_avg_pool2d(x[coarse], (max(1, c // 4), max(1, c // 4)))
        residual = torch.sqrt((std[coarse] ** 2 - (4**2 - 1) / 12).clamp_min(0)) / 4
        small = _gaussian_blur(small, residual)
        out[coarse] = nn.functional.interpolate(small, size=(c, c), mode="bilinear", align_corners=False)
    return out.reshape(b, len(blur_cells), c, c)


_COARSE_BLUR_CELLS = 4.0


def _gaussian_blur(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` images, each blurred by a Gaussian of its own ``std`` ``(N,)`` (cells; > 0), zero
    padding; one grouped separable convolution."""
    n, _, h, w = x.shape
    radius = max(1, math.ceil(3 * float(std.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / std[:, None].clamp_min(1e-3)) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).reshape(n, 1, 1, 2 * radius + 1)
    y = nn.functional.conv2d(x.reshape(1, n, h, w), kernel, padding=(0, radius), groups=n)
    y = nn.functional.conv2d(y, kernel.transpose(-1, -2), padding=(radius, 0), groups=n)
    return y.reshape(n, 1, h, w)


def box_map_samples(tokens: torch.Tensor, map_raster: torch.Tensor, norm: TokenNormalisation,
                    blur_cells: Sequence[float] = MAP_BLUR_CELLS,
                    noise_std: torch.Tensor | None = None, extent: float = 1.0) -> torch.Tensor:
    """The drivable crop, sharp and blurred (:func:`blurred_crops`), read at each box's centre and four
    corners (bilinear, differentiable in the token).

    Args:
        tokens: ``(B, A, 7)`` normalised tokens (scene frame; the window is ``[-1, 1]²``).
        map_raster: ``(B, 1, C, C)`` float crop, 1 = drivable (row = y, as :func:`crop_maps`).
        norm: the token normalisation (box sizes in metres -> normalised units).
        blur_cells: blur stds, cells.
        noise_std: optional ``(B,)`` std of the noise on the token positions (normalised units); the
            crop is then blurred further by it (:func:`blurred_crops`).
        extent: the crop spans ``[-extent, extent]²`` in normalised units (1: exactly the window).

    Returns:
        ``(B, A, 5 · len(blur_cells))`` in ``[-1, 1]``: ``2 · drivable - 1``, five points (centre, four
        corners) per blur level in order; points outside the crop read -1 (not drivable).
    """
    cx, cy = tokens[..., 0], tokens[..., 1]
    heading = torch.sqrt(tokens[..., 2] ** 2 + tokens[..., 3] ** 2 + 1e-6)  # finite gradient at (0, 0)
    cos_h, sin_h = tokens[..., 2] / heading, tokens[..., 3] / heading
    scale = 2 * norm.position_scale_m
    half_l = ((tokens[..., 4] * norm.length_std_m + norm.length_mean_m) / scale).clamp_min(0)
    half_w = ((tokens[..., 5] * norm.width_std_m + norm.width_mean_m) / scale).clamp_min(0)
    points = [torch.stack([cx, cy], dim=-1)]
    for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        points.append(torch.stack([cx + a * half_l * cos_h - b * half_w * sin_h,
                                   cy + a * half_l * sin_h + b * half_w * cos_h], dim=-1))
    grid = torch.stack(points, dim=2) / extent  # (B, A, 5, 2) as (x, y), the crop is [-1, 1]²
    cells = map_raster.shape[-1]
    noise_cells = None if noise_std is None else noise_std * (cells / (2 * extent))
    fields = blurred_crops(map_raster.to(tokens.dtype), blur_cells, noise_cells)
    drivable = nn.functional.grid_sample(fields, grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False)  # (B, S, A, 5)
    return (2 * drivable - 1).permute(0, 2, 1, 3).flatten(2)

