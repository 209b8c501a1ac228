"""Fused combine-and-update for guidance with networks too large to fuse whole (e.g. the traffic
transformer), in the one σ (variance-exploding) form; a DDPM ε-network enters as its ``EpsDenoiser``.

The per-classifier input gradients ``G_k = ∇_x Σ_rows l_k`` come from ONE batched autograd backward over
the whole stack (``genneg.guidance.fused.stack_input_gradients``); this kernel then makes one pass over
memory that, per element,

- sums ``g = Σ_k γ_k w_k G_k`` with the logsigmoid scaling ``w_k = sigmoid(-l_k)`` per row
  (``d logsigmoid(l)/dl``; ``logits=None`` means the gradients are already of ``log c_k``),
- applies the guidance: ``D_K = D + σ² g`` (METHOD.md 4),
- and applies the sampler update: Euler ``x + (σ' − σ)(x − D_K)/σ`` (optionally writing the slope ``d``
  for Heun), Heun's correction ``x_prev + (σ' − σ)(d_prev + (x − D_K)/σ')/2``, or the Euler-ancestral
  step ``D_K + (σ_down/σ)(x − D_K) + σ_up · noise`` of ``genneg.diffusion.euler_ancestral_step`` (on a
  DDPM's levels, its ancestral step; noise drawn by the caller, so both backends consume the same random
  numbers).

Tensors are flattened to ``(B, M)`` with ``M`` the number of elements of one sample.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "edm_guided_ancestral_step",
    "edm_guided_denoise",
    "edm_guided_step",
]

_EDM_DENOISE, _EDM_EULER, _EDM_HEUN, _EDM_ANCESTRAL = 0, 1, 2, 3
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
    else:  # Euler-ancestral: c1 = σ, c2 = σ_down / σ, c3 = σ_up, noise in aux1
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        den = base + c1 * c1 * g
        out = den + c2 * (x - den)
        if HAS_AUX:
            out += c3 * tl.load(aux1_ptr + offs, mask=mask, other=0.0)
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
    base = _flat(base, "denoised", shape, dev)
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
    """The guided Euler-ancestral step ``D_K + (σ_down/σ)(x − D_K) + σ_up · noise`` in one pass
    (``genneg.diffusion.euler_ancestral_step``; levels of ``genneg.diffusion.ancestral_levels``).

    Args:
        x, denoised: ``(B, ...)`` float32, the state at ``sigma_cur`` and ``D(x; sigma_cur)``.
        grads, logits, scales: as in :func:`edm_guided_denoise`, evaluated at ``(x, sigma_cur)``.
        sigma_cur, sigma_next: noise levels, ``sigma_cur > sigma_next >= 0`` (0 returns ``D_K``).
        noise: ``(B, ...)`` float32 standard normal draws (None only when ``σ_up = 0``).
        eta: 1 for the ancestral step.
        out: destination, may alias ``x``.
    """
    from genneg.diffusion.samplers import ancestral_levels

    if not (sigma_cur > 0 and 0 <= sigma_next < sigma_cur):
        raise ValueError(f"need sigma_cur > sigma_next >= 0, got {sigma_cur}, {sigma_next}")
    sigma_down, sigma_up = ancestral_levels(sigma_cur, sigma_next, eta)
    if sigma_up > 0 and noise is None:
        raise ValueError(f"a step to sigma_next={sigma_next} with eta={eta} needs noise")
    return _run(_EDM_ANCESTRAL, denoised, grads, logits, scales, x=x, aux1=noise if sigma_up > 0 else None,
                out=out, coefs=(sigma_cur, sigma_down / sigma_cur, sigma_up))
