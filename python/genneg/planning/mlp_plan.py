"""A residual-MLP EDM denoiser specialised to a sampler's fixed noise levels (the CPU fast path).

Every row of a sampler step shares one noise level, and a :class:`~genneg.planning.FastSampler` knows all
its levels in advance. For ``EDMPrecond(ResidualMLP)`` (``genneg.models.mlp``) that makes most of the
network's per-call work constant:

- the time branch ``t = W_t2 · silu(W_t1 · sinusoidal(c_noise) + b_t1) + b_t2`` and the input bias are
  computed once per level at construction (``bias_in[l] = t_l + b_in``, ``(1, H)``);
- the preconditioning ``c_in, c_skip, c_out`` become Python floats per level;
- ``c_in`` is folded into the input product: ``h = bias_in[l] + c_in · (x W_inᵀ)`` is one ``addmm``.

A call is then ``1 + 4·blocks + 2`` matrix products / elementwise kernels on preallocated ``(N, H)``
buffers instead of ~40 eager operations with their allocations and Python dispatch. The arithmetic is the
same network's to float32 rounding (products are grouped differently, so not bit for bit); the test
holds it to the eager ``EDMPrecond`` at ``1e-5`` relative. Weights are read once: rebuild after training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from genneg.diffusion.edm import EDMPrecond, edm_preconditioning
from genneg.models.mlp import ResidualMLP

__all__ = ["ResidualMLPDenoiserPlan", "supports_mlp_plan"]


def supports_mlp_plan(denoiser: object) -> bool:
    """True for ``EDMPrecond`` wrapping a ``ResidualMLP`` (the only layout the plan knows)."""
    return isinstance(denoiser, EDMPrecond) and isinstance(denoiser.net, ResidualMLP)


class ResidualMLPDenoiserPlan:
    """``D(x; σ_l)`` of an ``EDMPrecond(ResidualMLP)`` at the positive levels ``σ_l`` of a schedule.

    Args:
        denoiser: the EDM denoiser (weights are copied now).
        levels: noise levels (data units); entries ``<= 0`` get no plan (never evaluated).
        num_rows: ``N``, rows of every call (buffers are ``(N, H)``).
        device: where the buffers and weights live.
    """

    def __init__(
        self, denoiser: EDMPrecond, levels: Sequence[float], num_rows: int, device: torch.device
    ) -> None:
        if not supports_mlp_plan(denoiser):
            raise TypeError("ResidualMLPDenoiserPlan needs EDMPrecond(ResidualMLP)")
        net: ResidualMLP = denoiser.net  # type: ignore[assignment]
        cfg = net.config
        with torch.inference_mode(False), torch.no_grad():

            def own(t: torch.Tensor) -> torch.Tensor:
                return t.detach().to(device=device, dtype=torch.float32).contiguous().clone()

            positive = [float(s) for s in levels if s > 0]
            sigma = torch.tensor(positive if positive else [1.0], dtype=torch.float32, device=device)
            c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, denoiser.sigma_data)
            net_dev = next(net.parameters()).device
            t = net.time_features(c_noise.to(net_dev)) + net.input_fc.bias
            self._index = {s: i for i, s in enumerate(positive)}
            self.bias_in = [own(t[i : i + 1]) for i in range(len(positive))]
            self.c_in = [float(v) for v in c_in]
            self.c_skip = [float(v) for v in c_skip]
            self.c_out = [float(v) for v in c_out]
            self.w_in_t = own(net.input_fc.weight.t())
            self.blocks = [
                (own(b.fc1.weight.t()), own(b.fc1.bias[None]), own(b.fc2.weight.t()), own(b.fc2.bias[None]))
                for b in net.blocks
            ]
            self.w_out_t = own(net.output_fc.weight.t())
            self.b_out = own(net.output_fc.bias[None])
            self.h = torch.empty((num_rows, cfg.hidden), device=device)
            self.a = torch.empty((num_rows, cfg.hidden), device=device)
            self.f = torch.empty((num_rows, cfg.dim_out), device=device)
        self.num_rows = num_rows
        self.dim = cfg.dim_in

    def level_index(self, sigma: float) -> int:
        """Index of a planned level; ``KeyError`` for a level the plan was not built for."""
        return self._index[float(sigma)]

    def denoise(self, x: torch.Tensor, level: int, out: torch.Tensor) -> torch.Tensor:
        """``out = D(x; σ_level)``: ``x`` ``(N, D)`` float32, ``level`` an index from :meth:`level_index`,
        ``out`` ``(N, D)`` buffer (not ``x``). Returns ``out``."""
        h, a = self.h, self.a
        torch.addmm(self.bias_in[level], x, self.w_in_t, alpha=self.c_in[level], out=h)
        for w1_t, b1, w2_t, b2 in self.blocks:
            torch.addmm(b1, F.silu(h), w1_t, out=a)
            h.add_(torch.addmm(b2, F.silu(a), w2_t))
        torch.addmm(self.b_out, F.silu(h), self.w_out_t, out=self.f)
        torch.mul(x, self.c_skip[level], out=out)
        return out.add_(self.f, alpha=self.c_out[level])
