"""The oracle protocol shared by the whole package.

An oracle is any callable ``oracle(x, **cond) -> verdicts`` written by a domain expert:

- ``x``: a batch of samples, ``(N, *sample_shape)``, as a ``torch.Tensor`` (any device) or a NumPy array.
- ``cond``: the per-sample conditioning the model got (``model(x, sigma, **cond)``), by keyword; an
  unconditioned task's oracle is called as ``oracle(x)``. The pipeline and the planner pass the same dict.
- ``verdicts``: bool, ``(N,)`` with True = valid (positive), or ``(N, P)`` for per-part verdicts (traffic:
  one per vehicle slot). A sample is valid iff all its parts are valid.

Plain Python/NumPy functions work: :func:`evaluate_oracle` converts inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from genneg.profiling import nvtx_range

__all__ = ["Oracle", "evaluate_oracle", "sample_verdicts", "verdicts_tensor"]


@runtime_checkable
class Oracle(Protocol):
    """Callable returning True for valid samples: ``oracle(x, **cond) -> bool (N,) or (N, P)``.

    ``x`` is ``(N, *sample_shape)``; ``cond`` holds the per-sample conditioning the model got, by keyword
    (empty for an unconditioned task, whose oracle may take ``x`` alone).
    """

    def __call__(self, x: Any, /, **cond: Any) -> Any: ...


def evaluate_oracle(oracle: Callable[..., Any], x: torch.Tensor,
                    cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Run ``oracle(x, **cond)`` and return its verdicts as a bool tensor on ``x.device``.

    The one place where an oracle's answer is converted and checked: the pipeline's balanced draw and the
    planner (``genneg.planning.FastSampler``) both call the oracle through it, with the same conditioning
    dict the model gets (DESIGN.md "One conditioning convention").

    Args:
        oracle: callable taking a tensor (or, if it raises ``TypeError``/``AttributeError`` on one, a
            NumPy array) and, when ``cond`` is not empty, the entries of ``cond`` by keyword.
        x: ``(N, *sample_shape)`` samples.
        cond: per-sample conditioning (tensors with leading dimension ``N``, or broadcastable views), passed
            as ``oracle(x, **cond)``; None or empty: ``oracle(x)``.

    Returns:
        bool tensor ``(N,)`` or ``(N, P)``, True = valid.

    Raises:
        ValueError: if the oracle's answer does not have ``N`` rows or is not boolean-like.
        TypeError: the oracle does not take ``cond``'s keywords (the message names them).
    """
    n = x.shape[0]
    kwargs = dict(cond or {})
    with nvtx_range("oracle"):
        try:
            out = oracle(x, **kwargs)
        except (TypeError, AttributeError):  # a NumPy-only oracle handed a tensor
            try:
                out = oracle(x.detach().cpu().numpy(), **kwargs)
            except TypeError as err:
                if not kwargs:
                    raise
                raise TypeError(
                    f"oracle(x, **cond) failed with cond keys {sorted(kwargs)}: {err}. The oracle of a "
                    "conditioned model takes the conditioning by keyword, e.g. "
                    "def oracle(x, *, valid, **other)"
                ) from err
    return verdicts_tensor(out, n, x.device)


def verdicts_tensor(out: Any, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An oracle's answer for ``n`` samples as a bool tensor on ``device``, checked.

    Raises:
        ValueError: None, a non-numeric answer (strings, objects), a shape other than ``(n,)`` or
            ``(n, P)``, or values other than True/False (or 0/1, of any numeric dtype).
    """
    if out is None:
        raise ValueError(f"oracle returned None for {n} samples; expected a bool array of shape ({n},)")
    if not isinstance(out, torch.Tensor):
        array = np.asarray(out)
        if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"oracle returned values of dtype {array.dtype}; expected bool (True = valid)")
        out = torch.as_tensor(array)
    if out.ndim not in (1, 2) or out.shape[0] != n:
        raise ValueError(
            f"oracle returned shape {tuple(out.shape)} for {n} samples; expected ({n},) or ({n}, P)"
        )
    if out.dtype != torch.bool:
        if out.is_complex() or not torch.all((out == 0) | (out == 1)):
            raise ValueError("oracle returned non-boolean values; expected True/False (or 0/1)")
        out = out != 0
    return out.to(device)


def sample_verdicts(verdicts: torch.Tensor) -> torch.Tensor:
    """Collapse per-part verdicts ``(N, P)`` to per-sample verdicts ``(N,)`` (valid iff all parts are)."""
    return verdicts if verdicts.ndim == 1 else verdicts.all(dim=1)
