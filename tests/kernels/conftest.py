"""The devices a Triton kernel test runs on: one test body, every backend.

* ``interpreter``: CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, set by the top-level
  conftest unless the environment says otherwise): the default suite.
* ``cuda``: CUDA tensors and compiled kernels (``TRITON_INTERPRET=0`` and a CUDA device), marked ``gpu``;
  ``scripts/gpu_check.sh`` selects these with ``-m gpu``.

The references stay on the CPU: a kernel's output is moved back and compared with the CPU reference, so a
GPU run checks the compiled kernel against the same numbers the interpreter run does.
"""

from __future__ import annotations

import pytest
import torch

from genneg.kernels._backend import has_triton, interpreter_enabled

KERNEL_DEVICES = [
    pytest.param(
        "cpu",
        id="interpreter",
        marks=pytest.mark.skipif(
            not (has_triton() and interpreter_enabled()), reason="needs triton and TRITON_INTERPRET=1"
        ),
    ),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not (has_triton() and torch.cuda.is_available() and not interpreter_enabled()),
                reason="needs triton, a CUDA device and TRITON_INTERPRET=0 (scripts/gpu_check.sh)",
            ),
        ],
    ),
]


@pytest.fixture(params=KERNEL_DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device the kernel under test runs on (its inputs are moved there, its outputs back)."""
    return torch.device(request.param)
