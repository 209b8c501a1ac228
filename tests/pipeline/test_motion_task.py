"""The motion Gen-neG task end to end (tiny profile, procedural clips), its report and pictures, resume
after a kill, and the DeepMimic data path on clips written by the test."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from genneg.data.motion import MotionDataset
from genneg.io.rundir import RunDir
from genneg.metrics import num_parallel_samples
from genneg.pipeline.experiment import load_model, model_names, open_run, run_experiment
from genneg.pipeline.motion import MotionTask
from genneg.pipeline.motion_profiles import MotionDataConfig, get_motion_profile
from genneg.pipeline.motion_report import motion_rows


class _Kill(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("motion") / "run"
    return run_dir, run_experiment(get_motion_profile("tiny"), run_dir, progress=False)


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows without wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "sample_seconds_per_batch"} for r in rows]


def test_tiny_run_reports_every_model(tiny_run: tuple[Path, list[dict]]) -> None:
    run_dir, rows = tiny_run
    names = [r["model"] for r in motion_rows(rows)]
    assert names == ["baseline", "ablation_time_independent", "ablation_no_is", "ablation_imbalanced",
                     "iter1", "iter2", "distilled"]
    report = (run_dir / "report.md").read_text()
    for label in ("baseline", "w/o IS", "Gen-neG iteration 1", "Gen-neG iteration 2", "distilled"):
        assert re.search(rf"^\| {re.escape(label)} \|", report, flags=re.M), label
    for png in ("filmstrips.png", "lowest_joint.png", "progress.png"):
        assert (run_dir / png).stat().st_size > 1000 and f"]({png})" in report
    assert "FID" in report and "foot skating" in report and "floating" in report
    assert isinstance(MotionDataset(run_dir / "data" / "train").positions, np.memmap)  # written once
    assert (run_dir / "data" / "motion_encoder.safetensors").is_file()


def test_tiny_run_metrics_are_consistent(tiny_run: tuple[Path, list[dict]]) -> None:
    run_dir, rows = tiny_run
    config = get_motion_profile("tiny")
    by = {r["model"]: r for r in rows}
    task, _, _ = open_run(run_dir)
    frames = config.data.frames
    for r in rows:
        assert r["infraction_low"] <= r["infraction"] <= r["infraction_high"]
        # a clip infracts iff one of its frames does: per-frame rate between rate / F and rate
        assert r["infraction"] / frames - 1e-12 <= r["infraction_frame"] <= r["infraction"] + 1e-12
        if r["infraction"] < 1:
            assert r["n_parallel"] == num_parallel_samples(r["infraction"], config.eval.p)
        assert math.isfinite(r["fid"]) and r["fid"] >= 0 and math.isfinite(r["kid"])
        assert 0 <= r["skating"] <= 1 and 0 <= r["floating"] <= 1
        assert r["num_clips"] == config.eval.num_clips and r["sample_seconds_per_batch"] > 0
    # the saved samples give the recorded rates again through the task's oracle
    from genneg.io.checkpoint import load_tensors

    saved = load_tensors(run_dir / "samples" / "baseline.safetensors")
    verdicts = task.oracle(torch.nan_to_num(saved["x"]))
    assert torch.equal(verdicts, saved["frame_valid"])
    assert float((~verdicts.all(1)).float().mean()) == pytest.approx(by["baseline"]["infraction"])
    clf = by["iter1"]["parameters"] - by["baseline"]["parameters"]
    assert clf > 0 and by["iter2"]["parameters"] == by["baseline"]["parameters"] + 2 * clf
    assert by["distilled"]["parameters"] == by["baseline"]["parameters"]


def test_models_reload_and_classifier_gives_per_frame_logits(tiny_run: tuple[Path, list[dict]]) -> None:
    run_dir, _ = tiny_run
    task, config, guided = load_model(run_dir, "iter2")
    assert isinstance(task, MotionTask)
    clf = guided.classifiers[0]
    x = task.heldout_x[:3]
    assert clf(x, torch.full((3,), 0.5)).shape == (3, config.data.frames)
    # ε of the guided model differs from the baseline's only through the classifiers
    t = torch.full((3,), 50)
    _, _, base = load_model(run_dir, "baseline")
    with torch.no_grad():
        assert guided(x, t).shape == base(x, t).shape == x.shape


def test_killed_run_resumes_to_the_same_numbers(tiny_run: tuple[Path, list[dict]], tmp_path: Path) -> None:
    _, reference = tiny_run
    run_dir = tmp_path / "run"
    config = get_motion_profile("tiny")
    events: list[tuple[str, str]] = []

    def kill_at(stage: str, event: str):
        def hook(s: str, e: str) -> None:
            events.append((s, e))
            if (s, e) == (stage, event):
                raise _Kill(f"{stage}:{event}")
        return hook

    with pytest.raises(_Kill):
        run_experiment(config, run_dir, progress=False, hook=kill_at("eval/iter1", "sampled"))
    run = RunDir(run_dir, resume=True)
    assert run.is_done("iter1/classifier") and not run.is_done("eval/iter1")
    events.clear()
    rows = run_experiment(config, run_dir, resume=True, progress=False, hook=kill_at("never", "never"))
    started = {s for s, e in events if e == "start"}
    assert "baseline" not in started and "data" not in started and "eval/iter1" in started
    assert _comparable(rows) == _comparable(reference)
    evals = [r for r in RunDir(run_dir, resume=True).records() if r.get("kind") == "eval"]
    assert sorted(r["model"] for r in evals) == sorted(model_names(config))


def _humanoid_wheel(path: Path) -> Path:
    """A wheel-shaped zip with a DeepMimic-like humanoid and a looping clip (written by the helpers of the
    DeepMimic tests)."""
    spec = importlib.util.spec_from_file_location(
        "_motion_deepmimic_helpers", Path(__file__).parents[1] / "data" / "test_motion_deepmimic.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    _clip, _urdf, _walk_clip = helpers._clip, helpers._urdf, helpers._walk_clip

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pybullet_data/humanoid/humanoid.urdf", _urdf())
        z.writestr("pybullet_data/data/motions/humanoid3d_glide.txt", _clip(_walk_clip(), "wrap"))
    return path


def test_deepmimic_source_prepares_split_windows(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    _humanoid_wheel(cache / "pybullet-0.0.0-py3-none-any.whl")
    base = get_motion_profile("tiny")
    config = dataclasses.replace(base, data=MotionDataConfig(
        source="deepmimic", pybullet_cache_dir=str(cache), frames=20, window_stride=4, num_train=2,
        num_heldout=2))
    task = MotionTask()
    info = task.prepare(config, tmp_path / "data")
    assert info["train_clips"] > info["heldout_clips"] > 0
    task.setup(config, tmp_path / "data")
    assert task.train_x.shape[1:] == (20, 45) and task.skeleton.num_joints == 15
    assert bool(task.oracle(task.train_x).all()) and bool(task.oracle(task.heldout_x).all())
    meta = json.loads((tmp_path / "data" / "heldout" / "config.json").read_text())
    assert meta["extra"]["split"] == "heldout"
    with pytest.raises(ValueError, match="no pybullet wheel"):
        MotionTask().prepare(dataclasses.replace(config, data=dataclasses.replace(
            config.data, pybullet_cache_dir=str(tmp_path))), tmp_path / "other")


def test_family_conditioned_task_samples_and_evaluates_in_contexts(tiny_run: tuple[Path, list[dict]]) -> None:
    run_dir, _ = tiny_run
    base = get_motion_profile("tiny")
    config = dataclasses.replace(base, model=dataclasses.replace(base.model, condition_on_family=True))
    task = MotionTask()
    task.setup(config, run_dir / "data")
    model = task.new_denoiser()
    assert model.net.family is not None and model.net.family.num_embeddings == len(task.family_names) + 1
    g = torch.Generator().manual_seed(0)
    summary = task.train_baseline(model, g)
    assert summary["iterations_run"] == config.baseline.iterations and math.isfinite(summary["best_r_elbo"])
    cond = task.train_contexts(5, g)
    assert cond is not None and cond["family"].shape == (5,)
    assert task.sample(model, 5, g, cond=cond).shape == (5, *task.clip_shape)
    with pytest.raises(ValueError, match="conditioned"):
        task.sample(model, 5, g)
    metrics, tensors = task.evaluate(model, num_samples=6)
    assert metrics["num_clips"] == 6 and tensors["frame_valid"].shape == (6, config.data.frames)


# data-parallel (issue 14) -----------------------------------------------------------------------------




def test_evaluation_is_sharded_and_agrees_with_one_process(tiny_run: tuple[Path, list[dict]], tmp_path: Path,
                                                           torchrun_tools: ModuleType) -> None:
    """The evaluate hook of a guided stack (iteration 1) under torchrun (2 processes, batches of 5 of the
    32 evaluation clips: unequal shares, a short last batch) gives the one-process clips, per-frame
    verdicts, counts, FID/KID (features gathered, statistics on rank 0), skating, floating and r-ELBO (also
    in chunks of 5 held-out clips) exactly (``EVAL_RTOL`` of ``tests/distributed/torchrun_tools.py``)."""
    config = get_motion_profile("tiny")
    metrics = torchrun_tools.check_sharded_evaluation(tiny_run[0], ["iter1"], 5, tmp_path / "two")
    for m in metrics.values():
        assert m["num_clips"] == config.eval.num_clips and m["batch_size"] == 5
        assert m["infractions"] == round(m["infraction"] * m["num_clips"])  # exact counts, gathered
        assert m["infractions_frame"] == round(m["infraction_frame"] * m["num_clips"] * config.data.frames)


DISTILLED_RTOL = 1e-2
"""Distillation and the distilled model's evaluation, one process against two. The student starts from the
baseline's weights and takes a few Adam steps; Adam divides each gradient coordinate by its running RMS, so
a coordinate whose gradient is a near-cancelling sum moves by about the learning rate whatever sign its
rounding gives it, and DDP sums the two half-batch gradients in another order than one process.
Measured on this profile: final loss 9e-6, FID 5e-6, KID 1.2e-5 relative; on the same profile with
sampling batches of 12: final loss 9e-5, FID 3e-4, KID 7e-4, mean lowest height 2.5e-3 relative (equal
counts in both). 1e-2 leaves a margin of 4 over the worst of these."""


def test_tiny_run_under_torchrun_agrees_with_one_process(tiny_run: tuple[Path, list[dict]], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         torchrun_tools: ModuleType) -> None:
    """The tiny motion profile under torchrun (2 processes, gloo): every stage (the Gen-neG iterations,
    the three ablations, distillation, evaluations with sharded sampling, report and pictures on rank 0)
    in one consistent run directory whose markers record world size 2, agreeing with the one-process run:
    the data stages' and evaluations' counts exactly (the same draws are made: the sampling batch is the
    global batch, so the two processes run at twice the profile's 64, each rank's sampler calls taking 64
    clips like the one process's, and the 32 evaluation clips are one call in both; the baseline, classifiers
    and their guided samples agree to about 1e-6 relative, not enough to move a clip across the floor),
    every float within 1e-4 relative (DDP's other order of floating-point sums: measured at most 2.1e-6 on
    this profile), distillation within :data:`DISTILLED_RTOL`. ``genneg eval`` in one process then gives
    the run's recorded numbers, and ``genneg sample`` draws from it."""
    one, two = tiny_run[0], tmp_path / "two"
    batch = 2 * get_motion_profile("tiny").gen_neg.sample_batch_size
    done = torchrun_tools.run(torchrun_tools.torchrun("-m", "genneg", "train", "motion", "--profile", "tiny",
                                                      "--run-dir", str(two), "--quiet", "--set",
                                                      f"gen_neg.sample_batch_size={batch}"))
    assert done.stdout.count("| Gen-neG iteration 2 |") == 1  # rank 0 alone prints the table
    marks = torchrun_tools.markers(two)
    assert set(marks) == set(torchrun_tools.markers(one))
    assert {(m["world_size"], m["backend"]) for m in marks.values()} == {(2, "gloo")}
    assert "world size 2 (backend gloo)" in (two / "report.md").read_text()
    listing = sorted(str(p.relative_to(two)) for p in two.rglob("*"))
    assert listing == sorted(str(p.relative_to(one)) for p in one.rglob("*"))
    a, b = torchrun_tools.records(one), torchrun_tools.records(two)
    assert [r["stage"] for r in a] == [r["stage"] for r in b]
    for ra, rb in map(torchrun_tools.at_half_the_batch, a, b):
        if ra["stage"] in ("distill", "eval/distilled"):
            torchrun_tools.assert_same_metrics(ra, rb, DISTILLED_RTOL, ra["stage"])
        else:
            torchrun_tools.assert_same_metrics(ra, rb, 1e-4, ra["stage"])

    # a run made under torchrun reopens in one process: `genneg eval` gives its recorded numbers
    from genneg.cli import main

    assert main(["eval", "--run-dir", str(two), "--model", "iter2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    recorded = next(r for r in b if r["stage"] == "eval/iter2")
    shared = [k for k in recorded if k in metrics]
    torchrun_tools.assert_same_metrics({k: metrics[k] for k in shared}, {k: recorded[k] for k in shared},
                                       torchrun_tools.EVAL_RTOL, "genneg eval")
    assert main(["sample", "--run-dir", str(two), "--model", "distilled", "--num", "3",
                 "--out", str(tmp_path / "clips.npy")]) == 0
    assert np.load(tmp_path / "clips.npy").shape[0] == 3
