"""A user's own problem through the one loop: data as an array, an oracle that is a plain NumPy function,
from Python and from the command line; kill-and-resume; reopening the run; every bad input refused
before any work, with nothing written.

The data and oracle are this test's own: points on an annulus (radius 1 to 2) whose wedge of polar
angle in [0, 60°) is forbidden.
"""

from __future__ import annotations

import json
import math
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import genneg
from genneg.io.rundir import RunDir, RunStateError
from genneg.pipeline.arrays import ArrayTask, OracleError
from genneg.pipeline.experiment import load_model, open_run
from genneg.pipeline.registry import TaskImportError

WEDGE = math.pi / 3

# sizes for a run of seconds: the loop's wiring is under test here, the method in test_experiment.py
MICRO = ["baseline.iterations=600", "baseline.eval_every=200", "gen_neg.iterations=2",
         "gen_neg.num_samples=1000", "gen_neg.budget_policy=shrink", "gen_neg.max_draws=6000",
         "classifier.iterations=250", "classifier.batch_size=256", "distill.iterations=60",
         'ablations=["no_is"]', "eval.num_samples=3000", "eval.elbo_points=200", "eval.elbo_num_sigmas=8",
         "eval.mmd_points=200", "sampling.num_steps=10", "sampling.batch_size=1500"]


def ring_oracle(x: np.ndarray) -> np.ndarray:
    """Valid: on the annulus 1 <= r <= 2 (with 5% slack) and outside the wedge 0 <= angle < 60°."""
    x = np.asarray(x, dtype=np.float64)
    r = np.hypot(x[:, 0], x[:, 1])
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    return (r >= 0.95) & (r <= 2.05) & ~(angle < WEDGE)


