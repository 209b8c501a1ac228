"""Motion metrics: foot skating, floating, and FID / KID in a small motion encoder's feature space.

All positions are ``(n, F, J, 3)`` metres, y up, floor ``y = 0``, at ``fps`` frames per second.

**Foot skating** (the definition of GMD, Karunratanakul et al., "Guided Motion Diffusion", ICCV 2023, used
by later motion-diffusion papers on HumanML3D at 20 fps): a foot joint skates between two consecutive
frames when it is below ``contact_height_m`` (5 cm) in both and moves horizontally faster than
``skate_speed_m_s`` (0.5 m/s, i.e. GMD's 2.5 cm per frame at 20 fps; a speed so that the threshold does
not depend on the frame rate). A clip's skating ratio is the fraction of its ``F - 1`` frame pairs in
which any foot joint skates.

**Floating**: a frame floats when its lowest joint is more than ``float_height_m`` (10 cm) above the floor
within a run of such airborne frames lasting longer than ``max_flight_s`` (0.7 s: longer than a human
jump's flight, 0.6 s for a 45 cm jump; ``t = 2 sqrt(2h / g)``). A clip's floating ratio is the fraction of
its frames that float. A model that "fixes" ground penetration by hovering shows up here (and in the mean
lowest-joint height, :func:`lowest_joint_height`).

**FID / KID** (Heusel et al. 2017; Bińkowski et al. 2018) between generated and held-out clips in the
feature space of :class:`MotionEncoder`: a small 1-D temporal CNN over the standardised frame features
(three convolutions of kernel 5, stride 2, GELU; global average over time; a 64-d feature) trained
with cross-entropy to recognise the **motion family** of training clips (procedural family, or source
clip for DeepMimic windows), as the action-recognition features MDM uses for action-to-motion FID. It is
**not** HumanML3D's evaluator (a text-motion contrastive encoder), and its numbers are comparable only
between models evaluated with the same encoder. KID uses the cubic polynomial kernel
``k(a, b) = (a·b / d + 1)³`` and the unbiased MMD² estimator, averaged over random subsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "MotionEncoder",
    "MotionEncoderConfig",
    "MotionQualityConfig",
    "floating_ratio",
    "foot_skating_ratio",
    "frechet_distance",
    "kernel_inception_distance",
    "lowest_joint_height",
    "train_motion_encoder",
]


@dataclass(frozen=True)
class MotionQualityConfig:
    """Thresholds of the skating and floating metrics (module docstring).

    Attributes:
        fps: frame rate of the clips, frames per second.
        contact_height_m: a foot joint below this height is in contact, metres.
        skate_speed_m_s: horizontal speed above which a contacting foot skates, m/s.
        float_height_m: a frame whose lowest joint is higher than this is airborne, metres.
        max_flight_s: airborne runs longer than this float, seconds.
    """

    fps: float = 20.0
    contact_height_m: float = 0.05
    skate_speed_m_s: float = 0.5
    float_height_m: float = 0.10
    max_flight_s: float = 0.7

    def __post_init__(self) -> None:
        if not (self.fps > 0 and self.contact_height_m > 0 and self.skate_speed_m_s > 0
                and self.float_height_m > 0 and self.max_flight_s >= 0):
            raise ValueError(f"MotionQualityConfig values must be positive: {self}")


def _check_positions(positions_m: torch.Tensor) -> torch.Tensor:
    if not isinstance(positions_m, torch.Tensor) or positions_m.ndim != 4 or positions_m.shape[-1] != 3:
        shape = tuple(positions_m.shape) if isinstance(positions_m, torch.Tensor) else type(positions_m)
        raise ValueError(f"positions_m must be a (n, F, J, 3) tensor, got {shape}")
    if positions_m.shape[1] < 2:
        raise ValueError(f"need at least 2 frames, got {positions_m.shape[1]}")
    if not bool(torch.isfinite(positions_m).all()):
        raise ValueError("positions_m holds non-finite values")
    return positions_m


def lowest_joint_height(positions_m: torch.Tensor) -> torch.Tensor:
    """``(n, F)`` height of each frame's lowest joint, metres."""
    return _check_positions(positions_m)[..., 1].amin(dim=-1)


def foot_skating_ratio(positions_m: torch.Tensor, feet: Sequence[int],
                       config: MotionQualityConfig) -> torch.Tensor:
    """``(n,)`` fraction of frame pairs in which a foot joint skates (module docstring).

    Args:
        positions_m: ``(n, F, J, 3)`` metres.
        feet: indices of the foot joints (e.g. ``Skeleton.feet``: ankles and toes).
        config: thresholds and frame rate.
    """
    p = _check_positions(positions_m)
    if not feet or any(not 0 <= j < p.shape[2] for j in feet):
        raise ValueError(f"feet {list(feet)} must be non-empty indices into {p.shape[2]} joints")
    f = p[:, :, list(feet)]  # (n, F, K, 3)
    low = f[..., 1] < config.contact_height_m
    contact = low[:, 1:] & low[:, :-1]
    speed = (f[:, 1:, :, [0, 2]] - f[:, :-1, :, [0, 2]]).norm(dim=-1) * config.fps
    skate = (contact & (speed > config.skate_speed_m_s)).any(dim=-1)  # (n, F-1)
    return skate.to(torch.float64).mean(dim=1)


