"""The paper's 2-D checkerboard task (METHOD.md 8 "Checkerboard").

Data drawn from generators seeded by ``config.seed`` (train and held-out sets are the same for every run
with that seed), the checkerboard oracle, and the machinery of :class:`~genneg.pipeline.arrays.VectorTask`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from genneg.data.checkerboard import CheckerboardConfig, CheckerboardOracle, sample_checkerboard
from genneg.io.rundir import stage_generator
from genneg.pipeline.arrays import VectorTask
from genneg.pipeline.profiles import PROFILES, ExperimentConfig, get_profile
from genneg.pipeline.registry import Experiment

__all__ = ["EXPERIMENT", "CheckerboardTask"]


class CheckerboardTask(VectorTask):
    """The checkerboard: uniform points on the dark cells of a ``grid × grid`` board (see the module)."""

    name: ClassVar[str] = "checkerboard"
    title: ClassVar[str] = "checkerboard"

    def make_config(self, profile: str) -> ExperimentConfig:
        return get_profile(profile, "checkerboard")

    def setup(self, config: ExperimentConfig, data_dir: Path) -> None:
        self._setup_common(config)
        board = CheckerboardConfig(grid=config.data.grid, low=config.data.low, high=config.data.high)
        self.board = board
        self._oracle = CheckerboardOracle(board)
        train = stage_generator(config.seed, "data/train")
        heldout = stage_generator(config.seed, "data/heldout")
        self.train_x = sample_checkerboard(config.data.num_train, board, generator=train).to(self.device)
        heldout_x = sample_checkerboard(config.data.num_heldout, board, generator=heldout)
        self.heldout_x = heldout_x.to(self.device)
        margin = 0.25 * (board.high - board.low)
        self.plot_bounds = (board.low - margin, board.high + margin, board.low - margin, board.high + margin)

    def oracle(self, x: torch.Tensor, **cond: torch.Tensor) -> Any:
        return self._oracle(x)


EXPERIMENT = Experiment(
    name="checkerboard", config_class=ExperimentConfig, profiles=PROFILES, task_factory=CheckerboardTask,
    description="the paper's 2-D checkerboard (EDM, residual MLPs)")
