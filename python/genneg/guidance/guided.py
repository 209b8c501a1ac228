"""Classifier guidance and stacking (METHOD.md 4, Eq. 10).

With classifiers ``c_1..c_K`` and scales ``gamma_k`` (``gamma = 1`` is the method) the guided score is
``s_K = s_theta + Σ_k gamma_k ∇_x log c_k(x, sigma)``, i.e. in denoiser form::

    D_K(x; sigma) = D(x; sigma) + sigma² Σ_k gamma_k ∇_x Σ_parts logsigmoid(logit_k(x, sigma))

written once, for every model: a DDPM ε-network enters as the denoiser
:class:`genneg.diffusion.ddpm.EpsDenoiser` (VE coordinates), where this is exactly DDPM's
``ε_K = ε_theta - sqrt(1 - ᾱ_t) Σ_k gamma_k ∇_{x_t} log c_k`` (``D = x - σ ε``, ``x = x_t / sqrt(ᾱ_t)``).

The gradient is exact: one ``torch.autograd.grad`` call through the whole stack on a detached copy of
``x``, under ``torch.enable_grad`` so that it works inside the samplers' ``torch.no_grad``. Summing over
the batch before differentiating is exact because samples do not interact.

Time-independent classifiers (the paper's ablation, after Bansal et al. 2023 "Universal Guidance for
Diffusion Models" and Wu et al. 2023) see the one-step estimate ``x̂0 = D(x; sigma)``. Written literally,
their term is ``sigma² ∇_x log c(D(x; sigma)) = sigma² J_D(x)^T ∇_{x̂0} log c(x̂0)``. For the exact
denoiser ``sigma² J_D = Cov[x0 | x_sigma = x]`` (Tweedie's second-order identity), which is bounded by the
data's covariance; but a learned network's Jacobian is not that covariance, and its error is multiplied by
``sigma²``: for a DDPM ε-network ``J_D = I - sigma/sqrt(1 + sigma²) J_eps``, so an error ``δ`` in ``J_eps``
becomes ``sigma² δ`` (``sigma_T² ≈ 2.5e4`` on the linear schedule) and the guided sampler diverges
(traffic quick: r-ELBO -7.3e7 per vehicle, every scene offroad). We therefore replace the posterior of
``x0`` by that of Gaussian data, ``N(x̂0, r²(sigma) I)`` with ``r²(sigma) = sigma² sigma_data² / (sigma² +
sigma_data²)`` (the ``r_t²`` of ΠGDM, Song et al. 2023, "Pseudoinverse-Guided Diffusion Models for
Inverse Problems"), take the gradient in ``x̂0`` without back-propagating through the denoiser (the
manifold-preserving update of MPGD, He et al. 2024, "Manifold Preserving Guided Diffusion"), and guide
with the classifier's expectation under that posterior rather than its value at ``x̂0``: with the logit
linearised at ``x̂0`` (slope ``g = ∇ log c``), the probit approximation of the expected logistic (MacKay
1992, "The evidence framework applied to classification networks") moderates the gradient by
``1 / sqrt(1 + π r² |g|² / 8)``. A classifier trained on clean data only sees, at large sigma, a blurred
``x̂0`` far from its data, where its gradient can be huge; the moderation keeps the step to the
posterior's scale::

    D_K(x; sigma) = D(x; sigma) + Σ_{k time-independent} gamma_k r² g_k / sqrt(1 + π r² |g_k|² / 8),
    g_k = ∇_{x̂0} log c_k(x̂0),   x̂0 = D(x; sigma)

Each term is bounded for every ``sigma`` by ``gamma_k min(r² |g_k|, r sqrt(8/π))``, at most
``gamma_k sigma_data sqrt(8/π)``, and tends to the literal ``sigma² ∇ log c`` as ``sigma -> 0``.
``sigma_data`` is the classifier's (a :class:`TimeClassifier` attribute, the same as the denoiser's).

The fused Triton path (``genneg.guidance.fused``) plugs in behind :class:`GuidedDenoiser` when its
``backend`` resolves to ``"triton"``; it then also provides ``heun_step`` for the sampler.

Conditioned samples (e.g. a traffic scene on its map crop with its present vehicle slots) carry a
conditioning dict ``cond`` of tensors with the batch as leading dimension. Every model call passes it on
as keyword arguments: ``D(x, sigma, **cond)``, ``c(x, sigma, **cond)``; each
callable reads the entries it needs. Unconditioned samples (checkerboard) have no ``cond`` and the calls are
the plain ``D(x, sigma)``. With ``part_mask_key`` the entry ``cond[part_mask_key]`` (``(B, P)`` bool, True =
a real part) restricts ``Σ_parts log c`` to real parts (padding slots add nothing).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from genneg.diffusion.denoiser import broadcast_to_sample, expand_sigma
from genneg.kernels._backend import resolve_backend

__all__ = ["GuidedDenoiser", "guidance_gradient", "posterior_variance"]

_FUSED_MODULE = "genneg.guidance.fused"


def _check_scales(classifiers: Sequence[Any], scales: Sequence[float] | None) -> tuple[float, ...]:
    if scales is None:
        return tuple(1.0 for _ in classifiers)
    scales = tuple(float(s) for s in scales)
    if len(scales) != len(classifiers):
        raise ValueError(f"got {len(scales)} scales for {len(classifiers)} classifiers")
    return scales


def _is_time_dependent(classifier: Any) -> bool:
    return bool(getattr(classifier, "time_dependent", True))


def _check_ve_classifiers(classifiers: Sequence[Any]) -> None:
    """Refuse classifiers that declare DDPM (integer-timestep) coordinates where ``sigma`` is passed."""
    for i, c in enumerate(classifiers):
        if _is_time_dependent(c) and getattr(c, "noise_coordinates", None) == "ddpm":
            raise ValueError(
                f"classifier {i} declares noise_coordinates='ddpm' (integer timesteps) but this guidance "
                "passes sigma (variance-exploding coordinates); train it on sigma (a TimeClassifier)"
            )


def _autograd_copy(t: Any) -> Any:
    """``t`` usable in autograd: an inference-mode tensor (or one in a dict) is cloned; call it outside
    inference mode."""
    if isinstance(t, Mapping):
        return {k: _autograd_copy(v) for k, v in t.items()}
    if isinstance(t, torch.Tensor) and t.is_inference():
        return t.clone()
    return t


def _run_outside_inference_mode(fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    """Call ``fn`` with autograd available even under ``torch.inference_mode()``.

    Guidance differentiates the classifiers; inside inference mode ``torch.enable_grad`` records nothing
    and the gradient would silently be zero. So the call leaves inference mode (grad mode off, as the
    samplers' ``no_grad``) with inference-tensor arguments cloned; the result is a normal tensor.
    """
    if not torch.is_inference_mode_enabled():
        return fn(*args, **kwargs)
    with torch.inference_mode(False), torch.no_grad():
        args = tuple(_autograd_copy(a) for a in args)
        kwargs = {k: _autograd_copy(v) for k, v in kwargs.items()}
        return fn(*args, **kwargs)


def _part_mask(cond: Mapping[str, torch.Tensor], key: str | None, batch: int) -> torch.Tensor | None:
    """``cond[key]`` checked as a ``(batch, P)`` bool mask, or None without a key."""
    if key is None:
        return None
    if key not in cond:
        raise ValueError(f"part_mask_key={key!r} but the conditioning has only {sorted(cond)}")
    mask = cond[key]
    if mask.dtype != torch.bool or mask.ndim != 2 or mask.shape[0] != batch:
        raise ValueError(f"cond[{key!r}] must be a bool ({batch}, P) part mask, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    return mask


def posterior_variance(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``r²(sigma) = sigma² sigma_data² / (sigma² + sigma_data²)``: the variance of ``x0 | x_sigma`` for
    Gaussian data of std ``sigma_data`` (ΠGDM's ``r_t²``, Song et al. 2023), shape of ``sigma``. It tends to
    ``sigma²`` as ``sigma -> 0`` and to ``sigma_data²`` as ``sigma -> ∞``."""
    s2 = sigma * sigma
    return s2 * (sigma_data * sigma_data) / (s2 + sigma_data * sigma_data)


def _log_c(classifier: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, Any], batch: int,
           cond: Mapping[str, torch.Tensor], part_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B,)`` ``Σ_parts logsigmoid(logits)`` over the real parts."""
    logits = classifier(*inputs, **cond)
    if logits.shape[0] != batch:
        raise ValueError(f"classifier returned {logits.shape[0]} rows for a batch of {batch}")
    log_c = F.logsigmoid(logits)
    if part_mask is not None:
        if part_mask.shape != logits.shape:
            raise ValueError(f"part mask {tuple(part_mask.shape)} != logits {tuple(logits.shape)}")
        log_c = log_c * part_mask.to(log_c.dtype)
    return log_c.reshape(batch, -1).sum(dim=1)


def _classifier_sigma_data(classifier: Any, index: int) -> float:
    sigma_data = getattr(classifier, "sigma_data", None)
    if sigma_data is None or float(sigma_data) <= 0:
        raise ValueError(
            f"time-independent classifier {index} needs a positive sigma_data attribute (the data's std, as "
            f"a TimeClassifier has) for its posterior variance r²(sigma), got {sigma_data!r}"
        )
    return float(sigma_data)


def _guidance_and_estimate(
    classifiers: Sequence[Callable[..., torch.Tensor]],
    scales: Sequence[float],
    x: torch.Tensor,
    sigma: torch.Tensor,
    clean_estimate: Callable[[torch.Tensor], torch.Tensor] | None,
    cond: Mapping[str, torch.Tensor] | None = None,
    part_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stack's score guidance ``g`` (so that ``D_K = D + sigma² g``) and, if computed, ``x̂0``.

    Time-dependent classifiers give ``γ_k ∇_x log c_k(x, sigma)``; time-independent ones
    ``γ_k (r²/sigma²) g_k / sqrt(1 + π r² |g_k|² / 8)`` with ``g_k = ∇_{x̂0} log c_k(x̂0)`` at
    ``x̂0 = clean_estimate(x)`` (module docstring).
    ``cond`` is passed to every classifier as keyword arguments; ``part_mask`` ``(B, P)`` bool keeps only
    the real parts in the sum. Returns ``g`` with ``x``'s shape (zeros when every scale is 0) and ``x̂0``
    (or None).
    """
    cond = {} if cond is None else cond
    batch = x.shape[0]
    # When the caller differentiates through the guided model (e.g. the exact divergence of the PF-ODE
    # likelihood), keep the graph of the guidance gradient; otherwise work on a detached copy.
    keep_graph = torch.is_grad_enabled() and x.requires_grad
    grad = torch.zeros_like(x)
    x0_hat: torch.Tensor | None = None
    with torch.enable_grad():
        xg = x if keep_graph else x.detach().requires_grad_(True)
        dependent = [(i, c, g) for i, (c, g) in enumerate(zip(classifiers, scales))
                     if g != 0.0 and _is_time_dependent(c)]
        independent = [(i, c, g) for i, (c, g) in enumerate(zip(classifiers, scales))
                       if g != 0.0 and not _is_time_dependent(c)]
        if dependent:
            total = sum(g * _log_c(c, (xg, sigma), batch, cond, part_mask).sum() for _, c, g in dependent)
            if total.requires_grad:  # else logits constant in x
                (g_dep,) = torch.autograd.grad(total, xg, allow_unused=True, create_graph=keep_graph)
                if g_dep is not None:
                    grad = grad + g_dep
        if independent:
            if clean_estimate is None:
                raise ValueError(
                    "a time-independent classifier needs the denoiser (pass denoiser=...) to form "
                    "the one-step estimate D(x; sigma)"
                )
            if keep_graph:
                x0_hat = clean_estimate(xg)
                x0g = x0_hat
            else:
                with torch.no_grad():
                    x0_hat = clean_estimate(x.detach())
                x0g = x0_hat.detach().requires_grad_(True)
            for i, c, g in independent:
                log_c = _log_c(c, (x0g, sigma), batch, cond, part_mask).sum()
                if not log_c.requires_grad:
                    continue
                (g_c,) = torch.autograd.grad(log_c, x0g, allow_unused=True, create_graph=keep_graph)
                if g_c is None:
                    continue
                r2 = posterior_variance(sigma, _classifier_sigma_data(c, i)).to(g_c.dtype)
                moderation = torch.rsqrt(1 + (math.pi / 8) * r2 * g_c.flatten(1).pow(2).sum(dim=1))
                weight = g * r2 * moderation / (sigma * sigma).to(g_c.dtype)
                grad = grad + broadcast_to_sample(weight, g_c) * g_c
    return grad, x0_hat


