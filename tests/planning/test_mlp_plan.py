"""The level-specialised residual-MLP denoiser equals the eager EDMPrecond(ResidualMLP)."""

from __future__ import annotations

import copy

import pytest
import torch

from genneg.diffusion import EDMPrecond, make_sigmas
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
from genneg.planning.mlp_plan import ResidualMLPDenoiserPlan, supports_mlp_plan

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("hidden", "blocks", "rows"), [(32, 1, 1), (48, 2, 7), (64, 3, 33)])
def test_plan_matches_eager_denoiser(device: str, hidden: int, blocks: int, rows: int) -> None:
    """The plan on ``device`` against the eager denoiser on the CPU."""
    torch.manual_seed(hidden)
    net = ResidualMLP(
        ResidualMLPConfig(dim_in=3, dim_out=3, hidden=hidden, num_blocks=blocks, embedding_dim=16)
    )
    denoiser = EDMPrecond(net, sigma_data=0.7).eval()
    levels = [float(s) for s in make_sigmas("karras", 9, 0.002, 80.0)]
    dev = torch.device(device)
    plan = ResidualMLPDenoiserPlan(copy.deepcopy(denoiser).to(dev), levels, rows, dev)
    x = torch.randn(rows, 3) * 3
    out = torch.empty(rows, 3, device=dev)
    for i, s in enumerate(levels[:-1]):
        assert plan.level_index(s) == i
        expected = denoiser(x, torch.full((rows,), s))
        got = plan.denoise(x.to(dev), i, out).cpu()
        # float32: the plan folds c_in into the product and precomputes the time branch for one row;
        # differences are rounding of O(1) activations summed over <= 64 terms
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError):
        plan.level_index(0.0)


def test_supports_only_edm_residual_mlp() -> None:
    net = ResidualMLP(ResidualMLPConfig(dim_in=2, dim_out=2, hidden=8, num_blocks=1, embedding_dim=4))
    assert supports_mlp_plan(EDMPrecond(net, 0.5))
    assert not supports_mlp_plan(net)
    with pytest.raises(TypeError):
        ResidualMLPDenoiserPlan(net, [1.0], 2, torch.device("cpu"))  # type: ignore[arg-type]
