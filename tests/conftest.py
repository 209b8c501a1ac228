"""Test-wide setup.

Triton kernels run on the CPU only through Triton's interpreter, which must be switched on before
``triton`` is first imported; the package itself never does this at run time.

Every test runs with one PyTorch intra-op thread: the suite's tensors are small (thousands of rows, a
few hundred columns), and on a 2-core machine the thread pool then costs more than it saves (measured
here: a 1000-step DDPM sampling loop took 18 s with 2 threads under load and 1.1 s with 1). Tests of
thread counts set their own (the C++ oracles have their own pool, unaffected by this).
"""

import os
from collections.abc import Iterator

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
