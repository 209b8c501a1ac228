"""The stacked residual-MLP guidance gradient compiled for the CPU (``torch.compile``, Inductor C++ code).

A planner's guided step on a CPU is dominated by per-operation overhead, not arithmetic: at ``N <= 32``
rows one hidden layer of the checkerboard networks is 2·N·H² ≈ 1 MFLOP (H = 128, N = 32), microseconds of
work, while each eager PyTorch operation costs several microseconds of dispatch. The analytic stack
gradient (:mod:`genneg.guidance.analytic`, the chain rule written out, no autograd) is about 40 such
operations for a stack of K classifiers, plus the classifiers' time branches at every call. This module
removes both costs:

- the time branch ``t_k(σ) + b_in,k`` and the input scaling ``c_in,k(σ)`` depend only on the noise level,
  which a sampler step shares across rows: they are computed once per level and cached;
- the rest of the gradient (K forward passes, K analytic backward passes, the sum over the stack) is ONE
  function, :func:`stack_gradient`, compiled by ``torch.compile`` (Inductor's C++ code generation): the
  elementwise chain rule is fused into a few generated loops around the matrix products, so one call is
  one graph of about ``4·NB + 2`` batched matrix products and as many fused kernels instead of about 40
  dispatched operations (NB = residual blocks);
- for small batches the gradient is taken in forward mode instead (:func:`stack_gradient_tangent`): the
  ``d`` input tangents ride along with the values as extra rows of the same products, so each weight is
  read once per call and there are ``2·NB + 2`` products; for ``d = 2`` that is ``3`` forward passes of
  arithmetic instead of ``2``, which pays while products and weight traffic, not FLOPs, set the time.

Shapes are static (``torch.compile(dynamic=False)``): a :class:`~genneg.planning.FastSampler` has one
batch size ``N`` for its life, so each sampler compiles one graph at its first call and reuses it; static
sizes let Inductor specialise its loops (known trip counts, no symbolic-shape guards). The graph is cached
per process on the function (Dynamo's cache, guarded on shapes, not on weights), so another sampler of
the same ``N`` and architecture reuses it, and on disk (Inductor's FX-graph cache), so a new process
compiles in seconds rather than a minute. A new ``N`` compiles a new graph; Dynamo keeps at most
``torch._dynamo.config.recompile_limit`` of them per process and runs the function eagerly after that
(same numbers, eager speed). ``dynamic=True`` gives one graph with a symbolic batch size instead.

Rows with different noise levels in one call (never the case in a sampler step) run the same function
eagerly with per-row time features, so they never trigger a compilation.

Floor (FLOPs per row; H hidden width, NB residual blocks, E embedding width, d data dimension, P parts):
one classifier's forward is ``2·(d·H + 2·NB·H² + H·P)`` and its input-gradient backward the same again
(no weight gradients), so ``4·(d·H + 2·NB·H² + H·P)`` per classifier, against the denoiser's forward
``2·(d·H + 2·NB·H² + H·d)``: **each classifier is about 2× the baseline network's arithmetic**, whatever
the batch. Below that a classifier cannot go where time follows arithmetic (large N); at planner batch
sizes (N <= 32) time follows the number of dispatched operations, which compilation removes.
``benchmarks/guidance.py --compiled`` prints the floor and the measured times. What keeps the compiled
path above the floor at N <= 8 is the fixed cost of calling a compiled graph (Dynamo's guards and the
Python runtime wrappers around the generated code): measured here at about 4x an eager operation
(``bmm(x, w) + 1`` at N = 2: 117 µs compiled vs 27.5 µs eager, process CPU time on a loaded 2-core
machine), about one baseline network evaluation at these sizes.

Fallback: where compilation fails (no C++ compiler, an Inductor error) the first call warns
(``RuntimeWarning``) and this object then runs :func:`stack_gradient` eagerly: the same numbers, eager
speed, never a crash.

The reference is the exact autograd gradient :func:`genneg.guidance.guidance_gradient`; the tests hold the
compiled path to it within float32 rounding (tests/guidance/test_compiled.py). The CUDA fast path is the
fused Triton kernel (:mod:`genneg.guidance.fused`), untouched by this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from genneg.diffusion.denoiser import expand_sigma
from genneg.guidance.analytic import AnalyticMLPGuidance

__all__ = [
    "CompiledMLPGuidance",
    "build_compiled_guidance",
    "classifier_flops",
    "stack_gradient",
    "stack_gradient_tangent",
]


def _silu_grad(a: torch.Tensor) -> torch.Tensor:
    """``d silu(a) / da = s (1 + a (1 - s))``, ``s = sigmoid(a)``."""
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


def stack_gradient(
    x: torch.Tensor,
    c_in: torch.Tensor,
    t: torch.Tensor,
    w_in_t: torch.Tensor,
    w_in: torch.Tensor,
    w1_t: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2_t: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w_out_t: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    scales: torch.Tensor,
) -> torch.Tensor:
    """``Σ_k γ_k ∇_x Σ_parts logsigmoid(l_k(x, σ))`` of K stacked residual MLPs (the compiled graph).

    The chain rule of :mod:`genneg.guidance.analytic` written as one pure function of tensors (weights
    are zero-padded to a common width and block count, which is exact). Every weight comes twice, as
    stored (``W``, for the backward products ``dH W``) and transposed contiguous (``Wᵀ``, for the forward
    products ``H Wᵀ``), so that every product is a plain ``bmm`` of contiguous operands and the biases
    are added in the fused elementwise code that follows it.

    Args:
        x: ``(B, d)`` float32 noisy samples (data units).
        c_in: ``(K, 1 or B, 1)`` input scaling ``1 / sqrt(σ² + σ_data,k²)``.
        t: ``(K, 1 or B, H)`` time features plus input bias of each classifier at ``σ``.
        w_in_t, w_in: ``(K, d, H)``, ``(K, H, d)``; w1_t, w1, w2_t, w2: ``(NB, K, H, H)``; b1, b2:
            ``(NB, K, 1, H)``; w_out_t, w_out: ``(K, H, P)``, ``(K, P, H)``; b_out: ``(K, 1, P)``;
            scales: ``(K,)`` guidance scales ``γ_k``.

    Returns:
        ``(B, d)`` gradient of the stack's ``Σ_k γ_k Σ_parts log c_k`` with respect to ``x``.
    """
    x_in = c_in * x[None]  # (K, B, d)
    h = torch.bmm(x_in, w_in_t) + t
    hs, acts = [h], []
    for j in range(w1.shape[0]):
        a = torch.bmm(F.silu(h), w1_t[j]) + b1[j]
        h = h + torch.bmm(F.silu(a), w2_t[j]) + b2[j]
        acts.append(a)
        hs.append(h)
    logits = torch.bmm(F.silu(h), w_out_t) + b_out  # (K, B, P)
    g_out = scales[:, None, None] * torch.sigmoid(-logits)  # d logsigmoid(l) / dl = sigmoid(-l)
    dh = torch.bmm(g_out, w_out) * _silu_grad(hs[-1])
    for j in reversed(range(w1.shape[0])):
        da = torch.bmm(dh, w2[j]) * _silu_grad(acts[j])
        dh = dh + torch.bmm(da, w1[j]) * _silu_grad(hs[j])
    return (c_in * torch.bmm(dh, w_in)).sum(dim=0)


def stack_gradient_tangent(
    x: torch.Tensor,
    c_in: torch.Tensor,
    t: torch.Tensor,
    w_in_t: torch.Tensor,
    w_in: torch.Tensor,
    w1_t: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2_t: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w_out_t: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    scales: torch.Tensor,
) -> torch.Tensor:
    """:func:`stack_gradient` in forward mode: the ``d`` input tangents travel with the values.

    Each layer's product takes the values and their ``d`` tangents as ``(1 + d)·B`` rows of ONE batched
    product with the layer's weight, so the weights are read once per call (reverse mode reads them
    twice: forward, then backward) and there are half as many products; the arithmetic is ``(1 + d)`` ×
    a forward pass instead of 2 ×. For ``d = 2`` (checkerboard) and planner batch sizes, where time follows
    products and weight traffic rather than FLOPs, this is the cheaper order. Same arguments and result::

        T_0 = c_in W_inᵀ (every row),   T_a = (silu'(h) ⊙ T_h) W1ᵀ,   T_h ← T_h + (silu'(a) ⊙ T_a) W2ᵀ,
        ∇_x = Σ_k γ_k Σ_parts sigmoid(−l) · (silu'(h) ⊙ T_h) W_outᵀ
    """
    batch, dim = x.shape
    num_k = w_in_t.shape[0]

    def joint(value: torch.Tensor, tangent: torch.Tensor, pre: torch.Tensor, w_t: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``silu(pre) Wᵀ`` and ``(silu'(pre) ⊙ tangent) Wᵀ`` as one product of ``(1 + d)·B`` rows."""
        rows = torch.cat([value[:, None], _silu_grad(pre)[:, None] * tangent], dim=1)  # (K, 1+d, B, H)
        out = torch.bmm(rows.reshape(num_k, (1 + dim) * batch, -1), w_t)
        out = out.reshape(num_k, 1 + dim, batch, -1)
        return out[:, 0], out[:, 1:]

    h = torch.bmm(c_in * x[None], w_in_t) + t  # (K, B, H)
    th = (c_in[:, None] * w_in_t[:, :, None, :]).expand(num_k, dim, batch, -1)  # (K, d, B, H)
    for j in range(w1.shape[0]):
        a, ta = joint(F.silu(h), th, h, w1_t[j])
        a = a + b1[j]
        out, tout = joint(F.silu(a), ta, a, w2_t[j])
        h = h + out + b2[j]
        th = th + tout
    logits, tl = joint(F.silu(h), th, h, w_out_t)  # (K, B, P), (K, d, B, P)
    g_out = scales[:, None, None] * torch.sigmoid(-(logits + b_out))
    return (g_out[:, None] * tl).sum(dim=(0, 3)).transpose(0, 1)


def classifier_flops(batch: int, dim: int, hidden: int, num_blocks: int, parts: int) -> dict[str, int]:
    """Floating-point operations of one residual-MLP classifier's forward and input-gradient backward on
    ``batch`` rows, and of a same-size denoiser's forward (``dim`` outputs), matrix products only
    (multiply-add = 2 FLOPs; the time branch is per noise level, not per row, and excluded).

    Returns:
        ``{"classifier_forward", "classifier_backward", "denoiser_forward"}`` FLOPs.
    """
    body = 2 * batch * (dim * hidden + 2 * num_blocks * hidden * hidden)
    return {
        "classifier_forward": body + 2 * batch * hidden * parts,
        "classifier_backward": body + 2 * batch * hidden * parts,
        "denoiser_forward": body + 2 * batch * hidden * dim,
    }


class CompiledMLPGuidance:
    """The guidance gradient of K residual-MLP classifiers, one compiled graph per call (module docstring).

    Args:
        classifiers: K time-dependent :class:`~genneg.guidance.TimeClassifier` s wrapping
            :class:`~genneg.models.ResidualMLP` s with the same ``dim_in`` and ``dim_out``.
        scales: K guidance scales ``γ_k``.
        compile: False runs :func:`stack_gradient` eagerly (the same arithmetic, for comparison).
        dynamic: passed to ``torch.compile``: False (default) compiles one graph per batch size.
        mode: ``"tangent"`` (:func:`stack_gradient_tangent`), ``"reverse"`` (:func:`stack_gradient`) or
            ``"auto"`` (by batch size, :meth:`function_for`).

    Weights are copied (stacked) at construction; rebuild after changing them.

    Raises:
        ValueError: empty stack, mismatched sizes or a time-independent classifier.
        TypeError: a classifier's network is not a ``ResidualMLP``.
    """

    def __init__(self, classifiers: Sequence[nn.Module], scales: Sequence[float], *, compile: bool = True,
                 dynamic: bool = False, mode: Literal["auto", "tangent", "reverse"] = "auto") -> None:
        if mode not in ("auto", "tangent", "reverse"):
            raise ValueError(f"mode must be 'auto', 'tangent' or 'reverse', got {mode!r}")
        self.mode = mode
        with torch.inference_mode(False):  # weights usable both inside and outside inference mode
            self._stack = AnalyticMLPGuidance(classifiers, scales)
        s = self._stack
        with torch.inference_mode(False), torch.no_grad():

            def transposed(w: torch.Tensor) -> torch.Tensor:
                return w.transpose(-1, -2).contiguous()

            self._weights = (transposed(s.w_in), s.w_in, transposed(s.w1), s.w1, s.b1, transposed(s.w2), s.w2,
                             s.b2, transposed(s.w_out), s.w_out, s.b_out, s.scales)
        self.dim = s.dim
        self.num_classifiers = len(classifiers)
        self._levels: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self._compiled: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | None = None
        if compile:
            self._compiled = {
                fn: torch.compile(fn, dynamic=dynamic, fullgraph=True)
                for fn in (stack_gradient_tangent, stack_gradient)
            }
        self.fallback_reason: str | None = None

    @property
    def backend(self) -> str:
        """``"inductor"`` while the compiled graph is in use, ``"eager"`` otherwise (``compile=False``, or
        after a failed compilation: see :attr:`fallback_reason`)."""
        return "eager" if self._compiled is None else "inductor"

    def _level(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_in (K, S, 1), t (K, S, H))`` for ``sigma`` ``(S,)``, computed outside inference mode."""
        with torch.inference_mode(False), torch.no_grad():
            sigma = sigma.clone()
            c_in = torch.rsqrt(sigma[None, :, None] ** 2 + self._stack.sigma_data[:, None, None] ** 2)
            return c_in, self._stack._time_features(sigma)

    def gradient(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``Σ_k γ_k ∇_x Σ_parts logsigmoid(l_k(x, σ))``.

        Args:
            x: ``(B, d)`` float32 noisy samples (data units).
            sigma: ``(B,)`` or scalar noise level (data units).

        Returns:
            ``(B, d)`` float32 gradient (no graph), so that ``D_K = D + σ² · gradient``.

        Raises:
            ValueError: ``x`` not ``(B, d)``.
            TypeError: ``x`` not float32.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if x.dtype != torch.float32:
            raise TypeError(f"x must be float32, got {x.dtype}")
        sigma = expand_sigma(sigma, x)
        first = sigma[:1]
        if not torch.equal(sigma, first.expand_as(sigma)):  # per-row levels: eager, no compilation
            c_in, t = self._level(sigma)
            return self.function_for(x.shape[0])(x, c_in, t, *self._weights)
        key = float(first)
        cached = self._levels.get(key)
        if cached is None:
            cached = self._levels[key] = self._level(first)
        return self._call(x, *cached)

    def function_for(self, batch: int) -> Callable[..., torch.Tensor]:
        """The function a batch of ``batch`` rows runs: :func:`stack_gradient_tangent` or
        :func:`stack_gradient` (``mode``; ``"auto"``: tangents while ``(1 + d) · batch <= 48``, where
        fewer products and one read of the weights beat the extra arithmetic: measured on the
        checkerboard quick run, benchmarks/guidance.py --compiled)."""
        if self.mode == "tangent" or (self.mode == "auto" and (1 + self.dim) * batch <= 48):
            return stack_gradient_tangent
        return stack_gradient

    def _call(self, x: torch.Tensor, c_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        function = self.function_for(x.shape[0])
        if self._compiled is not None:
            try:
                return self._compiled[function](x, c_in, t, *self._weights)
            except Exception as err:  # Inductor raises many types (missing compiler, lowering, ...)
                first_line = str(err).splitlines()[0] if str(err) else ""
                self.fallback_reason = f"{type(err).__name__}: {first_line}"
                warnings.warn(
                    f"CompiledMLPGuidance: torch.compile failed ({self.fallback_reason}); running the "
                    "guidance gradient eagerly (same numbers, eager speed)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._compiled = None
        return function(x, c_in, t, *self._weights)


def build_compiled_guidance(
    classifiers: Sequence[nn.Module], scales: Sequence[float], *, dynamic: bool = False
) -> CompiledMLPGuidance | None:
    """A :class:`CompiledMLPGuidance` for the stack, or None when it does not qualify (empty, a network
    that is not a ``ResidualMLP``, a time-independent classifier, mismatched sizes)."""
    try:
        return CompiledMLPGuidance(classifiers, scales, dynamic=dynamic)
    except (TypeError, ValueError):
        return None
