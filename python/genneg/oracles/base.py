"""The oracle protocol shared by the whole package.

An oracle is any callable ``oracle(x) -> verdicts`` written by a domain expert:

- ``x``: a batch of samples, ``(N, *sample_shape)``, as a ``torch.Tensor`` (any device) or a NumPy array.
- ``verdicts``: bool, ``(N,)`` with True = valid (positive), or ``(N, P)`` for per-part verdicts (traffic:
  one per vehicle slot). A sample is valid iff all its parts are valid.

Plain Python/NumPy functions work: :func:`evaluate_oracle` converts inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from genneg.profiling import nvtx_range

__all__ = ["Oracle", "evaluate_oracle", "sample_verdicts"]


@runtime_checkable
class Oracle(Protocol):
    """Callable returning True for valid samples: ``(N, ...) -> bool (N,) or (N, P)``."""

    def __call__(self, x: Any) -> Any: ...


def evaluate_oracle(oracle: Callable[[Any], Any], x: torch.Tensor) -> torch.Tensor:
    """Run ``oracle`` on ``x`` and return its verdicts as a bool tensor on ``x.device``.

    Args:
        oracle: callable taking a tensor (or, if it raises ``TypeError``/``AttributeError`` on one, a
            NumPy array).
        x: ``(N, *sample_shape)`` samples.

    Returns:
        bool tensor ``(N,)`` or ``(N, P)``, True = valid.

    Raises:
        ValueError: if the oracle's answer does not have ``N`` rows or is not boolean-like.
    """
    n = x.shape[0]
    with nvtx_range("oracle"):
        try:
            out = oracle(x)
        except (TypeError, AttributeError):  # a NumPy-only oracle handed a tensor
            out = oracle(x.detach().cpu().numpy())
    if isinstance(out, np.ndarray) or not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out))
    if out.ndim not in (1, 2) or out.shape[0] != n:
        raise ValueError(
            f"oracle returned shape {tuple(out.shape)} for {n} samples; expected ({n},) or ({n}, P)"
        )
    if out.dtype != torch.bool:
        if out.is_floating_point() and not torch.all((out == 0) | (out == 1)):
            raise ValueError("oracle returned non-boolean values; expected True/False (or 0/1)")
        out = out != 0
    return out.to(x.device)


def sample_verdicts(verdicts: torch.Tensor) -> torch.Tensor:
    """Collapse per-part verdicts ``(N, P)`` to per-sample verdicts ``(N,)`` (valid iff all parts are)."""
    return verdicts if verdicts.ndim == 1 else verdicts.all(dim=1)
