"""The traffic Gen-neG experiment end to end (tiny profile), its oracle, ε-model padding and r-ELBO."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from genneg.data.traffic.scene_set import SceneSet
from genneg.diffusion.ddpm import ddpm_loss
from genneg.io.checkpoint import load_tensors
from genneg.io.rundir import RunDir
from genneg.metrics import num_parallel_samples
from genneg.pipeline.experiment import open_run, run_experiment
from genneg.pipeline.scene_training import scene_r_elbo
from genneg.pipeline.traffic import TrafficTask
from genneg.pipeline.traffic_profiles import TrafficExperimentConfig, get_traffic_profile
from genneg.pipeline.traffic_report import traffic_rows


def run_traffic(config: TrafficExperimentConfig, run_dir: Path, **kwargs) -> list[dict]:
    return run_experiment(config, run_dir, **kwargs)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("traffic") / "run"
    rows = run_traffic(get_traffic_profile("tiny"), run_dir, progress=False)
    return run_dir, rows


@pytest.fixture(scope="module")
def task(tiny_run: tuple[Path, list[dict]]) -> TrafficTask:
    task, _, _ = open_run(tiny_run[0])
    assert isinstance(task, TrafficTask)
    return task


def test_tiny_run_reports_every_model(tiny_run: tuple[Path, list[dict]]) -> None:
    run_dir, rows = tiny_run
    names = [r["model"] for r in traffic_rows(rows)]  # Table 1's order
    assert names == ["baseline", "ablation_time_independent", "ablation_no_is", "ablation_imbalanced",
                     "iter1", "iter2", "distilled"]
    report = (run_dir / "report.md").read_text()
    for label in ("baseline", "time-independent guidance", "w/o IS", "imbalanced", "Gen-neG iteration 1",
                  "Gen-neG iteration 2", "distilled"):
        assert re.search(rf"^\| {re.escape(label)} \|", report, flags=re.M), label
    for png in ("scenes_baseline.png", "scenes_iter2.png", "scenes_distilled.png", "guided_vs_baseline.png"):
        assert (run_dir / png).stat().st_size > 1000
        assert f"]({png})" in report
    assert (run_dir / "data" / "train" / "tokens.npy").is_file()  # written once, memory-mapped


def test_tiny_run_metrics_are_consistent(tiny_run: tuple[Path, list[dict]]) -> None:
    _, rows = tiny_run
    by = {r["model"]: r for r in rows}
    base = by["baseline"]
    p = get_traffic_profile("tiny").eval.p
    for r in rows:
        # a scene infracts iff it has a collision or an offroad vehicle
        assert max(r["collision"], r["offroad"]) <= r["infraction"] + 1e-12
        assert r["infraction"] <= r["collision"] + r["offroad"] + 1e-12
        assert r["infraction_low"] <= r["infraction"] <= r["infraction_high"]
        assert 0.0 <= r["infraction_vehicle"] <= r["infraction"] + 1e-12
        assert r["num_scenes"] == get_traffic_profile("tiny").eval.num_scenes
        if r["infraction"] < 1:
            assert r["n_parallel"] == num_parallel_samples(r["infraction"], p)
        if r["model"] != "baseline" and r["n_parallel"] and base["n_parallel"]:
            assert r["reduction"] == pytest.approx(1 - r["n_parallel"] / base["n_parallel"])
        assert math.isfinite(r["r_elbo"]) or r["model"] == "ablation_time_independent"
        assert r["sample_seconds_per_batch"] > 0
    # the stack carries its classifiers' parameters; the distilled student is baseline-sized
    clf = by["iter1"]["parameters"] - base["parameters"]
    assert clf > 0 and by["iter2"]["parameters"] == base["parameters"] + 2 * clf
    assert by["distilled"]["parameters"] == base["parameters"]


def test_resume_reloads_every_stage(tiny_run: tuple[Path, list[dict]]) -> None:
    run_dir, rows = tiny_run
    before = RunDir(run_dir, resume=True).completed_stages()
    again = run_traffic(get_traffic_profile("tiny"), run_dir, resume=True, progress=False)
    assert RunDir(run_dir, resume=True).completed_stages() == before
    assert [r["infraction"] for r in again] == [r["infraction"] for r in rows]
    changed = dataclasses.replace(get_traffic_profile("tiny"), seed=1)
    with pytest.raises(Exception, match="config differs"):
        run_traffic(changed, run_dir, resume=True, progress=False)


def test_training_scenes_pass_the_oracle_and_overlaps_do_not(task: TrafficTask) -> None:
    train = task.train
    assert bool(task.oracle(train.tokens, **train.cond).all())
    # put the second vehicle of a two-vehicle scene onto the first: both collide
    counts = train.cond["valid"].sum(1)
    i = int(torch.nonzero(counts >= 2)[0])
    tokens = train.tokens[i : i + 1].clone()
    tokens[0, 1] = tokens[0, 0]
    cond = {k: v[i : i + 1] for k, v in train.cond.items()}
    v = task.scene_oracle.details(tokens, **cond)
    assert bool(v.collision[0, 0]) and bool(v.collision[0, 1])
    # a vehicle far outside its window is offroad; a non-finite token counts as both infractions
    tokens = train.tokens[i : i + 1].clone()
    tokens[0, 0, :2] = 50.0
    tokens[0, 1, 0] = float("nan")
    v = task.scene_oracle.details(tokens, **cond)
    assert bool(v.offroad[0, 0]) and bool(v.offroad[0, 1]) and bool(v.collision[0, 1])
    assert not bool((v.collision | v.offroad)[0, ~cond["valid"][0]].any())  # padding never infracts


def test_eps_model_is_exact_at_padding(task: TrafficTask) -> None:
    model = task.new_denoiser()
    batch = task.train.rows(torch.arange(16))
    valid = batch.cond["valid"]
    assert bool((~valid).any())
    t = torch.randint(task.schedule.num_steps, (16,), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(1))
    x_t = task.schedule.add_noise(batch.tokens, t, eps)
    with torch.no_grad():
        out = model(x_t, t, **batch.cond)
    # padding tokens are 0, so x_t = sqrt(1 - ab) eps there: the model returns eps (float32 rounding)
    torch.testing.assert_close(out[~valid], eps[~valid], rtol=1e-5, atol=1e-5)
    # hence the DDPM loss equals the loss summed over real vehicles only
    g = torch.Generator().manual_seed(3)
    full = ddpm_loss(lambda x, tt: model(x, tt, **batch.cond), batch.tokens, task.schedule, generator=g)
    g = torch.Generator().manual_seed(3)
    tt = torch.randint(task.schedule.num_steps, (16,), generator=g)
    e = torch.randn(batch.tokens.shape, generator=g)
    x_t = task.schedule.add_noise(batch.tokens, tt, e)
    masked = ((model(x_t, tt, **batch.cond) - e).pow(2).sum(-1) * valid).sum(1).mean()
    torch.testing.assert_close(full, masked, rtol=1e-5, atol=1e-6)


def test_scene_r_elbo_binds_each_scene_to_its_conditioning(task: TrafficTask) -> None:
    # an ε-model that is exact iff it is handed the conditioning of the row's own scene: r-ELBO = 0
    scenes = task.heldout.rows(torch.arange(7))
    x0 = scenes.tokens
    alpha_bar = task.schedule.alphas_cumprod.to(torch.float32)

    def exact(x_t: torch.Tensor, t: torch.Tensor, *, scene_id: torch.Tensor, **context) -> torch.Tensor:
        ab = alpha_bar[t][:, None, None]
        return (x_t - ab.sqrt() * x0[scene_id]) / (1 - ab).sqrt()

    exact.parameterisation = "eps"  # an ε-network: scene_r_elbo sees it through its EpsDenoiser
    cond = dict(scenes.cond, scene_id=torch.arange(7))
    value = scene_r_elbo(exact, SceneSet(x0, cond), task.schedule, num_timesteps=3, seed=5, batch_scenes=4)
    assert value.shape == (7,)
    assert float(value.abs().max()) < 1e-4  # float32 rounding of x_t, amplified by 1/sqrt(1 - ab) <= 100
    shuffled = dict(cond, scene_id=torch.arange(7).roll(1))
    wrong = scene_r_elbo(exact, SceneSet(x0, shuffled), task.schedule, num_timesteps=3, seed=5)
    assert float(wrong.max()) < -1e-2


def test_profiles() -> None:
    for name in ("tiny", "quick", "paper"):
        config = get_traffic_profile(name)
        assert isinstance(config, TrafficExperimentConfig) and config.profile == name
    with pytest.raises(ValueError, match="unknown profile"):
        get_traffic_profile("huge")
    with pytest.raises(ValueError, match="unknown ablation"):
        dataclasses.replace(get_traffic_profile("tiny"), ablations=("nope",))


def test_box_map_samples_read_the_crop_at_box_points(task: TrafficTask) -> None:
    from genneg.models.scene_networks import MAP_BLUR_CELLS, box_map_samples

    levels = len(MAP_BLUR_CELLS)
    train = task.train
    samples = box_map_samples(train.tokens, train.cond["map_raster"], task.norm, extent=task.crop_extent)
    valid = train.cond["valid"]
    assert samples.shape == (*valid.shape, 5 * levels)
    assert bool((samples[..., 0][valid] > 0).all())  # every training vehicle's centre is on the road
    # a crop that is drivable only in the left half: a sharp point's reading follows its x
    tokens = torch.zeros(1, 2, 7)
    tokens[0, :, 2] = 1.0  # heading +x
    tokens[0, 0, 0], tokens[0, 1, 0] = -0.5, 0.5
    crop = torch.zeros(1, 1, 16, 16)
    crop[..., :8] = 1.0
    out = box_map_samples(tokens, crop, task.norm, blur_cells=(0.0,))
    assert torch.equal(out[0, 0], torch.ones(5)) and torch.equal(out[0, 1], -torch.ones(5))
    tokens[0, 0, 0] = 3.0  # outside the crop: not drivable
    assert torch.equal(box_map_samples(tokens, crop, task.norm, blur_cells=(0.0,))[0, 0], -torch.ones(5))
    # blurred levels: an off-road point nearer the road reads more drivable, and the gradient of the
    # reading points towards the road (negative x) where the sharp raster is flat
    x = torch.zeros(1, 2, 7)
    x[0, :, 2] = 1.0
    x[0, 0, 0], x[0, 1, 0] = 0.15, 0.45
    x.requires_grad_(True)
    blurred = box_map_samples(x, crop, task.norm, blur_cells=(0.0, 2.0))
    assert blurred[0, 0, 5] > blurred[0, 1, 5] > -1
    blurred[0, 1, 5].backward()
    assert x.grad[0, 1, 0] < 0
    # a crop reaching beyond the window (extent 1.25): a point just outside the window reads the crop
    everywhere = torch.ones(1, 1, 20, 20)
    beyond = torch.zeros(1, 1, 7)
    beyond[0, 0, 2] = 1.0
    beyond[0, 0, 0] = 1.0  # the box's front corners stick out of the window
    assert bool((box_map_samples(beyond, everywhere, task.norm, extent=1.25)[0, 0, :5] == 1).all())
    # with extent 1 the front corners are off the crop
    assert bool((box_map_samples(beyond, everywhere, task.norm)[0, 0, 1:3] < 0).all())
    # blurring conserves the drivable area away from the crop border
    from genneg.models.scene_networks import blurred_crops

    inner = torch.zeros(1, 1, 32, 32)
    inner[..., 12:20, 10:22] = 1.0
    fields = blurred_crops(inner, (0.0, 1.5))
    torch.testing.assert_close(fields[:, 1].sum(), inner.sum(), rtol=1e-5, atol=1e-4)


def test_dihedral_augment_moves_tokens_and_crop_together(tiny_run: tuple[Path, list[dict]],
                                                         task: TrafficTask) -> None:
    from genneg.models.scene_networks import box_map_samples
    from genneg.pipeline.balanced import BalancedDataset
    from genneg.pipeline.traffic import dihedral_augment

    data = BalancedDataset.load(tiny_run[0] / "iter1" / "data" / "dataset.safetensors")
    aug = dihedral_augment(data)
    n = len(data)
    assert len(aug) == 8 * n and aug.pi_neg == data.pi_neg
    assert torch.equal(aug.labels, data.labels.repeat(8)) and torch.equal(aug.x[:n], data.x)
    reads = box_map_samples(aug.x, aug.cond["map_raster"], task.norm, extent=task.crop_extent)
    reads = reads.reshape(8, n, data.x.shape[1], -1, 5)
    mask = data.part_mask
    for k in range(8):
        # at every blur level the centre reads the same value in every copy; the corners are the same
        # set, in another order
        torch.testing.assert_close(reads[k, ..., 0][mask], reads[0, ..., 0][mask])
        corners = reads[:, ..., 1:].sort(-1).values
        torch.testing.assert_close(corners[k][mask], corners[0][mask])
    # eight distinct copies of a scene whose vehicle is off-centre
    i, j = (mask & (data.x[..., :2].abs().sum(-1) > 0.1)).nonzero()[0].tolist()
    assert len({tuple(aug.x[k * n + i, j, :4].tolist()) for k in range(8)}) == 8


def test_cli_train_traffic_resume_report_and_refusals(tiny_run: tuple[Path, list[dict]], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from genneg.cli import main

    run_dir, rows = tiny_run
    assert main(["train", "traffic", "--run-dir", str(run_dir), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| Gen-neG iteration 2 |" in out and "report:" in out
    assert main(["report", "--run-dir", str(run_dir)]) == 0
    assert "# Gen-neG on traffic scenes (tiny profile)" in capsys.readouterr().out
    # a reopened traffic run evaluates on the run's own contexts and noise: the same numbers as its report
    assert main(["eval", "--run-dir", str(run_dir), "--model", "iter2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    by = {r["model"]: r for r in rows}
    for key in ("infraction", "infraction_vehicle", "collision", "offroad", "r_elbo", "n_parallel"):
        assert metrics[key] == by["iter2"][key], key
    assert main(["sample", "--run-dir", str(run_dir), "--model", "guided", "--num", "5",
                 "--out", str(tmp_path / "scenes.npz")]) == 0
    saved = np.load(tmp_path / "scenes.npz")
    assert saved["x"].shape == (5, 4, 7) and saved["cond.valid"].shape == (5, 4)
    assert np.all(saved["x"][~saved["cond.valid"]] == 0)  # padding slots stay exactly zero
    assert main(["train", "checkerboard", "--run-dir", str(run_dir), "--resume", "--quiet"]) == 2
    assert "'traffic' run" in capsys.readouterr().err
    assert main(["train", "traffic", "--run-dir", str(run_dir), "--resume", "--profile", "quick",
                 "--quiet"]) == 2
    assert "profile 'tiny'" in capsys.readouterr().err


def test_noisy_map_reading_is_the_expected_reading_over_the_noise() -> None:
    """``blurred_crops`` with ``noise_cells``: the sharp level read at a point equals the Monte-Carlo mean
    of the sharp crop read at that point plus Gaussian noise (away from the crop border)."""
    from genneg.models.scene_networks import blurred_crops

    g = torch.Generator().manual_seed(0)
    crop = torch.zeros(2, 1, 64, 64, dtype=torch.float64)
    crop[:, :, 20:44, 26:38] = 1.0
    noise = torch.tensor([0.0, 3.0], dtype=torch.float64)
    fields = blurred_crops(crop, (0.0, 1.0), noise)
    torch.testing.assert_close(fields[0, 0], crop[0, 0])  # no noise, no blur: the raster itself
    # point (row 32, col 38): on the road's right edge; Monte Carlo over integer cell offsets
    offsets = torch.randn(200_000, 2, generator=g, dtype=torch.float64) * 3.0
    rows = (32 + offsets[:, 0]).round().long()
    cols = (38 + offsets[:, 1]).round().long()
    monte_carlo = crop[1, 0, rows, cols].mean()
    assert abs(float(fields[1, 0, 32, 38]) - float(monte_carlo)) < 0.02
    # each level keeps its own blur in quadrature with the noise
    both = blurred_crops(crop, (0.0, 4.0), torch.tensor([0.0, 3.0], dtype=torch.float64))
    direct = blurred_crops(crop, (5.0,))
    torch.testing.assert_close(both[1, 1], direct[1, 0], atol=1e-6, rtol=0)


def test_wide_blurs_on_the_pooled_crop_match_the_full_resolution_blur() -> None:
    from genneg.models.scene_networks import _gaussian_blur, blurred_crops

    g = torch.Generator().manual_seed(0)
    crop = (torch.rand(1, 1, 12, 12, generator=g) > 0.5).double()
    crop = crop.repeat_interleave(4, -1).repeat_interleave(4, -2)  # 48 x 48, blocks of 4 cells
    for std in (4.5, 6.0, 10.0):
        fast = blurred_crops(crop, (std,))[0, 0]
        exact = _gaussian_blur(crop, torch.tensor([std], dtype=torch.float64))[0, 0]
        assert float((fast - exact)[8:-8, 8:-8].abs().max()) < 0.03, std


def test_fast_sampler_from_a_traffic_run_plans_in_a_scene(tiny_run: tuple[Path, list[dict]],
                                                           task: TrafficTask) -> None:
    """FastSampler.from_run on a traffic run: the distilled model, conditioned per call on a held-out
    scene (its first vehicle known, the other present slots sampled), keeps the known vehicle exactly and
    the padding at zero; so does the guided stack, its classifiers reading the same per-call ``cond``."""
    from genneg.planning.fast_sampler import FastSampler
    from genneg.planning.traffic import scene_condition

    run_dir, rows = tiny_run
    sampler = FastSampler.from_run(run_dir, "distilled", num_parallel=3, num_steps=4)
    assert sampler.run_model == "distilled"
    assert sampler.infraction_rate == {r["model"]: r for r in rows}["distilled"]["infraction"]
    scene = task.heldout.rows(torch.tensor([0]))
    valid = scene.cond["valid"][0]
    known = torch.zeros_like(valid)
    known[0] = True
    road = task.road_maps[int(scene.cond["map_index"][0])].drivable_map
    centre = tuple(float(c) for c in scene.cond["centre_m"][0])
    cfg = get_traffic_profile("tiny").data
    condition = scene_condition(scene.tokens[0], known, valid, road, centre, norm=task.norm,
                                map_cells=cfg.crop_cells, crop_margin_m=cfg.crop_margin_m)
    sampler = FastSampler.from_run(run_dir, "distilled", num_parallel=3, num_steps=4, drivable_map=road)
    result = sampler(condition, seed=0)
    assert result.samples.shape == (3, 4, 7)
    torch.testing.assert_close(result.samples[:, 0], scene.tokens[0, 0].expand(3, 7))
    assert bool((result.samples[:, ~valid] == 0).all())
    guided = FastSampler.from_run(run_dir, "guided", num_parallel=3, num_steps=4, drivable_map=road)
    assert guided.kind == "ddpm" and guided.mode in ("split", "whole")
    result = guided(condition, seed=0)
    assert torch.equal(result.samples[:, 0], scene.tokens[0, 0].expand(3, 7))  # kept exactly
    assert bool((result.samples[:, ~valid] == 0).all()) and bool(torch.isfinite(result.samples).all())
    assert result.times.guidance_ms > 0  # the classifiers ran, on the scene's cond
    assert result.verdicts.shape == (3, 4)


class _Kill(RuntimeError):
    pass


def test_killed_traffic_run_resumes_to_the_same_numbers(tiny_run: tuple[Path, list[dict]],
                                                        tmp_path: Path) -> None:
    """Kill the traffic run while iteration 1's classifier trains, resume: every row equals the
    uninterrupted run's (timings aside), and the finished stages are not rerun."""
    _, reference = tiny_run
    run_dir = tmp_path / "run"
    config = get_traffic_profile("tiny")
    started: list[str] = []

    def kill_in_classifier(stage: str, event: str) -> None:
        if (stage, event) == ("iter1/classifier", "start"):
            raise _Kill(stage)

    with pytest.raises(_Kill):
        run_traffic(config, run_dir, progress=False, hook=kill_in_classifier)
    run = RunDir(run_dir, resume=True)
    assert run.is_done("iter1/data") and not run.is_done("iter1/classifier")

    def record(stage: str, event: str) -> None:
        if event == "start":
            started.append(stage)

    rows = run_traffic(config, run_dir, resume=True, progress=False, hook=record)
    assert "data" not in started and "baseline" not in started and "iter1/data" not in started
    assert "iter1/classifier" in started
    timing = {"sample_seconds_per_batch"}
    assert ([{k: v for k, v in r.items() if k not in timing} for r in rows]
            == [{k: v for k, v in r.items() if k not in timing} for r in reference])


