"""Shared timing harness for the scripts in ``benchmarks/``.

Every benchmark times callables with :func:`time_call` (median, p20 and p80 of repeats after a warm-up),
describes the machine with :func:`machine_info`, and writes one JSON file per run into
``benchmarks/results/`` with :func:`write_results` (temporary name, then rename). Only the standard
library and NumPy are imported here, so a peer's separate virtual environment can use this file too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RESULTS_DIR", "Timing", "machine_info", "ratio", "time_call", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Timing:
    """Seconds of one callable over ``repeats`` timed calls: wall-clock median, 20th and 80th
    percentiles, and the median CPU time of the whole process (all its threads). On a shared machine
    the CPU time of a single-threaded call is the steadier measure of its work; wall time is what a
    user waits and what thread scaling is measured in."""

    median_s: float
    p20_s: float
    p80_s: float
    repeats: int
    cpu_median_s: float = float("nan")

    def as_ms(self) -> str:
        return (
            f"{self.median_s * 1e3:10.3f} ms (p20 {self.p20_s * 1e3:.3f}, p80 {self.p80_s * 1e3:.3f}; "
            f"cpu {self.cpu_median_s * 1e3:.3f})"
        )

    def scaled(self, factor: float) -> Timing:
        """The same timing multiplied by ``factor`` (e.g. a subsample scaled to the full size)."""
        return Timing(
            self.median_s * factor,
            self.p20_s * factor,
            self.p80_s * factor,
            self.repeats,
            self.cpu_median_s * factor,
        )


def time_call(
    fn: Callable[[], Any], repeats: int = 7, warmup: int = 1, max_total_s: float | None = None
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed calls (at least one; fewer if
    their total passes ``max_total_s`` seconds). Returns the median, 20th and 80th percentiles."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    cpu: list[float] = []
    start_all = time.perf_counter()
    for _ in range(max(1, repeats)):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        times.append(t1 - t0)
        cpu.append(c1 - c0)
        if max_total_s is not None and time.perf_counter() - start_all > max_total_s:
            break
    t = np.asarray(times)
    return Timing(
        float(np.median(t)),
        float(np.quantile(t, 0.2)),
        float(np.quantile(t, 0.8)),
        len(times),
        float(np.median(cpu)),
    )


def ratio(slow: Timing | None, fast: Timing | None, cpu: bool = False) -> float | None:
    """How many times faster ``fast`` is than ``slow``: wall-clock medians, or CPU-time medians with
    ``cpu=True``; None if either is missing."""
    if slow is None or fast is None:
        return None
    a, b = (slow.cpu_median_s, fast.cpu_median_s) if cpu else (slow.median_s, fast.median_s)
    if not (b > 0) or not np.isfinite(a):
        return None
    return a / b


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(**versions: str | None) -> dict[str, Any]:
    """The machine and software a figure was measured on; ``versions`` adds package versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores_available": cores,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git_commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **versions,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, Timing):
        return asdict(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def write_results(name: str, payload: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``payload`` (Timings, NumPy scalars and arrays allowed) as ``directory/name.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
