"""Benchmark: FastSampler against an earlier version of itself, in one process, calls interleaved.

A refactor of :class:`genneg.planning.FastSampler` must not make a planning call slower. On a shared
machine two separate benchmark runs differ by far more than such a change (the load of other processes
moves medians by 2x), so this script loads the earlier ``python/genneg/planning/fast_sampler.py`` (from
``git show REV:...``) under another module name next to the current one, builds both samplers on the same
trained models, checks they draw the same samples, and alternates blocks of calls between them: the
ratio of each pair of blocks shares the machine's load of that moment. It reports, per case, the median
call time of each version and the median of the paired ratios new/old (1.00 = no change).

The earlier class runs on the current library (schedules, coefficients, inpainting helpers, the MLP
plan, the oracle helpers), so REV must be recent enough to share those interfaces (3fd343a: the version
before the sampler's steps moved into ``genneg.diffusion.samplers``).

Cases (trained models, never random weights):
  * checkerboard ``quick`` run (``--run-dir``): baseline (N = 1 and 32; the level-specialised MLP plan and
    the generic path), guided (analytic guidance), UniPC, distilled;
  * traffic ``quick`` run (``--traffic-run-dir``): the distilled DDPM scene model on a planner condition
    (inpainting and ``cond``), Euler-ancestral steps, with an oracle both versions accept (every vehicle
    valid: the oracle's cost is not what is compared).

Run:  .venv/bin/python benchmarks/fast_sampler_ab.py [--rev 3fd343a] [--run-dir RUN]
      [--traffic-run-dir RUN] [--blocks 9] [--calls 8]
Writes benchmarks/results/fast-sampler-ab-cpu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info, write_results
from latency import traffic_setup

from genneg.pipeline.experiment import load_model
from genneg.planning.fast_sampler import FastSampler, SamplerConfig

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "python/genneg/planning/fast_sampler.py"


def load_old_module(rev: str) -> Any:
    """The module ``SOURCE`` at git revision ``rev``, imported as ``fast_sampler_<rev>``."""
    text = subprocess.run(["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"fast_sampler_{rev}.py"
    path.write_text(text)
    name = f"fast_sampler_{rev}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def interleave(calls: dict[str, Callable[[], Any]], blocks: int, per_block: int) -> dict[str, Any]:
    """Alternate blocks of ``per_block`` calls of ``old`` and ``new``; medians and paired ratios."""
    for fn in calls.values():
        fn()
        fn()
    per: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(per_block):
                fn()
            per[name].append(1e3 * (time.perf_counter() - t0) / per_block)
    ratios = [a / b for a, b in zip(per["new"], per["old"])]
    return {
        "old_median_ms": statistics.median(per["old"]),
        "new_median_ms": statistics.median(per["new"]),
        "median_paired_ratio_new_over_old": statistics.median(ratios),
        "paired_ratio_min": min(ratios),
        "paired_ratio_max": max(ratios),
        "blocks": blocks,
        "calls_per_block": per_block,
    }


def checkerboard_cases(old: Any, run_dir: str, blocks: int, per_block: int) -> list[dict[str, Any]]:
    cases = [
        ("baseline", 1, 10, {"fast_paths": True}),
        ("baseline", 32, 25, {"fast_paths": True}),
        ("baseline", 32, 25, {"fast_paths": False}),
        ("guided", 32, 10, {"fast_paths": True}),
        ("baseline", 32, 10, {"fast_paths": True, "solver": "unipc"}),
        ("distilled", 8, 25, {"fast_paths": True}),
    ]
    rows = []
    for model, n, steps, over in cases:
        samplers = {name: cls.from_run(run_dir, model, num_parallel=n, num_steps=steps, device="cpu", **over)
                    for name, cls in (("old", old.FastSampler), ("new", FastSampler))}
        same = torch.equal(samplers["old"](seed=1).samples, samplers["new"](seed=1).samples)
        row = {"task": "checkerboard", "model": model, "N": n, "steps": steps, **over, "same_samples": same,
               **interleave({k: (lambda s=s: s(seed=1)) for k, s in samplers.items()}, blocks, per_block)}
        print(f"  {row}", flush=True)
        rows.append(row)
    return rows


def traffic_case(old: Any, run_dir: str, blocks: int) -> dict[str, Any]:
    condition = traffic_setup(Path(run_dir), torch.device("cpu"))["cond"]  # latency.py's planner condition
    task, _, net = load_model(run_dir, "distilled")
    net.eval()

    def every_vehicle_valid(x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[:2], dtype=torch.bool)

    shape = tuple(task.train.tokens.shape[1:])
    samplers = {
        "old": old.FastSampler(net, every_vehicle_valid, sample_shape=shape, ddpm_schedule=task.schedule,
                               config=old.SamplerConfig(num_parallel=8, num_steps=20)),
        "new": FastSampler(net, every_vehicle_valid, sample_shape=shape, ddpm_schedule=task.schedule,
                           config=SamplerConfig(num_parallel=8, num_steps=20)),
    }
    same = torch.equal(samplers["old"](condition, seed=1).samples, samplers["new"](condition, seed=1).samples)
    row = {"task": "traffic", "model": "distilled", "N": 8, "steps": 20,
           "condition": "3 vehicles fixed + cond", "same_samples": same,
           **interleave({k: (lambda s=s: s(condition, seed=1)) for k, s in samplers.items()}, blocks, 1)}
    print(f"  {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="3fd343a", help="git revision of the earlier fast_sampler.py")
    parser.add_argument("--run-dir", default="runs/cb-quick", help="a finished checkerboard run")
    parser.add_argument("--traffic-run-dir", default=None, help="a finished traffic run (skipped if none)")
    parser.add_argument("--blocks", type=int, default=9, help="alternating blocks per case")
    parser.add_argument("--calls", type=int, default=8, help="calls per block (checkerboard)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)
    old = load_old_module(args.rev)
    print(f"FastSampler at {args.rev} vs the working tree, 1 thread, load {os.getloadavg()}", flush=True)
    rows = checkerboard_cases(old, args.run_dir, args.blocks, args.calls)
    if args.traffic_run_dir:
        rows.append(traffic_case(old, args.traffic_run_dir, args.blocks))
    payload = {
        "benchmark": "fast_sampler_ab",
        "machine": machine_info(torch=torch.__version__, device="cpu", threads="1"),
        "old_rev": args.rev,
        "run_dir": args.run_dir,
        "traffic_run_dir": args.traffic_run_dir,
        "rows": rows,
        "load_average_end": list(os.getloadavg()),
    }
    print(f"wrote {write_results('fast-sampler-ab-cpu', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
