"""End to end: the ``tiny`` checkerboard profile, its report and plots, and resuming a killed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genneg.io import RunDir, RunStateError
from genneg.pipeline.experiment import load_model, model_names, run_experiment
from genneg.pipeline.profiles import get_profile
from genneg.pipeline.report import eval_rows

TIMING_FIELDS = {"sample_seconds", "sample_ms_per_1k"}



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[tuple[str, str]]]:
    """The tiny profile run once: its directory, evaluation rows and the stage events it went through."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    events: list[tuple[str, str]] = []
    rows = run_experiment(get_profile("tiny"), run_dir, progress=False,
                          hook=lambda stage, event: events.append((stage, event)))
    return run_dir, rows, events


def _started(events: list[tuple[str, str]]) -> list[str]:
    return [stage for stage, event in events if event == "start"]


# what a finished run rewrites when resumed: the report and its pictures; everything else is a stage's output
REWRITTEN = {"report.md", "samples.png", "classifiers.png", "progress.png"}


def _outputs(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """``{path: (mtime in ns, contents)}`` of every file of the run but the report and its pictures."""
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in REWRITTEN}


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def test_tiny_profile_end_to_end(tiny_run):
    run_dir, rows, events = tiny_run
    config = get_profile("tiny")
    # every stage ran once, and finished: no stage was computed twice
    started = _started(events)
    assert len(started) == len(set(started)) and set(started) == set(RunDir(run_dir, resume=True)
                                                                       .completed_stages())
    assert [s for s, e in events if e == "done"] == started
    assert [r["model"] for r in rows] == model_names(config)
    by_name = {r["model"]: r for r in rows}
    last = by_name[f"iter{config.gen_neg.iterations}"]
    # the method works even at this size: the last iteration's interval lies below the baseline's
    assert last["infraction_high"] < by_name["baseline"]["infraction_low"], rows
    assert by_name["baseline"]["reduction"] == 0.0 and last["n_parallel"] <= by_name["baseline"]["n_parallel"]
    for r in rows:
        assert r["infraction_low"] <= r["infraction"] <= r["infraction_high"]
        assert r["num_samples"] == config.eval.num_samples and r["elbo"] == r["elbo"]  # not NaN
    report = (run_dir / "report.md").read_text()
    for name in model_names(config):
        assert f"| {name} |" in report
    for png in ("samples.png", "classifiers.png", "progress.png"):
        assert (run_dir / png).stat().st_size > 10_000, png
        assert f"]({png})" in report
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["profile"] == "tiny" and saved["classifier"]["iterations"] == config.classifier.iterations


def test_finished_run_resumes_without_recomputing(tiny_run):
    run_dir, rows, _ = tiny_run
    before = _outputs(run_dir)
    events: list[tuple[str, str]] = []
    again = run_experiment(get_profile("tiny"), run_dir, resume=True, progress=False,
                           hook=lambda stage, event: events.append((stage, event)))
    assert events == []  # no stage started
    after = _outputs(run_dir)  # no checkpoint, dataset, sample, record or marker rewritten
    assert after.keys() == before.keys() and [k for k in before if after[k] != before[k]] == []
    assert again == rows and (run_dir / "report.md").is_file()
    with pytest.raises(RunStateError, match="already holds a run"):
        run_experiment(get_profile("tiny"), run_dir, progress=False)
    with pytest.raises(RunStateError, match="config differs"):
        run_experiment(get_profile("quick"), run_dir, resume=True, progress=False)


def test_load_model_rebuilds_guided_stack(tiny_run):
    run_dir, _, _ = tiny_run
    _, config, model = load_model(run_dir, f"iter{get_profile('tiny').gen_neg.iterations}")
    assert len(model.classifiers) == config.gen_neg.iterations
    with pytest.raises(ValueError, match="unknown model"):
        load_model(run_dir, "iter9")


class _Kill(RuntimeError):
    pass


def test_killed_run_resumes_to_the_same_numbers(tiny_run, tmp_path):
    """Kill mid-baseline-training, resume; kill mid-evaluation of iteration 1, resume: the final metrics
    equal the uninterrupted run's exactly (every stage reruns from its own seeded generator)."""
    _, reference, _ = tiny_run
    run_dir = tmp_path / "run"
    config = get_profile("tiny")
    events: list[tuple[str, str]] = []

    def kill_at(stage: str, event: str, nth: int = 1):
        def hook(s: str, e: str) -> None:
            events.append((s, e))
            if events.count((stage, event)) == nth and (s, e) == (stage, event):
                raise _Kill(f"{stage}:{event}")
        return hook

    with pytest.raises(_Kill):
        run_experiment(config, run_dir, progress=False, hook=kill_at("baseline", "progress", nth=2))
    run = RunDir(run_dir, resume=True)
    assert not run.is_done("baseline") and run.records() == []  # partial training log dropped

    events.clear()
    with pytest.raises(_Kill):
        run_experiment(config, run_dir, resume=True, progress=False, hook=kill_at("eval/iter1", "sampled"))
    assert ("baseline", "start") in events
    run = RunDir(run_dir, resume=True)
    assert run.is_done("iter1/classifier") and not run.is_done("eval/iter1")

    events.clear()
    rows = run_experiment(config, run_dir, resume=True, progress=False, hook=kill_at("never", "never"))
    started = {s for s, e in events if e == "start"}
    assert "baseline" not in started and "iter1/classifier" not in started and "eval/iter1" in started
    assert _comparable(rows) == _comparable(reference)
    evals = [r for r in RunDir(run_dir, resume=True).records() if r.get("kind") == "eval"]
    assert sorted(r["model"] for r in evals) == sorted(model_names(config))  # each exactly once
    assert eval_rows(evals) == rows
