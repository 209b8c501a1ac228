"""Small models shared by the planning tests (randomly initialised: the sampler's behaviour, not the
model's quality, is under test)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genneg.data.checkerboard import CheckerboardOracle
from genneg.diffusion import DDPMConfig, DDPMSchedule, EDMPrecond
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig


def _mlp(dim_out: int, seed: int) -> ResidualMLP:
    torch.manual_seed(seed)
    return ResidualMLP(
        ResidualMLPConfig(dim_in=2, dim_out=dim_out, hidden=32, num_blocks=1, embedding_dim=16)
    )


class TimeEps(nn.Module):
    """A residual MLP as a DDPM ε-model ``eps(x_t, t)`` (time = t / T)."""

    parameterisation = "eps"

    def __init__(self, net: nn.Module, num_steps: int) -> None:
        super().__init__()
        self.net = net
        self.num_steps = num_steps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t.to(torch.float32) / self.num_steps)


@pytest.fixture(scope="module")
def denoiser() -> nn.Module:
    return EDMPrecond(_mlp(2, 0), sigma_data=0.5).eval()


@pytest.fixture(scope="module")
def guided(denoiser: nn.Module) -> GuidedDenoiser:
    classifiers = [TimeClassifier(_mlp(1, 1), 0.5).eval(), TimeClassifier(_mlp(1, 2), 0.5).eval()]
    return GuidedDenoiser(denoiser, classifiers, [1.0, 0.5]).eval()


@pytest.fixture(scope="module")
def schedule() -> DDPMSchedule:
    return DDPMSchedule(DDPMConfig(num_steps=50))


@pytest.fixture(scope="module")
def eps_model(schedule: DDPMSchedule) -> nn.Module:
    return TimeEps(_mlp(2, 3), schedule.num_steps).eval()


@pytest.fixture(scope="module")
def oracle() -> CheckerboardOracle:
    return CheckerboardOracle()

