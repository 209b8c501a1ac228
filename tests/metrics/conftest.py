"""Run these small-tensor tests on one intra-op thread.

Their tensors are tiny (thousands of rows, a few columns); on a shared 2-core machine PyTorch's thread
pool then costs more than it saves (measured: a 1000-step DDPM sampling loop took 18 s with 2 threads
under load and 1.1 s with 1). The previous setting is restored after each module.
"""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