def ring_points(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(1.0, 4.0, n))
    angle = rng.uniform(WEDGE, 2 * np.pi, n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("ring") / "run"
    task = genneg.Task.from_arrays(ring_points(1200), oracle=ring_oracle)
    rows = genneg.train(task, profile="tiny", run_dir=run_dir, overrides=MICRO, progress=False)
    return run_dir, rows


def test_user_task_trains_reports_and_reopens(ring_run: tuple[Path, list[dict]]) -> None:
    run_dir, rows = ring_run
    by = {r["model"]: r for r in rows}
    assert set(by) == {"baseline", "iter1", "iter2", "ablation_no_is", "distilled"}
    # guidance works even this small: the last iteration's 95% interval lies below the baseline's
    assert by["iter2"]["infraction_high"] < by["baseline"]["infraction_low"], rows
    config = json.loads((run_dir / "config.json").read_text())
    # data-dependent fields derived from the data and saved: dimension, sigma_data, split sizes
    assert config["experiment"] == "arrays" and config["denoiser"]["dim_in"] == 2
    assert config["data"]["num_train"] + config["data"]["num_heldout"] == 1200
    task, _, _ = open_run(run_dir)
    assert config["edm"]["sigma_data"] == pytest.approx(float(task.train_x.std()), rel=1e-6)
    reference = json.loads((run_dir / "task.json").read_text())
    assert reference["oracle"].endswith(":ring_oracle") and reference["kind"] == "arrays"
    report = (run_dir / "report.md").read_text()
    assert "| iter2 |" in report and "](samples.png)" in report and (run_dir / "samples.png").is_file()

    # reopened with the user's oracle (never a substitute): the run's own evaluation is reproduced
    task, config, model = load_model(run_dir, "guided")
    assert isinstance(task, ArrayTask) and task.user_oracle is ring_oracle
    metrics, _ = task.evaluate(model)
    assert metrics["infraction"] == by["iter2"]["infraction"]
    distilled = genneg.load(run_dir, "distilled")
    x = task.sample(distilled, 64, torch.Generator().manual_seed(1))
    assert x.shape == (64, 2) and bool(torch.isfinite(x).all())

    from genneg.planning.fast_sampler import FastSampler

    sampler = FastSampler.from_run(run_dir, model="distilled", p=0.99, num_steps=6)
    assert sampler.infraction_rate == by["distilled"]["infraction"]
    result = sampler(seed=0)
    assert result.samples.shape == (sampler.num_parallel, 2)
    assert bool(result.verdicts.any()) == result.ok


def test_user_task_killed_and_resumed_gives_the_same_numbers(ring_run: tuple[Path, list[dict]],
                                                             tmp_path: Path) -> None:
    _, reference = ring_run
    run_dir = tmp_path / "run"
    threads: list[int] = []

    class Kill(RuntimeError):
        pass

    def kill(stage: str, event: str) -> None:
        threads.append(torch.get_num_threads())
        if (stage, event) == ("iter2/data", "start"):
            raise Kill(stage)

    task = genneg.Task.from_arrays(ring_points(1200), oracle=ring_oracle)
    with pytest.raises(Kill):
        genneg.train(task, profile="tiny", run_dir=run_dir, overrides=MICRO, progress=False, hook=kill)
    assert set(threads) == {1}  # the profile's num_threads applies to the loop itself, not only the CLI
    started: list[str] = []
    rows = genneg.train(genneg.Task.from_arrays(ring_points(1200), oracle=ring_oracle), profile="tiny",
                        run_dir=run_dir, overrides=MICRO, resume=True, progress=False,
                        hook=lambda s, e: started.append(s) if e == "start" else None)
    assert "baseline" not in started and "iter1/classifier" not in started and "iter2/data" in started
    timing = {"sample_seconds", "sample_ms_per_1k"}
    assert ([{k: v for k, v in r.items() if k not in timing} for r in rows]
            == [{k: v for k, v in r.items() if k not in timing} for r in reference])
    # other data in the same run directory is refused, not mixed in
    with pytest.raises(RunStateError, match="other data"):
        genneg.train(genneg.Task.from_arrays(ring_points(1200, seed=1), oracle=ring_oracle), profile="tiny",
                     run_dir=run_dir, overrides=MICRO, resume=True, progress=False)


def test_command_line_user_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genneg.cli import main

    rules = tmp_path / "rules.py"
    rules.write_text(textwrap.dedent(f"""
        import numpy as np

        def is_valid(x):
            x = np.asarray(x, dtype=np.float64)
            r = np.hypot(x[:, 0], x[:, 1])
            angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
            return (r >= 0.95) & (r <= 2.05) & ~(angle < {WEDGE!r})

        def not_a_bool(x):
            return np.full(len(x), 0.5)

        def make_task():
            from genneg.pipeline.arrays import ArrayTask

            return ArrayTask.from_arrays(np.load(__file__.replace("rules.py", "train.npy")), oracle=is_valid,
                                         name="ring_factory")
    """))
    np.save(tmp_path / "train.npy", ring_points(600))
    run_dir = tmp_path / "run"
    sets = [a for o in [*MICRO, "gen_neg.iterations=1", "distill.iterations=0", "ablations=[]"]
            for a in ("--set", o)]
    argv = ["train", "--data", str(tmp_path / "train.npy"), "--oracle", f"{rules}:is_valid", "--profile",
            "tiny", "--run-dir", str(run_dir), "--quiet", "--name", "ring"]
    assert main(argv + sets) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| iter1 |" in out and "distilled" not in out  # distillation skipped
    assert json.loads((run_dir / "task.json").read_text())["oracle"] == f"{rules.resolve()}:is_valid"
    assert main(["sample", "--run-dir", str(run_dir), "--model", "iter1", "--num", "20",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20, 2)
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run_dir), "--model", "iter1"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recorded = next(r for r in rows if r.get("stage") == "eval/iter1")
    assert json.loads(capsys.readouterr().out)["infraction"] == recorded["infraction"]
    assert main(["report", "--run-dir", str(run_dir)]) == 0
    assert "# Gen-neG on ring" in capsys.readouterr().out
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(argv + sets + ["--resume"]) == 0
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--quiet"]) == 0  # all it needs is recorded
    assert (run_dir / "metrics.jsonl").read_text() == before

    # a task factory: recorded by reference, the run reopens through it
    factory_dir = tmp_path / "factory"
    quick = [a for o in [*MICRO, "gen_neg.iterations=1", "distill.iterations=0", "ablations=[]",
                         "baseline.iterations=50"] for a in ("--set", o)]
    assert main(["train", "--task", f"{rules}:make_task", "--profile", "tiny", "--run-dir", str(factory_dir),
                 "--quiet", *quick]) == 0
    assert json.loads((factory_dir / "task.json").read_text())["factory"] == f"{rules}:make_task"
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(factory_dir), "--model", "iter1", "--num", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 100

    # bad input on the command line: exit status 2, the cause named, no run directory written
    bad = tmp_path / "bad"
    for extra, message in (
        (["--oracle", f"{rules}:missing"], "has no attribute 'missing'"),
        (["--oracle", "no_such_module_xyz:f"], "module 'no_such_module_xyz' not found"),
        (["--oracle", f"{rules}:not_a_bool"], "non-boolean"),
    ):
        argv_bad = ["train", "--data", str(tmp_path / "train.npy"), "--run-dir", str(bad), "--quiet", *extra]
        assert main(argv_bad) == 2
        assert message in capsys.readouterr().err
        assert not bad.exists()
    assert main(["train", "checkerboard", "--data", str(tmp_path / "train.npy"), "--run-dir", str(bad)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    # an oracle that can no longer be imported: reopening fails and names it (never a substitute oracle)
    rules.rename(tmp_path / "moved.py")
    assert main(["eval", "--run-dir", str(run_dir), "--model", "iter1"]) == 2
    assert f"no file {rules}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda x: (np.where(np.arange(len(x))[:, None] == 7, np.nan, x), ring_oracle),
         ValueError, "1 row(s) hold NaN or inf: rows 7"),
        (lambda x: (x[:1], ring_oracle), ValueError, "at least 2 points"),
        (lambda x: (x[:, 0], ring_oracle), ValueError, "expected an (N, d) array"),
        (lambda x: (x, lambda y: np.ones((len(y), 2, 2), dtype=bool)), ValueError, "oracle returned shape"),
        (lambda x: (x, lambda y: np.ones(len(y) - 1, dtype=bool)), ValueError, "oracle returned shape"),
        (lambda x: (x, lambda y: np.full(len(y), 0.3)), ValueError, "non-boolean"),
        (lambda x: (x, lambda y: ~ring_oracle(y)), ValueError, "all 1000 points of train_x are invalid"),
        (lambda x: (x, "genneg_no_such_module:f"), TaskImportError, "genneg_no_such_module"),
        (lambda x: (x.astype(bool), ring_oracle), TypeError, "real numbers"),
        (lambda x: (x, lambda y: None), ValueError, "oracle returned None"),
        (lambda x: (x, lambda y: np.array(["yes"] * len(y))), ValueError, "dtype <U3"),
        (lambda x: (x, lambda y: ring_oracle(y).astype(int) * 5 + 2), ValueError, "non-boolean"),
        (lambda x: (np.repeat(x[:1], len(x), axis=0), ring_oracle), ValueError, "1000 identical points"),
    ],
)
def test_bad_input_is_refused_before_any_work(make, error, message) -> None:
    data, oracle = make(ring_points(1000))
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        genneg.Task.from_arrays(data, oracle=oracle)


