"""Planning: a low-latency, conditioned sampler that returns a valid sample within a deadline.

- :class:`FastSampler`, :class:`SamplerConfig`: built once (from a denoiser ``D(x, sigma, **cond)``: plain,
  guided stack, distilled, a DDPM ε-network through its ``EpsDenoiser``, or a finished run), called every
  planning tick.
- :class:`InpaintCondition` and the inpainting reference samplers: fix part of the sample.
- :class:`SampleResult`, :class:`StageTimes`: what a call returns.
- :mod:`genneg.planning.traffic`: traffic-scene conditions (ego and seen vehicles, map) and the oracle on
  scene tokens.
"""

from genneg.planning.fast_sampler import FastSampler, SamplerConfig, parallel_samples_for, success_probability
from genneg.planning.inpainting import (
    InpaintCondition,
    batch_cond,
    check_condition,
    fix_coordinates,
    inpaint_ancestral_sample,
    inpaint_heun_sample,
)
from genneg.planning.result import SampleResult, StageTimes

__all__ = [
    "FastSampler",
    "InpaintCondition",
    "SampleResult",
    "SamplerConfig",
    "StageTimes",
    "batch_cond",
    "check_condition",
    "fix_coordinates",
    "inpaint_ancestral_sample",
    "inpaint_heun_sample",
    "parallel_samples_for",
    "success_probability",
]
