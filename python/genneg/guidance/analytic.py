"""Analytic input gradient of a stack of residual-MLP classifiers in plain PyTorch (no autograd).

For K time-dependent :class:`~genneg.guidance.TimeClassifier` s wrapping :class:`~genneg.models.ResidualMLP`
s, :class:`AnalyticMLPGuidance` computes ``Σ_k γ_k ∇_x Σ_parts logsigmoid(l_k(x, σ))`` with the weights of
all K classifiers stacked (``(K, ...)`` tensors, zero-padded to a common hidden width and block count,
which is exact), so that each layer of the whole stack is one batched matrix product (``torch.baddbmm``)
forward and one or two backward, instead of K autograd graphs. The backward pass is the chain rule written
out (``silu'(a) = s (1 + a (1 − s))``, ``s = sigmoid(a)``)::

    g_out = γ sigmoid(−l)                                     (K, B, P)
    dH    = silu'(H_NB) ⊙ (g_out W_out)
    dA_j  = silu'(A_j) ⊙ (dH W2_j);   dH ← dH + silu'(H_j) ⊙ (dA_j W1_j)      (j = NB−1 .. 0)
    ∇_x   = Σ_k c_in,k · dH_k W_in,k

When every row shares ``σ`` (a sampler step) the time features are computed for one row and broadcast.
This is the CPU/PyTorch twin of the fused Triton kernel's arithmetic (``genneg.kernels.fused_mlp_guidance``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from genneg.diffusion.denoiser import expand_sigma
from genneg.models.mlp import ResidualMLP

__all__ = ["AnalyticMLPGuidance", "build_analytic_guidance"]


def _silu_grad(a: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


class AnalyticMLPGuidance:
    """Guidance gradient of K residual-MLP classifiers, computed analytically and batched over K.

    Args:
        classifiers: K modules with ``.net`` a ``ResidualMLP``, ``.sigma_data`` and ``.time_dependent``
            True (:class:`~genneg.guidance.TimeClassifier`); all with the same ``dim_in`` and ``dim_out``.
        scales: K guidance scales ``γ_k``.

    Weights are copied (stacked) at construction; rebuild after changing them.

    Raises:
        ValueError: empty stack, mismatched sizes or a time-independent classifier.
        TypeError: a classifier's network is not a ``ResidualMLP``.
    """

    def __init__(self, classifiers: Sequence[nn.Module], scales: Sequence[float]) -> None:
        if len(classifiers) == 0 or len(scales) != len(classifiers):
            raise ValueError(
                f"need K >= 1 classifiers and K scales, got {len(classifiers)} and {len(scales)}"
            )
        nets: list[ResidualMLP] = []
        for i, c in enumerate(classifiers):
            net = getattr(c, "net", None)
            if not isinstance(net, ResidualMLP):
                raise TypeError(f"classifier {i}: .net must be a ResidualMLP, got {type(net).__name__}")
            if not getattr(c, "time_dependent", False):
                raise ValueError(f"classifier {i} is time-independent; the analytic path needs c(x, sigma)")
            nets.append(net)
        dims = {(n.config.dim_in, n.config.dim_out) for n in nets}
        if len(dims) != 1:
            raise ValueError(f"classifiers must share dim_in and dim_out, got {sorted(dims)}")
        self.nets = nets
        self.dim, self.parts = next(iter(dims))
        self.num_blocks = max(len(n.blocks) for n in nets)
        h = max(n.config.hidden for n in nets)
        k, d, p, nb = len(nets), self.dim, self.parts, self.num_blocks
        ref = nets[0].input_fc.weight
        z = {"device": ref.device, "dtype": ref.dtype}
        with torch.no_grad():
            self.w_in = torch.zeros(k, h, d, **z)
            self.w1 = torch.zeros(nb, k, h, h, **z)
            self.b1 = torch.zeros(nb, k, 1, h, **z)
            self.w2 = torch.zeros(nb, k, h, h, **z)
            self.b2 = torch.zeros(nb, k, 1, h, **z)
            self.w_out = torch.zeros(k, p, h, **z)
            self.b_out = torch.zeros(k, 1, p, **z)
            for i, n in enumerate(nets):
                hi = n.config.hidden
                self.w_in[i, :hi] = n.input_fc.weight
                for j, block in enumerate(n.blocks):
                    self.w1[j, i, :hi, :hi] = block.fc1.weight
                    self.b1[j, i, 0, :hi] = block.fc1.bias
                    self.w2[j, i, :hi, :hi] = block.fc2.weight
                    self.b2[j, i, 0, :hi] = block.fc2.bias
                self.w_out[i, :, :hi] = n.output_fc.weight
                self.b_out[i, 0] = n.output_fc.bias
        self.hidden = h
        self.rows_per_chunk = 256
        self.sigma_data = torch.tensor([float(c.sigma_data) for c in classifiers], **z)
        self.scales = torch.tensor([float(s) for s in scales], **z)

    @torch.no_grad()
    def _time_features(self, sigma: torch.Tensor) -> torch.Tensor:
        """``(S,)`` -> ``(K, S, H)``: each classifier's ``t + b_in`` (zero-padded)."""
        c_noise = torch.log(sigma) / 4.0
        out = sigma.new_zeros(len(self.nets), sigma.shape[0], self.hidden)
        for i, n in enumerate(self.nets):
            out[i, :, : n.config.hidden] = n.time_features(c_noise) + n.input_fc.bias
        return out

    @torch.no_grad()
    def gradient(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``Σ_k γ_k ∇_x Σ_parts logsigmoid(l_k(x, σ))``.

        Args:
            x: ``(B, D)`` float32 noisy samples (data units).
            sigma: ``(B,)`` or scalar noise level.

        Returns:
            ``(B, D)`` gradient (no graph).
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        sigma = expand_sigma(sigma, x)
        shared = sigma.numel() > 0 and bool((sigma == sigma[0]).all())
        t = self._time_features(sigma[:1] if shared else sigma)  # shared noise level: one row, broadcast
        if x.shape[0] <= self.rows_per_chunk:
            return self._gradient(x, sigma, t)
        # row chunks keep the (K, rows, H) activations in cache (measured: large batches ran slower
        # than autograd without this)
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], self.rows_per_chunk):
            rows = slice(start, start + self.rows_per_chunk)
            out[rows] = self._gradient(x[rows], sigma[rows], t if shared else t[:, rows])
        return out

    def _gradient(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c_in = torch.rsqrt(sigma[None, :, None] ** 2 + self.sigma_data[:, None, None] ** 2)  # (K, B, 1)
        x_in = c_in * x[None]  # (K, B, D)
        h = torch.baddbmm(t, x_in, self.w_in.transpose(1, 2))
        hs, acts = [h], []
        for j in range(self.num_blocks):
            a = torch.baddbmm(self.b1[j], F.silu(h), self.w1[j].transpose(1, 2))
            h = h + torch.baddbmm(self.b2[j], F.silu(a), self.w2[j].transpose(1, 2))
            acts.append(a)
            hs.append(h)
        logits = torch.baddbmm(self.b_out, F.silu(h), self.w_out.transpose(1, 2))  # (K, B, P)
        g_out = self.scales[:, None, None] * torch.sigmoid(-logits)
        dh = torch.bmm(g_out, self.w_out) * _silu_grad(hs[-1])
        for j in reversed(range(self.num_blocks)):
            da = torch.bmm(dh, self.w2[j]) * _silu_grad(acts[j])
            dh = dh + torch.bmm(da, self.w1[j]) * _silu_grad(hs[j])
        return (c_in * torch.bmm(dh, self.w_in)).sum(dim=0)


def build_analytic_guidance(
    classifiers: Sequence[nn.Module], scales: Sequence[float]
) -> AnalyticMLPGuidance | None:
    """An :class:`AnalyticMLPGuidance` for the stack, or None when it does not qualify (empty, a network
    that is not a ``ResidualMLP``, a time-independent classifier, mismatched sizes)."""
    try:
        return AnalyticMLPGuidance(classifiers, scales)
    except (TypeError, ValueError):
        return None
