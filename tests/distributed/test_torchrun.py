"""Gen-neG data-parallel under ``torchrun --nproc-per-node=2`` (gloo, CPU), against the one-process run
(issue 14).

What is compared, and how closely:

- the data stage on a fixed stream (``draw_worker.py``): the balanced set, the shrunk set and the
  natural mix, their counts and ``pi_neg`` **exactly** (the same draws are made, the counts are integers
  and the set is assembled in row order);
- the tiny checkerboard run end to end: every stage's counts (draws, kept examples, evaluation
  infractions) exactly, and every float metric (losses, ELBO, MMD) within a relative 1e-4. The sampling
  batch is the global batch (each rank's sampler calls take half of it), so the two-process run at
  sampling batch 600 makes the draws of the one-process run at 300 (and the same global training
  batches); what differs is the order of floating-point
  sums (DDP averages two half-batch gradients where one process sums the whole batch), about 1e-7
  relative per step: measured at up to 9e-8 relative on this config's metrics (over the whole tiny
  profile: up to 6e-7 on losses and ELBO, 7e-5 on one MMD², a difference of kernel means that cancels);
  1e-4 leaves a margin of 1000 here and still fails on any wrong share of the batch (a missing loss
  scale or a half batch changes the losses by percents);
- killing one rank mid-run: torchrun stops the job with an error naming the failed rank, finished
  stages are kept, and ``--resume`` under torchrun finishes with the numbers of the uninterrupted run;
- a user's task (``--data`` + ``--oracle file.py:fn``) under torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrun_tools import HERE, TIMEOUT_S, assert_same_metrics, env, markers, records, run, torchrun

from genneg.io.checkpoint import load_tensors

# the tiny profile cut further: the wiring is under test here, the method in tests/pipeline. Odd global
# batches (257, 301) give the two ranks unequal shares; few evaluation samples make the data stages draw
# from the model beyond the pooled evaluation samples, over both ranks; every ablation runs (the
# imbalanced one the sharded natural-mix draw, the time-independent one a classifier blind to sigma);
# distillation on 700 teacher samples (``x0_source=teacher``; the traffic and motion torchrun tests
# cover the training set) draws them sharded: the pooled evaluation samples of the last iteration, then
# batches of the guided teacher on both ranks.
MICRO = ["baseline.iterations=120", "baseline.eval_every=60", "gen_neg.iterations=1",
         "gen_neg.num_samples=1000", "gen_neg.max_draws=20000", "classifier.iterations=60",
         "classifier.batch_size=257", "distill.iterations=20", "distill.batch_size=301",
         "distill.x0_source=teacher", "distill.num_teacher_samples=700",
         'ablations=["imbalanced","no_is","time_independent"]', "eval.num_samples=300",
         "eval.elbo_points=200", "eval.elbo_num_sigmas=8", "eval.mmd_points=200", "sampling.num_steps=6"]
# the sampling batch (global) of a run of nproc processes: each rank's sampler calls take 300 rows. The
# data stages and the teacher draws cut it among the ranks; evaluation batches are whole calls (the same
# for any world size), here one call of 300 samples in both runs.
SAMPLE_BATCH_PER_RANK = 300


def _train(run_dir: Path, *extra: str, nproc: int = 2) -> list[str]:
    sets = [a for o in [*MICRO, f"sampling.batch_size={SAMPLE_BATCH_PER_RANK * nproc}"] for a in ("--set", o)]
    return ["-m", "genneg", "train", "checkerboard", "--profile", "tiny", "--run-dir", str(run_dir),
            "--quiet", *sets, *extra]


def _assert_same_run(one: Path, two: Path, rtol: float) -> None:
    """Same records in the same order: integers and flags equal, floats within ``rtol`` (module doc)."""
    a, b = records(one), records(two)
    assert [r["stage"] for r in a] == [r["stage"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert_same_metrics(ra, rb, rtol, ra["stage"], atol=1e-9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MICRO checkerboard run in one process and under torchrun with two."""
    root = tmp_path_factory.mktemp("ddp")
    run([sys.executable, *_train(root / "one", nproc=1)])
    run(torchrun(*_train(root / "two")))
    return {"one": root / "one", "two": root / "two", "root": root}


def test_balanced_draws_of_two_processes_are_those_of_one_at_half_the_batch(tmp_path: Path) -> None:
    """The config's batch is the global batch: two processes at batch ``B`` draw ``ceil(B / 2)`` rows per
    rank and call, so they make exactly the draws of one process at ``ceil(B / 2)``; the same ``B`` in one
    process draws other batches (the set depends on the world size, not on the run)."""
    import draw_worker

    one = draw_worker.draws(shares=2)
    run(torchrun(str(HERE / "draw_worker.py"), str(tmp_path / "two.safetensors")))
    two = load_tensors(tmp_path / "two.safetensors")
    assert int(two["world_size"]) == 2 and bool(two["ranks_agree"])
    for key, value in one.items():
        assert torch.equal(two[key], value), key
    whole = draw_worker.draws(shares=1)  # one process at the global batch: whole batches of other seeds
    assert not torch.equal(whole["balanced.x"], one["balanced.x"])
    # the sizes the configs asked for, and the shrunk set what 900 draws hold
    assert one["balanced.counts"][1:].tolist() == [500, 500]
    assert int(one["shrunk.counts"][0]) == 900 and int(one["shrunk.counts"][1]) == 400
    assert 0 < int(one["shrunk.counts"][2]) < 400
    assert int(one["imbalanced.counts"][0]) == 1001 == len(one["imbalanced.x"])


