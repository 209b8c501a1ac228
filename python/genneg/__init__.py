"""Gen-neG: diffusion models guided away from oracle-invalid samples by stacked time-dependent classifiers.

The API in brief (``genneg.pipeline`` holds the details)::

    task = genneg.Task.from_arrays(train_x, oracle=is_valid)      # or a registered name: "checkerboard"
    genneg.train(task, profile="quick", run_dir="runs/mine")       # resumable: resume=True
    model = genneg.load("runs/mine", "distilled")                  # "baseline", "iter2", "guided", ...

Names are imported on first use, so ``import genneg`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Experiment", "Task", "load", "open_run", "register_experiment", "train"]

if TYPE_CHECKING:
    from genneg.pipeline.experiment import open_run, train
    from genneg.pipeline.registry import Experiment, register_experiment
    from genneg.pipeline.task import Task

_LAZY = {
    "Task": ("genneg.pipeline.task", "Task"),
    "train": ("genneg.pipeline.experiment", "train"),
    "open_run": ("genneg.pipeline.experiment", "open_run"),
    "Experiment": ("genneg.pipeline.registry", "Experiment"),
    "register_experiment": ("genneg.pipeline.registry", "register_experiment"),
}


def load(run_dir: Any, model: str = "distilled", *, oracle: Any = None) -> Any:
    """A trained model of a run (``baseline``, ``iter<k>``, ``guided`` = the last iteration,
    ``ablation_<mode>``, ``distilled``), rebuilt from its checkpoints in eval mode: a denoiser (guided for
    ``iter<k>``) ``model(x, sigma_or_t, **cond)``. See :func:`genneg.pipeline.experiment.load_model`, which
    also returns the task and config."""
    from genneg.pipeline.experiment import load_model

    return load_model(run_dir, model, oracle=oracle)[2]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genneg' has no attribute {name!r}")
