"""Plain-PyTorch twins of the fused guidance kernels (``genneg.kernels.fused_mlp_guidance`` and
``genneg.kernels.fused_guidance_update``), with the same signatures as their launchers.

The MLP twins read the same packed weight buffer as the kernel (so they also check the packing against
the modules, see the tests) and take gradients with autograd, independently of the kernel's hand-written
backward pass. The combine-and-update twins are the textbook formulas of METHOD.md 4 and of the samplers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

if TYPE_CHECKING:  # the twin never imports Triton at run time
    from genneg.kernels.fused_mlp_guidance import PackedMLPStack

__all__ = [
    "edm_guided_ancestral_step",
    "edm_guided_denoise",
    "edm_guided_step",
    "mlp_guided_denoise",
    "mlp_guided_step",
]


# ------------------------------------------------------------------------- fused MLP guidance (kernel 1)


def _unpack(stack: PackedMLPStack, index: int) -> dict[str, torch.Tensor]:
    """Views of network ``index`` (0 = denoiser) in ``stack.weights``."""
    hp, dp, nb = stack.hidden_pad, stack.dim_pad, stack.num_blocks
    op = dp if index == 0 else stack.parts_pad
    start = 0 if index == 0 else stack.den_size + (index - 1) * stack.cls_size
    buf = stack.weights
    views: dict[str, torch.Tensor] = {}

    def take(name: str, *shape: int) -> None:
        nonlocal start
        n = math.prod(shape)
        views[name] = buf[start : start + n].view(*shape)
        start += n

    take("w_in", hp, dp)
    for j in range(nb):
        take(f"w1_{j}", hp, hp)
        take(f"b1_{j}", hp)
        take(f"w2_{j}", hp, hp)
        take(f"b2_{j}", hp)
    take("w_out", op, hp)
    take("b_out", op)
    return views


def _mlp(
    views: dict[str, torch.Tensor], x_in: torch.Tensor, t: torch.Tensor, num_blocks: int
) -> torch.Tensor:
    """``(B, DP)`` padded inputs, ``(B, HP)`` time features (+ b_in) -> ``(B, OP)``."""
    h = x_in @ views["w_in"].T + t
    for j in range(num_blocks):
        a = F.silu(h) @ views[f"w1_{j}"].T + views[f"b1_{j}"]
        h = h + F.silu(a) @ views[f"w2_{j}"].T + views[f"b2_{j}"]
    return F.silu(h) @ views["w_out"].T + views["b_out"]


def _denoise(x: torch.Tensor, sigma: torch.Tensor, tb: torch.Tensor, stack: PackedMLPStack,
             denoised: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``(B, D)``, ``sigma`` ``(B,)``, ``tb`` ``(B, N, HP)`` -> ``D_K`` ``(B, D)``."""
    d, dp = stack.dim, stack.dim_pad
    x_pad = F.pad(x, (0, dp - d))
    s2 = sigma[:, None] ** 2
    if denoised is None:
        sd = stack.sigma_data_denoiser
        c_in = 1.0 / torch.sqrt(s2 + sd * sd)
        f = _mlp(_unpack(stack, 0), c_in * x_pad, tb[:, 0], stack.num_blocks)[:, :d]
        denoised = sd * sd / (s2 + sd * sd) * x + sigma[:, None] * sd * c_in * f
    if stack.num_classifiers == 0:
        return denoised
    sd = stack.sigma_data_classifier
    c_in = 1.0 / torch.sqrt(s2 + sd * sd)
    with torch.enable_grad():
        xg = x_pad.detach().requires_grad_(True)
        total = x.new_zeros(())
        for k in range(stack.num_classifiers):
            logits = _mlp(_unpack(stack, k + 1), c_in * xg, tb[:, k + 1], stack.num_blocks)
            total = total + stack.gammas[k] * F.logsigmoid(logits[:, : stack.parts]).sum()
        (grad,) = torch.autograd.grad(total, xg)
    return denoised + s2 * grad[:, :d]


def mlp_guided_denoise(
    x: torch.Tensor, sigma: torch.Tensor, stack: PackedMLPStack, denoised: torch.Tensor | None = None
) -> torch.Tensor:
    """Twin of ``genneg.kernels.fused_mlp_guidance.mlp_guided_denoise`` (autograd gradients).

    ``x`` ``(B, D)`` float32, ``sigma`` ``(B,)`` float32, ``denoised`` ``(B, D)`` or None -> ``(B, D)``.
    """
    if denoised is None and not stack.has_denoiser:
        raise ValueError("this stack was packed without a denoiser network: pass denoised=D(x; sigma)")
    sigma = sigma.to(torch.float32)
    return _denoise(x, sigma, stack.time_features(sigma), stack, denoised)


