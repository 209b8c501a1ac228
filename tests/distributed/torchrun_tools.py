"""What the torchrun tests share (``tests/distributed``, and the traffic and motion tests in
``tests/pipeline``): the launcher's command line, the environment, readers of a run directory, and the
comparison of a task's evaluate hook in one process and under torchrun with two."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from genneg.io.checkpoint import load_tensors

HERE = Path(__file__).parent
TIMEOUT_S = 420

# wall-clock fields: they differ between any two runs
TIMES = ("seconds", "sample_seconds", "sample_ms_per_1k", "sample_seconds_per_batch", "finished_unix_s")


def env() -> dict[str, str]:
    """The test process's environment, with a short collective timeout and this folder importable."""
    out = dict(os.environ)
    out["GENNEG_DIST_TIMEOUT_S"] = "120"  # a lost rank fails the job in minutes, not half an hour
    out["PYTHONPATH"] = os.pathsep.join([str(HERE), out.get("PYTHONPATH", "")])
    return out


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc-per-node=nproc args...`` as an argv."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def run(argv: list[str], timeout_s: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; fail the test with the tail of its output unless it exits with 0."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=timeout_s)
    assert done.returncode == 0, f"{argv}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    return done


def records(run_dir: Path) -> list[dict]:
    """The run's ``metrics.jsonl`` records, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def markers(run_dir: Path) -> dict[str, dict]:
    """``{stage: its done-marker}`` of every finished stage."""
    return {json.loads(p.read_text())["stage"]: json.loads(p.read_text())
            for p in (run_dir / "stages").rglob("*.done")}


def assert_same_metrics(a: dict[str, Any], b: dict[str, Any], rtol: float, where: str = "",
                        atol: float = 1e-12) -> None:
    """The same keys; integers, flags, strings and None equal; floats within ``rtol`` (or ``atol``; NaN
    equals NaN); wall-clock fields (:data:`TIMES`) skipped."""
    assert a.keys() == b.keys(), (where, sorted(a), sorted(b))
    for key, va in a.items():
        vb = b[key]
        if key in TIMES:
            continue
        if isinstance(va, float) and isinstance(vb, float):
            if math.isnan(va):
                assert math.isnan(vb), (where, key, va, vb)
            else:
                assert vb == pytest.approx(va, rel=rtol, abs=atol), (where, key, va, vb)
        else:
            assert va == vb, (where, key, va, vb)


def at_half_the_batch(one: dict[str, Any], two: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Records of a one-process run at sampling batch ``B`` and a two-process run at ``2B`` (the global
    batch: each rank's sampler calls take ``B``, so both runs make the same draws), made comparable: a
    ``batch_size`` field (the config's evaluation batch) must be ``B`` and ``2B``, and is then dropped."""
    one, two = dict(one), dict(two)
    if "batch_size" in one or "batch_size" in two:
        assert 2 * one.pop("batch_size") == two.pop("batch_size"), (one.get("stage"), two.get("stage"))
    return one, two


EVAL_RTOL = 1e-12
"""Floats of the evaluate hook, one process against two: both do the same arithmetic (the same batches of
rows with the same seeds, one intra-op thread per process) and combine the batches' results in row order,
so they agree bit for bit (measured); 1e-12 only leaves room for the last bits of a float64 sum."""


def _eval_worker() -> Any:
    spec = importlib.util.spec_from_file_location("_genneg_eval_worker", HERE / "eval_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_sharded_evaluation(run_dir: Path, models: list[str], batch_size: int, out: Path
                             ) -> dict[str, dict[str, Any]]:
    """Evaluate ``models`` of the finished run in this process and under torchrun with two processes
    (evaluation batches of ``batch_size`` rows, :mod:`eval_worker`); assert that every rank of the two got
    the same metrics, that the tensors (samples, verdicts, r-ELBO in small chunks) are equal and the
    metrics equal within :data:`EVAL_RTOL`. Returns the one-process metrics per model."""
    one, one_tensors = _eval_worker().evaluate(run_dir, models, batch_size)
    run(torchrun(str(HERE / "eval_worker.py"), str(run_dir), str(out), str(batch_size), *models))
    two = json.loads(out.with_suffix(".json").read_text())
    two_tensors = load_tensors(out.with_suffix(".safetensors"))
    assert (one["world_size"], two["world_size"], two["ranks_agree"]) == (1, 2, True)
    for name in models:
        assert_same_metrics(one["metrics"][name], two["metrics"][name], EVAL_RTOL, name)
    assert one_tensors.keys() == two_tensors.keys()
    for key, value in one_tensors.items():
        assert torch.equal(value, two_tensors[key]), key
    return one["metrics"]
