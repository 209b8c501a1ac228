"""The run's figures: written as PNG files, from models on any device (one test body, every device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from genneg.guidance import TimeClassifier
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
from genneg.pipeline.plots import plot_classifier_maps

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)


class SeenDevices(nn.Module):
    """A real classifier that also records the devices of the inputs it was called with."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.seen: set[tuple[str, str]] = set()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.seen.add((x.device.type, sigma.device.type))
        return self.classifier(x, sigma)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_classifier_maps_from_a_classifier_on_any_device(tmp_path: Path, device: str) -> None:
    torch.manual_seed(0)
    net = ResidualMLP(ResidualMLPConfig(2, 1, hidden=16, num_blocks=1, embedding_dim=8))
    classifier = SeenDevices(TimeClassifier(net, 0.5)).to(device).eval()

    def plain(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # a function: called on the CPU
        assert x.device.type == sigma.device.type == "cpu"
        return x[:, 0] - x[:, 1]

    path = plot_classifier_maps(
        tmp_path / "classifiers.png", [("c1", classifier), ("plain", plain)], [0.1, 1.0], (-2, 2, -2, 2),
        resolution=16,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert classifier.seen == {(device, device)}
