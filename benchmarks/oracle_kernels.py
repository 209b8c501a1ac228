"""Benchmark: the three implementations of the traffic oracle against each other.

- ``reference``: the pure-PyTorch twin (``genneg.reference.traffic_oracle``), on the CPU and, when there
  is a GPU, on CUDA;
- ``cpp``: ``genneg_ext`` (C++), single thread and all threads;
- ``triton``: ``genneg.kernels.traffic_oracle`` on CUDA tensors (skipped, with the reason printed, where
  there is no CUDA device: the CPU interpreter is a test tool, not a backend).

Same inputs for everyone: scenes of 32 vehicles packed around a centre (many near and overlapping pairs)
on a road raster of 0.25 m cells with a cross of roads, one-cell non-drivable lane markings and potholes.
Figures are medians of repeats (p20/p80 in the JSON), array in to verdict out, with the inputs already on
the device (CUDA timings synchronise). The script also counts disagreements between implementations (all
must be zero on these inputs, which are nowhere near touching in practice).

Floor per 1,000 x 32 scenes: 1.28 MB of float64 boxes read, 496,000 box-box tests; offroad reads the
~10 x 20 cells under each of the 32,000 boxes (64 kB raster stays cached).

Run:  .venv/bin/python benchmarks/oracle_kernels.py [--quick] [--scenes 1000,20000] [--out-dir DIR]
Writes benchmarks/results/oracle-kernels-<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, Timing, machine_info, ratio, time_call, write_results

AGENTS = 32
RESOLUTION_M = 0.25
ORIGIN_M = (-60.0, -60.0)
RASTER_CELLS = 480  # 120 m x 120 m


def make_inputs(num_scenes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``boxes (S, 32, 5)`` float64, ``valid (S, 32)`` bool, ``drivable (480, 480)`` uint8."""
    rng = np.random.default_rng(seed)
    cells = RASTER_CELLS
    drivable = np.zeros((cells, cells), dtype=np.uint8)
    road = slice(cells // 2 - 60, cells // 2 + 60)  # 30 m wide roads crossing at the centre
    drivable[road, :] = 1
    drivable[:, road] = 1
    drivable[cells // 2, :] = 0  # one-cell lane markings
    drivable[:, cells // 2] = 0
    drivable[rng.random((cells, cells)) < 0.002] = 0
    boxes = np.empty((num_scenes, AGENTS, 5))
    boxes[..., :2] = rng.normal(0.0, 9.0, (num_scenes, AGENTS, 2))
    boxes[..., 2] = rng.uniform(3.8, 5.2, (num_scenes, AGENTS))
    boxes[..., 3] = rng.uniform(1.7, 2.1, (num_scenes, AGENTS))
    boxes[..., 4] = rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2], (num_scenes, AGENTS)) + rng.normal(
        0.0, 0.2, (num_scenes, AGENTS)
    )
    valid = rng.random((num_scenes, AGENTS)) < 0.9
    return boxes, valid, drivable


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def run(num_scenes: int, quick: bool, cpu_reference: bool = True) -> dict[str, Any]:
    import genneg_ext
    from genneg.reference import traffic_oracle as reference

    boxes_np, valid_np, drivable_np = make_inputs(num_scenes, seed=0)
    repeats = 3 if quick else 7
    timings: dict[str, Timing] = {}
    answers: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def record(
        name: str, collide: Callable[[], Any], off: Callable[[], Any], sync: Callable[[], None]
    ) -> None:
        def timed(fn: Callable[[], Any]) -> Callable[[], Any]:
            def call() -> Any:
                out = fn()
                sync()
                return out

            return call

        timings[f"collisions/{name}"] = time_call(timed(collide), repeats=repeats, max_total_s=20.0)
        timings[f"offroad/{name}"] = time_call(timed(off), repeats=repeats, max_total_s=20.0)
        to_np = lambda a: a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # noqa: E731
        answers[name] = (to_np(collide()), to_np(off()))
        print(f"  {name:22s} collisions {timings[f'collisions/{name}'].as_ms()}")
        print(f"  {'':22s} offroad    {timings[f'offroad/{name}'].as_ms()}")

    cores = genneg_ext.available_cores()
    for threads in sorted({1, cores}):
        record(
            f"cpp-{threads}thread",
            lambda t=threads: genneg_ext.collisions(boxes_np, valid_np, threads=t),
            lambda t=threads: genneg_ext.offroad(
                boxes_np, drivable_np, ORIGIN_M, RESOLUTION_M, valid_np, threads=t
            ),
            lambda: None,
        )

    devices = [torch.device("cpu")] if cpu_reference or not torch.cuda.is_available() else []
    devices += [torch.device("cuda")] if torch.cuda.is_available() else []
    for device in devices:
        boxes = torch.as_tensor(boxes_np, device=device)
        valid = torch.as_tensor(valid_np, device=device)
        drivable = torch.as_tensor(drivable_np, device=device)
        record(
            f"reference-{device.type}",
            lambda b=boxes, v=valid: reference.collisions(b, v),
            lambda b=boxes, v=valid, d=drivable: reference.offroad(b, d, ORIGIN_M, RESOLUTION_M, v),
            _sync(device),
        )
    if torch.cuda.is_available():
        from genneg.kernels import traffic_oracle as kernels

        device = torch.device("cuda")
        boxes = torch.as_tensor(boxes_np, device=device)
        valid = torch.as_tensor(valid_np, device=device)
        drivable = torch.as_tensor(drivable_np, device=device)
        for dtype in (torch.float64, torch.float32):
            b = boxes.to(dtype)
            record(
                f"triton-cuda-{str(dtype).split('.')[-1]}",
                lambda b=b: kernels.collisions(b, valid),
                lambda b=b: kernels.offroad(b, drivable, ORIGIN_M, RESOLUTION_M, valid),
                _sync(device),
            )
    else:
        print("  triton: skipped (no CUDA device; the Triton kernels run only on CUDA tensors)")

    ours = answers[f"cpp-{cores}thread"]
    disagreements = {
        name: {"collisions": int((a[0] != ours[0]).sum()), "offroad": int((a[1] != ours[1]).sum())}
        for name, a in answers.items()
    }
    print(f"  disagreements with cpp: {disagreements}")
    base = f"cpp-{cores}thread"
    ratios = {
        f"{op}/{name} vs {base}": ratio(timings[f"{op}/{name}"], timings[f"{op}/{base}"])
        for op in ("collisions", "offroad")
        for name in answers
        if name != base
    }
    for key, value in ratios.items():
        if value is not None:
            print(f"  {key}: {base} is {value:.1f}x faster")
    return {
        "num_scenes": num_scenes,
        "agents": AGENTS,
        "colliding_fraction": float(ours[0][valid_np].mean()),
        "offroad_fraction": float(ours[1][valid_np].mean()),
        "timings": timings,
        "ratios": ratios,
        "disagreements_with_cpp": disagreements,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 scenes only, fewer repeats")
    parser.add_argument("--scenes", default=None, help="comma-separated scene counts (e.g. 1000,20000)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="folder for the JSON")
    parser.add_argument("--no-cpu-reference", action="store_true",
                        help="with a GPU: skip the PyTorch reference on the CPU (seconds a call at 20,000 "
                        "scenes)")
    args = parser.parse_args()
    sizes = [1_000] if args.quick else [1_000, 20_000]
    if args.scenes is not None:
        try:
            sizes = [int(v) for v in args.scenes.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--scenes expects comma-separated integers, got {args.scenes!r}")
        if not sizes or min(sizes) < 1:
            parser.error(f"--scenes expects positive integers, got {args.scenes!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    results = {"machine": machine_info(torch=torch.__version__, gpu=gpu), "runs": []}
    name = f"oracle-kernels-{device}{'-quick' if args.quick else ''}"
    for num_scenes in sizes:
        print(f"{num_scenes:,} scenes x {AGENTS} vehicles")
        results["runs"].append(run(num_scenes, args.quick, cpu_reference=not args.no_cpu_reference))
        # after every size: a run cut short still leaves what it measured
        path = write_results(name, results, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
