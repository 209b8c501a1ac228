"""Run directories: config check, append-only metrics, stage markers and resume bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from genneg.io import RunDir, RunStateError, stage_generator, stage_seed


@dataclass(frozen=True)
class Cfg:
    steps: int = 3
    name: str = "a"


def test_new_run_then_resume(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config(Cfg())
    run.log("baseline", {"loss": 1.0})
    run.mark_done("baseline", {"iterations": 3})
    run.log("iter1/data", {"rate": 0.2})  # stage killed before its marker
    assert run.is_done("baseline") and not run.is_done("iter1/data")

    with pytest.raises(RunStateError, match="--resume"):
        RunDir(tmp_path / "r")
    resumed = RunDir(tmp_path / "r", resume=True)
    assert resumed.read_config(Cfg) == Cfg()
    assert resumed.records() == [{"stage": "baseline", "loss": 1.0}]
    assert resumed.stage_info("baseline")["iterations"] == 3
    assert resumed.completed_stages() == ["baseline"]
    with pytest.raises(RunStateError, match="config differs"):
        resumed.write_config(Cfg(steps=4))
    resumed.write_config(Cfg())


def test_resume_requires_existing_run_and_overwrite_clears(tmp_path):
    with pytest.raises(RunStateError, match="holds no run"):
        RunDir(tmp_path / "none", resume=True)
    run = RunDir(tmp_path / "r")
    run.write_config(Cfg())
    run.log("a", {"x": 1})
    run.mark_done("a")
    fresh = RunDir(tmp_path / "r", overwrite=True)
    assert fresh.records() == [] and not fresh.is_done("a")


def test_torn_metric_line_is_skipped(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config(Cfg())
    run.log("a", {"x": 1})
    run.mark_done("a")
    with open(run.metrics_path, "a") as fh:
        fh.write('{"stage": "b", "x"')
    assert RunDir(tmp_path / "r", resume=True).records() == [{"stage": "a", "x": 1}]


def test_bad_stage_names_raise(tmp_path):
    run = RunDir(tmp_path / "r")
    for bad in ["", "../x", "a b", "/abs"]:
        with pytest.raises(ValueError, match="stage name"):
            run.mark_done(bad)


def test_stage_generators_are_reproducible_and_distinct():
    a = torch.rand(4, generator=stage_generator(1, "baseline"))
    assert torch.equal(a, torch.rand(4, generator=stage_generator(1, "baseline")))
    assert not torch.equal(a, torch.rand(4, generator=stage_generator(1, "iter1/data")))
    assert not torch.equal(a, torch.rand(4, generator=stage_generator(2, "baseline")))
    assert stage_seed(1, "x") == stage_seed(1, "x") and 0 <= stage_seed(1, "x") < 2**63
