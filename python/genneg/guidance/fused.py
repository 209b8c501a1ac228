"""The fused (Triton) guidance backend behind :class:`~genneg.guidance.GuidedDenoiser`.

:func:`build_fused_guidance` picks, for a guided denoiser's stack:

- :class:`FusedMLPGuidance` when the denoiser is ``EDMPrecond(ResidualMLP)`` and every classifier is a
  time-dependent ``TimeClassifier(ResidualMLP)``: the whole guided step (denoiser forward, K classifier
  forward + analytic backward passes, guidance, Euler/Heun update) is ONE kernel launch
  (``genneg.kernels.fused_mlp_guidance``);
- :class:`FusedMLPClassifierGuidance` when only the classifiers are residual MLPs: the denoiser runs in
  PyTorch and one launch per evaluation does the K classifiers and the guidance;
- :class:`FusedCombineGuidance` for other time-dependent classifiers (large networks): the K input
  gradients come from one batched autograd backward (:func:`stack_input_gradients`) and one kernel
  (``genneg.kernels.fused_guidance_update``) combines them and applies the update;
- None when the stack cannot be fused (a time-independent classifier, whose gradient runs through ``D``).

A DDPM ε-network enters as its ``EpsDenoiser`` (the one σ form): :class:`FusedCombineGuidance` also
provides the guided Euler-ancestral step (DDPM's ancestral step on its levels) with the caller's noise.

Only ever used when ``resolve_backend`` chose Triton (CUDA, or the interpreter in tests). Triton is
imported lazily, inside the builders, so importing this module costs nothing on a CPU-only install.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from genneg.diffusion.denoiser import expand_sigma
from genneg.diffusion.samplers import heun_advance
from genneg.guidance.guided import _run_outside_inference_mode
from genneg.profiling import nvtx_range

__all__ = [
    "FusedCombineGuidance",
    "FusedMLPClassifierGuidance",
    "FusedMLPGuidance",
    "build_fused_guidance",
    "stack_input_gradients",
]


def stack_input_gradients(
    classifiers: Sequence[Callable[..., torch.Tensor]],
    x: torch.Tensor,
    inputs: Callable[[torch.Tensor], tuple[torch.Tensor, Any]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-classifier input gradients from ONE autograd backward over the whole stack.

    Each classifier ``k`` sees its own slice ``x_rep[k]`` of one ``(K, B, ...)`` leaf, so a single
    ``torch.autograd.grad`` of ``Σ_k Σ_rows l_k`` returns every ``∇_x l_k`` at once (rows do not interact).

    Args:
        classifiers: K callables ``c(*inputs(x)) -> logits (B,) or (B, P)``.
        x: ``(B, ...)`` float32.
        inputs: maps a differentiable ``(B, ...)`` tensor to the classifier's arguments, e.g.
            ``lambda xg: (xg, sigma)``.

    Returns:
        ``grads`` ``(K, B, ...)`` float32 and ``logits`` ``(K, B)``: gradients of the logits, to be scaled
        by ``sigmoid(-l_k)``; or, for multi-part classifiers, gradients of ``Σ_parts logsigmoid(l_k)``
        and ``logits = None``.

    Raises:
        RuntimeError: called under ``torch.inference_mode`` (no gradient could be recorded: the callers
            in this module leave inference mode first, with every tensor ``inputs`` uses).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("stack_input_gradients needs autograd: call it outside torch.inference_mode "
                           "(with tensors created outside it)")
    num_k = len(classifiers)
    with torch.enable_grad():
        x_rep = x.detach().unsqueeze(0).expand(num_k, *x.shape).clone().requires_grad_(True)
        logits = [c(*inputs(x_rep[k])) for k, c in enumerate(classifiers)]
        single = all(lg.ndim == 1 for lg in logits)
        if single:
            total = torch.stack([lg.sum() for lg in logits]).sum()
        else:
            total = torch.stack([F.logsigmoid(lg).sum() for lg in logits]).sum()
        (grads,) = torch.autograd.grad(total, x_rep)
    if not single:
        return grads, None
    return grads, torch.stack([lg.detach() for lg in logits]).to(torch.float32)


class FusedMLPGuidance:
    """``D_K`` and the guided Heun step of an all-MLP stack, one kernel launch each.

    Args:
        stack: ``genneg.kernels.fused_mlp_guidance.PackedMLPStack``.
    """

    def __init__(self, stack: Any) -> None:
        from genneg.kernels import fused_mlp_guidance

        self._kernels = fused_mlp_guidance
        self.stack = stack

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``x`` ``(B, D)`` float32, ``sigma`` ``(B,)`` or scalar -> ``D_K(x; σ)`` ``(B, D)``."""
        with nvtx_range("guidance.fused_mlp.denoise"):
            return self._kernels.mlp_guided_denoise(x.contiguous(), expand_sigma(sigma, x), self.stack)

    def heun_step(self, x: torch.Tensor, sigma_cur: float, sigma_next: float) -> torch.Tensor:
        """One Heun step (Euler when ``sigma_next == 0``): ``(B, D)`` -> ``(B, D)`` at ``sigma_next``."""
        with nvtx_range("guidance.fused_mlp.heun_step"):
            return self._kernels.mlp_guided_step(
                x.contiguous(), float(sigma_cur), float(sigma_next), self.stack
            )