# data-parallel (issue 14) -----------------------------------------------------------------------------




def test_evaluation_is_sharded_and_agrees_with_one_process(tiny_run: tuple[Path, list[dict]], tmp_path: Path,
                                                           torchrun_tools: ModuleType) -> None:
    """The evaluate hook of a guided stack (iteration 1) under torchrun (2 processes, batches of 5
    of the 32 evaluation scenes: unequal shares, a short last batch) gives the one-process scenes, verdicts,
    counts and r-ELBO (also in chunks of 5 held-out scenes) exactly (``EVAL_RTOL`` of
    ``tests/distributed/torchrun_tools.py``)."""
    metrics = torchrun_tools.check_sharded_evaluation(tiny_run[0], ["iter1"], 5, tmp_path / "two")
    for m in metrics.values():
        assert m["num_scenes"] == get_traffic_profile("tiny").eval.num_scenes and m["batch_size"] == 5
        assert m["infractions"] == round(m["infraction"] * m["num_scenes"])  # exact counts, gathered
        assert m["infractions_vehicle"] == round(m["infraction_vehicle"] * m["num_vehicles"])


def test_run_continued_under_torchrun(tiny_run: tuple[Path, list[dict]], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], torchrun_tools: ModuleType) -> None:
    """The finished one-process run's data and baseline, continued with ``--resume`` under torchrun (2
    processes): every later stage (Gen-neG iterations, the three ablations, distillation, evaluations,
    report) runs data-parallel into one consistent run directory. The continued run's config holds twice
    the sampling batch: it is the global batch, so each rank's sampler calls take the one-process run's 64
    scenes and the two runs make the same draws (the 32 evaluation scenes are one call in both).

    Compared with the one-process run: what starts from the same weights is exact: the baseline's
    evaluation (the same scenes, verdicts and r-ELBO), iteration 1's balanced set and the imbalanced
    ablation's natural mix (drawn from the baseline: the same draws, counts and examples). The classifiers
    train on those sets from the same initial weights, so their losses agree to the order of
    floating-point sums (DDP averages two half-batch gradients; measured at most 2.3e-7 relative, so 1e-4
    leaves a margin of 400).
    Everything sampled from a model guided by a classifier is not compared: the tiny traffic model's
    100-step ancestral sampler is chaotic (a 1e-6 relative change of the weights moves its samples by O(1)),
    so those rows agree only statistically; they are checked for shape and completeness."""
    import shutil

    one = tiny_run[0]
    two = tmp_path / "two"
    for name in ("config.json", "task.json", "stages/data.done", "stages/baseline.done",
                 "checkpoints/baseline.safetensors", "checkpoints/baseline.json"):
        (two / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(one / name, two / name)
    shutil.copytree(one / "data", two / "data")
    config = json.loads((one / "config.json").read_text())
    config["gen_neg"]["sample_batch_size"] *= 2
    (two / "config.json").write_text(json.dumps(config))
    (two / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in torchrun_tools.records(one) if r["stage"] in ("data", "baseline")))
    done = torchrun_tools.run(torchrun_tools.torchrun("-m", "genneg", "train", "--run-dir", str(two),
                                                      "--resume", "--quiet"))
    assert done.stdout.count("| Gen-neG iteration 2 |") == 1  # rank 0 alone prints the table

    marks = torchrun_tools.markers(two)
    assert set(marks) == set(torchrun_tools.markers(one))
    assert {s: (m["world_size"], m["backend"]) for s, m in marks.items() if m["world_size"] == 1} == {
        "data": (1, "none"), "baseline": (1, "none")}
    assert {(m["world_size"], m["backend"]) for s, m in marks.items() if s not in ("data", "baseline")} == {
        (2, "gloo")}
    # one run directory, written once by rank 0: the same files, each stage's records once, in order
    listing = sorted(str(p.relative_to(two)) for p in two.rglob("*"))
    assert listing == sorted(str(p.relative_to(one)) for p in one.rglob("*"))
    a, b = torchrun_tools.records(one), torchrun_tools.records(two)
    assert [r["stage"] for r in a] == [r["stage"] for r in b]
    report = (two / "report.md").read_text()
    assert "world size 1 (backend none); world size 2 (backend gloo)" in report
    assert "world size 1 (backend none)" in (one / "report.md").read_text()

    for r, r2 in map(torchrun_tools.at_half_the_batch, a, b):
        stage = r["stage"]
        if stage in ("data", "baseline", "eval/baseline", "iter1/data", "ablation/imbalanced/data"):
            torchrun_tools.assert_same_metrics(r, r2, 0.0, stage, atol=0.0)  # exact
        elif stage.endswith("/classifier") and not stage.startswith("iter2"):
            torchrun_tools.assert_same_metrics(r, r2, 1e-4, stage)
        elif r.get("kind") == "eval":
            assert r2["num_scenes"] == r["num_scenes"] and 0 <= r2["infraction"] <= 1
            assert math.isfinite(r2["r_elbo"]) or stage == "eval/ablation_time_independent"
    for stage in ("iter1/data", "ablation/imbalanced/data"):
        x1 = load_tensors(one / stage / "dataset.safetensors")
        x2 = load_tensors(two / stage / "dataset.safetensors")
        assert x1.keys() == x2.keys() and all(torch.equal(x1[k], x2[k]) for k in x1), stage
    for name in ("baseline", "iter2", "distilled"):
        assert (two / f"scenes_{name}.png").stat().st_size > 1000

    # a run made under torchrun reopens in one process: `genneg eval` gives its recorded numbers
    from genneg.cli import main

    assert main(["eval", "--run-dir", str(two), "--model", "iter2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    recorded = next(r for r in b if r["stage"] == "eval/iter2")
    shared = [k for k in recorded if k in metrics]
    torchrun_tools.assert_same_metrics({k: metrics[k] for k in shared}, {k: recorded[k] for k in shared},
                                       0.0, "genneg eval", atol=0.0)
    assert main(["sample", "--run-dir", str(two), "--model", "distilled", "--num", "3",
                 "--out", str(tmp_path / "scenes.npz")]) == 0
    assert np.load(tmp_path / "scenes.npz")["x"].shape == (3, 4, 7)


# the later stages of a traffic run cut to what the wiring needs: one Gen-neG iteration, no ablation (the
# continued run above has them), distillation from 80 teacher scenes drawn in calls of 16 per rank (the
# 32 pooled evaluation scenes of iteration 1, then guided-teacher batches on both ranks: scenes and their
# conditioning gathered in row order)
FROM_DATA = ["gen_neg.iterations=1", "ablations=[]", "gen_neg.sample_batch_size=32",
             "distill.x0_source=teacher", "distill.num_teacher_samples=80"]


def test_run_from_the_data_stage_under_torchrun(tiny_run: tuple[Path, list[dict]], tmp_path: Path,
                                                torchrun_tools: ModuleType) -> None:
    """The tiny traffic profile under torchrun (2 processes) from its first stage, later stages cut by
    :data:`FROM_DATA`: rank 0 writes the data (the one-process run's files, byte for byte: the same
    config), the baseline trains under DDP from the same weights on the same global batches (its training
    records agree with the one-process run's to the order of floating-point sums: 1e-4 relative, as the
    classifiers of the continued run), and every later stage, the distillation from teacher samples
    included, finishes in one run directory whose markers record world size 2. What is sampled from the
    baseline is not compared: its weights differ from the one-process run's by about 1e-7 relative, and
    the tiny model's ancestral sampler is chaotic (see the continued run)."""
    one, two = tiny_run[0], tmp_path / "two"
    sets = [a for o in FROM_DATA for a in ("--set", o)]
    done = torchrun_tools.run(torchrun_tools.torchrun("-m", "genneg", "train", "traffic", "--profile", "tiny",
                                                      "--run-dir", str(two), "--quiet", *sets))
    assert done.stdout.count("| Gen-neG iteration 1 |") == 1  # rank 0 alone prints the table
    marks = torchrun_tools.markers(two)
    assert set(marks) == {"data", "baseline", "eval/baseline", "iter1/data", "iter1/classifier",
                          "eval/iter1", "distill", "eval/distilled"}
    assert {(m["world_size"], m["backend"]) for m in marks.values()} == {(2, "gloo")}
    assert marks["distill"]["x0_source"] == "teacher" and marks["distill"]["num_x0"] == 80
    assert marks["iter1/data"]["num_pos"] == marks["iter1/data"]["num_neg"] == 8
    for path in sorted((one / "data").rglob("*")):
        if path.is_file():
            assert (two / path.relative_to(one)).read_bytes() == path.read_bytes(), path
    a = [r for r in torchrun_tools.records(one) if r["stage"] in ("data", "baseline")]
    b = [r for r in torchrun_tools.records(two) if r["stage"] in ("data", "baseline")]
    assert len(a) == len(b) > 2
    for ra, rb in zip(a, b, strict=True):
        torchrun_tools.assert_same_metrics(ra, rb, 1e-4, ra["stage"])
    evals = {r["model"]: r for r in torchrun_tools.records(two) if r.get("kind") == "eval"}
    assert set(evals) == {"baseline", "iter1", "distilled"}
    for r in evals.values():
        assert r["num_scenes"] == 32 and 0 <= r["infraction"] <= 1 and math.isfinite(r["r_elbo"])
    assert "world size 2 (backend gloo)" in (two / "report.md").read_text()
