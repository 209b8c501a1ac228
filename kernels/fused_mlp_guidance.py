"""Fused guidance for a stack of residual-MLP classifiers: one launch per sampler step.

For a denoiser ``D = EDMPrecond(ResidualMLP)`` and K time-dependent classifiers ``c_k = TimeClassifier(
ResidualMLP)`` (``genneg.models.mlp`` documents the architecture), one program per tile of ``BLOCK_B`` rows

1. runs the denoiser's forward pass, ``D = c_skip x + c_out F(c_in x, c_noise)``;
2. for each classifier: runs its forward pass to the logits ``l_k`` (``(B, P)``, one per part) and its
   analytic backward pass to ``∇_x Σ_parts logsigmoid(l_k) = c_in · J_k^T sigmoid(-l_k)`` (no autograd
   graph: the activations of the tile live in a per-program scratch area that stays in L1/L2);
3. forms ``D_K = D + σ² Σ_k γ_k ∇_x Σ_parts logsigmoid(l_k)`` (METHOD.md 4);
4. applies the probability-flow ODE update ``x ← x + (σ_next − σ) (x − D_K) / σ`` (Euler) or, for Heun,
   repeats 1–3 at ``(x_next, σ_next)`` within the same program (rows are independent) and writes
   ``x + (σ_next − σ) (d + d_next) / 2``.

Time embedding: at a sampler step every row shares ``σ``, so the embedding MLP's output
``t = W_t2 silu(W_t1 e(c_noise) + b_t1) + b_t2`` (plus the input bias ``b_in``, folded in) is computed once
per step and network in PyTorch (:meth:`PackedMLPStack.time_features`, three batched ops for all K+1
networks) and read by every program; the kernel never evaluates the embedding. For per-row ``σ``
(:func:`mlp_guided_denoise`) the same features are computed per row.

Weights of all networks are packed once into one contiguous float32 buffer (:func:`pack_mlp_stack`):
hidden widths are padded to a common power of two ``HP`` and block counts to a common ``NB`` with zeros,
which is exact (a zero hidden unit stays 0 and ``silu(0) = 0``; a zero residual block is the identity).

Layout of one network in the buffer (row-major, ``DP``/``OP`` = padded input/output width)::

    W_in (HP, DP) | NB × [W1 (HP, HP), b1 (HP), W2 (HP, HP), b2 (HP)] | W_out (OP, HP), b_out (OP)

The denoiser (network 0, ``OP = DP``) comes first, then the K classifiers (``OP = PP``, padded parts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import nn

from genneg.models.mlp import ResidualMLP, ResidualMLPConfig

__all__ = ["PackedMLPStack", "mlp_guided_denoise", "mlp_guided_step", "pack_mlp_stack"]

_MODE_DENOISE, _MODE_EULER, _MODE_HEUN = 0, 1, 2


def _pad_width(n: int) -> int:
    """Smallest power of two ``>= max(n, 16)`` (``tl.dot`` needs tiles of at least 16)."""
    return max(16, triton.next_power_of_2(int(n)))


@dataclass(frozen=True)
class PackedMLPStack:
    """The weights of a denoiser MLP and K classifier MLPs, packed for :func:`mlp_guided_step`.

    Attributes:
        weights: ``(den_size + K · cls_size,)`` float32, layout in the module docstring.
        time_freqs: ``(N, EP/2)`` float32 embedding frequencies (scale included) of the ``N = K + 1``
            networks; zero-padded.
        time_w1, time_b1: ``(N, HP, EP)``, ``(N, HP)``: first embedding layer (columns mapped so that the
            padded ``[cos, sin]`` features line up).
        time_w2, time_bias: ``(N, HP, HP)``, ``(N, HP)``: second embedding layer; ``time_bias`` is
            ``b_t2 + b_in`` (the input layer's bias folded in).
        gammas: ``(max(K, 1),)`` float32 guidance scales.
        dim: data dimension ``D``; parts: logits per classifier ``P``; num_classifiers: ``K``.
        hidden_pad, dim_pad, parts_pad, num_blocks: ``HP``, ``DP``, ``PP``, ``NB``.
        sigma_data_denoiser, sigma_data_classifier: EDM data scales (data units).
        allow_tf32: let ``tl.dot`` use TF32 tensor cores on a GPU (ignored by the interpreter).
        has_denoiser: False when network 0 is a zero placeholder (the denoiser runs elsewhere).
    """

    weights: torch.Tensor
    time_freqs: torch.Tensor
    time_w1: torch.Tensor
    time_b1: torch.Tensor
    time_w2: torch.Tensor
    time_bias: torch.Tensor
    gammas: torch.Tensor
    dim: int
    parts: int
    num_classifiers: int
    hidden_pad: int
    dim_pad: int
    parts_pad: int
    num_blocks: int
    sigma_data_denoiser: float
    sigma_data_classifier: float
    allow_tf32: bool = False
    has_denoiser: bool = True

    @property
    def den_size(self) -> int:
        """Floats of the denoiser network in :attr:`weights`."""
        return _net_size(self.hidden_pad, self.dim_pad, self.dim_pad, self.num_blocks)

    @property
    def cls_size(self) -> int:
        """Floats of one classifier network in :attr:`weights`."""
        return _net_size(self.hidden_pad, self.dim_pad, self.parts_pad, self.num_blocks)

    def time_features(self, sigma: torch.Tensor) -> torch.Tensor:
        """``(S,)`` float32 noise levels -> ``(S, N, HP)`` float32: each network's ``t + b_in``.

        ``c_noise = ln(σ) / 4`` for all networks (EDM); three batched ops for all ``N`` networks.
        """
        c_noise = torch.log(sigma.to(torch.float32)) / 4.0
        args = c_noise[:, None, None] * self.time_freqs[None]  # (S, N, EP/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=2)  # (S, N, EP)
        t1 = torch.nn.functional.silu(torch.einsum("sne,nhe->snh", emb, self.time_w1) + self.time_b1)
        return torch.einsum("snh,ngh->sng", t1, self.time_w2) + self.time_bias


def _net_size(hp: int, dp: int, op: int, nb: int) -> int:
    return hp * dp + nb * (2 * hp * hp + 2 * hp) + op * hp + op


def _check_mlp(net: nn.Module, what: str) -> ResidualMLP:
    if not isinstance(net, ResidualMLP):
        raise TypeError(f"{what} must be a genneg.models.ResidualMLP, got {type(net).__name__}")
    return net


def _pack_net(net: ResidualMLP, hp: int, dp: int, op: int, nb: int) -> torch.Tensor:
    """One network's weights in the packed layout, zero-padded; ``(size,)`` float32."""
    cfg = net.config
    h, d, o = cfg.hidden, cfg.dim_in, cfg.dim_out
    dev = net.input_fc.weight.device
    w_in = torch.zeros(hp, dp, device=dev)
    w_in[:h, :d] = net.input_fc.weight
    parts = [w_in.flatten()]
    for j in range(nb):
        w1, b1 = torch.zeros(hp, hp, device=dev), torch.zeros(hp, device=dev)
        w2, b2 = torch.zeros(hp, hp, device=dev), torch.zeros(hp, device=dev)
        if j < len(net.blocks):
            block = net.blocks[j]
            w1[:h, :h], b1[:h] = block.fc1.weight, block.fc1.bias
            w2[:h, :h], b2[:h] = block.fc2.weight, block.fc2.bias
        parts += [w1.flatten(), b1, w2.flatten(), b2]
    w_out, b_out = torch.zeros(op, hp, device=dev), torch.zeros(op, device=dev)
    w_out[:o, :h], b_out[:o] = net.output_fc.weight, net.output_fc.bias
    parts += [w_out.flatten(), b_out]
    out = torch.cat(parts).to(torch.float32)
    assert out.numel() == _net_size(hp, dp, op, nb)
    return out


@torch.no_grad()
def pack_mlp_stack(
    denoiser_net: nn.Module | None,
    classifier_nets: list[nn.Module],
    scales: list[float],
    *,
    sigma_data_denoiser: float,
    sigma_data_classifier: float,
    allow_tf32: bool = False,
) -> PackedMLPStack:
    """Pack a denoiser MLP and K classifier MLPs into one buffer (once, when the stack is built).

    Args:
        denoiser_net: the ``ResidualMLP`` inside ``EDMPrecond`` (``dim_in == dim_out == D``), or None
            when the denoiser runs elsewhere (then :func:`mlp_guided_denoise` needs ``denoised`` and
            :func:`mlp_guided_step` is unavailable; a zero placeholder of the smallest size is packed).
        classifier_nets: K ``ResidualMLP`` with ``dim_in == D`` and the same ``dim_out = P`` (parts).
        scales: K guidance scales ``γ_k``.
        sigma_data_denoiser, sigma_data_classifier: EDM data scales of the denoiser and the classifiers.
        allow_tf32: let the kernel's matrix products use TF32 on a GPU.

    Raises:
        TypeError: a network is not a ``ResidualMLP``.
        ValueError: mismatched dimensions or scales.
    """
    if denoiser_net is None:
        if not classifier_nets:
            raise ValueError("need a denoiser network or at least one classifier network")
        first = _check_mlp(classifier_nets[0], "classifier 0's network")
        dim = first.config.dim_in
        with torch.random.fork_rng(devices=[]):  # the placeholder's init must not move the caller's RNG
            den = ResidualMLP(ResidualMLPConfig(dim, dim, hidden=16, num_blocks=0, embedding_dim=2))
        den = den.to(first.input_fc.weight.device)
        with torch.no_grad():
            for p in den.parameters():
                p.zero_()
    else:
        den = _check_mlp(denoiser_net, "the denoiser's network")
    dim = den.config.dim_in
    if den.config.dim_out != dim:
        raise ValueError(f"denoiser network maps {dim} -> {den.config.dim_out}; must be {dim} -> {dim}")
    nets = [_check_mlp(n, f"classifier {i}'s network") for i, n in enumerate(classifier_nets)]
    if len(scales) != len(nets):
        raise ValueError(f"got {len(scales)} scales for {len(nets)} classifiers")
    parts = nets[0].config.dim_out if nets else 1
    for i, n in enumerate(nets):
        if n.config.dim_in != dim or n.config.dim_out != parts:
            raise ValueError(
                f"classifier {i} maps {n.config.dim_in} -> {n.config.dim_out}; expected {dim} -> {parts}"
            )
    all_nets = [den, *nets]
    hp = _pad_width(max(n.config.hidden for n in all_nets))
    dp, pp = _pad_width(dim), _pad_width(parts)
    nb = max(len(n.blocks) for n in all_nets)
    weights = torch.cat(
        [_pack_net(den, hp, dp, dp, nb)] + [_pack_net(n, hp, dp, pp, nb) for n in nets]
    ).contiguous()
    half = max(n.config.embedding_dim // 2 for n in all_nets)
    dev = weights.device
    n_nets = len(all_nets)
    freqs = torch.zeros(n_nets, half, device=dev)
    w1 = torch.zeros(n_nets, hp, 2 * half, device=dev)
    b1 = torch.zeros(n_nets, hp, device=dev)
    w2 = torch.zeros(n_nets, hp, hp, device=dev)
    bias = torch.zeros(n_nets, hp, device=dev)
    for i, n in enumerate(all_nets):
        h, e = n.config.hidden, n.config.embedding_dim // 2
        freqs[i, :e] = n.embedding.freqs
        w1[i, :h, :e] = n.time_fc1.weight[:, :e]
        w1[i, :h, half : half + e] = n.time_fc1.weight[:, e:]
        b1[i, :h] = n.time_fc1.bias
        w2[i, :h, :h] = n.time_fc2.weight
        bias[i, :h] = n.time_fc2.bias + n.input_fc.bias
    gammas = torch.tensor([float(s) for s in scales] or [0.0], dtype=torch.float32, device=dev)
    return PackedMLPStack(
        weights=weights, time_freqs=freqs, time_w1=w1, time_b1=b1, time_w2=w2, time_bias=bias,
        gammas=gammas, dim=dim, parts=parts, num_classifiers=len(nets), hidden_pad=hp, dim_pad=dp,
        parts_pad=pp, num_blocks=nb, sigma_data_denoiser=float(sigma_data_denoiser),
        sigma_data_classifier=float(sigma_data_classifier), allow_tf32=allow_tf32,
        has_denoiser=denoiser_net is not None,
    )


# ----------------------------------------------------------------------------------------------- kernel


@triton.jit
def _silu(a):
    return a * tl.sigmoid(a)


@triton.jit
def _silu_grad(a):
    s = tl.sigmoid(a)
    return s + a * s * (1.0 - s)


@triton.jit
def _tile_matmul(src, w_ptr, w_sk, w_sn, n0, ACT: tl.constexpr, K: tl.constexpr, BB: tl.constexpr,
                 BH: tl.constexpr, PREC: tl.constexpr):
    """``act(src[:, 0:K]) @ W[0:K, n0:n0+BH]`` -> ``(BB, BH)``; ``src`` is a ``(BB, K)`` scratch tile and
    element ``W[k, n]`` sits at ``w_ptr + k·w_sk + n·w_sn``. ``ACT``: 0 none, 1 silu."""
    r = tl.arange(0, BB)
    c = tl.arange(0, BH)
    acc = tl.zeros((BB, BH), dtype=tl.float32)
    for k0 in range(0, K, BH):
        a = tl.load(src + r[:, None] * K + (k0 + c)[None, :])
        if ACT == 1:
            a = _silu(a)
        w = tl.load(w_ptr + (k0 + c)[:, None] * w_sk + (n0 + c)[None, :] * w_sn)
        acc += tl.dot(a, w, input_precision=PREC)
    return acc


@triton.jit
def _mlp_forward(x_in, net_ptr, tb_ptrs, scratch, OUT: tl.constexpr, NB: tl.constexpr, HP: tl.constexpr,
                 DP: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
    """Forward pass of one packed network on a tile; stores ``H_0..H_NB`` and ``A_0..A_{NB-1}`` in
    ``scratch`` and returns the ``(BB, OUT)`` output. ``tb_ptrs``: ``(BB, BH)`` pointers to the time
    features (+ b_in) of column chunk 0."""
    r = tl.arange(0, BB)
    c = tl.arange(0, BH)
    cd = tl.arange(0, DP)
    tile = BB * HP
    a_base = scratch + (NB + 1) * tile
    tl.debug_barrier()
    # H_0 = x_in W_in^T + t + b_in
    for n0 in range(0, HP, BH):
        w = tl.load(net_ptr + (n0 + c)[None, :] * DP + cd[:, None])  # (DP, BH) = W_in[n0:n0+BH, :]^T
        h0 = tl.dot(x_in, w, input_precision=PREC) + tl.load(tb_ptrs + n0)
        tl.store(scratch + r[:, None] * HP + (n0 + c)[None, :], h0)
    tl.debug_barrier()
    blocks = net_ptr + HP * DP
    for j in range(NB):
        w1 = blocks + j * (2 * HP * HP + 2 * HP)
        b1 = w1 + HP * HP
        w2 = b1 + HP
        b2 = w2 + HP * HP
        h_j = scratch + j * tile
        a_j = a_base + j * tile
        for n0 in range(0, HP, BH):
            acc = _tile_matmul(h_j, w1, 1, HP, n0, 1, HP, BB, BH, PREC)  # silu(H_j) W1^T
            acc += tl.load(b1 + n0 + c)[None, :]
            tl.store(a_j + r[:, None] * HP + (n0 + c)[None, :], acc)
        tl.debug_barrier()
        for n0 in range(0, HP, BH):
            acc = _tile_matmul(a_j, w2, 1, HP, n0, 1, HP, BB, BH, PREC)  # silu(A_j) W2^T
            acc += tl.load(b2 + n0 + c)[None, :]
            acc += tl.load(h_j + r[:, None] * HP + (n0 + c)[None, :])
            tl.store(h_j + tile + r[:, None] * HP + (n0 + c)[None, :], acc)
        tl.debug_barrier()
    # out = silu(H_NB) W_out^T + b_out, one OUT-wide tile
    w_out = blocks + NB * (2 * HP * HP + 2 * HP)
    co = tl.arange(0, OUT)
    h_last = scratch + NB * tile
    out = tl.zeros((BB, OUT), dtype=tl.float32)
    for k0 in range(0, HP, BH):
        a = _silu(tl.load(h_last + r[:, None] * HP + (k0 + c)[None, :]))
        w = tl.load(w_out + co[None, :] * HP + (k0 + c)[:, None])  # (BH, OUT)
        out += tl.dot(a, w, input_precision=PREC)
    out += tl.load(w_out + OUT * HP + co)[None, :]
    return out


@triton.jit
def _mlp_input_grad(g_out, net_ptr, scratch, OUT: tl.constexpr, NB: tl.constexpr, HP: tl.constexpr,
                    DP: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
    """Backward pass of the network whose activations :func:`_mlp_forward` left in ``scratch``:
    ``g_out`` ``(BB, OUT)`` = dL/d(out) -> dL/d(x_in) ``(BB, DP)``."""
    r = tl.arange(0, BB)
    c = tl.arange(0, BH)
    co = tl.arange(0, OUT)
    cd = tl.arange(0, DP)
    tile = BB * HP
    a_base = scratch + (NB + 1) * tile
    g_cur = scratch + (2 * NB + 1) * tile
    g_next = g_cur + tile
    d_a = g_next + tile
    blocks = net_ptr + HP * DP
    w_out = blocks + NB * (2 * HP * HP + 2 * HP)
    h_last = scratch + NB * tile
    # dH_NB = silu'(H_NB) * (g_out W_out)
    for n0 in range(0, HP, BH):
        w = tl.load(w_out + co[:, None] * HP + (n0 + c)[None, :])  # (OUT, BH)
        g = tl.dot(g_out, w, input_precision=PREC)
        g *= _silu_grad(tl.load(h_last + r[:, None] * HP + (n0 + c)[None, :]))
        tl.store(g_cur + r[:, None] * HP + (n0 + c)[None, :], g)
    tl.debug_barrier()
    for jj in range(NB):
        j = NB - 1 - jj
        w1 = blocks + j * (2 * HP * HP + 2 * HP)
        w2 = w1 + HP * HP + HP
        h_j = scratch + j * tile
        a_j = a_base + j * tile
        # dA_j = silu'(A_j) * (dH_{j+1} W2)
        for n0 in range(0, HP, BH):
            acc = _tile_matmul(g_cur, w2, HP, 1, n0, 0, HP, BB, BH, PREC)
            acc *= _silu_grad(tl.load(a_j + r[:, None] * HP + (n0 + c)[None, :]))
            tl.store(d_a + r[:, None] * HP + (n0 + c)[None, :], acc)
        tl.debug_barrier()
        # dH_j = dH_{j+1} + silu'(H_j) * (dA_j W1)
        for n0 in range(0, HP, BH):
            acc = _tile_matmul(d_a, w1, HP, 1, n0, 0, HP, BB, BH, PREC)
            acc *= _silu_grad(tl.load(h_j + r[:, None] * HP + (n0 + c)[None, :]))
            acc += tl.load(g_cur + r[:, None] * HP + (n0 + c)[None, :])
            tl.store(g_next + r[:, None] * HP + (n0 + c)[None, :], acc)
        tl.debug_barrier()
        g_cur, g_next = g_next, g_cur
    # dx_in = dH_0 W_in
    dx = tl.zeros((BB, DP), dtype=tl.float32)
    for k0 in range(0, HP, BH):
        g = tl.load(g_cur + r[:, None] * HP + (k0 + c)[None, :])
        w = tl.load(net_ptr + (k0 + c)[:, None] * DP + cd[None, :])  # (BH, DP) = W_in[k0:k0+BH, :]
        dx += tl.dot(g, w, input_precision=PREC)
    return dx


@triton.jit
def _guided_denoise_tile(x, denoised_ptr, w_ptr, tb_ptr, gamma_ptr, sigma, rows, rmask, scratch,
                         stage, tb_stage_stride, tb_row_stride, D, P, num_classifiers,
                         sd_den, sd_cls, HAS_DENOISER: tl.constexpr, NB: tl.constexpr, HP: tl.constexpr,
                         DP: tl.constexpr, PP: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                         PREC: tl.constexpr):
    """``D_K(x; σ)`` for one ``(BB, DP)`` tile; ``sigma`` ``(BB,)``."""
    cd = tl.arange(0, DP)
    cp = tl.arange(0, PP)
    c = tl.arange(0, BH)
    s2 = sigma * sigma
    rows_safe = tl.where(rmask, rows, 0)  # padded rows read row 0's time features, never past the end
    tb_rows = tb_ptr + stage * tb_stage_stride + rows_safe[:, None] * tb_row_stride + c[None, :]
    den_size = HP * DP + NB * (2 * HP * HP + 2 * HP) + DP * HP + DP
    cls_size = HP * DP + NB * (2 * HP * HP + 2 * HP) + PP * HP + PP
    if HAS_DENOISER:
        c_in = 1.0 / tl.sqrt(s2 + sd_den * sd_den)
        c_skip = sd_den * sd_den / (s2 + sd_den * sd_den)
        c_out = sigma * sd_den * c_in
        f = _mlp_forward(x * c_in[:, None], w_ptr, tb_rows, scratch, DP, NB, HP, DP, BB, BH, PREC)
        d_k = c_skip[:, None] * x + c_out[:, None] * f
    else:
        dmask = rmask[:, None] & (cd[None, :] < D)
        d_k = tl.load(denoised_ptr + rows[:, None] * D + cd[None, :], mask=dmask, other=0.0)
    c_in = 1.0 / tl.sqrt(s2 + sd_cls * sd_cls)
    x_in = x * c_in[:, None]
    grad = tl.zeros((BB, DP), dtype=tl.float32)
    for k in range(num_classifiers):
        net = w_ptr + den_size + k * cls_size
        logits = _mlp_forward(x_in, net, tb_rows + (k + 1) * HP, scratch, PP, NB, HP, DP, BB, BH, PREC)
        gamma = tl.load(gamma_ptr + k)
        # d/dl Σ_parts logsigmoid(l) = sigmoid(-l); padded parts contribute nothing
        g_out = tl.where(cp[None, :] < P, gamma * tl.sigmoid(-logits), 0.0)
        grad += _mlp_input_grad(g_out, net, scratch, PP, NB, HP, DP, BB, BH, PREC)
    return d_k + (s2 * c_in)[:, None] * grad


@triton.jit
def _fused_mlp_guidance_kernel(
    x_ptr, out_ptr, denoised_ptr, w_ptr, tb_ptr, gamma_ptr, sigma_ptr, scratch_ptr,
    B, D, P, num_classifiers, sd_den, sd_cls,
    sig_stage_stride, sig_row_stride, tb_stage_stride, tb_row_stride,
    MODE: tl.constexpr, HAS_DENOISER: tl.constexpr, NB: tl.constexpr, HP: tl.constexpr,
    DP: tl.constexpr, PP: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BB + tl.arange(0, BB)
    rmask = rows < B
    cd = tl.arange(0, DP)
    mask = rmask[:, None] & (cd[None, :] < D)
    x = tl.load(x_ptr + rows[:, None] * D + cd[None, :], mask=mask, other=0.0)
    scratch = scratch_ptr + pid.to(tl.int64) * ((2 * NB + 4) * BB * HP)
    sigma = tl.load(sigma_ptr + rows * sig_row_stride, mask=rmask, other=1.0)
    d_k = _guided_denoise_tile(x, denoised_ptr, w_ptr, tb_ptr, gamma_ptr, sigma, rows, rmask, scratch, 0,
                               tb_stage_stride, tb_row_stride, D, P, num_classifiers, sd_den, sd_cls,
                               HAS_DENOISER, NB, HP, DP, PP, BB, BH, PREC)
    if MODE == 0:
        result = d_k
    else:
        sigma_next = tl.load(sigma_ptr + sig_stage_stride + rows * sig_row_stride, mask=rmask, other=1.0)
        step = (sigma_next - sigma)[:, None]
        d = (x - d_k) / sigma[:, None]
        result = x + step * d
        if MODE == 2:
            d_k2 = _guided_denoise_tile(result, denoised_ptr, w_ptr, tb_ptr, gamma_ptr, sigma_next, rows,
                                        rmask, scratch, 1, tb_stage_stride, tb_row_stride, D, P,
                                        num_classifiers, sd_den, sd_cls, HAS_DENOISER, NB, HP, DP, PP,
                                        BB, BH, PREC)
            d2 = (result - d_k2) / sigma_next[:, None]
            result = x + step * 0.5 * (d + d2)
    tl.store(out_ptr + rows[:, None] * D + cd[None, :], result, mask=mask)


# -------------------------------------------------------------------------------------------- launchers


def _check_x(x: torch.Tensor, stack: PackedMLPStack, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"{what} must be a float32 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.ndim != 2 or x.shape[1] != stack.dim:
        raise ValueError(f"{what} must have shape (B, {stack.dim}), got {tuple(x.shape)}")
    if x.device != stack.weights.device:
        raise ValueError(f"{what} is on {x.device} but the packed weights are on {stack.weights.device}")


def _block_sizes(stack: PackedMLPStack, batch: int) -> tuple[int, int]:
    """Rows per program and hidden chunk width. Larger row tiles amortise weight loads over more rows
    (arithmetic intensity ∝ rows); smaller ones give more programs for small batches. 64 columns keep a
    fp32 weight chunk (64×64×4 B = 16 KiB) well inside shared memory."""
    block_b = 16 if batch <= 256 else 32 if batch < 4096 else 64
    return block_b, min(stack.hidden_pad, 64)


def _launch(x: torch.Tensor, sigma_buf: torch.Tensor, sig_strides: tuple[int, int], tb: torch.Tensor,
            tb_strides: tuple[int, int], stack: PackedMLPStack, mode: int, denoised: torch.Tensor | None,
            out: torch.Tensor) -> torch.Tensor:
    batch = x.shape[0]
    if batch == 0:
        return out
    block_b, block_h = _block_sizes(stack, batch)
    grid = (triton.cdiv(batch, block_b),)
    scratch = torch.empty(grid[0] * (2 * stack.num_blocks + 4) * block_b * stack.hidden_pad,
                          dtype=torch.float32, device=x.device)
    _fused_mlp_guidance_kernel[grid](
        x, out, denoised if denoised is not None else x, stack.weights, tb, stack.gammas, sigma_buf,
        scratch, batch, stack.dim, stack.parts, stack.num_classifiers, stack.sigma_data_denoiser,
        stack.sigma_data_classifier, sig_strides[0], sig_strides[1], tb_strides[0], tb_strides[1],
        MODE=mode, HAS_DENOISER=denoised is None, NB=stack.num_blocks, HP=stack.hidden_pad,
        DP=stack.dim_pad, PP=stack.parts_pad, BB=block_b, BH=block_h,
        PREC="tf32" if stack.allow_tf32 else "ieee",
        # 8 warps for 32- and 64-row tiles: ptxas (sm_90, hidden 256) then spills 88 B instead of 224 B
        num_warps=8 if block_b >= 32 else 4,
    )
    return out


def mlp_guided_denoise(
    x: torch.Tensor, sigma: torch.Tensor, stack: PackedMLPStack, denoised: torch.Tensor | None = None
) -> torch.Tensor:
    """``D_K(x; σ) = D(x; σ) + σ² Σ_k γ_k ∇_x Σ_parts logsigmoid(l_k(x, σ))``, one launch.

    Args:
        x: ``(B, D)`` float32 noisy samples (data units), on the weights' device.
        sigma: ``(B,)`` float32 per-row noise levels (data units), > 0.
        stack: from :func:`pack_mlp_stack`.
        denoised: ``(B, D)`` float32 ``D(x; σ)`` computed elsewhere; ``None`` runs the packed denoiser.

    Returns:
        ``(B, D)`` float32 guided denoiser output.
    """
    _check_x(x, stack)
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    if denoised is not None:
        _check_x(denoised, stack, "denoised")
        if denoised.shape != x.shape:
            raise ValueError(f"denoised has shape {tuple(denoised.shape)}, x has {tuple(x.shape)}")
        denoised = denoised.contiguous()
    elif not stack.has_denoiser:
        raise ValueError("this stack was packed without a denoiser network: pass denoised=D(x; sigma)")
    sigma = sigma.to(device=x.device, dtype=torch.float32).contiguous()
    tb = stack.time_features(sigma).contiguous()  # (B, N, HP): per-row noise levels
    n_hp = tb.shape[1] * tb.shape[2]
    out = torch.empty_like(x)
    return _launch(x.contiguous(), sigma, (0, 1), tb, (0, n_hp), stack, _MODE_DENOISE, denoised, out)


def mlp_guided_step(
    x: torch.Tensor,
    sigma_cur: float,
    sigma_next: float,
    stack: PackedMLPStack,
    method: str = "heun",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One guided PF-ODE step from ``sigma_cur`` to ``sigma_next``, one launch.

    Heun's method (both stages in the launch) when ``method == "heun"`` and ``sigma_next > 0``, else
    Euler. Every row shares the noise level, so the time features are computed once for the step.

    Args:
        x: ``(B, D)`` float32 samples at ``sigma_cur`` (data units).
        sigma_cur, sigma_next: noise levels, ``sigma_cur > sigma_next >= 0``.
        stack: from :func:`pack_mlp_stack`.
        method: ``"heun"`` or ``"euler"``.
        out: ``(B, D)`` float32 destination; may be ``x`` itself (in-place update). New tensor if None.

    Returns:
        ``(B, D)`` float32 samples at ``sigma_next``.
    """
    _check_x(x, stack)
    if method not in ("heun", "euler"):
        raise ValueError(f"method must be 'heun' or 'euler', got {method!r}")
    if not stack.has_denoiser:
        raise ValueError("this stack was packed without a denoiser network; use mlp_guided_denoise")
    if not (sigma_cur > 0 and 0 <= sigma_next < sigma_cur) or not math.isfinite(sigma_cur):
        raise ValueError(f"need sigma_cur > sigma_next >= 0, got {sigma_cur}, {sigma_next}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {tuple(x.shape)} on {x.device}")
    mode = _MODE_HEUN if method == "heun" and sigma_next > 0 else _MODE_EULER
    # sigma_next = 0 has no time features (ln 0); stage 2 is skipped then, so any positive value will do
    levels = torch.tensor([sigma_cur, sigma_next if sigma_next > 0 else sigma_cur], dtype=torch.float32,
                          device=x.device)
    tb = stack.time_features(levels).contiguous()  # (2, N, HP), shared by all rows
    sigma_buf = torch.tensor([sigma_cur, sigma_next], dtype=torch.float32, device=x.device)
    return _launch(x, sigma_buf, (1, 0), tb, (tb.shape[1] * tb.shape[2], 0), stack, mode, None, out)