def mlp_guided_step(
    x: torch.Tensor,
    sigma_cur: float,
    sigma_next: float,
    stack: PackedMLPStack,
    method: str = "heun",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Twin of ``genneg.kernels.fused_mlp_guidance.mlp_guided_step``: ``(B, D)`` -> ``(B, D)`` at
    ``sigma_next`` (Heun, or Euler when ``method == "euler"`` or ``sigma_next == 0``)."""
    if not stack.has_denoiser:
        raise ValueError("this stack was packed without a denoiser network; use mlp_guided_denoise")
    batch = x.shape[0]
    s_cur = torch.full((batch,), sigma_cur, dtype=torch.float32, device=x.device)
    tb_cur = stack.time_features(s_cur[:1]).expand(batch, -1, -1)
    d = (x - _denoise(x, s_cur, tb_cur, stack, None)) / s_cur[:, None]
    step = torch.tensor(sigma_next, dtype=torch.float32) - torch.tensor(sigma_cur, dtype=torch.float32)
    x_next = x + step * d
    if method == "heun" and sigma_next > 0:
        s_next = torch.full((batch,), sigma_next, dtype=torch.float32, device=x.device)
        tb_next = stack.time_features(s_next[:1]).expand(batch, -1, -1)
        d2 = (x_next - _denoise(x_next, s_next, tb_next, stack, None)) / s_next[:, None]
        x_next = x + step * 0.5 * (d + d2)
    if out is not None:
        out.copy_(x_next)
        return out
    return x_next


# ------------------------------------------------------------------ combine-and-update (kernels 2 and 3)


def _guidance_sum(grads: torch.Tensor, logits: torch.Tensor | None, scales: torch.Tensor) -> torch.Tensor:
    """``Σ_k γ_k w_k G_k``: ``grads`` ``(K, B, ...)``, ``logits`` ``(K, B)`` or None -> ``(B, ...)``."""
    trailing = [1] * (grads.ndim - 2)
    weights = scales.reshape(-1, 1, *trailing)
    if logits is not None:
        weights = weights * torch.sigmoid(-logits).reshape(*logits.shape, *trailing)
    return (weights * grads).sum(dim=0)


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def edm_guided_denoise(
    denoised: torch.Tensor,
    grads: torch.Tensor,
    logits: torch.Tensor | None,
    scales: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Twin of ``genneg.kernels.fused_guidance_update.edm_guided_denoise``: ``D + σ² Σ_k γ_k w_k G_k``."""
    return denoised + _rows(sigma, denoised) ** 2 * _guidance_sum(grads, logits, scales)


def edm_guided_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    grads: torch.Tensor,
    logits: torch.Tensor | None,
    scales: torch.Tensor,
    sigma_cur: float,
    sigma_next: float,
    x_prev: torch.Tensor | None = None,
    d_prev: torch.Tensor | None = None,
    d_out: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Twin of ``genneg.kernels.fused_guidance_update.edm_guided_step`` (Euler, or Heun's correction
    when ``x_prev`` and ``d_prev`` are given)."""
    g = _guidance_sum(grads, logits, scales)
    step = torch.tensor(sigma_next, dtype=torch.float32) - torch.tensor(sigma_cur, dtype=torch.float32)
    if x_prev is None:
        d = (x - (denoised + sigma_cur**2 * g)) / sigma_cur
        result = x + step * d
        if d_out is not None:
            d_out.copy_(d)
    else:
        d2 = (x - (denoised + sigma_next**2 * g)) / sigma_next
        result = x_prev + step * 0.5 * (d_prev + d2)
    if out is not None:
        out.copy_(result)
        return out
    return result


def edm_guided_ancestral_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    grads: torch.Tensor,
    logits: torch.Tensor | None,
    scales: torch.Tensor,
    sigma_cur: float,
    sigma_next: float,
    noise: torch.Tensor | None,
    eta: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Twin of ``genneg.kernels.fused_guidance_update.edm_guided_ancestral_step``: the guided
    Euler-ancestral step ``D_K + (σ_down/σ)(x − D_K) + σ_up · noise``."""
    from genneg.diffusion.samplers import ancestral_levels

    sigma_down, sigma_up = ancestral_levels(sigma_cur, sigma_next, eta)
    den = denoised + sigma_cur**2 * _guidance_sum(grads, logits, scales)
    result = den + (sigma_down / sigma_cur) * (x - den)
    if sigma_up > 0:
        result = result + sigma_up * noise
    if out is not None:
        out.copy_(result)
        return out
    return result