def test_the_oracle_gets_a_copy_of_the_input_type_it_asks_for(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type] = []

    def scribbles(x):
        seen.append(type(x))
        valid = ring_oracle(np.asarray(x))
        x[:] = 0  # writes into its input: must change nothing of the task's
        return valid

    data = ring_points(300)
    original = data.copy()
    task = genneg.Task.from_arrays(data, oracle=scribbles)
    assert set(seen) == {np.ndarray} and np.array_equal(data, original)  # the caller's array untouched
    kept = np.concatenate([task.train_x.numpy(), task.heldout_x.numpy()])
    assert sorted(map(tuple, kept.tolist())) == sorted(map(tuple, original.tolist()))  # and the task's
    seen.clear()
    genneg.Task.from_arrays(data, oracle=scribbles, oracle_input="torch")
    assert set(seen) == {torch.Tensor}
    # a file reference given relative to the working directory is recorded absolute
    rules = "import numpy as np\n\n\ndef ok(x):\n    return np.ones(len(x), bool)\n"
    (tmp_path / "rel_rules.py").write_text(rules)
    monkeypatch.chdir(tmp_path)
    task = genneg.Task.from_arrays(data, oracle="rel_rules.py:ok")
    assert task.reference()["oracle"] == f"{(tmp_path / 'rel_rules.py').resolve()}:ok"


def test_oracle_that_raises_is_chained_with_its_batch(tmp_path: Path) -> None:
    def explodes(x: np.ndarray) -> np.ndarray:
        if np.abs(np.asarray(x)).max() > 100:
            raise RuntimeError("coordinates out of the map")
        return ring_oracle(x)

    data = ring_points(25_000)
    data[21_000] = [500.0, 0.0]
    with pytest.raises(OracleError, match=r"train_x batch 2 \(rows 20000-24999\)") as info:
        genneg.Task.from_arrays(data, oracle=explodes)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match="sample shape"):
        genneg.Task.from_arrays(ring_points(100), oracle=ring_oracle, heldout_x=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="registered experiment"):
        genneg.Task.from_arrays(ring_points(100), oracle=ring_oracle, name="checkerboard")


