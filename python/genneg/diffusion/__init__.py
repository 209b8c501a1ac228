"""Diffusion models: EDM and DDPM, schedules, samplers."""

from genneg.diffusion.ddpm import (
    DDPMConfig,
    DDPMSchedule,
    EpsDenoiser,
    EpsModel,
    ddpm_ancestral_sample,
    ddpm_loss,
    ddpm_timesteps,
)
from genneg.diffusion.denoiser import Denoiser, expand_sigma
from genneg.diffusion.edm import (
    EDMConfig,
    EDMPrecond,
    edm_loss,
    edm_loss_weight,
    edm_preconditioning,
    sample_sigma_log_uniform,
)
from genneg.diffusion.samplers import (
    SAMPLERS,
    Sampler,
    denoiser_calls,
    dpmpp_2m_sample,
    euler_sample,
    euler_step,
    get_sampler,
    heun_sample,
    heun_step,
    multistep_coefficients,
    unipc_sample,
)
from genneg.diffusion.schedules import karras_sigmas, log_linear_sigmas, make_sigmas

__all__ = [
    "SAMPLERS",
    "DDPMConfig",
    "DDPMSchedule",
    "Denoiser",
    "EDMConfig",
    "EDMPrecond",
    "EpsDenoiser",
    "EpsModel",
    "Sampler",
    "ddpm_ancestral_sample",
    "ddpm_loss",
    "ddpm_timesteps",
    "denoiser_calls",
    "dpmpp_2m_sample",
    "edm_loss",
    "edm_loss_weight",
    "edm_preconditioning",
    "euler_sample",
    "euler_step",
    "expand_sigma",
    "get_sampler",
    "heun_sample",
    "heun_step",
    "karras_sigmas",
    "log_linear_sigmas",
    "make_sigmas",
    "multistep_coefficients",
    "sample_sigma_log_uniform",
    "unipc_sample",
]