def guidance_gradient(
    classifiers: Sequence[Callable[..., torch.Tensor]],
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    scales: Sequence[float] | None = None,
    denoiser: Callable[..., torch.Tensor] | None = None,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    part_mask_key: str | None = None,
) -> torch.Tensor:
    """``Σ_k gamma_k ∇_x Σ_parts log c_k(x, sigma)``, the stack's total score guidance (exact autograd), so
    that ``D_K = D + sigma² · guidance_gradient``.

    Args:
        classifiers: callables ``c(x, sigma, **cond) -> logits (B,) or (B, P)`` (e.g.
            :class:`TimeClassifier`); one with ``time_dependent = False`` contributes
            ``gamma_k (r²/sigma²) g_k / sqrt(1 + π r² |g_k|² / 8)``, ``g_k = ∇_{x̂0} log c_k(x̂0)`` at
            ``x̂0 = D(x; sigma)`` (module docstring).
        x: ``(B, *shape)`` float noisy samples (variance-exploding coordinates).
        sigma: ``(B,)`` or scalar noise level.
        scales: ``gamma_k`` per classifier; default all 1.
        denoiser: ``D(x, sigma, **cond)``, needed only for time-independent classifiers.
        cond: per-sample conditioning tensors (leading dimension ``B``), passed to every call.
        part_mask_key: name of the ``(B, P)`` bool entry of ``cond`` marking real parts (module docstring).

    Returns:
        ``(B, *shape)`` detached gradient in ``x``'s dtype, zeros when every scale is 0. Works in every
        grad mode: under ``torch.no_grad`` and under ``torch.inference_mode`` (which it leaves for the
        classifier gradients; the result is then a normal tensor).

    Raises:
        ValueError: a classifier declares ``noise_coordinates = "ddpm"`` (it would be handed sigma as
            its timestep), mismatched scales, a malformed part mask, or a time-independent classifier
            without ``sigma_data``.
    """
    if torch.is_inference_mode_enabled():
        return _run_outside_inference_mode(
            lambda xx, ss, cc: guidance_gradient(classifiers, xx, ss, scales, denoiser, cond=cc,
                                                 part_mask_key=part_mask_key), x, sigma, cond)
    _check_ve_classifiers(classifiers)
    scales = _check_scales(classifiers, scales)
    sigma = expand_sigma(sigma, x)
    cond = {} if cond is None else dict(cond)
    clean = None if denoiser is None else (lambda xg: denoiser(xg, sigma, **cond))
    grad, _ = _guidance_and_estimate(classifiers, scales, x, sigma, clean, cond,
                                     _part_mask(cond, part_mask_key, x.shape[0]))
    return grad