def test_tiny_run_under_torchrun_agrees_with_one_process(runs: dict[str, Path]) -> None:
    one, two = runs["one"], runs["two"]
    _assert_same_run(one, two, rtol=1e-4)
    done = markers(two)
    assert {(m["world_size"], m["backend"]) for m in done.values()} == {(2, "gloo")}
    assert {(m["world_size"], m["backend"]) for m in markers(one).values()} == {(1, "none")}
    assert set(done) == set(markers(one))
    # one run directory, written once: each finished stage's records appear once, nothing else written
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert "world size 2 (backend gloo)" in (two / "report.md").read_text()


def test_genneg_eval_under_torchrun_gives_the_recorded_numbers(runs: dict[str, Path]) -> None:
    """``genneg eval`` on a run made under torchrun: in one process it prints the run's recorded numbers;
    launched by torchrun with 1000 samples (two calls of the run's sampling batch 600, one per rank) it is
    a sharded evaluation that gives the one-process numbers (the same batches, seeds and threads), rank 0
    alone printing them."""
    argv = ["-m", "genneg", "eval", "--run-dir", str(runs["two"]), "--model", "iter1"]
    metrics = json.loads(run([sys.executable, *argv]).stdout)
    recorded = next(r for r in records(runs["two"]) if r["stage"] == "eval/iter1")
    shared = [k for k in recorded if k in metrics]
    assert {"infraction", "infractions", "elbo", "mmd", "n_parallel"} <= set(shared)
    assert_same_metrics({k: metrics[k] for k in shared}, {k: recorded[k] for k in shared}, 1e-12, "eval")
    one = json.loads(run([sys.executable, *argv, "--num", "1000"]).stdout)
    done = run(torchrun(*argv, "--num-samples", "1000"))  # torchrun refuses --num (ambiguous to its parser)
    assert done.stdout.count('"infraction"') == 1  # rank 0 alone prints
    assert one["num_samples"] == 1000
    assert_same_metrics(one, json.loads(done.stdout), 1e-12, "sharded eval")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_killed_rank_stops_the_job_and_resume_finishes(runs: dict[str, Path]) -> None:
    run_dir = runs["root"] / "killed"
    job = subprocess.Popen(torchrun(*_train(run_dir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env(), start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (run_dir / "stages" / "eval" / "baseline.done").is_file():
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        workers = {_rank_of(p): p for p in _children(job.pid)}
        os.kill(workers[1], signal.SIGKILL)  # rank 1 dies mid-run, in the stages after the baseline's
        _, stderr = job.communicate(timeout=TIMEOUT_S)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert "rank" in stderr and ("Signal 9" in stderr or "SIGKILL" in stderr), stderr[-3000:]
    assert not (run_dir / "report.md").exists()
    finished = markers(run_dir)
    assert "baseline" in finished and "eval/baseline" in finished and "distill" not in finished

    run(torchrun("-m", "genneg", "train", "--run-dir", str(run_dir), "--resume", "--quiet"))
    _assert_same_run(runs["two"], run_dir, rtol=1e-6)  # the same world size: the same sums
    assert (run_dir / "report.md").is_file()


def test_user_task_under_torchrun(tmp_path: Path) -> None:
    rules = tmp_path / "rules.py"
    rules.write_text(textwrap.dedent("""
        import numpy as np

        def is_valid(x):
            x = np.asarray(x, dtype=np.float64)
            return np.hypot(x[:, 0], x[:, 1]) >= 1.0
    """))
    rng = np.random.default_rng(0)
    angle, radius = rng.uniform(0, 2 * np.pi, 800), np.sqrt(rng.uniform(1.0, 4.0, 800))
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32)
    np.save(tmp_path / "train.npy", points)
    run_dir = tmp_path / "run"
    sets = [a for o in [*MICRO, 'ablations=[]', f"sampling.batch_size={2 * SAMPLE_BATCH_PER_RANK}"]
            for a in ("--set", o)]
    done = run(torchrun("-m", "genneg", "train", "--data", str(tmp_path / "train.npy"), "--oracle",
                          f"{rules}:is_valid", "--profile", "tiny", "--run-dir", str(run_dir), "--quiet",
                          *sets))
    assert done.stdout.count("| baseline |") == 1  # rank 0 alone prints the table
    done = markers(run_dir)
    assert {"data", "baseline", "iter1/data", "iter1/classifier", "distill", "eval/distilled"} <= set(done)
    assert {m["world_size"] for m in done.values()} == {2}
    data = done["iter1/data"]
    assert data["num_pos"] == data["num_neg"] == 500 and data["num_drawn"] >= 1000
    assert (run_dir / "report.md").is_file()
