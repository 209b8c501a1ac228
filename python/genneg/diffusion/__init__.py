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
from genneg.diffusion.samplers import euler_step, heun_sample, heun_step
from genneg.diffusion.schedules import karras_sigmas, log_linear_sigmas, make_sigmas

__all__ = [
    "DDPMConfig",
    "DDPMSchedule",
    "Denoiser",
    "EDMConfig",
    "EDMPrecond",
    "EpsDenoiser",
    "EpsModel",
    "ddpm_ancestral_sample",
    "ddpm_loss",
    "ddpm_timesteps",
    "edm_loss",
    "edm_loss_weight",
    "edm_preconditioning",
    "euler_step",
    "expand_sigma",
    "heun_sample",
    "heun_step",
    "karras_sigmas",
    "log_linear_sigmas",
    "make_sigmas",
    "sample_sigma_log_uniform",
]
