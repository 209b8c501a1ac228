"""The paper's 2-D checkerboard: points uniform on the dark squares, and its oracle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CheckerboardConfig", "CheckerboardOracle", "sample_checkerboard"]


@dataclass(frozen=True)
class CheckerboardConfig:
    """A ``grid × grid`` board on ``[low, high]²``; square ``(i, j)`` (column i along x, row j along y,
    counted from ``low``) is dark when ``(i + j) % 2 == 0``."""

    grid: int = 4
    low: float = -2.0
    high: float = 2.0

    def __post_init__(self) -> None:
        if self.grid < 1 or not self.low < self.high:
            raise ValueError(f"need grid >= 1 and low < high, got {self}")

    @property
    def square_size(self) -> float:
        return (self.high - self.low) / self.grid


def sample_checkerboard(
    n: int, config: CheckerboardConfig = CheckerboardConfig(), *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(n, 2)`` float32 points uniform on the dark squares."""
    g = config.grid
    dark = [(i, j) for i in range(g) for j in range(g) if (i + j) % 2 == 0]
    idx = torch.randint(len(dark), (n,), generator=generator)
    corners = torch.tensor(dark, dtype=torch.float32)[idx]
    u = torch.rand(n, 2, generator=generator)
    return config.low + (corners + u) * config.square_size


class CheckerboardOracle:
    """Valid iff the point is inside the board and on a dark square.

    Call with ``(N, 2)`` float tensor or array; returns bool ``(N,)`` of the same kind (tensor on the
    input's device, or NumPy array). Points on a square's boundary count as valid (the training density
    has no mass there, so the choice does not matter).
    """

    def __init__(self, config: CheckerboardConfig = CheckerboardConfig()) -> None:
        self.config = config

    def __call__(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return self._verdicts(x)
        return self._verdicts(torch.as_tensor(np.asarray(x))).numpy()

    def _verdicts(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"checkerboard oracle expects (N, 2) points, got shape {tuple(x.shape)}")
        c = self.config
        inside = ((x >= c.low) & (x <= c.high)).all(dim=1)
        cell = torch.floor((x - c.low) / c.square_size).clamp(0, c.grid - 1).to(torch.int64)
        dark = (cell.sum(dim=1) % 2) == 0
        return inside & dark & torch.isfinite(x).all(dim=1)
