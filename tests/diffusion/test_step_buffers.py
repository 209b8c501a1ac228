"""The step functions of ``genneg.diffusion.samplers`` written once, in two forms: fresh tensors
(differentiable) and in place on ``out`` / ``StepBuffers`` (what the planner and CUDA graphs use). One test
body over every step: both forms agree bit for bit, buffers are reused, bad arguments raise."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from genneg.diffusion import (
    StepBuffers,
    euler_advance,
    euler_ancestral_advance,
    heun_advance,
    make_sigmas,
    multistep_advance,
    multistep_coefficients,
)
from genneg.metrics import gaussian_denoiser

MU = torch.tensor([0.4, -1.1, 0.2])
DENOISE = gaussian_denoiser(MU, 0.7)


def _denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return DENOISE(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))


def _noise(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)


STEPS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": lambda x, a, b, **kw: euler_advance(_denoise, x, a, b, **kw),
    "heun": lambda x, a, b, **kw: heun_advance(_denoise, x, a, b, **kw),
    "euler_ancestral": lambda x, a, b, **kw: euler_ancestral_advance(_denoise, x, a, b, _noise(x), **kw),
}


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize(("sigma", "sigma_next"), [(3.0, 1.7), (0.05, 0.0)])
def test_in_place_form_is_the_fresh_form(name: str, sigma: float, sigma_next: float) -> None:
    step = STEPS[name]
    x = 3.0 * torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    fresh = step(x, sigma, sigma_next)
    buffers, out = StepBuffers.like(x), torch.full_like(x, float("nan"))  # stale contents must not leak
    got = step(x, sigma, sigma_next, out=out, buffers=buffers)
    assert got is out and torch.equal(got, fresh)
    assert torch.equal(step(x, sigma, sigma_next, out=out, buffers=buffers), fresh)  # buffers reused
    with pytest.raises(ValueError, match="out must not be x"):
        step(x, sigma, sigma_next, out=x)
    # the fresh form is differentiable (e.g. through a step with autograd on)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(step(xg, sigma, sigma_next).sum(), xg)
    assert bool(torch.isfinite(grad).all())


def test_heun_replace_rewrites_the_predicted_point() -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    seen: list[float] = []

    def pin_first(x_pred: torch.Tensor, sigma: float) -> None:
        seen.append(sigma)
        x_pred[:, 0] = 0.25

    out = heun_advance(_denoise, x, 2.0, 1.0, replace=pin_first)
    plain = heun_advance(_denoise, x, 2.0, 1.0)
    assert seen == [1.0] and not torch.equal(out, plain)  # the corrector saw the rewritten point
    heun_advance(_denoise, x, 0.1, 0.0, replace=pin_first)
    assert seen == [1.0]  # the last step is Euler: no predicted point to rewrite


def test_ancestral_step_needs_noise_and_multistep_needs_outputs() -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="needs noise"):
        euler_ancestral_advance(_denoise, x, 2.0, 1.0, None)
    assert torch.equal(euler_ancestral_advance(_denoise, x, 2.0, 0.0, None), _denoise(x, 2.0))
    steps = multistep_coefficients("dpmpp_2m", make_sigmas("log_linear", 4, 0.01, 10.0).tolist())
    with pytest.raises(ValueError, match="2 denoiser outputs"):
        multistep_advance(steps[1].predictor, x, [x])
    out = torch.empty_like(x)
    d = [_denoise(x, 1.0), _denoise(x, 2.0)]
    fresh = multistep_advance(steps[1].predictor, x, d)
    assert torch.equal(multistep_advance(steps[1].predictor, x, d, out=out), fresh)