def test_lambda_oracle_runs_but_reopening_needs_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    oracle = lambda x: ring_oracle(x)  # noqa: E731  (no importable reference on purpose)
    task = genneg.Task.from_arrays(ring_points(400), oracle=oracle)
    micro = [*MICRO, "gen_neg.iterations=1", "ablations=[]", "distill.iterations=0", "baseline.iterations=50"]
    start = time.perf_counter()
    genneg.train(task, profile="tiny", run_dir=run_dir, overrides=micro, progress=False)
    assert time.perf_counter() - start < 120
    with pytest.raises(TaskImportError, match="pass oracle="):
        load_model(run_dir, "iter1")
    task2, _, model = load_model(run_dir, "iter1", oracle=oracle)
    assert task2.user_oracle is oracle and model is not None
    assert RunDir(run_dir, resume=True).is_done("eval/iter1")


def test_plugins_register_through_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package's experiment is found through the ``genneg.experiments`` entry point group,
    trained by name, and reopened by name."""
    (tmp_path / "ring_plugin.py").write_text(textwrap.dedent("""
        import numpy as np
        from genneg.pipeline.arrays import ArrayTask
        from genneg.pipeline.profiles import PROFILES, ExperimentConfig
        from genneg.pipeline.registry import Experiment

        def is_valid(x):
            x = np.asarray(x, dtype=np.float64)
            return np.hypot(x[:, 0], x[:, 1]) <= 2.05

        class RingTask(ArrayTask):
            name = "ring_plugin"

            def __init__(self):
                rng = np.random.default_rng(0)
                angle = rng.uniform(0, 2 * np.pi, 400)
                x = np.stack([2 * np.cos(angle), 2 * np.sin(angle)], 1).astype(np.float32)
                task = ArrayTask.from_arrays(x, oracle=is_valid, name="ring_plugin_data")
                super().__init__(task.train_x, task.heldout_x, is_valid, name="ring_plugin")

            def reference(self):
                return {"experiment": "ring_plugin"}

        EXPERIMENT = Experiment(name="ring_plugin", config_class=ExperimentConfig, profiles=PROFILES,
                                task_factory=RingTask)
    """))
    dist = tmp_path / "ring_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ring_plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[genneg.experiments]\nring_plugin = ring_plugin:EXPERIMENT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from genneg.pipeline.registry import experiment_names, get_experiment

    assert "ring_plugin" in experiment_names()
    assert get_experiment("ring_plugin").name == "ring_plugin"
    run_dir = tmp_path / "run"
    micro = [*MICRO, "gen_neg.iterations=1", "ablations=[]", "distill.iterations=0", "baseline.iterations=50"]
    rows = genneg.train("ring_plugin", profile="tiny", run_dir=run_dir, overrides=micro, progress=False)
    assert [r["model"] for r in rows] == ["baseline", "iter1"]
    task, _, _ = open_run(run_dir)
    assert type(task).__name__ == "RingTask"


def test_structured_samples_run_through_the_default_networks(tmp_path: Path) -> None:
    """Samples that are not flat vectors, ``(N, 3, 2)`` here, go through the same task: the default
    networks see them flattened and give back the sample's shape; the sampler draws that shape."""
    x = np.concatenate([ring_points(300, seed=s)[:, None] for s in range(3)], axis=1)  # (300, 3, 2)

    def all_on_ring(y: np.ndarray) -> np.ndarray:
        return ring_oracle(np.asarray(y).reshape(-1, 2)).reshape(len(y), 3).all(1)

    task = genneg.Task.from_arrays(x, oracle=all_on_ring)
    config = task.make_config("tiny")
    assert config.denoiser.dim_in == 6 and config.classifier_net.dim_in == 6
    task.setup(config, tmp_path)
    sigma = torch.full((5,), 0.7)
    assert task.new_denoiser()(task.train_x[:5], sigma).shape == (5, 3, 2)
    assert task.new_classifier(True)(task.train_x[:5], sigma).shape[0] == 5
    samples = task.sample(task.new_denoiser().eval(), 4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 3, 2)
