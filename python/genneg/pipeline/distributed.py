"""Data-parallel Gen-neG on ``torch.distributed``, launched by ``torchrun`` (issue 14; DESIGN.md).

A process learns its place from the standard environment that ``torchrun`` (and SLURM + torchrun, Ray,
Accelerate) sets: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``. Without them it is the world of one process, and every helper below is the identity (a
single process is the world-size-1 case of the same code, not a separate path).

- :func:`init_from_env` joins the process group once: ``nccl`` when the run's device is CUDA (one device
  per local rank), ``gloo`` on the CPU, with a timeout so that a rank that dies makes the others fail
  with an error instead of hanging.
- :func:`world` says where this process stands (:class:`World`).
- :func:`barrier`, :func:`all_reduce_int64` (exact integer counts), :func:`all_gather_objects`
  (per-rank results in rank order), :func:`broadcast_object`.
- :func:`shard_rows` splits the rows ``0..n-1`` of a global batch into contiguous shards, one per rank;
  :func:`rank_batch` is a rank's share of a global sampling batch (the data stage's sampler calls).
- :func:`threads_per_rank`: the cores of the machine divided among its local ranks (the default of the
  C++ oracle's and PyTorch's intra-op threads).
- :func:`ddp`: a module wrapped in ``DistributedDataParallel`` (itself when the world has one process).

Writing is rank 0's job (checkpoints, datasets, ``metrics.jsonl``, markers, the report); the pipeline
puts a :func:`barrier` after each write that other ranks read.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "World",
    "all_gather_objects",
    "all_reduce_int64",
    "barrier",
    "broadcast_object",
    "ddp",
    "global_mean",
    "global_mean_losses",
    "init_from_env",
    "map_batches",
    "rank_batch",
    "shard_rows",
    "shutdown",
    "threads_per_rank",
    "world",
]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a collective waits for the other ranks before failing (env ``GENNEG_DIST_TIMEOUT_S``)."""

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands.

    Attributes:
        rank: global rank, ``0..world_size-1``.
        world_size: number of processes.
        local_rank: rank on this machine (selects the CUDA device).
        local_world_size: processes on this machine.
        backend: ``"gloo"``, ``"nccl"``, or None for a single process without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group of more than one process is joined."""
        return self.backend is not None and self.world_size > 1

    def record(self) -> dict[str, Any]:
        """What stage markers and the report record: ``{"world_size", "backend"}``."""
        return {"world_size": self.world_size, "backend": self.backend or "none"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _env_world() -> World:
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if size < 1 or not 0 <= rank < size or not 0 <= local_rank < max(local_size, 1):
        raise ValueError(f"bad distributed environment: RANK={rank}, WORLD_SIZE={size}, "
                         f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size}")
    return World(rank, size, local_rank, local_size, None)


def world() -> World:
    """This process's :class:`World`: the joined process group's, else the environment's (backend None)."""
    if dist.is_available() and dist.is_initialized():
        w = _env_world()
        return World(dist.get_rank(), dist.get_world_size(), w.local_rank, w.local_world_size,
                     str(dist.get_backend()))
    return _env_world()