class GuidedDenoiser(nn.Module):
    """``D_K(x; sigma) = D(x; sigma) + sigma² Σ_k gamma_k ∇_x log c_k(x, sigma)``: a denoiser again.

    Time-independent classifiers enter through ``x̂0 = D(x; sigma)`` with the bounded, moderated term of
    the module docstring (``gamma_k r² g_k / sqrt(1 + π r² |g_k|² / 8)``).

    Args:
        denoiser: the base denoiser ``D(x (B, ...), sigma (B,), **cond) -> (B, ...)``; a DDPM ε-network
            enters as :class:`genneg.diffusion.ddpm.EpsDenoiser`.
        classifiers: the stack ``c_1..c_K`` (modules ``c(x, sigma) -> logits (B,) or (B, P)``), in the
            order they were trained.
        scales: ``gamma_k``; default all 1 (the method). A scale of 0 removes that classifier's term.
        backend: ``"torch"`` (exact autograd), ``"triton"`` (fused kernels of ``genneg.guidance.fused``)
            or ``"auto"`` (Triton on CUDA when available); resolved per call from the input's device.
            Conditioned calls (``forward(x, sigma, **cond)`` with a non-empty ``cond``) always take the
            PyTorch path.
        part_mask_key: entry of ``cond`` holding the ``(B, P)`` bool mask of real parts, or None.

    Attributes:
        denoiser, classifiers (``nn.ModuleList``), scales (tuple of float), backend, part_mask_key.
        heun_step: None on the PyTorch path; the fused backend's ``heun_step(x, sigma_cur, sigma_next)``
            when the backend resolves to Triton for the model's device (samplers then delegate to it).
        ancestral_step: likewise the fused Euler-ancestral step ``(x, sigma_cur, sigma_next, noise)``
            where the fused backend has one (:class:`~genneg.guidance.fused.FusedCombineGuidance`).

    The fused object is built once per device, from the weights at that moment; call
    :meth:`clear_fused_cache` after changing weights in place.
    """

    def __init__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        classifiers: Sequence[nn.Module] = (),
        scales: Sequence[float] | None = None,
        backend: Literal["torch", "triton", "auto"] = "torch",
        part_mask_key: str | None = None,
    ) -> None:
        super().__init__()
        if backend not in ("torch", "triton", "auto"):
            raise ValueError(f"backend must be 'torch', 'triton' or 'auto', got {backend!r}")
        for i, c in enumerate(classifiers):
            if not isinstance(c, nn.Module):
                raise TypeError(f"classifier {i} must be an nn.Module, got {type(c).__name__}")
        _check_ve_classifiers(classifiers)
        self.denoiser = denoiser
        self.classifiers = nn.ModuleList(classifiers)
        self.scales = _check_scales(classifiers, scales)
        self.backend = backend
        self.part_mask_key = part_mask_key
        self._fused_cache: dict[str, Any] = {}

    def with_classifier(self, classifier: nn.Module, scale: float = 1.0) -> GuidedDenoiser:
        """A new guided denoiser with ``classifier`` stacked on top (the next Gen-neG iteration)."""
        return GuidedDenoiser(
            self.denoiser, [*self.classifiers, classifier], [*self.scales, scale], backend=self.backend,
            part_mask_key=self.part_mask_key,
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, *shape)`` float, ``sigma`` ``(B,)`` or scalar -> ``D_K(x; sigma)`` ``(B, *shape)``.

        ``cond``: per-sample conditioning tensors (leading dimension ``B``) passed to the denoiser and to
        every classifier. The guidance term is detached unless grad mode is on and ``x`` requires grad, in
        which case its graph is kept (second derivatives, e.g. the PF-ODE divergence); ``D(x; sigma)``
        follows the caller's grad mode. Under ``torch.inference_mode`` the call leaves inference mode for
        the guidance gradient (the guided answer, never the unguided one) and returns a normal tensor.
        """
        if torch.is_inference_mode_enabled():
            return _run_outside_inference_mode(lambda xx, ss, cc: self.forward(xx, ss, **cc), x, sigma, cond)
        sigma = expand_sigma(sigma, x)
        if not cond and resolve_backend(self.backend, x.device) == "triton":
            fused = self._fused(x.device)
            if fused is not None:
                return fused(x, sigma)
        outer_grad = torch.is_grad_enabled()
        grad, x0_hat = _guidance_and_estimate(
            self.classifiers, self.scales, x, sigma,
            lambda xg: self.denoiser(xg, sigma, **cond), cond,
            _part_mask(cond, self.part_mask_key, x.shape[0]),
        )
        d = x0_hat.detach() if x0_hat is not None and not outer_grad else self.denoiser(x, sigma, **cond)
        return d + broadcast_to_sample(sigma.to(grad.dtype) ** 2, x) * grad

    def _triton_fused(self) -> Any:
        """The fused object when the backend resolves to Triton for the model's device, else None."""
        if self.backend == "torch":
            return None
        device = self._model_device()
        if resolve_backend(self.backend, device) != "triton":
            return None
        return self._fused(device)

    @property
    def heun_step(self) -> Callable[[torch.Tensor, float, float], torch.Tensor] | None:
        """The fused Heun step when the backend resolves to Triton for the model's device, else None."""
        fused = self._triton_fused()
        return None if fused is None else fused.heun_step

    @property
    def ancestral_step(self) -> Callable[..., torch.Tensor] | None:
        """The fused Euler-ancestral step ``(x, sigma_cur, sigma_next, noise)`` when the backend resolves to
        Triton for the model's device and the fused object has one, else None."""
        return getattr(self._triton_fused(), "ancestral_step", None)

    def clear_fused_cache(self) -> None:
        """Forget fused objects built earlier (after weights changed in place)."""
        self._fused_cache.clear()

    def _model_device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _fused(self, device: torch.device) -> Any:
        key = str(device)
        if key not in self._fused_cache:
            if importlib.util.find_spec(_FUSED_MODULE) is None:
                if self.backend == "triton":
                    raise RuntimeError(
                        f"backend='triton' needs the fused guidance module {_FUSED_MODULE}, which is not "
                        "available in this build; "
                        "use backend='torch' or 'auto'"
                    )
                fused = None
            else:
                from genneg.guidance.fused import build_fused_guidance

                fused = build_fused_guidance(self)
                if fused is None and self.backend == "triton":
                    raise ValueError(
                        "backend='triton': this classifier stack cannot be fused (see "
                        f"{_FUSED_MODULE}.build_fused_guidance); use backend='torch' or 'auto'"
                    )
            self._fused_cache[key] = fused
        return self._fused_cache[key]
