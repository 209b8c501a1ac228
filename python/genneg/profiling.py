"""NVTX ranges for profiling (Nsight Systems) around sampler steps, model calls, guidance and oracle calls.

Off by default and free when off: :func:`nvtx_range` then returns one shared no-op context manager
(measured in ``benchmarks/guidance.py``: a few hundred nanoseconds per range, against sampler steps of
tens of microseconds and more). Switched on by the environment variable ``GENNEG_NVTX=1`` (read when
:func:`nvtx_enabled` is first asked, so set it before the run) or explicitly with
:func:`set_nvtx_enabled` (e.g. from a run config's ``nvtx`` flag). Ranges use the ``nvtx`` package when it
is installed (``pip install genneg[nvtx]``), else ``torch.cuda.nvtx``; without CUDA nothing is recorded
by the latter, but the code path is the same.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["nvtx_annotate", "nvtx_available", "nvtx_enabled", "nvtx_range", "set_nvtx_enabled"]

_F = TypeVar("_F", bound=Callable[..., Any])
_NULL = contextlib.nullcontext()
_state: dict[str, bool] = {}


def nvtx_enabled() -> bool:
    """Whether ranges are recorded: :func:`set_nvtx_enabled`'s value, else ``GENNEG_NVTX == "1"``."""
    enabled = _state.get("enabled")
    if enabled is None:
        enabled = _state["enabled"] = os.environ.get("GENNEG_NVTX", "0") == "1"
    return enabled


def set_nvtx_enabled(enabled: bool) -> None:
    """Switch NVTX ranges on or off for this process (overrides ``GENNEG_NVTX``)."""
    _state["enabled"] = bool(enabled)


@functools.cache
def _push_pop() -> tuple[Callable[[str], Any], Callable[[], Any]] | None:
    """The NVTX push/pop pair, or None (with one warning) when no NVTX backend works here."""
    try:
        import nvtx

        def push(name: str) -> Any:
            return nvtx.push_range(name, domain="genneg")

        def pop() -> Any:
            return nvtx.pop_range(domain="genneg")

        return push, pop
    except ImportError:
        pass
    import torch

    try:  # a CPU build of torch has the functions but raises "NVTX functions not installed"
        torch.cuda.nvtx.range_push("genneg.probe")
        torch.cuda.nvtx.range_pop()
    except (RuntimeError, AttributeError, OSError) as e:
        warnings.warn(
            f"NVTX ranges are off: neither the nvtx package (pip install genneg[nvtx]) nor torch's NVTX "
            f"is available here ({e})",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop


def nvtx_available() -> bool:
    """Whether an NVTX backend works in this environment (probed once; warns once when not)."""
    return _push_pop() is not None


@contextlib.contextmanager
def _range(name: str) -> Iterator[None]:
    push, pop = _push_pop()  # type: ignore[misc]  # nvtx_range checked availability
    push(name)
    try:
        yield
    finally:
        pop()


def nvtx_range(name: str) -> contextlib.AbstractContextManager[None]:
    """``with nvtx_range("sampler.step"): ...``: an NVTX range when enabled, a shared no-op otherwise
    (also when no NVTX backend is installed: the feature turns off with one warning)."""
    if not nvtx_enabled() or not nvtx_available():
        return _NULL
    return _range(name)


def nvtx_annotate(name: str) -> Callable[[_F], _F]:
    """Decorator form of :func:`nvtx_range`."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with nvtx_range(name):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