def init_from_env(device: str | torch.device = "cpu", *, timeout_s: float | None = None) -> World:
    """Join the process group the environment describes (idempotent); a no-op for one process.

    Args:
        device: the run's device; ``cuda`` selects ``nccl`` and the local rank's GPU, else ``gloo``.
        timeout_s: seconds a collective waits for a missing rank (default ``GENNEG_DIST_TIMEOUT_S`` or
            :data:`DEFAULT_TIMEOUT_S`); past it the job fails with an error naming the collective.

    Returns:
        the :class:`World` after joining.

    Raises:
        ValueError: ``WORLD_SIZE > 1`` without ``MASTER_ADDR``/``MASTER_PORT``, or malformed variables.
        RuntimeError: CUDA asked for with fewer GPUs than local ranks.
    """
    env = _env_world()
    if env.world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={env.world_size} but {missing} are not set; launch with torchrun")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.cuda.device_count() <= env.local_rank:
            raise RuntimeError(f"local rank {env.local_rank} needs a GPU, but {torch.cuda.device_count()} "
                               "are visible")
        torch.cuda.set_device(env.local_rank)
    if timeout_s is None:
        timeout_s = float(os.environ.get("GENNEG_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if _joined():
        dist.barrier()


def _count_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
        torch.device("cpu")


def all_reduce_int64(counts: Sequence[int]) -> list[int]:
    """The element-wise sum over ranks of ``counts``, exactly, as int64 (Python ints back).

    Raises:
        ValueError: a count outside int64.
    """
    values = [int(c) for c in counts]
    if any(not -(2**63) <= v < 2**63 for v in values):
        raise ValueError(f"counts {values} do not fit int64")
    if not _joined():
        return values
    t = torch.tensor(values, dtype=torch.int64, device=_count_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.cpu().tolist()]


def all_gather_objects(obj: T) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (tensors travel pickled, moved to the CPU)."""
    if not _joined():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, _to_cpu(obj))
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _joined():
        return obj
    box = [_to_cpu(obj) if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def shard_rows(n: int, w: World | None = None) -> slice:
    """This rank's contiguous share of rows ``0..n-1``: sizes differ by at most one, lower ranks larger.

    Raises:
        ValueError: ``n < 0``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    w = world() if w is None else w
    base, extra = divmod(n, w.world_size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (1 if w.rank < extra else 0))


def rank_batch(global_batch: int, w: World | None = None) -> int:
    """Rows of one rank's sampler call when ``global_batch`` rows are drawn per round by every rank
    together: ``ceil(global_batch / world_size)`` (a round then draws the global batch rounded up to a
    multiple of the world size). ``W`` processes at ``global_batch`` make the sampler calls of one process
    at ``rank_batch(global_batch)``.

    Raises:
        ValueError: ``global_batch < 1``.
    """
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    w = world() if w is None else w
    return -(-global_batch // w.world_size)


def threads_per_rank(w: World | None = None) -> int:
    """Cores of this machine (those this process may use) divided among its local ranks, at least 1."""
    w = world() if w is None else w
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, w.local_world_size))


def ddp(module: nn.Module) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` (gradients averaged over ranks at each backward);
    ``module`` itself for one process. Every rank must hold the same initial weights (the pipeline seeds
    them from the stage; DDP also broadcasts rank 0's at construction)."""
    if not _joined():
        return module
    device_ids = None
    params = list(module.parameters())
    if params and params[0].device.type == "cuda":
        device_ids = [params[0].device.index]
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)



def map_batches(n: int, batch_size: int, fn: Callable[[int, int], T]) -> list[T]:
    """``[fn(start, m) for each batch of rows 0..n-1]`` in row order, every rank computing its share.

    The rows are cut into batches of ``batch_size`` (the last one shorter); rank ``r`` computes batches
    ``r, r + W, r + 2W, ...`` and the results are gathered, so every rank returns the whole list. ``fn``
    must depend on ``(start, m)`` alone (e.g. seed its randomness from ``start``) for the list to be the
    same for every world size. A process that joined no process group (one process, or a rank of a
    launch that did not call :func:`init_from_env`) computes every batch itself.

    Raises:
        ValueError: ``n < 0`` or ``batch_size < 1``.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    w = world()
    starts = list(range(0, n, batch_size))
    if not w.distributed:  # one process, or ranks of a launch that joined no process group: every batch
        return [fn(s, min(batch_size, n - s)) for s in starts]
    mine = {s: fn(s, min(batch_size, n - s)) for s in starts[w.rank::w.world_size]}
    merged: dict[int, T] = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    return [merged[s] for s in starts]


def global_mean_losses(losses: torch.Tensor) -> list[float]:
    """Per-step losses of the global batch from each rank's scaled share ``(steps,)``: the sum over ranks
    divided by the world size (each share is scaled by ``share · W / batch``, so this is the mean loss
    of the global batch); as floats. One all-reduce for the whole history."""
    if not _joined():
        return [float(v) for v in losses.tolist()]
    total = losses.detach().to(torch.float64).to(_count_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [float(v) / dist.get_world_size() for v in total.cpu().tolist()]


def global_mean(value: torch.Tensor) -> float:
    """One step's global-batch loss from each rank's scaled share (see :func:`global_mean_losses`)."""
    return global_mean_losses(value.reshape(1))[0]
