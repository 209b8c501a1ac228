"""Issue 16, kind 10: an absent optional dependency (the ``nvtx`` extra, on a CPU build of torch) turns
NVTX ranges off with one warning instead of crashing the caller."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from genneg import profiling


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch's own NVTX works with CUDA")
def test_nvtx_absent_turns_ranges_off_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvtx", None)  # import nvtx -> ImportError
    profiling._push_pop.cache_clear()
    monkeypatch.setattr(profiling, "_state", {})
    profiling.set_nvtx_enabled(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                with profiling.nvtx_range("step"):
                    pass
            assert not profiling.nvtx_available()
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "NVTX ranges are off" in messages[0]

        @profiling.nvtx_annotate("decorated")
        def double(v: int) -> int:
            return 2 * v

        assert double(3) == 6
    finally:
        profiling.set_nvtx_enabled(False)
        profiling._push_pop.cache_clear()
