"""Eq. 12: the distillation loss and a student that learns the guided teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genneg.diffusion.edm import EDMConfig, EDMPrecond, edm_loss_weight
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
from genneg.pipeline.distill import DistillConfig, distillation_loss, distillation_x0, train_distilled

EDM = EDMConfig(sigma_min=0.02, sigma_max=5.0, sigma_data=0.7)
DATA_STD = 0.7



class GaussianDenoiser(nn.Module):
    """The exact denoiser of ``N(0, s² I)`` data: ``D(x; sigma) = s² / (s² + sigma²) · x``."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (self.std**2 / (self.std**2 + sigma**2))[:, None] * x


class LinearLogit(nn.Module):
    """``F(x_in, c_noise) = x_in · w + b``: a classifier favouring one half-plane."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor([3.0, -1.0]))

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return x_in @ self.w + 0.5


def _teacher() -> GuidedDenoiser:
    return GuidedDenoiser(GaussianDenoiser(DATA_STD), [TimeClassifier(LinearLogit(), EDM.sigma_data)])


def _student(seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    cfg = ResidualMLPConfig(dim_in=2, dim_out=2, hidden=64, num_blocks=1, embedding_dim=16)
    return EDMPrecond(ResidualMLP(cfg), EDM.sigma_data)


def test_loss_matches_formula() -> None:
    teacher, student = _teacher(), _student()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)) * DATA_STD
    loss = distillation_loss(student, teacher, x0, EDM, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # replay the same draws: sigma, then eps
    u = torch.rand(16, generator=g)
    sigma = torch.exp(math.log(EDM.sigma_min) + u * math.log(EDM.sigma_max / EDM.sigma_min))
    x = x0 + sigma[:, None] * torch.randn(16, 2, generator=g)
    with torch.no_grad():
        target = teacher(x, sigma)
        err = ((student(x, sigma) - target) ** 2).sum(1)
        expected = (edm_loss_weight(sigma, EDM.sigma_data) * err).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=0)
    loss.backward()  # differentiates the student only
    assert student.net.input_fc.weight.grad is not None


def _gap(denoiser, teacher, n: int = 2000) -> float:
    """``E lambda(sigma) ||denoiser - teacher||²`` over fresh x0 ~ N(0, s² I) and sigma."""
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(9)) * DATA_STD
    return distillation_loss(denoiser, teacher, x0, EDM, generator=torch.Generator().manual_seed(10)).item()


def test_student_learns_the_guidance() -> None:
    teacher = _teacher()
    student = _student()
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3)) * DATA_STD
    config = DistillConfig(iterations=400, batch_size=256, lr=3e-3)
    history = train_distilled(student, teacher, x0, config, EDM, generator=torch.Generator().manual_seed(4))
    assert len(history) == 400
    unguided = _gap(teacher.denoiser, teacher)  # what ignoring the classifiers would cost
    learned = _gap(student, teacher)
    # measured: 0.010 vs 16.0 (the guidance term sigma² ∇log c dominates at large sigma); 100x margin
    assert learned < 0.01 * unguided, (learned, unguided)


def test_x0_sources_and_checks() -> None:
    train_x = torch.randn(50, 2)
    assert distillation_x0(DistillConfig(), train_x) is train_x
    config = DistillConfig(x0_source="teacher", num_teacher_samples=30)
    pool = distillation_x0(config, train_x, lambda n: torch.zeros(n, 2))
    assert pool.shape == (30, 2)
    with pytest.raises(ValueError, match="sample_teacher"):
        distillation_x0(config, train_x)
    with pytest.raises(ValueError, match="returned"):
        distillation_x0(config, train_x, lambda n: torch.zeros(n, 3))
    with pytest.raises(ValueError, match="x0_source"):
        DistillConfig(x0_source="data")  # type: ignore[arg-type]
    base = _student()
    with pytest.raises(ValueError, match="copy"):
        train_distilled(base, GuidedDenoiser(base, []), train_x, DistillConfig(iterations=1), EDM)


def test_zero_iterations_means_skip_distillation() -> None:
    """Issue 16, kind 11: every optional stage is expressible; 0 distillation steps = no distillation."""
    config = DistillConfig(iterations=0)
    student = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in student.parameters()]
    losses = train_distilled(student, lambda x, sigma: x, torch.zeros(4, 2), config, EDMConfig())
    assert losses == []
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    bad_configs = (dict(iterations=-1), dict(lr=math.nan), dict(lr=math.inf), dict(grad_clip=math.nan))
    for bad in bad_configs:
        with pytest.raises(ValueError):
            DistillConfig(**bad)
