"""Issue 16, guidance kinds: every guided call gives the guided answer in every grad mode (plain, no_grad,
inference_mode), on every guidance entry point; a wrong pairing of noise coordinates is refused."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from genneg.diffusion.ddpm import DDPMConfig, DDPMSchedule, ddpm_ancestral_sample
from genneg.diffusion.samplers import heun_sample
from genneg.guidance import GuidedDenoiser, GuidedEps, TimeClassifier, guidance_gradient

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
def test_guided_eps_in_every_grad_mode(mode: str) -> None:
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    t = torch.tensor([3, 17])
    ab = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32)[t]
    eps = GuidedEps(lambda z, tt: torch.zeros_like(z), schedule, [DiagonalLogit()], coordinates="ddpm")
    with GRAD_MODES[mode]():
        out = eps(x, t)
    torch.testing.assert_close(out, -(1 - ab).sqrt()[:, None] * _expected(x))


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
    eps = GuidedEps(lambda z, tt: 0.1 * z, schedule, [DiagonalLogit()], [3.0], coordinates="ddpm")

    def sample() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return ddpm_ancestral_sample(eps, x_T, schedule, num_steps=5, generator=generator)

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


def test_time_classifier_is_never_handed_a_timestep() -> None:
    """GuidedEps' default coordinates come from the classifier: a TimeClassifier gets sigma_t, so t = 0
    no longer gives log(0) and NaN; an explicit wrong pairing raises."""
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    classifier = TimeClassifier(_Net(), sigma_data=0.5)
    eps_model = lambda z, tt: torch.zeros_like(z)  # noqa: E731
    default = GuidedEps(eps_model, schedule, [classifier])
    assert default.coordinates == "ve"
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    t = torch.tensor([0, 10])
    out = default(x, t)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, GuidedEps(eps_model, schedule, [classifier], coordinates="ve")(x, t))
    with pytest.raises(ValueError, match="noise_coordinates"):
        GuidedEps(eps_model, schedule, [classifier], coordinates="ddpm")
    with pytest.raises(ValueError, match="noise_coordinates"):
        GuidedEps(eps_model, schedule, coordinates="ddpm").with_classifier(classifier)
    with pytest.raises(ValueError, match="coordinates"):  # undeclared classifier: no guess
        GuidedEps(eps_model, schedule, [DiagonalLogit()])


def test_ddpm_classifier_refused_where_sigma_is_passed() -> None:
    class StepClassifier(DiagonalLogit):
        noise_coordinates = "ddpm"

    with pytest.raises(ValueError, match="ddpm"):
        GuidedDenoiser(_identity_denoiser, [StepClassifier()])
    with pytest.raises(ValueError, match="ddpm"):
        guidance_gradient([StepClassifier()], torch.zeros(2, 2), 0.5)
    mixed = [StepClassifier(), TimeClassifier(_Net(), sigma_data=0.5)]
    with pytest.raises(ValueError, match="mix"):
        GuidedEps(lambda z, tt: z, DDPMSchedule(DDPMConfig(num_steps=20)), mixed)


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_fused_guidance_paths_in_every_grad_mode(mode: str) -> None:
    """The same kind on the Triton backends (under the interpreter): the combine path of GuidedDenoiser,
    FusedGuidedEps and the fused ancestral sampler give the guided answer in every grad mode."""
    from genneg.kernels._backend import has_triton, interpreter_enabled

    if not has_triton() or not interpreter_enabled():
        pytest.skip("needs triton and TRITON_INTERPRET=1")
    from genneg.guidance.fused import FusedCombineGuidance, FusedGuidedEps, fused_ddpm_ancestral_sample

    x = torch.tensor([[0.3, -0.2], [1.0, 2.0], [-0.5, 0.1]])
    sigma = torch.full((3,), 0.7)
    fused = FusedCombineGuidance(_identity_denoiser, [DiagonalLogit()], [1.0])
    schedule = DDPMSchedule(DDPMConfig(num_steps=20))
    eps = GuidedEps(lambda z, tt: 0.1 * z, schedule, [DiagonalLogit()], [3.0], coordinates="ddpm")
    t = torch.tensor([3, 17, 9])
    ab = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32)[t]

    def sample_fused() -> torch.Tensor:
        return fused_ddpm_ancestral_sample(eps, x, num_steps=4, generator=torch.Generator().manual_seed(2))

    expected_sample = sample_fused()
    with GRAD_MODES[mode]():
        denoised = fused(x, sigma)
        guided_eps = FusedGuidedEps(eps)(x, t)
        sample = sample_fused()
    torch.testing.assert_close(denoised, 0.5 * x + 0.49 * _expected(x))
    torch.testing.assert_close(guided_eps, 0.1 * x - 3.0 * (1 - ab).sqrt()[:, None] * _expected(x))
    torch.testing.assert_close(sample, expected_sample)
