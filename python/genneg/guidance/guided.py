"""Classifier guidance and stacking (METHOD.md 4, Eq. 10).

With classifiers ``c_1..c_K`` and scales ``gamma_k`` (``gamma = 1`` is the method) the guided score is
``s_K = s_theta + Σ_k gamma_k ∇_x log c_k(x, sigma)``, i.e. in denoiser form::

    D_K(x; sigma) = D(x; sigma) + sigma² Σ_k gamma_k ∇_x Σ_parts logsigmoid(logit_k(x, sigma))

and in ε form (DDPM) ``ε_K = ε_theta - sqrt(1 - ᾱ_t) Σ_k gamma_k ∇_x log c_k(x_t, t)``.

The gradient is exact: one ``torch.autograd.grad`` call through the whole stack on a detached copy of
``x``, under ``torch.enable_grad`` so that it works inside the samplers' ``torch.no_grad``. Summing over
the batch before differentiating is exact because samples do not interact. A time-independent
classifier (ablation) is applied to the one-step estimate ``D(x; sigma)`` and differentiated through D.

The fused Triton path (``genneg.guidance.fused``) plugs in behind :class:`GuidedDenoiser` when its
``backend`` resolves to ``"triton"``; it then also provides ``heun_step`` for the sampler.

Conditioned samples (e.g. a traffic scene on its map crop with its present vehicle slots) carry a
conditioning dict ``cond`` of tensors with the batch as leading dimension. Every model call passes it on
as keyword arguments: ``D(x, sigma, **cond)``, ``eps(x_t, t, **cond)``, ``c(x, sigma, **cond)``; each
callable reads the entries it needs. Unconditioned samples (checkerboard) have no ``cond`` and the calls are
the plain ``D(x, sigma)``. With ``part_mask_key`` the entry ``cond[part_mask_key]`` (``(B, P)`` bool, True =
a real part) restricts ``Σ_parts log c`` to real parts (padding slots add nothing).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from genneg.diffusion.denoiser import broadcast_to_sample, expand_sigma
from genneg.kernels._backend import resolve_backend

if TYPE_CHECKING:
    from genneg.diffusion.ddpm import DDPMSchedule

__all__ = ["GuidedDenoiser", "GuidedEps", "guidance_gradient"]

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


_COORDINATES = ("ddpm", "ve")


def _declared_coordinates(classifiers: Sequence[Any]) -> set[str]:
    """The ``noise_coordinates`` the time-dependent classifiers declare (``"ve"`` for a TimeClassifier)."""
    declared: set[str] = set()
    for i, c in enumerate(classifiers):
        coords = getattr(c, "noise_coordinates", None)
        if coords is None or not _is_time_dependent(c):
            continue
        if coords not in _COORDINATES:
            raise ValueError(
                f"classifier {i} declares noise_coordinates={coords!r}; expected one of {_COORDINATES}"
            )
        declared.add(coords)
    return declared


def _check_ve_classifiers(classifiers: Sequence[Any]) -> None:
    """Refuse classifiers that declare DDPM (integer-timestep) coordinates where ``sigma`` is passed."""
    for i, c in enumerate(classifiers):
        if _is_time_dependent(c) and getattr(c, "noise_coordinates", None) == "ddpm":
            raise ValueError(
                f"classifier {i} declares noise_coordinates='ddpm' (integer timesteps) but this guidance "
                "passes sigma (variance-exploding coordinates); use GuidedEps(coordinates='ddpm')"
            )


def _resolve_coordinates(classifiers: Sequence[Any], coordinates: str | None) -> str:
    """The one coordinate system of a GuidedEps stack; a wrong pairing raises ``ValueError``."""
    if coordinates is not None and coordinates not in _COORDINATES:
        raise ValueError(f"coordinates must be 'ddpm' or 've', got {coordinates!r}")
    declared = _declared_coordinates(classifiers)
    if len(declared) > 1:
        raise ValueError(f"the classifiers mix noise coordinates {sorted(declared)}; one stack needs one")
    if coordinates is None:
        if declared:
            return declared.pop()
        if any(_is_time_dependent(c) for c in classifiers):
            raise ValueError(
                "GuidedEps cannot tell how to call these classifiers: pass coordinates='ddpm' (c(x_t, t), "
                "integer timesteps) or 've' (c(x_t / sqrt(ᾱ_t), sigma_t)), or give each classifier a "
                "noise_coordinates attribute"
            )
        return "ddpm"
    if declared and coordinates not in declared:
        raise ValueError(
            f"coordinates={coordinates!r} but the classifiers declare noise_coordinates={declared.pop()!r}: "
            "a TimeClassifier takes sigma, never an integer timestep"
        )
    return coordinates


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


def _guidance_and_estimate(
    classifiers: Sequence[Callable[..., torch.Tensor]],
    scales: Sequence[float],
    x: torch.Tensor,
    classifier_inputs: Callable[[torch.Tensor], tuple[torch.Tensor, Any]],
    clean_estimate: Callable[[torch.Tensor], torch.Tensor] | None,
    cond: Mapping[str, torch.Tensor] | None = None,
    part_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``∇_x Σ_k gamma_k Σ_{batch, parts} logsigmoid(logit_k)`` and, if computed, the clean estimate.

    ``classifier_inputs(xg)`` maps the differentiable copy of ``x`` to the ``(input, time)`` pair the
    time-dependent classifiers take; ``clean_estimate(xg)`` gives ``x0_hat`` for time-independent ones.
    ``cond`` is passed to every classifier as keyword arguments; ``part_mask`` ``(B, P)`` bool keeps only
    the real parts in the sum. Returns the gradient with ``x``'s shape (zeros when every scale is 0) and
    ``x0_hat`` (or None).
    """
    cond = {} if cond is None else cond
    # When the caller differentiates through the guided model (e.g. the exact divergence of the PF-ODE
    # likelihood), keep the graph of the guidance gradient; otherwise work on a detached copy.
    keep_graph = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xg = x if keep_graph else x.detach().requires_grad_(True)
        inputs = classifier_inputs(xg)
        x0_hat: torch.Tensor | None = None
        total: torch.Tensor | None = None
        for classifier, scale in zip(classifiers, scales):
            if scale == 0.0:
                continue
            if _is_time_dependent(classifier):
                logits = classifier(*inputs, **cond)
            else:
                if clean_estimate is None:
                    raise ValueError(
                        "a time-independent classifier needs the denoiser (pass denoiser=...) to form "
                        "the one-step estimate D(x; sigma)"
                    )
                if x0_hat is None:
                    x0_hat = clean_estimate(xg)
                logits = classifier(x0_hat, inputs[1], **cond)
            if logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier returned {logits.shape[0]} rows for a batch of {x.shape[0]}")
            log_c = F.logsigmoid(logits)
            if part_mask is not None:
                if part_mask.shape != logits.shape:
                    raise ValueError(f"part mask {tuple(part_mask.shape)} != logits {tuple(logits.shape)}")
                log_c = log_c * part_mask.to(log_c.dtype)
            term = scale * log_c.sum()
            total = term if total is None else total + term
        if total is None or not total.requires_grad:  # all scales 0, or logits constant in x
            return torch.zeros_like(x), x0_hat
        (grad,) = torch.autograd.grad(total, xg, allow_unused=True, create_graph=keep_graph)
    return (torch.zeros_like(x) if grad is None else grad), x0_hat


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
    """``Σ_k gamma_k ∇_x Σ_parts log c_k(x, sigma)``, the stack's total guidance (exact autograd).

    Args:
        classifiers: callables ``c(x, sigma, **cond) -> logits (B,) or (B, P)`` (e.g.
            :class:`TimeClassifier`); one with ``time_dependent = False`` is applied to ``D(x; sigma)``.
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
            its timestep), mismatched scales, or a malformed part mask.
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
    grad, _ = _guidance_and_estimate(classifiers, scales, x, lambda xg: (xg, sigma), clean, cond,
                                     _part_mask(cond, part_mask_key, x.shape[0]))
    return grad


class GuidedDenoiser(nn.Module):
    """``D_K(x; sigma) = D(x; sigma) + sigma² Σ_k gamma_k ∇_x log c_k(x, sigma)``: a denoiser again.

    Args:
        denoiser: the base denoiser ``D(x (B, ...), sigma (B,)) -> (B, ...)``.
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
            self.classifiers, self.scales, x, lambda xg: (xg, sigma),
            lambda xg: self.denoiser(xg, sigma, **cond), cond,
            _part_mask(cond, self.part_mask_key, x.shape[0]),
        )
        d = x0_hat.detach() if x0_hat is not None and not outer_grad else self.denoiser(x, sigma, **cond)
        return d + broadcast_to_sample(sigma.to(grad.dtype) ** 2, x) * grad

    @property
    def heun_step(self) -> Callable[[torch.Tensor, float, float], torch.Tensor] | None:
        """The fused Heun step when the backend resolves to Triton for the model's device, else None."""
        if self.backend == "torch":
            return None
        device = self._model_device()
        if resolve_backend(self.backend, device) != "triton":
            return None
        fused = self._fused(device)
        return None if fused is None else fused.heun_step

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


