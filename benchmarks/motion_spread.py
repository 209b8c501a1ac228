"""Spread of the motion metrics over sampling noise, for the models of a finished motion run.

The issue's target asks that foot skating and floating after a Gen-neG iteration be no worse than the
baseline's by more than their run-to-run spread. This script measures the part of that spread that comes
from the sampler's noise: every model of ``--run-dir`` draws ``--clips`` clips with each of ``--seeds``
fresh noise streams (the run's own evaluation stream excluded), and the per-seed infraction per clip and per
frame, foot skating, floating and mean lowest-joint height are printed as mean ± std, with each model's
difference to the baseline in units of the baseline's std. (Training-seed spread is not included: it needs
whole runs per seed.)

Writes ``benchmarks/results/<run name>/spread.json`` with the machine named.

    .venv/bin/python benchmarks/motion_spread.py --run-dir runs/motion-quick --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info, write_results

from genneg.io.rundir import stage_generator
from genneg.metrics.motion import floating_ratio, foot_skating_ratio, lowest_joint_height
from genneg.pipeline.experiment import load_model

METRICS = ("infraction", "infraction_frame", "skating", "floating", "lowest_height_m")


def measure(run_dir: Path, model_name: str, seeds: int, clips: int | None) -> list[dict[str, float]]:
    task, config, model = load_model(run_dir, model_name)
    n = clips or config.eval.num_clips
    rows = []
    for s in range(seeds):
        noise = stage_generator(config.seed, f"spread/noise/{s}")
        x = task.sample(model, n, noise, cond=task.eval_contexts(n))
        x = torch.nan_to_num(x)
        frames = task.oracle(x)
        pos = task.positions(x)
        rows.append({
            "infraction": float((~frames.all(1)).float().mean()),
            "infraction_frame": float((~frames).float().mean()),
            "skating": float(foot_skating_ratio(pos, task.skeleton.feet, task.quality).mean()),
            "floating": float(floating_ratio(pos, task.quality).mean()),
            "lowest_height_m": float(lowest_joint_height(pos).mean()),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["baseline", "iter1", "ablation_no_is", "distilled"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=None, help="clips per seed (default: the run's eval)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    machine = machine_info(torch=torch.__version__)
    per_model = {m: measure(args.run_dir, m, args.seeds, args.clips) for m in args.models}
    summary = {}
    for m, rows in per_model.items():
        summary[m] = {k: {"mean": statistics.fmean(r[k] for r in rows),
                          "std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0}
                      for k in METRICS}
    base = summary.get("baseline")
    print(f"{'model':<16}" + "".join(f"{k:>26}" for k in METRICS))
    for m, s in summary.items():
        cells = []
        for k in METRICS:
            cell = f"{s[k]['mean']:.4f}±{s[k]['std']:.4f}"
            if base is not None and m != "baseline" and base[k]["std"] > 0:
                cell += f" ({(s[k]['mean'] - base[k]['mean']) / base[k]['std']:+.1f}σ)"
            cells.append(f"{cell:>26}")
        print(f"{m:<16}" + "".join(cells))
    path = write_results("spread", {"run_dir": str(args.run_dir), "seeds": args.seeds,
                                    "machine": machine, "machine_end": machine_info(),
                                    "seconds": time.perf_counter() - start, "per_seed": per_model,
                                    "summary": summary},
                         RESULTS_DIR / f"{args.run_dir.name}-cpu")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
