"""Fused combine-and-update for guidance with networks too large to fuse whole (e.g. the traffic
transformer), EDM and DDPM forms.

The per-classifier input gradients ``G_k = ∇_x Σ_rows l_k`` come from ONE batched autograd backward over
the whole stack (``genneg.guidance.fused.stack_input_gradients``); this kernel then makes one pass over
memory that, per element,

- sums ``g = Σ_k γ_k w_k G_k`` with the logsigmoid scaling ``w_k = sigmoid(-l_k)`` per row
  (``d logsigmoid(l)/dl``; ``logits=None`` means the gradients are already of ``log c_k``),
- applies the guidance: ``D_K = D + σ² g`` (EDM) or ``ε_K = ε − sqrt(1−ᾱ_t) g`` (DDPM, METHOD.md 4),
- and applies the sampler update: Euler ``x + (σ' − σ)(x − D_K)/σ`` (optionally writing the slope ``d``
  for Heun), Heun's correction ``x_prev + (σ' − σ)(d_prev + (x − D_K)/σ')/2``, or the DDPM ancestral step
  ``c0 x̂0 + c_t x_t + std · noise`` with ``x̂0 = (x_t − sqrt(1−ᾱ_t) ε_K)/sqrt(ᾱ_t)`` and the posterior
  coefficients of ``genneg.diffusion.ddpm.ddpm_ancestral_sample`` (noise drawn by the caller, so both
  backends consume the same random numbers).

Tensors are flattened to ``(B, M)`` with ``M`` the number of elements of one sample.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = [
    "ddpm_ancestral_coefficients",
    "ddpm_guided_eps",
    "ddpm_guided_step",
    "edm_guided_denoise",
    "edm_guided_step",
]

_EDM_DENOISE, _EDM_EULER, _EDM_HEUN, _DDPM_EPS, _DDPM_STEP = 0, 1, 2, 3, 4
_BLOCK = 1024


@triton.jit
def _guidance_update_kernel(
    base_ptr, x_ptr, grads_ptr, logits_ptr, gamma_ptr, row_ptr, aux1_ptr, aux2_ptr, out_ptr, d_out_ptr,
    N, M, B, K, c1, c2, c3, c4, c5,
    MODE: tl.constexpr, HAS_LOGITS: tl.constexpr, WRITE_D: tl.constexpr, HAS_AUX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    row = offs // M
    g = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(K):
        w = tl.load(gamma_ptr + k)
        gk = tl.load(grads_ptr + k * N + offs, mask=mask, other=0.0)
        if HAS_LOGITS:
            logit = tl.load(logits_ptr + k * B + row, mask=mask, other=0.0)
            gk = gk * tl.sigmoid(-logit)
        g += w * gk
    base = tl.load(base_ptr + offs, mask=mask, other=0.0)
    if MODE == 0:  # D_K = D + σ² g, σ per row
        s = tl.load(row_ptr + row, mask=mask, other=1.0)
        out = base + s * s * g
    elif MODE == 1:  # Euler from σ = c1 to σ' = c2
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        d = (x - (base + c1 * c1 * g)) / c1
        out = x + (c2 - c1) * d
        if WRITE_D:
            tl.store(d_out_ptr + offs, d, mask=mask)
    elif MODE == 2:  # Heun's correction at (x, σ' = c2) given x_prev (aux1) and d_prev (aux2)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        d2 = (x - (base + c2 * c2 * g)) / c2
        x_prev = tl.load(aux1_ptr + offs, mask=mask, other=0.0)
        d_prev = tl.load(aux2_ptr + offs, mask=mask, other=0.0)
        out = x_prev + (c2 - c1) * 0.5 * (d_prev + d2)
    elif MODE == 3:  # ε_K = ε − sqrt(1 − ᾱ_t) g, ᾱ_t per row
        ab = tl.load(row_ptr + row, mask=mask, other=1.0)
        out = base - tl.sqrt(1.0 - ab) * g
    else:  # ancestral step: c1 = sqrt(1−ᾱ_t), c2 = sqrt(ᾱ_t), c3 = c0, c4 = c_t, c5 = std
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        eps = base - c1 * g
        x0 = (x - c1 * eps) / c2
        out = c3 * x0 + c4 * x
        if HAS_AUX:
            out += c5 * tl.load(aux1_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, out, mask=mask)


def _flat(t: torch.Tensor, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        raise TypeError(f"{name} must be a float32 tensor, got {getattr(t, 'dtype', type(t))}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    return t.contiguous()


def _run(mode: int, base: torch.Tensor, grads: torch.Tensor, logits: torch.Tensor | None,
         scales: torch.Tensor, *, x: torch.Tensor | None = None, row: torch.Tensor | None = None,
         aux1: torch.Tensor | None = None, aux2: torch.Tensor | None = None,
         d_out: torch.Tensor | None = None, out: torch.Tensor | None = None,
         coefs: tuple[float, ...] = ()) -> torch.Tensor:
    shape, dev = tuple(base.shape), base.device
    if len(shape) < 1:
        raise ValueError("inputs must have a batch dimension")
    batch = shape[0]
    base = _flat(base, "denoised/eps", shape, dev)
    if grads.ndim < 1:
        raise ValueError("grads must have shape (K, B, ...)")
    num_k = grads.shape[0]
    grads = _flat(grads, "grads", (num_k, *shape), dev)
    if logits is not None:
        logits = _flat(logits, "logits", (num_k, batch), dev)
    scales = _flat(scales, "scales", (num_k,), dev)
    if x is not None:
        x = _flat(x, "x", shape, dev)
    if aux1 is not None:
        aux1 = _flat(aux1, "x_prev/noise", shape, dev)
    if aux2 is not None:
        aux2 = _flat(aux2, "d_prev", shape, dev)
    if row is not None:
        row = _flat(row, "per-row coefficient", (batch,), dev)
    if d_out is not None:
        if not d_out.is_contiguous():
            raise ValueError("d_out must be contiguous")
        d_out = _flat(d_out, "d_out", shape, dev)
    if out is None:
        out = torch.empty_like(base)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
    n = base.numel()
    if n == 0:
        return out
    c = [float(v) for v in coefs] + [0.0] * (5 - len(coefs))
    grid = (triton.cdiv(n, _BLOCK),)
    _guidance_update_kernel[grid](
        base, x if x is not None else base, grads, logits if logits is not None else scales, scales,
        row if row is not None else scales, aux1 if aux1 is not None else base,
        aux2 if aux2 is not None else base, out, d_out if d_out is not None else out,
        n, n // batch, batch, num_k, *c,
        MODE=mode, HAS_LOGITS=logits is not None, WRITE_D=d_out is not None, HAS_AUX=aux1 is not None,
        BLOCK=_BLOCK,
    )
    return out


def edm_guided_denoise(
    denoised: torch.Tensor,
    grads: torch.Tensor,
    logits: torch.Tensor | None,
    scales: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """``D_K = D + σ² Σ_k γ_k w_k G_k``.

    Args:
        denoised: ``(B, ...)`` float32 ``D(x; σ)``.
        grads: ``(K, B, ...)`` float32 ``G_k``: ``∇_x`` of classifier k's logit (or of its log c when
            ``logits`` is None).
        logits: ``(K, B)`` float32 logits (``w_k = sigmoid(-l_k)``) or None (``w_k = 1``).
        scales: ``(K,)`` float32 ``γ_k``.
        sigma: ``(B,)`` float32 noise levels (data units).

    Returns:
        ``(B, ...)`` float32.
    """
    return _run(_EDM_DENOISE, denoised, grads, logits, scales, row=sigma)


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
    """A guided PF-ODE update from ``sigma_cur`` to ``sigma_next``, one pass.

    Euler (``x_prev is None``): ``denoised``/``grads``/``logits`` are evaluated at ``(x, sigma_cur)``;
    returns ``x + (σ' − σ) d`` with ``d = (x − D_K)/σ``, written also to ``d_out`` when given.
    Heun's correction (``x_prev``, ``d_prev`` given): ``x`` is the Euler result at ``sigma_next > 0`` and
    the network outputs are evaluated there; returns ``x_prev + (σ' − σ)(d_prev + (x − D_K)/σ')/2``.

    Args:
        x, denoised, x_prev, d_prev, d_out, out: ``(B, ...)`` float32; ``out`` may alias ``x``.
        grads, logits, scales: as in :func:`edm_guided_denoise`.
        sigma_cur, sigma_next: noise levels, ``sigma_cur > sigma_next >= 0``.
    """
    if not (sigma_cur > 0 and 0 <= sigma_next < sigma_cur):
        raise ValueError(f"need sigma_cur > sigma_next >= 0, got {sigma_cur}, {sigma_next}")
    if (x_prev is None) != (d_prev is None):
        raise ValueError("Heun's correction needs both x_prev and d_prev")
    if x_prev is None:
        return _run(_EDM_EULER, denoised, grads, logits, scales, x=x, d_out=d_out, out=out,
                    coefs=(sigma_cur, sigma_next))
    if sigma_next <= 0:
        raise ValueError("Heun's correction needs sigma_next > 0")
    return _run(_EDM_HEUN, denoised, grads, logits, scales, x=x, aux1=x_prev, aux2=d_prev, out=out,
                coefs=(sigma_cur, sigma_next))


def ddpm_guided_eps(
    eps: torch.Tensor,
    grads: torch.Tensor,
    logits: torch.Tensor | None,
    scales: torch.Tensor,
    alpha_bar: torch.Tensor,
) -> torch.Tensor:
    """``ε_K = ε − sqrt(1 − ᾱ_t) Σ_k γ_k w_k G_k`` (gradients with respect to ``x_t``).

    Args:
        eps: ``(B, ...)`` float32 ``ε_θ(x_t, t)``.
        grads, logits, scales: as in :func:`edm_guided_denoise`.
        alpha_bar: ``(B,)`` float32 ``ᾱ_t`` per row.
    """
    return _run(_DDPM_EPS, eps, grads, logits, scales, row=alpha_bar)


def ddpm_ancestral_coefficients(alpha_bar_t: float, alpha_bar_s: float) -> tuple[float, float, float]:
    """``(c0, c_t, std)`` of the posterior step ``x_t -> x_s`` (float64 arithmetic, as the sampler);
    ``(1, 0, 0)`` for the last step (``alpha_bar_s == 1``: return ``x̂0``)."""
    if alpha_bar_s >= 1.0:
        return 1.0, 0.0, 0.0
    alpha = alpha_bar_t / alpha_bar_s
    beta = 1 - alpha
    c0 = math.sqrt(alpha_bar_s) * beta / (1 - alpha_bar_t)
    ct = math.sqrt(alpha) * (1 - alpha_bar_s) / (1 - alpha_bar_t)
    std = math.sqrt(beta * (1 - alpha_bar_s) / (1 - alpha_bar_t))
    return c0, ct, std


def ddpm_guided_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    grads: torch.Tensor,
    logits: torch.Tensor | None,
    scales: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_s: float,
    noise: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Guided DDPM ancestral step ``x_t -> x_s`` in one pass (``genneg.diffusion.ddpm`` posterior).

    Args:
        x: ``(B, ...)`` float32 ``x_t`` (VP coordinates).
        eps: ``(B, ...)`` float32 ``ε_θ(x_t, t)``.
        grads, logits, scales: as in :func:`edm_guided_denoise`, gradients with respect to ``x_t``.
        alpha_bar_t, alpha_bar_s: ``ᾱ`` of this and the next visited step (``1.0`` for the last step,
            which returns ``x̂0`` and ignores ``noise``).
        noise: ``(B, ...)`` float32 standard normal draws (None only for the last step).
        out: destination, may alias ``x``.
    """
    if not (0 < alpha_bar_t < alpha_bar_s <= 1.0):
        raise ValueError(f"need 0 < alpha_bar_t < alpha_bar_s <= 1, got {alpha_bar_t}, {alpha_bar_s}")
    c0, ct, std = ddpm_ancestral_coefficients(alpha_bar_t, alpha_bar_s)
    if std > 0 and noise is None:
        raise ValueError("noise is required for every step but the last")
    return _run(_DDPM_STEP, eps, grads, logits, scales, x=x, aux1=noise if std > 0 else None, out=out,
                coefs=(math.sqrt(1 - alpha_bar_t), math.sqrt(alpha_bar_t), c0, ct, std))