class FusedMLPClassifierGuidance:
    """MLP classifiers fused, denoiser elsewhere: ``D_K`` is one PyTorch denoiser call plus one kernel
    launch (the K classifiers' forward + analytic backward and the guidance); Heun's arithmetic is the
    library's (``genneg.diffusion.heun_advance``).

    Args:
        denoiser: ``D(x (B, D), sigma (B,)) -> (B, D)``.
        stack: ``PackedMLPStack`` packed without a denoiser network (``has_denoiser`` False).
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], stack: Any) -> None:
        from genneg.kernels import fused_mlp_guidance

        self._kernels = fused_mlp_guidance
        self.denoiser = denoiser
        self.stack = stack

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``x`` ``(B, D)`` float32, ``sigma`` ``(B,)`` or scalar -> ``D_K(x; σ)`` ``(B, D)``."""
        sigma = expand_sigma(sigma, x)
        x = x.contiguous()
        with nvtx_range("guidance.denoiser"), torch.no_grad():
            denoised = self.denoiser(x, sigma).to(torch.float32).contiguous()
        with nvtx_range("guidance.fused_mlp.classifiers"):
            return self._kernels.mlp_guided_denoise(x, sigma, self.stack, denoised=denoised)

    def heun_step(self, x: torch.Tensor, sigma_cur: float, sigma_next: float) -> torch.Tensor:
        """One Heun step (Euler when ``sigma_next == 0``): the library's step arithmetic
        (:func:`genneg.diffusion.heun_advance`) around this ``D_K``."""
        return heun_advance(self, x, sigma_cur, sigma_next)


class FusedCombineGuidance:
    """``D_K`` and the guided Heun step for any time-dependent classifiers: network passes in PyTorch
    (one batched backward for the stack), combination and update in one kernel per stage.

    Args:
        denoiser: ``D(x (B, ...), sigma (B,)) -> (B, ...)``.
        classifiers: K time-dependent modules ``c(x, sigma) -> logits``.
        scales: K guidance scales.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], classifiers: Sequence[nn.Module],
                 scales: Sequence[float]) -> None:
        from genneg.kernels import fused_guidance_update

        self._kernels = fused_guidance_update
        self.denoiser = denoiser
        self.classifiers = list(classifiers)
        self.scales = [float(s) for s in scales]

    def _parts(self, x: torch.Tensor, sigma: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if torch.is_inference_mode_enabled():  # the classifier gradients need autograd
            return _run_outside_inference_mode(self._parts, x, sigma)
        with nvtx_range("guidance.denoiser"), torch.no_grad():
            denoised = self.denoiser(x, sigma).to(torch.float32)
        scales = torch.tensor(self.scales, dtype=torch.float32, device=x.device)
        if not self.classifiers:
            return denoised, x.new_zeros((0, *x.shape), dtype=torch.float32), None, scales
        with nvtx_range("guidance.classifier_gradients"):
            grads, logits = stack_input_gradients(self.classifiers, x, lambda xg: (xg, sigma))
        return denoised, grads.to(torch.float32), logits, scales

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``x`` ``(B, ...)`` float32, ``sigma`` ``(B,)`` or scalar -> ``D_K(x; σ)``."""
        sigma = expand_sigma(sigma, x)
        denoised, grads, logits, scales = self._parts(x, sigma)
        with nvtx_range("guidance.combine"):
            return self._kernels.edm_guided_denoise(denoised, grads, logits, scales, sigma.contiguous())

    def heun_step(self, x: torch.Tensor, sigma_cur: float, sigma_next: float) -> torch.Tensor:
        """One Heun step (Euler when ``sigma_next == 0``), two kernel launches plus the networks."""
        x = x.contiguous()
        denoised, grads, logits, scales = self._parts(x, expand_sigma(sigma_cur, x))
        slope = torch.empty_like(x)
        with nvtx_range("guidance.combine_step"):
            x_next = self._kernels.edm_guided_step(x, denoised, grads, logits, scales, sigma_cur, sigma_next,
                                                   d_out=slope)
        if sigma_next > 0:
            denoised, grads, logits, scales = self._parts(x_next, expand_sigma(sigma_next, x))
            with nvtx_range("guidance.combine_step"):
                x_next = self._kernels.edm_guided_step(x_next, denoised, grads, logits, scales, sigma_cur,
                                                       sigma_next, x_prev=x, d_prev=slope, out=x_next)
        return x_next

    def ancestral_step(self, x: torch.Tensor, sigma_cur: float, sigma_next: float,
                       noise: torch.Tensor | None) -> torch.Tensor:
        """One guided Euler-ancestral step (η = 1), the networks plus one kernel launch; ``noise``
        ``(B, ...)`` standard normal (None for the step to 0)."""
        x = x.contiguous()
        denoised, grads, logits, scales = self._parts(x, expand_sigma(sigma_cur, x))
        with nvtx_range("guidance.combine_step"):
            return self._kernels.edm_guided_ancestral_step(x, denoised, grads, logits, scales, sigma_cur,
                                                           sigma_next, noise)


