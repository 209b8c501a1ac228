"""Re-evaluate models of a finished traffic run with the current guidance code: the time-independent
ablation's row against the baseline's (issue 12: the ablation diverged, r-ELBO -7.3e7 per vehicle, every
scene offroad, before its guidance was taken on the estimate with ΠGDM's posterior and MacKay's probit
moderation; ``genneg.guidance.guided``).

Each model is evaluated by the run's own task (``Task.evaluate``) on the first ``--scenes`` evaluation
contexts with the run's evaluation noise (paired: the same contexts and noise for every model) and the
run's r-ELBO draws (512 held-out scenes x 16 timesteps for the quick profile). Prints the ratios of the
ablation to the baseline and writes JSON with the machine named.

Run:  .venv/bin/python benchmarks/time_independent.py --run-dir RUN [--scenes 256]
      [--models ablation_time_independent,baseline] [--name time-independent-traffic-quick]
(RUN is read only; use a copy of a shared run.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info, write_results

from genneg.pipeline.experiment import load_model

KEYS = ("infraction", "infraction_low", "infraction_high", "collision", "offroad", "infraction_vehicle",
        "r_elbo", "n_parallel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--scenes", type=int, default=256, help="evaluation contexts per model")
    parser.add_argument("--models", default="ablation_time_independent,baseline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="time-independent-traffic-quick")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        task, config, model = load_model(args.run_dir, name)
        t0 = time.perf_counter()
        metrics, _ = task.evaluate(model, num_samples=args.scenes)
        rows[name] = {k: metrics.get(k) for k in KEYS} | {"seconds": time.perf_counter() - t0}
        print(name, {k: rows[name][k] for k in ("infraction", "collision", "offroad", "r_elbo")},
              f"{rows[name]['seconds']:.0f} s", flush=True)
    payload = {
        "benchmark": "time_independent",
        "machine": machine_info(torch=torch.__version__, device="cpu", threads=str(args.threads)),
        "run_profile": config.profile,
        "scenes": args.scenes,
        "rows": rows,
    }
    if "ablation_time_independent" in rows and "baseline" in rows:
        a, b = rows["ablation_time_independent"], rows["baseline"]
        payload["infraction_ratio_ablation_over_baseline"] = a["infraction"] / b["infraction"]
        payload["r_elbo_change_ablation_vs_baseline"] = (a["r_elbo"] - b["r_elbo"]) / abs(b["r_elbo"])
        print(f"ablation / baseline: infraction {payload['infraction_ratio_ablation_over_baseline']:.2f}x, "
              f"r-ELBO {100 * payload['r_elbo_change_ablation_vs_baseline']:+.1f}%", flush=True)
    print(f"wrote {write_results(args.name + '-cpu', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
