"""The helpers of :mod:`genneg.pipeline.distributed` in one process (the world of one), their errors, and
the read-only run directory the other ranks use."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genneg.io.rundir import RunDir, RunStateError
from genneg.pipeline import distributed
from genneg.pipeline.distributed import World, init_from_env, map_batches, rank_batch, shard_rows


@given(n=st.integers(0, 10_000), size=st.integers(1, 64))
def test_shards_partition_the_rows_in_rank_order(n: int, size: int) -> None:
    shards = [shard_rows(n, World(rank, size, rank, size, "gloo")) for rank in range(size)]
    assert shards[0].start == 0 and shards[-1].stop == n
    assert all(a.stop == b.start for a, b in pairwise(shards))
    lengths = [s.stop - s.start for s in shards]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


@given(batch=st.integers(1, 10_000), size=st.integers(1, 64))
def test_a_rank_batch_is_the_smallest_equal_share_covering_the_global_batch(batch: int, size: int) -> None:
    share = rank_batch(batch, World(size - 1, size, 0, size, "gloo"))
    assert share * size >= batch > (share - 1) * size
    assert rank_batch(batch, World()) == batch  # one process draws the whole global batch


def test_one_process_is_the_world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    world = init_from_env("cpu")
    assert (world.rank, world.world_size, world.is_main, world.distributed) == (0, 1, True, False)
    assert world.record() == {"world_size": 1, "backend": "none"}
    assert distributed.all_reduce_int64([3, 2**40]) == [3, 2**40]
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert map_batches(10, 4, lambda start, m: (start, m)) == [(0, 4), (4, 4), (8, 2)]
    model = torch.nn.Linear(2, 1)
    assert distributed.ddp(model) is model
    distributed.barrier()


def test_bad_environment_and_inputs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_from_env("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        distributed.world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        distributed.world()
    with pytest.raises(ValueError, match="int64"):
        distributed.all_reduce_int64([2**63])
    with pytest.raises(ValueError, match="n must be >= 0"):
        shard_rows(-1, World())
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(5, 0, lambda s, m: s)
    with pytest.raises(ValueError, match="global_batch must be >= 1, got 0"):
        rank_batch(0, World())


def test_threads_per_rank_divides_the_cores() -> None:
    cores = distributed.threads_per_rank(World(0, 1, 0, 1, None))
    assert cores >= 1
    assert distributed.threads_per_rank(World(0, 4, 0, 4, "gloo")) == max(1, cores // 4)


def test_read_only_run_reads_without_writing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"seed": 0}))
    run.log("baseline", {"v": 1})
    run.mark_done("baseline")
    run.log("iter1/data", {"v": 2})  # a stage that never finished: a resume would drop its record
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    reader = RunDir(tmp_path / "run", read_only=True)
    assert reader.is_done("baseline") and len(reader.records()) == 2
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # nothing rewritten
    with pytest.raises(RunStateError, match="read-only"):
        reader.log("baseline", {"v": 3})
    with pytest.raises(RunStateError, match="read-only"):
        reader.mark_done("iter1/data")
    with pytest.raises(RunStateError, match="read-only"):
        reader.write_config({"seed": 0})
    assert not reader.path("new", "file").parent.exists()  # no directories made
    with pytest.raises(RunStateError, match="holds no run"):
        RunDir(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(ValueError, match="read_only"):
        RunDir(tmp_path / "run", read_only=True, resume=True)
