"""Issue 16, guidance kinds: every guided call gives the guided answer in every grad mode (plain, no_grad,
inference_mode), on every guidance entry point (DDPM models through their EpsDenoiser); a classifier that
declares integer-timestep coordinates is refused."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from genneg.diffusion.ddpm import DDPMConfig, DDPMSchedule, EpsDenoiser
from genneg.diffusion.samplers import euler_ancestral_sample, heun_sample
from genneg.guidance import GuidedDenoiser, TimeClassifier, guidance_gradient

GRAD_MODES = {
    "grad": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


class DiagonalLogit(nn.Module):
    """logit = 4 (x[:, 1] - x[:, 0]) whatever sigma: ∇ log c = 4 sigmoid(-logit) (-1, 1)."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return 4.0 * (x[:, 1] - x[:, 0])


def _expected(x: torch.Tensor) -> torch.Tensor:
    w = 4.0 * torch.sigmoid(-4.0 * (x[:, 1] - x[:, 0]))
    return torch.stack([-w, w], dim=1)


def _identity_denoiser(x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
    return x * 0.5


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_guidance_gradient_in_every_grad_mode(mode: str) -> None:
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0], [-0.5, 0.1]])
    with GRAD_MODES[mode]():
        grad = guidance_gradient([DiagonalLogit()], x, 0.7)
        guided = GuidedDenoiser(_identity_denoiser, [DiagonalLogit()])(x, torch.full((3,), 0.7))
    torch.testing.assert_close(grad, _expected(x))
    torch.testing.assert_close(guided, 0.5 * x + 0.49 * _expected(x))


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_guided_ddpm_model_in_every_grad_mode(mode: str) -> None:
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    sigma = schedule.sigmas[[3, 17]].to(torch.float32)
    guided = GuidedDenoiser(EpsDenoiser(lambda z, tt: torch.zeros_like(z), schedule), [DiagonalLogit()])
    with GRAD_MODES[mode]():
        out = guided(x, sigma)
    torch.testing.assert_close(out, x + sigma[:, None] ** 2 * _expected(x))


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_guided_sampling_in_every_grad_mode(mode: str) -> None:
    """A full guided sample under each mode equals the one without a mode (samplers included)."""
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    guided = GuidedDenoiser(_identity_denoiser, [DiagonalLogit()], [3.0])
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.1, 0.0])
    reference = heun_sample(guided, x_T, sigmas)
    unguided = heun_sample(GuidedDenoiser(_identity_denoiser), x_T, sigmas)
    assert not torch.allclose(reference, unguided)
    with GRAD_MODES[mode]():
        torch.testing.assert_close(heun_sample(guided, x_T, sigmas), reference)
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    ddpm = GuidedDenoiser(EpsDenoiser(lambda z, tt: 0.1 * z, schedule), [DiagonalLogit()], [3.0])

    def sample() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return euler_ancestral_sample(ddpm, x_T, schedule.sampling_sigmas(5), generator=generator)

    ref_ddpm = sample()
    with GRAD_MODES[mode]():
        got = sample()
    torch.testing.assert_close(got, ref_ddpm)


def test_inference_tensors_in_cond_are_usable() -> None:
    class CondLogit(nn.Module):
        def forward(self, x: torch.Tensor, sigma: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
            return scale * (x[:, 1] - x[:, 0])

    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    with torch.inference_mode():
        scale = torch.full((2,), 4.0)
        grad = guidance_gradient([CondLogit()], x, 0.5, cond={"scale": scale})
    torch.testing.assert_close(grad, _expected(x))


class _Net(nn.Module):
    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return (x_in[:, 1] - x_in[:, 0]) + c_noise


def test_time_classifier_on_a_ddpm_model_gets_sigma() -> None:
    """A DDPM model is guided through its EpsDenoiser, so a TimeClassifier always gets sigma_t (never the
    timestep 0, which would give log(0) and NaN)."""
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    classifier = TimeClassifier(_Net(), sigma_data=0.5)
    guided = GuidedDenoiser(EpsDenoiser(lambda z, tt: torch.zeros_like(z), schedule), [classifier])
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    out = guided(x, schedule.sigmas[[0, 10]].to(torch.float32))
    assert torch.isfinite(out).all()


def test_ddpm_classifier_refused_where_sigma_is_passed() -> None:
    class StepClassifier(DiagonalLogit):
        noise_coordinates = "ddpm"

    with pytest.raises(ValueError, match="ddpm"):
        GuidedDenoiser(_identity_denoiser, [StepClassifier()])
    with pytest.raises(ValueError, match="ddpm"):
        guidance_gradient([StepClassifier()], torch.zeros(2, 2), 0.5)


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_fused_guidance_paths_in_every_grad_mode(mode: str) -> None:
    """The same kind on the Triton backends (under the interpreter): the combine path of GuidedDenoiser,
    its fused Euler-ancestral step and the sampler through it give the guided answer in every grad mode."""
    from genneg.kernels._backend import has_triton, interpreter_enabled

    if not has_triton() or not interpreter_enabled():
        pytest.skip("needs triton and TRITON_INTERPRET=1")
    from genneg.guidance.fused import FusedCombineGuidance

    x = torch.tensor([[0.3, -0.2], [1.0, 2.0], [-0.5, 0.1]])
    sigma = torch.full((3,), 0.7)
    fused = FusedCombineGuidance(_identity_denoiser, [DiagonalLogit()], [1.0])
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    ddpm = GuidedDenoiser(EpsDenoiser(lambda z, tt: 0.1 * z, schedule), [DiagonalLogit()], [3.0],
                          backend="triton")
    assert ddpm.ancestral_step is not None

    def sample_fused() -> torch.Tensor:
        return euler_ancestral_sample(ddpm, x, schedule.sampling_sigmas(4),
                                      generator=torch.Generator().manual_seed(2))

    expected_sample = sample_fused()
    with GRAD_MODES[mode]():
        denoised = fused(x, sigma)
        sample = sample_fused()
        step = fused.ancestral_step(x, 0.7, 0.0, None)
    torch.testing.assert_close(denoised, 0.5 * x + 0.49 * _expected(x))
    torch.testing.assert_close(step, denoised)  # the step to 0 returns D_K
    torch.testing.assert_close(sample, expected_sample)
