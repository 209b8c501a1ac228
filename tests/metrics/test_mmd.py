"""MMD: zero for equal distributions (up to the estimator), grows with a shift, blockwise = full."""

from itertools import pairwise

import pytest
import torch

from genneg.metrics import DEFAULT_BANDWIDTHS, mmd


def _naive_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...], unbiased: bool) -> float:
    x, y = x.double(), y.double()

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return torch.stack([torch.exp(-d2 / (2 * h * h)) for h in bandwidths]).mean(0)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        return float((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum())
                     / (m * (m - 1)) - 2 * kxy.mean())
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


def test_matches_naive_and_is_blockwise_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 2, generator=g), torch.randn(23, 2, generator=g) + 0.3
    for unbiased in (True, False):
        expected = _naive_mmd2(x, y, DEFAULT_BANDWIDTHS, unbiased)
        assert mmd(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10, abs=1e-13)
        assert mmd(x, y, unbiased=unbiased, block_size=5) == pytest.approx(expected, rel=1e-10, abs=1e-13)


def test_zero_for_same_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 2, generator=g)
    assert abs(mmd(x, x, unbiased=False)) < 1e-12  # identical sets: the V-statistic is exactly 0
    # independent sets from one distribution: the U-statistic is centred on 0 (mean of 8 replicates
    # within 3 standard errors), and a half-std shift stands far above its spread
    same = torch.tensor([mmd(torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g))
                         for _ in range(8)], dtype=torch.float64)
    assert abs(same.mean()) < 3 * same.std() / 8**0.5
    y, z = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 0.5
    assert mmd(y, z) > 10 * same.std()
    assert mmd(x, y) == pytest.approx(mmd(y, x), rel=1e-12)


def test_grows_with_shift() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    values = [mmd(x, y + torch.tensor([s, 0.0])) for s in (0.0, 0.2, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in pairwise(values))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="sample shape"):
        mmd(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(torch.zeros(1, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(torch.zeros(4, 2), torch.zeros(4, 2), bandwidths=(0.1, -1.0))
