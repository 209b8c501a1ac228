"""Per-sample conditioning bound to a network (DESIGN.md "One conditioning convention").

Every network of the package takes its conditioning by keyword, ``model(x, s, **cond)``, where ``cond`` maps
names to tensors whose leading dimension matches ``x``'s (traffic: the map crop and the present vehicle slots
of each scene). Losses, samplers and metrics take a two-argument ``f(x, s)``; :func:`bind_cond` is the one
adapter between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["Cond", "bind_cond"]

Cond = Mapping[str, torch.Tensor]


def bind_cond(model: Callable[..., torch.Tensor], cond: Cond | None
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model(x, s, **cond)`` as ``f(x, s)``.

    Args:
        model: a network or denoiser called as ``model(x, s, **cond)``; ``s`` is whatever it takes second (a
            DDPM timestep ``(N,)`` int64 for an ε-network, a noise level σ ``(N,)`` for a denoiser).
        cond: per-sample conditioning (tensors with the rows of the ``x`` that ``f`` will be given), or None /
            empty for an unconditioned model, which is then called as ``model(x, s)``.

    Returns:
        ``f(x, s)``. The dict is captured as given: ``f`` must be called with the rows ``cond`` describes.
    """
    if not cond:
        return lambda x, s: model(x, s)
    bound = dict(cond)
    return lambda x, s: model(x, s, **bound)
