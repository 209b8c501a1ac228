"""Where a guided DDPM model pays its r-ELBO: the per-timestep cost of each model of a run against its
baseline, on the run's held-out data (a diagnostic for the r-ELBO targets of the traffic and motion runs).

For timesteps ``t`` spread over ``[0, T)`` and the same noise ``ε`` for every model, it prints the mean
``||ε̂(x_t, t) - ε||²`` per real vehicle (traffic) of the baseline and the increase of each other model,
and writes them to JSON. The r-ELBO (METHOD.md 7) is minus the mean of these over uniform ``t``, so the
rows show which noise levels carry a model's r-ELBO change.

    python benchmarks/r_elbo_by_timestep.py --run-dir RUN --models iter1 iter2 distilled
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from genneg.diffusion import as_denoiser, bind_cond
from genneg.pipeline.experiment import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished traffic run")
    parser.add_argument("--models", nargs="+", default=["iter1", "iter2", "distilled"])
    parser.add_argument("--timesteps", type=int, default=10, help="timesteps, at the centres of equal bins")
    parser.add_argument("--scenes", type=int, default=512, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (the same for every model)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: print only)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task, _, baseline = load_model(args.run_dir, "baseline")
    held = task.heldout.rows(torch.arange(min(args.scenes, len(task.heldout))))
    schedule = task.schedule
    T = schedule.num_steps
    ts = [int((i + 0.5) * T / args.timesteps) for i in range(args.timesteps)]
    vehicles = int(held.cond["valid"].sum())
    generator = torch.Generator().manual_seed(args.seed)
    noises = [torch.randn(held.tokens.shape, generator=generator) for _ in ts]

    def sq_err_per_vehicle(model: torch.nn.Module) -> list[float]:
        denoiser = bind_cond(as_denoiser(model, schedule), held.cond)
        out = []
        for t, eps in zip(ts, noises, strict=True):
            sigma = schedule.sigma_of_t(torch.full((len(held),), t)).to(held.tokens.dtype)
            x = held.tokens + sigma.view(-1, *([1] * (held.tokens.ndim - 1))) * eps
            eps_hat = (x - denoiser(x, sigma)) / sigma.view(-1, *([1] * (held.tokens.ndim - 1)))
            out.append(float((eps_hat.detach() - eps).double().pow(2).sum()) / vehicles)
        return out

    rows = {"baseline": sq_err_per_vehicle(baseline)}
    for name in args.models:
        rows[name] = sq_err_per_vehicle(load_model(args.run_dir, name)[2])
    sigmas = [float(schedule.sigma_of_t(torch.tensor([t]))) for t in ts]
    print(f"{'t':>5} {'sigma':>8} {'baseline':>9} " + " ".join(f"{m + ' +':>11}" for m in args.models))
    for i, t in enumerate(ts):
        extra = " ".join(f"{rows[m][i] - rows['baseline'][i]:>+11.4f}" for m in args.models)
        print(f"{t:>5} {sigmas[i]:>8.3f} {rows['baseline'][i]:>9.4f} {extra}")
    means = {m: sum(v) / len(v) for m, v in rows.items()}
    print("mean  " + " ".join(f"{m}: {means[m]:.4f} ({100 * (means[m] / means['baseline'] - 1):+.1f}%)"
                              for m in rows))
    if args.out is not None:
        args.out.write_text(json.dumps({"run_dir": str(args.run_dir), "timesteps": ts, "sigmas": sigmas,
                                        "scenes": len(held), "vehicles": vehicles, "seed": args.seed,
                                        "sq_err_per_vehicle": rows}, indent=2))


if __name__ == "__main__":
    main()
