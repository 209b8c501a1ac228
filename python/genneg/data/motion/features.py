"""Motion clips as network features: joint positions standardised per coordinate.

A clip of ``F`` frames and ``J`` joints, positions ``(F, J, 3)`` metres, becomes ``F`` frame tokens of
``D = 3 J`` features ``(p - mean) / std`` (``mean``, ``std`` ``(D,)`` over all frames of the training
set). The standardisation is per coordinate, so the heights of the feet (small spread) get the same
resolution in the network's units as the root's travel; the oracle and the metrics decode back to metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MotionNormalisation"]


@dataclass(frozen=True)
class MotionNormalisation:
    """Per-coordinate standardisation of joint positions.

    Attributes:
        mean_m: ``D = 3 J`` means, metres (joint-major: ``x0, y0, z0, x1, ...``).
        std_m: ``D`` standard deviations, metres (``> 0``).
    """

    mean_m: tuple[float, ...]
    std_m: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean_m) != len(self.std_m) or len(self.mean_m) % 3 or not self.mean_m:
            raise ValueError(f"mean_m and std_m must have the same length 3 J, got {len(self.mean_m)}, "
                             f"{len(self.std_m)}")
        if not all(s > 0 for s in self.std_m):
            raise ValueError("std_m must be > 0 everywhere")

    @property
    def num_joints(self) -> int:
        return len(self.mean_m) // 3

    @property
    def dim(self) -> int:
        return len(self.mean_m)

    @classmethod
    def fit(cls, positions_m: np.ndarray | torch.Tensor, min_std_m: float = 1e-3) -> MotionNormalisation:
        """Fit to clips ``(N, F, J, 3)`` metres; each std is at least ``min_std_m``."""
        p = np.asarray(positions_m, dtype=np.float64)
        if p.ndim != 4 or p.shape[-1] != 3:
            raise ValueError(f"positions_m must be (N, F, J, 3), got {p.shape}")
        flat = p.reshape(-1, p.shape[2] * 3)
        return cls(tuple(flat.mean(0).tolist()), tuple(np.maximum(flat.std(0), min_std_m).tolist()))

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = like.dtype if like.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean_m, dtype=dtype, device=like.device)
        std = torch.tensor(self.std_m, dtype=dtype, device=like.device)
        return mean, std

    def encode(self, positions_m: torch.Tensor) -> torch.Tensor:
        """``(..., F, J, 3)`` metres -> ``(..., F, 3 J)`` standardised features."""
        if positions_m.shape[-2:] != (self.num_joints, 3):
            raise ValueError(f"positions_m must end in ({self.num_joints}, 3), got "
                             f"{tuple(positions_m.shape)}")
        mean, std = self._stats(positions_m)
        return (positions_m.flatten(-2) - mean) / std

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., F, 3 J)`` features -> ``(..., F, J, 3)`` metres."""
        if features.shape[-1] != self.dim:
            raise ValueError(f"features must end in {self.dim}, got {tuple(features.shape)}")
        mean, std = self._stats(features)
        return (features * std + mean).unflatten(-1, (self.num_joints, 3))

    def to_dict(self) -> dict:
        return {"mean_m": list(self.mean_m), "std_m": list(self.std_m)}

    @classmethod
    def from_dict(cls, d: dict) -> MotionNormalisation:
        return cls(tuple(float(v) for v in d["mean_m"]), tuple(float(v) for v in d["std_m"]))
