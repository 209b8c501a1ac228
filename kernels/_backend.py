"""Which backend runs a fused op: PyTorch (everywhere) or Triton (CUDA tensors).

Triton is imported lazily and only for CUDA work, so that at run time without a GPU the package never
touches Triton (and never its CPU interpreter). Tests exercise kernels on the CPU by setting
``TRITON_INTERPRET=1`` before import, which :func:`resolve_backend` honours for ``backend="triton"``.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

Backend = Literal["torch", "triton", "auto"]

__all__ = ["Backend", "has_triton", "interpreter_enabled", "resolve_backend"]


@functools.cache
def has_triton() -> bool:
    """True when the ``triton`` package can be imported."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> Literal["torch", "triton"]:
    """Pick the concrete backend for tensors on ``device``.

    ``auto``: Triton on CUDA when available, PyTorch otherwise. ``triton``: Triton, which on a non-CUDA
    device is allowed only under the interpreter (tests). ``torch``: PyTorch.

    Raises:
        ValueError: unknown backend, or ``triton`` asked for where it cannot run.
    """
    if backend not in ("torch", "triton", "auto"):
        raise ValueError(f"backend must be 'torch', 'triton' or 'auto', got {backend!r}")
    if backend == "torch":
        return "torch"
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "triton" if on_cuda and has_triton() else "torch"
    if not has_triton():
        raise ValueError("backend='triton' needs the 'triton' package (pip install genneg[triton])")
    if not on_cuda and not interpreter_enabled():
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got device {device}; use backend='auto' or 'torch'"
        )
    return "triton"
