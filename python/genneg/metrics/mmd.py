"""Maximum mean discrepancy between model samples and held-out data, Gaussian kernels of fixed widths.

``k(a, b) = (1/H) Σ_h exp(-||a - b||² / (2 h²))`` over the bandwidths ``h`` (data units). The unbiased
estimator of ``MMD²`` (Gretton et al. 2012, Eq. 3)::

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (n(n-1)) + Σ_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 Σ_{i,j} k(x_i, y_j) / (nm)

is zero in expectation when both sets come from the same distribution (so a single estimate may be
slightly negative); the biased (V-statistic) version keeps the diagonal terms and is exactly 0 for two
identical sets. Pairwise kernels are summed block by block in float64, never held as a full matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_BANDWIDTHS", "mmd"]

DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _kernel_sum(a: torch.Tensor, b: torch.Tensor | None, inv_two_h2: torch.Tensor, block_size: int) -> float:
    """``Σ_{i,j} k(a_i, b_j)`` for ``a`` ``(n, d)``, ``b`` ``(m, d)`` float64; ``b = None`` means ``b = a``,
    summed over the upper triangle of blocks only (the kernel is symmetric)."""
    symmetric = b is None
    other = a if b is None else b
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], block_size):
        for j in range(i if symmetric else 0, other.shape[0], block_size):
            d2 = torch.cdist(a[i:i + block_size], other[j:j + block_size],
                             compute_mode="donot_use_mm_for_euclid_dist").pow(2)
            block = sum(torch.exp(-d2 * c).sum() for c in inv_two_h2.tolist()) / len(inv_two_h2)
            total += 2.0 * block if symmetric and j > i else block
    return float(total)


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    *,
    unbiased: bool = True,
    block_size: int = 2048,
) -> float:
    """Squared MMD between two sample sets with a mixture of Gaussian kernels.

    Args:
        x: ``(n, *shape)`` float samples (e.g. from the model), flattened to ``(n, d)``.
        y: ``(m, *shape)`` float samples (e.g. held-out data), same sample shape.
        bandwidths: kernel widths ``h`` in data units, all ``> 0``.
        unbiased: U-statistic (default; needs ``n, m >= 2``) or the biased V-statistic.
        block_size: rows per block of the pairwise computation (memory ``block_size²`` float64s).

    Returns:
        The ``MMD²`` estimate as a Python float (unitless: kernel values are unitless).
    """
    if x.ndim < 2 or y.ndim < 2 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must be (n, ...) and (m, ...) with the same sample shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < (2 if unbiased else 1):
        raise ValueError(f"mmd needs at least {2 if unbiased else 1} samples per set, got n={n}, m={m}")
    if len(bandwidths) == 0 or not all(math.isfinite(h) and h > 0 for h in bandwidths):
        raise ValueError(f"bandwidths must be a non-empty sequence of positive widths, got {bandwidths}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    a = x.detach().reshape(n, -1).to(torch.float64)
    b = y.detach().reshape(m, -1).to(torch.float64).to(a.device)
    h = torch.as_tensor(bandwidths, dtype=torch.float64, device=a.device)
    inv_two_h2 = 1.0 / (2.0 * h * h)
    s_xx = _kernel_sum(a, None, inv_two_h2, block_size)
    s_yy = _kernel_sum(b, None, inv_two_h2, block_size)
    s_xy = _kernel_sum(a, b, inv_two_h2, block_size)
    if unbiased:  # k(a, a) = 1 on the diagonal
        return (s_xx - n) / (n * (n - 1)) + (s_yy - m) / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    return s_xx / (n * n) + s_yy / (m * m) - 2.0 * s_xy / (n * m)