def floating_ratio(positions_m: torch.Tensor, config: MotionQualityConfig) -> torch.Tensor:
    """``(n,)`` fraction of frames in airborne runs longer than ``max_flight_s`` (module docstring)."""
    airborne = (lowest_joint_height(positions_m) > config.float_height_m).cpu()
    n, frames = airborne.shape
    max_frames = config.max_flight_s * config.fps
    floating = torch.zeros(n, frames, dtype=torch.bool)
    # run lengths: for each frame, the length of the airborne run it belongs to
    for i in range(n):
        row = airborne[i].tolist()
        start = 0
        while start < frames:
            if not row[start]:
                start += 1
                continue
            end = start
            while end < frames and row[end]:
                end += 1
            if end - start > max_frames:
                floating[i, start:end] = True
            start = end
    return floating.to(torch.float64).mean(dim=1).to(positions_m.device)


# --------------------------------------------------------------------------------------------------
# FID and KID


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(n, d)`` and ``b`` ``(m, d)``:
    ``||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2})`` (float64, symmetric square
    roots by eigendecomposition; negative eigenvalues from round-off are clipped at 0)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features must be (n >= 2, d) and (m >= 2, d), got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    a, b = a.detach().to(torch.float64).cpu(), b.detach().to(torch.float64).cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(cov_a)
    sqrt_a = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = sqrt_a @ cov_b @ sqrt_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 10, subset_size: int = 1000,
                              generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID: unbiased MMD² with the kernel ``(x·y / d + 1)³``, mean and std over ``subsets`` random subsets of
    ``min(subset_size, n, m)`` rows of each set (all rows, once, when both sets are that small).

    Returns:
        ``(mean, std)`` (std 0 for one subset).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (n, d) and (m, d), got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = a.detach().to(torch.float64).cpu(), b.detach().to(torch.float64).cpu()
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2 or subsets < 1:
        raise ValueError(f"KID needs subsets >= 1 and at least 2 rows per set, got {subsets}, {size}")
    d = a.shape[1]
    everything = size == a.shape[0] == b.shape[0]
    values = []
    for _ in range(1 if everything else subsets):
        x = a if size == a.shape[0] else a[torch.randperm(a.shape[0], generator=generator)[:size]]
        y = b if size == b.shape[0] else b[torch.randperm(b.shape[0], generator=generator)[:size]]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        m = size
        values.append(float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class MotionEncoderConfig:
    """The evaluation encoder (module docstring).

    Attributes:
        feature_dim: features per frame ``D``; num_classes: motion families.
        channels: channels of the three stride-2 convolutions; the last is the feature width.
        steps, batch_size, lr: Adam on the cross-entropy of family labels.
    """

    feature_dim: int = 66
    num_classes: int = 6
    channels: tuple[int, int, int] = (64, 64, 64)
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.feature_dim < 1 or self.steps < 0 or len(self.channels) != 3:
            raise ValueError(f"MotionEncoderConfig needs num_classes >= 2, three channels: {self}")


class MotionEncoder(nn.Module):
    """``encoder.features(x (B, F, D)) -> (B, channels[-1])``; ``encoder(x) -> (B, num_classes)`` logits."""

    def __init__(self, config: MotionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.feature_dim
        for c in config.channels:
            layers += [nn.Conv1d(width, c, kernel_size=5, stride=2, padding=2), nn.GELU()]
            width = c
        self.conv = nn.Sequential(*layers)
        self.classify = nn.Linear(width, config.num_classes)
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.config.feature_dim:
            raise ValueError(f"x must be (B, F, {self.config.feature_dim}), got {tuple(x.shape)}")
        return self.conv(x.transpose(1, 2)).mean(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Features of many clips, in batches, in evaluation mode, standardised by the training clips'
        feature mean and std (set by :func:`train_motion_encoder`), so that KID's kernel sees unit scale."""
        self.eval()
        f = torch.cat([self.features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        return (f - self.feature_mean) / self.feature_std


def train_motion_encoder(x: torch.Tensor, labels: torch.Tensor, config: MotionEncoderConfig,
                         generator: torch.Generator) -> tuple[MotionEncoder, float]:
    """Train the encoder on clips ``x`` ``(N, F, D)`` (standardised features) with labels ``(N,)`` int64.

    Returns:
        The encoder (its features standardised over ``x``) and its training accuracy on the last 10% of
        steps (a check that it learned).
    """
    if x.ndim != 3 or labels.shape != (x.shape[0],):
        raise ValueError(f"x must be (N, F, D) and labels (N,), got {tuple(x.shape)}, {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= config.num_classes)).any()):
        raise ValueError(f"labels must lie in [0, {config.num_classes})")
    torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    encoder = MotionEncoder(config).to(x.device)
    opt = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    correct = total = 0
    tail = max(1, math.ceil(0.1 * config.steps))
    for step in range(config.steps):
        idx = torch.randint(x.shape[0], (min(config.batch_size, x.shape[0]),), generator=generator)
        logits = encoder(x[idx])
        loss = nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= config.steps - tail:
            correct += int((logits.argmax(-1) == labels[idx]).sum())
            total += len(idx)
    feats = encoder.embed(x)  # raw features: mean 0, std 1 buffers still in place
    encoder.feature_mean.copy_(feats.mean(0))
    encoder.feature_std.copy_(feats.std(0).clamp_min(1e-6))
    return encoder.eval(), correct / max(total, 1)
