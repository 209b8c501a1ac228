"""Scenes as tensors with their conditioning, and the token oracle of the traffic task.

A sample is one scene, ``(A, 7)`` normalised vehicle tokens (:mod:`genneg.data.traffic.tokens`) in the
frame of a scene window; its conditioning travels with it as a dict of tensors (leading dimension ``n``)::

    cond = {"valid": (n, A) bool, "map_raster": (n, 1, C, C) float32,
            "centre_m": (n, 2) float64, "map_index": (n,) int64}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from genneg.oracles.traffic import TrafficOracle, TrafficVerdicts

from .dataset import TrafficSceneDataset
from .roads import RoadMap
from .tokens import TokenNormalisation, tokens_to_scenes

__all__ = ["Cond", "SceneSet", "TrafficTokenOracle"]

Cond = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SceneSet:
    """Scenes as tensors: tokens and their conditioning.

    Attributes:
        tokens: ``(S, A, 7)`` float32 normalised tokens (zero at padding).
        cond: ``valid (S, A)`` bool, ``map_raster (S, 1, C, C)`` float32, ``centre_m (S, 2)`` float64,
            ``map_index (S,)`` int64.
    """

    tokens: torch.Tensor
    cond: Cond

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_dataset(cls, dataset: TrafficSceneDataset, device: torch.device | str = "cpu") -> SceneSet:
        """Read a written data set (memory-mapped) into tensors on ``device``."""
        a = dataset.arrays
        cond = {
            "valid": torch.from_numpy(np.array(a["valid"], dtype=bool)),
            "map_raster": torch.from_numpy(np.array(a["map_crops"], dtype=np.float32))[:, None],
            "centre_m": torch.from_numpy(np.array(a["centre_m"], dtype=np.float64)),
            "map_index": torch.from_numpy(np.array(a["map_index"], dtype=np.int64)),
        }
        tokens = torch.from_numpy(np.array(a["tokens"], dtype=np.float32))
        return cls(tokens.to(device), {k: v.to(device) for k, v in cond.items()})

    def rows(self, index: torch.Tensor) -> SceneSet:
        """The scenes ``index`` (``(n,)`` int64)."""
        return SceneSet(self.tokens[index], {k: v[index] for k, v in self.cond.items()})

    def contexts(self, index: torch.Tensor) -> Cond:
        """The conditioning of scenes ``index``."""
        return {k: v[index] for k, v in self.cond.items()}


class TrafficTokenOracle:
    """Per-vehicle verdicts of scene tokens on their maps: ``oracle(tokens, **cond) -> (n, A)`` bool.

    Tokens are decoded to world-frame boxes with :func:`genneg.data.traffic.tokens_to_scenes` around each
    scene's ``centre_m`` and judged by a :class:`~genneg.oracles.TrafficOracle` (the C++ extension on the
    CPU) of the scene's map. Absent slots are valid. A vehicle with a non-finite token is counted as both
    colliding and offroad (the model produced no box).

    Args:
        road_maps: the maps ``map_index`` refers to.
        norm: the token normalisation.
        min_size_m: smallest decoded length and width, metres.
        threads: the C++ oracle's worker threads, 0 = all cores.
    """

    def __init__(self, road_maps: Sequence[RoadMap], norm: TokenNormalisation,
                 min_size_m: float = 0.1, threads: int = 0) -> None:
        self.road_maps = list(road_maps)
        self.norm = norm
        self.min_size_m = float(min_size_m)
        self._oracles = [TrafficOracle(m.drivable_map, threads=threads) for m in self.road_maps]

    def details(self, tokens: torch.Tensor, *, valid: torch.Tensor, centre_m: torch.Tensor,
                map_index: torch.Tensor, **context: torch.Tensor) -> TrafficVerdicts:
        """Collision and offroad masks ``(n, A)`` bool tensors on ``tokens.device`` (True = infraction).

        Args:
            tokens: ``(n, A, 7)`` float; valid: ``(n, A)`` bool; centre_m: ``(n, 2)`` metres;
            map_index: ``(n,)`` int64 into ``road_maps``. Other entries are ignored.
        """
        if tokens.ndim != 3 or tokens.shape[:2] != valid.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and valid {tuple(valid.shape)} disagree")
        tok = tokens.detach().cpu().to(torch.float64).numpy()
        present = valid.detach().cpu().numpy().astype(bool)
        finite = np.isfinite(tok).all(axis=-1)
        broken = present & ~finite
        tok = np.where(finite[..., None], tok, 0.0)
        boxes, _ = tokens_to_scenes(tok, centre_m.detach().cpu().numpy(), self.norm, self.min_size_m)
        judged = present & finite
        collision = np.zeros(present.shape, dtype=bool)
        offroad = np.zeros(present.shape, dtype=bool)
        maps = map_index.detach().cpu().numpy()
        for m in np.unique(maps):
            if not 0 <= m < len(self._oracles):
                raise ValueError(f"map_index {int(m)} out of range for {len(self._oracles)} maps")
            rows = np.flatnonzero(maps == m)
            v = self._oracles[int(m)].details(boxes[rows], judged[rows])
            collision[rows], offroad[rows] = v.collision, v.offroad
        collision |= broken
        offroad |= broken
        device = tokens.device
        return TrafficVerdicts(torch.from_numpy(collision).to(device), torch.from_numpy(offroad).to(device))

    def __call__(self, tokens: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """``(n, A)`` bool, True = the vehicle is present and fine, or absent."""
        v = self.details(tokens, **cond)
        return ~(v.collision | v.offroad)

