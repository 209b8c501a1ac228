"""Fixtures of the pipeline tests: the torchrun helpers of ``tests/distributed``, shared by the traffic and
motion tests that compare a run under ``torchrun`` with the one-process run (issue 14)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def torchrun_tools() -> ModuleType:
    """``tests/distributed/torchrun_tools.py`` (the launcher's argv, run readers, the check of a sharded
    evaluation), imported by path: ``tests/distributed`` is not a package."""
    spec = importlib.util.spec_from_file_location(
        "_genneg_torchrun_tools", Path(__file__).parents[1] / "distributed" / "torchrun_tools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
