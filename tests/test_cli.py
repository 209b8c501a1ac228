"""The ``genneg`` command: train (with overrides and resume), sample, eval, report, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from genneg.cli import main

# a very small run: the CLI's wiring is under test here, the method in tests/pipeline/test_experiment.py
MICRO = ["baseline.iterations=60", "baseline.eval_every=30", "gen_neg.iterations=1",
         "gen_neg.num_samples=400", "gen_neg.budget_policy=shrink", "gen_neg.max_draws=400",
         "classifier.iterations=20", "classifier.batch_size=128", "distill.iterations=10", "ablations=[]",
         "eval.num_samples=600", "eval.elbo_points=100", "eval.mmd_points=100", "sampling.num_steps=6",
         "data.num_heldout=200"]



def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_train_sample_eval_report(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "checkerboard", "--profile", "tiny", "--run-dir", str(run_dir), "--seed", "3", "--quiet"]
    assert main(argv + _sets(MICRO)) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| iter1 |" in out and "| distilled |" in out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 3 and config["classifier"]["iterations"] == 20 and config["ablations"] == []
    # 400 draws cannot hold 200 examples of the rare class: "shrink" keeps all of it and 200 of the other
    data = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"iter1/data"' in line)
    assert data["shrunk"] and data["num_drawn"] == 400 and min(data["num_pos"], data["num_neg"]) < 200
    assert max(data["num_pos"], data["num_neg"]) == 200

    assert main(["sample", "--run-dir", str(run_dir), "--model", "iter1", "--num", "50",
                 "--out", str(tmp_path / "s.npy")]) == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (50, 2) and x.dtype == np.float32 and np.isfinite(x).all()

    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run_dir), "--model", "distilled", "--num", "200"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"] == "distilled" and metrics["num_samples"] == 200
    assert 0 <= metrics["infraction_low"] <= metrics["infraction"] <= metrics["infraction_high"] <= 1

    # a few-step solver on the finished run: the run's config on disk is unchanged
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run_dir), "--model", "iter1", "--num", "200", "--sampler",
                 "dpmpp_2m", "--steps", "4"]) == 0
    few = json.loads(capsys.readouterr().out)
    assert few["sampler"] == "dpmpp_2m" and few["steps"] == 4 and few["num_samples"] == 200
    assert few["schedule"] == "log_linear" and few["sigma_max"] == pytest.approx(80.0)  # the run's
    assert json.loads((run_dir / "config.json").read_text())["sampling"]["sampler"] == "heun"
    assert main(["sample", "--run-dir", str(run_dir), "--model", "baseline", "--num", "20", "--sampler",
                 "unipc", "--steps", "5", "--schedule", "karras", "--sigma-max", "5",
                 "--out", str(tmp_path / "u.npy")]) == 0
    assert np.isfinite(np.load(tmp_path / "u.npy")).all()
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run_dir), "--sampler", "dpm"]) == 2
    assert "unknown sampler 'dpm'" in capsys.readouterr().err
    assert main(["eval", "--run-dir", str(run_dir), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert main(["eval", "--run-dir", str(run_dir), "--schedule", "cosine"]) == 2
    assert "unknown schedule 'cosine'" in capsys.readouterr().err
    for bad in ("-1", "inf", "nan"):
        assert main(["eval", "--run-dir", str(run_dir), "--sigma-max", bad]) == 2
        assert "sigma_max must be finite and > 0" in capsys.readouterr().err
    # a finite range that overflows float32 on the way: the samples are written, and said to be broken
    assert main(["sample", "--run-dir", str(run_dir), "--model", "baseline", "--num", "5", "--sigma-max",
                 "1e300", "--out", str(tmp_path / "big.npy")]) == 0
    assert "5 of 5 samples are not finite" in capsys.readouterr().err
    assert main(["eval", "--run-dir", str(run_dir), "--num", "50", "--sigma-max", "1e300"]) == 0
    broken = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert broken["infraction"] == 1.0 and broken["mmd"] is None

    (run_dir / "report.md").unlink()
    assert main(["report", "--run-dir", str(run_dir)]) == 0
    assert "| iter1 |" in (run_dir / "report.md").read_text()

    # resume of a finished run: the saved config is used, nothing is recomputed
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["train", "checkerboard", "--run-dir", str(run_dir), "--resume", "--quiet"]) == 0
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_errors_are_reported_with_exit_status_2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "checkerboard", "--profile", "tiny", "--run-dir", str(run_dir), "--quiet",
                 "--set", "classifier.iteratons=5"]) == 2
    assert "iteratons" in capsys.readouterr().err
    assert main(["train", "checkerboard", "--profile", "huge", "--run-dir", str(run_dir)]) == 2
    assert "unknown profile" in capsys.readouterr().err
    assert main(["train", "checkerboard", "--run-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["report", "--run-dir", str(tmp_path / "none")]) == 2
    with pytest.raises(SystemExit):
        main(["bogus"])


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "genneg", "--help"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    for command in ("train", "sample", "eval", "report", "demo"):
        assert command in out


def test_an_exhausted_draw_budget_is_a_clean_error_naming_the_knobs(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # the tiny profile's baseline infracts well under 50%: 200 negatives cannot come from 400 draws
    overrides = [o for o in MICRO if not o.startswith(("gen_neg.", "baseline."))] + [
        "gen_neg.iterations=1", "gen_neg.num_samples=400", "gen_neg.budget_policy=raise",
        "gen_neg.max_draws=400"]
    argv = ["train", "checkerboard", "--profile", "tiny", "--run-dir", str(run_dir), "--quiet"]
    assert main(argv + _sets(overrides)) == 2
    err = capsys.readouterr().err
    assert "over the budget max_draws=400" in err and "Traceback" not in err
    assert "gen_neg.budget_policy=shrink" in err and "gen_neg.max_draws" in err
    assert (run_dir / "checkpoints" / "baseline.safetensors").exists()  # finished stages are kept