class GuidedEps(nn.Module):
    """DDPM guidance in ε form: ``ε_K(x_t, t) = ε_theta(x_t, t) - sqrt(1 - ᾱ_t) Σ_k gamma_k ∇ log c_k``.

    Args:
        eps_model: ``ε_theta(x_t (B, ...), t (B,) int64) -> (B, ...)``.
        schedule: a ``genneg.diffusion.ddpm.DDPMSchedule`` (uses ``alphas_cumprod`` ``(T,)`` float64).
        classifiers: modules returning logits ``(B,)`` or ``(B, P)``.
        scales: ``gamma_k``; default all 1.
        coordinates: how time-dependent classifiers are called. ``"ddpm"``: ``c(x_t, t)`` with integer
            timesteps. ``"ve"``: ``c(x_t / sqrt(ᾱ_t), sigma_t)`` with ``sigma_t = sqrt((1-ᾱ_t)/ᾱ_t)``
            (a :class:`TimeClassifier` trained in EDM coordinates); the chain rule to ``x_t`` is exact.
            None (default): the coordinates the classifiers declare in their ``noise_coordinates``
            attribute (a :class:`TimeClassifier` declares ``"ve"``).
        part_mask_key: entry of ``cond`` holding the ``(B, P)`` bool mask of real parts, or None.

    Time-independent classifiers (``time_dependent = False``) see the one-step estimate
    ``x0_hat = (x_t - sqrt(1-ᾱ_t) ε_theta(x_t, t)) / sqrt(ᾱ_t)``.

    Raises:
        ValueError: a wrong pairing of coordinates: ``coordinates`` disagrees with a classifier's declared
            ``noise_coordinates``, the classifiers declare different ones, or ``coordinates`` is None and
            a time-dependent classifier declares none (the call would be a guess).
    """

    def __init__(
        self,
        eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: DDPMSchedule,
        classifiers: Sequence[nn.Module] = (),
        scales: Sequence[float] | None = None,
        coordinates: Literal["ddpm", "ve"] | None = None,
        part_mask_key: str | None = None,
    ) -> None:
        super().__init__()
        coordinates = _resolve_coordinates(classifiers, coordinates)
        self.eps_model = eps_model
        self.schedule = schedule
        self.classifiers = nn.ModuleList(classifiers)
        self.scales = _check_scales(classifiers, scales)
        self.coordinates = coordinates
        self.part_mask_key = part_mask_key

    def with_classifier(self, classifier: nn.Module, scale: float = 1.0) -> GuidedEps:
        """A new guided ε-model with ``classifier`` stacked on top (same coordinates; a classifier that
        declares other ones raises ``ValueError``)."""
        return GuidedEps(self.eps_model, self.schedule, [*self.classifiers, classifier],
                         [*self.scales, scale], coordinates=self.coordinates,
                        part_mask_key=self.part_mask_key)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """``x_t`` ``(B, *shape)`` float, ``t`` ``(B,)`` int64 timesteps -> guided ε ``(B, *shape)``.

        ``cond``: per-sample conditioning tensors (leading dimension ``B``) passed to the ε-model and to
        every classifier. Works in every grad mode, ``torch.inference_mode`` included (see
        :class:`GuidedDenoiser`)."""
        if torch.is_inference_mode_enabled():
            return _run_outside_inference_mode(lambda xx, tt, cc: self.forward(xx, tt, **cc), x_t, t, cond)
        if t.ndim != 1 or t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        alpha_bar = torch.as_tensor(self.schedule.alphas_cumprod, device=x_t.device)[t].to(x_t.dtype)
        root_ab = broadcast_to_sample(alpha_bar.sqrt(), x_t)
        root_1mab = broadcast_to_sample((1 - alpha_bar).sqrt(), x_t)
        if self.coordinates == "ve":
            sigma_t = ((1 - alpha_bar) / alpha_bar).sqrt()

            def inputs(xg: torch.Tensor) -> tuple[torch.Tensor, Any]:
                return xg / root_ab, sigma_t
        else:

            def inputs(xg: torch.Tensor) -> tuple[torch.Tensor, Any]:
                return xg, t

        outer_grad = torch.is_grad_enabled()
        eps_g: list[torch.Tensor] = []

        def clean_estimate(xg: torch.Tensor) -> torch.Tensor:
            eps = self.eps_model(xg, t, **cond)
            eps_g.append(eps)
            return (xg - root_1mab * eps) / root_ab

        grad, _ = _guidance_and_estimate(self.classifiers, self.scales, x_t, inputs, clean_estimate, cond,
                                         _part_mask(cond, self.part_mask_key, x_t.shape[0]))
        eps = eps_g[0].detach() if eps_g and not outer_grad else self.eps_model(x_t, t, **cond)
        return eps - root_1mab * grad
