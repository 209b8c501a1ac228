"""Sampling options of a reopened run (``Task.with_sampling``): what each task offers, and what it refuses."""

from __future__ import annotations

import pytest

from genneg.pipeline.checkerboard import CheckerboardTask
from genneg.pipeline.profiles import get_profile
from genneg.pipeline.task import Task
from genneg.pipeline.traffic import TrafficTask
from genneg.pipeline.traffic_profiles import get_traffic_profile


def test_edm_task_replaces_sampling_fields_only() -> None:
    config = get_profile("tiny")
    new = CheckerboardTask().with_sampling(config, sampler="dpmpp_2m", num_steps=6, schedule="karras",
                                           sigma_max=10.0, rho=None)
    assert (new.sampling.sampler, new.sampling.num_steps, new.sampling.schedule, new.sampling.sigma_max) == (
        "dpmpp_2m", 6, "karras", 10.0)
    assert new.sampling.rho == config.sampling.rho and new.edm == config.edm
    assert CheckerboardTask().with_sampling(config) == config  # nothing given: the run's
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        CheckerboardTask().with_sampling(config, sampler="ddim")
    with pytest.raises(ValueError, match="unknown sampling option"):
        CheckerboardTask().with_sampling(config, eta=1.0)
    with pytest.raises(ValueError, match="num_steps"):
        CheckerboardTask().with_sampling(config, num_steps=0)


def test_traffic_task_offers_steps_of_the_ancestral_sampler() -> None:
    config = get_traffic_profile("tiny")
    assert TrafficTask().with_sampling(config, num_steps=7).gen_neg.sample_steps == 7
    assert TrafficTask().with_sampling(config, sampler="ancestral") == config
    with pytest.raises(ValueError, match="ancestral sampler only"):
        TrafficTask().with_sampling(config, sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="sigma_max"):
        TrafficTask().with_sampling(config, sigma_max=5.0)


def test_default_task_offers_nothing() -> None:
    assert Task().with_sampling("config") == "config"
    with pytest.raises(ValueError, match="no choice"):
        Task().with_sampling("config", num_steps=4)
