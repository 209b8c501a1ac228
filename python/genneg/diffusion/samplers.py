"""Samplers for the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``.

One signature, after k-diffusion: ``sampler(denoiser, x, sigmas, *, callback=None, progress=False)``
with ``x`` ``(B, *shape)`` the initial noise already scaled by ``sigmas[0]`` and ``sigmas`` a decreasing
``(n+1,)`` schedule ending in 0 (``genneg.diffusion.schedules``). Step arithmetic uses the float64
sigmas as Python floats; the state stays in ``x``'s dtype.

A denoiser may provide its own fused step (``denoiser.heun_step(x, sigma_cur, sigma_next)``, e.g. the
Triton guidance kernels); samplers then call it instead of the generic step, so the fast path changes
nothing for callers.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from tqdm.auto import tqdm

from genneg.diffusion.denoiser import Denoiser, expand_sigma
from genneg.profiling import nvtx_range

__all__ = ["StepCallback", "euler_step", "heun_sample", "heun_step"]

StepCallback = Callable[[int, torch.Tensor, float, float], None]


def euler_step(denoiser: Denoiser, x: torch.Tensor, sigma_cur: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of the PF-ODE from ``sigma_cur`` to ``sigma_next`` (may be 0)."""
    d = (x - denoiser(x, expand_sigma(sigma_cur, x))) / sigma_cur
    return x + (sigma_next - sigma_cur) * d


def heun_step(denoiser: Denoiser, x: torch.Tensor, sigma_cur: float, sigma_next: float) -> torch.Tensor:
    """One step of Heun's 2nd-order method; a plain Euler step when ``sigma_next == 0``.

    Delegates to ``denoiser.heun_step`` when the denoiser has one (fused backends).
    """
    fused = getattr(denoiser, "heun_step", None)
    if fused is not None:
        return fused(x, sigma_cur, sigma_next)
    d = (x - denoiser(x, expand_sigma(sigma_cur, x))) / sigma_cur
    x_next = x + (sigma_next - sigma_cur) * d
    if sigma_next > 0:
        d_next = (x_next - denoiser(x_next, expand_sigma(sigma_next, x))) / sigma_next
        x_next = x + (sigma_next - sigma_cur) * 0.5 * (d + d_next)
    return x_next


@torch.no_grad()
def heun_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate the PF-ODE with Heun steps along ``sigmas``; the step to ``sigma = 0`` is Euler.

    Runs under ``torch.no_grad``; guidance wrappers switch gradients on locally for their classifiers.

    Args:
        denoiser: ``D(x, sigma)``.
        x: ``(B, *shape)`` float32, initial noise ``sigmas[0] · N(0, I)``.
        sigmas: ``(n+1,)`` decreasing, ending in 0.
        callback: called as ``callback(i, x_next, sigma_cur, sigma_next)`` after step ``i``.
        progress: show a progress bar.

    Returns:
        ``(B, *shape)`` samples at ``sigma = 0``.
    """
    levels = [float(s) for s in sigmas]
    if len(levels) < 2 or levels[-1] != 0.0 or any(a <= b for a, b in pairwise(levels)):
        raise ValueError("sigmas must be strictly decreasing and end in 0")
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling", leave=False):
        with nvtx_range("sampler.heun_step"):
            x = heun_step(denoiser, x, levels[i], levels[i + 1])
        if callback is not None:
            callback(i, x, levels[i], levels[i + 1])
    return x