def _mlp_stack_or_none(guided: Any, classifiers: Sequence[nn.Module], scales: Sequence[float]) -> Any:
    """Pack the stack for :class:`FusedMLPGuidance`, or None when it is not all residual MLPs."""
    from genneg.diffusion.edm import EDMPrecond
    from genneg.models.mlp import ResidualMLP

    denoiser = guided.denoiser
    den_net = denoiser.net if isinstance(denoiser, EDMPrecond) else None
    if not isinstance(den_net, ResidualMLP):
        den_net = None  # the denoiser runs in PyTorch; the classifiers may still be fused
    nets = [getattr(c, "net", None) for c in classifiers]
    if not all(isinstance(n, ResidualMLP) for n in nets) or (den_net is None and not nets):
        return None
    sigma_datas = {float(c.sigma_data) for c in classifiers}
    if len(sigma_datas) > 1:
        return None
    dim = den_net.config.dim_in if den_net is not None else nets[0].config.dim_in
    if any(n.config.dim_in != dim for n in nets) or len({n.config.dim_out for n in nets}) > 1:
        return None
    from genneg.kernels.fused_mlp_guidance import pack_mlp_stack

    sd_den = float(denoiser.sigma_data) if den_net is not None else 1.0
    return pack_mlp_stack(
        den_net, nets, list(scales), sigma_data_denoiser=sd_den,
        sigma_data_classifier=sigma_datas.pop() if sigma_datas else sd_den,
        allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
    )


def build_fused_guidance(
    guided: Any,
) -> FusedMLPGuidance | FusedMLPClassifierGuidance | FusedCombineGuidance | None:
    """The fused backend for a :class:`~genneg.guidance.GuidedDenoiser` (reads ``.denoiser``,
    ``.classifiers``, ``.scales``), or None when the stack cannot be fused.

    Classifiers with scale 0 are dropped (their term is 0). Weights are packed now: rebuild after
    changing them (``GuidedDenoiser.clear_fused_cache``).
    """
    pairs = [(c, float(s)) for c, s in zip(guided.classifiers, guided.scales) if float(s) != 0.0]
    if any(not bool(getattr(c, "time_dependent", True)) for c, _ in pairs):
        return None  # gradient through D(x; sigma): not fusable
    classifiers = [c for c, _ in pairs]
    scales = [s for _, s in pairs]
    stack = _mlp_stack_or_none(guided, classifiers, scales)
    if stack is not None:
        if stack.has_denoiser:
            return FusedMLPGuidance(stack)
        return FusedMLPClassifierGuidance(guided.denoiser, stack)
    return FusedCombineGuidance(guided.denoiser, classifiers, scales)
