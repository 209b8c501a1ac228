"""FastSampler.from_run on a run directory laid out by genneg.pipeline.experiment (written here with
random weights and recorded evaluations, so the test takes a second instead of training)."""

from __future__ import annotations

import math

import pytest
import torch

from genneg.guidance import GuidedDenoiser
from genneg.io.checkpoint import save_checkpoint
from genneg.io.rundir import RunDir
from genneg.pipeline.experiment import build_task
from genneg.pipeline.profiles import get_profile
from genneg.planning.fast_sampler import FastSampler

RATES = {"baseline": (0.30, 0.33), "iter2": (0.12, 0.14), "distilled": (0.15, 0.17)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = get_profile("tiny")
    run = RunDir(root)
    run.write_config(config)
    task = build_task(config)
    task.setup(config, root / "data")
    torch.manual_seed(0)
    for name in ("baseline", "distilled"):
        save_checkpoint(run.path("checkpoints", f"{name}.safetensors"), task.new_denoiser(), {"stage": name})
    for k in range(1, config.gen_neg.iterations + 1):
        save_checkpoint(
            run.path("checkpoints", f"classifier_iter{k}.safetensors"),
            task.new_classifier(True),
            {"stage": f"iter{k}/classifier", "time_dependent": True},
        )
    for name, (rate, high) in RATES.items():
        run.log(f"eval/{name}", {"kind": "eval", "model": name, "infraction": rate, "infraction_high": high})
        run.mark_done(f"eval/{name}")
    return root


@pytest.mark.parametrize(
    ("model", "name"), [("baseline", "baseline"), ("guided", "iter2"), ("distilled", "distilled")]
)
def test_from_run_uses_measured_rate(run_dir, model, name) -> None:
    p = 0.99999
    sampler = FastSampler.from_run(run_dir, model, p=p, num_steps=3)
    rate = RATES[name][0]
    assert sampler.infraction_rate == rate and sampler.run_model == name
    assert sampler.num_parallel == math.ceil(math.log(1 - p) / math.log(rate))
    assert isinstance(sampler.model, GuidedDenoiser) == (model == "guided")
    assert sampler.mode == ("split" if model == "guided" else "plain")
    result = sampler(seed=0)
    assert result.samples.shape == (sampler.num_parallel, 2)
    upper = FastSampler.from_run(run_dir, model, p=p, num_steps=3, rate="upper")
    assert upper.num_parallel == math.ceil(math.log(1 - p) / math.log(RATES[name][1]))


def test_from_run_bad_model(run_dir) -> None:
    with pytest.raises(ValueError):
        FastSampler.from_run(run_dir, "iter9", num_parallel=4)


def test_from_run_takes_its_step_count_from_an_explicit_schedule(run_dir) -> None:
    levels = [80.0, 2.0, 0.1, 0.0]
    sampler = FastSampler.from_run(run_dir, "distilled", num_parallel=4, solver="dpmpp_2m", sigmas=levels)
    assert sampler.levels == levels and sampler.config.num_steps == 3
    assert torch.isfinite(sampler(seed=0).samples).all()
    with pytest.raises(ValueError, match="pass num_steps=3"):
        FastSampler.from_run(run_dir, "distilled", num_parallel=4, sigmas=levels, num_steps=5)
