"""Differentiating through a guided denoiser: the PF-ODE likelihood needs the divergence of D_K,
which includes the Jacobian of the guidance gradient (a second derivative of the classifiers)."""

import torch

from genneg.diffusion import EDMPrecond
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.metrics import denoiser_divergence
from genneg.models import ResidualMLP, ResidualMLPConfig


def test_divergence_of_guided_denoiser_matches_finite_differences() -> None:
    torch.manual_seed(0)
    cfg = ResidualMLPConfig(hidden=32)
    denoiser = EDMPrecond(ResidualMLP(cfg), 1.0).double()
    classifier = TimeClassifier(ResidualMLP(ResidualMLPConfig(hidden=32, dim_out=1)), 1.0).double()
    guided = GuidedDenoiser(denoiser, [classifier], scales=[3.0])
    x = torch.randn(4, 2, dtype=torch.float64)
    sigma = torch.full((4,), 0.7, dtype=torch.float64)
    _, div = denoiser_divergence(guided, x, sigma)
    h = 1e-5
    fd = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros_like(x)
            e[:, i] = h
            fd += (guided(x + e, sigma)[:, i] - guided(x - e, sigma)[:, i]) / (2 * h)
    plain = denoiser_divergence(denoiser, x, sigma)[1]
    # central differences in float64 with h=1e-5: error ~1e-9 relative; 1e-6 leaves room for curvature.
    torch.testing.assert_close(div, fd, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(div, plain), "guidance must change the divergence"
