"""Benchmark: latency of one planning call (FastSampler) and time to a valid sample, against the naive loop.

Models (said again in the JSON):
  * checkerboard: the ``tiny`` profile of ``genneg.pipeline`` (denoiser and classifiers are residual MLPs
    with hidden 64, 2 blocks, embedding 32; K = 2 classifiers; 12 Heun steps), trained inside this script
    into a temporary run directory (about 30 s), or any finished run given with ``--run-dir``. Its
    measured infraction rates give ``N(r, p)``. Models: ``baseline``, ``guided`` (the baseline with the
    run's whole classifier stack), ``distilled``.
  * traffic: the trained models of a finished traffic run (``--traffic-run-dir``, e.g. the ``quick``
    profile's; default: the ``tiny`` profile trained inside this script, about a minute), loaded with
    ``FastSampler.from_run``: ``baseline`` (the DDPM scene transformer through its ``EpsDenoiser``),
    ``guided`` (the baseline with the run's whole classifier stack, K = its iterations) and ``distilled``,
    sampled with DDPM's ancestral step (Euler-ancestral on the schedule's levels). Calls are conditioned
    like a planner's (``genneg.planning.traffic.scene_condition``): a held-out scene's ego and two seen
    vehicles fixed, its other present slots sampled, its map crop in ``cond``; its measured infraction
    rates give ``N(r, p)`` for the headline.

Measured (per call = one round of N parallel samples, the oracle included; ``max_rounds = 1``):
  * grid: p50 / p90 / p99 for N in {1, 8, 32, 128} x steps in {10, 25, 50, 100} x model variant
    (baseline, guided with each guidance backend available: autograd and analytic on the CPU, fused
    Triton on CUDA, distilled), each cell ``--calls`` calls (500) after 3 warm-up calls, or fewer when
    a cell would exceed ``--cell-seconds`` (the count is in every row);
  * naive: the loop a user writes (fresh tensors every call, ``genneg.diffusion.heun_sample``, eager
    model, reject until valid) against FastSampler on the same model, time to the first valid sample,
    same N and steps; also the sequential one-at-a-time rejection loop (N = 1);
  * headline: time to a valid sample with probability p = 0.99999, i.e. one round of N(r, p) samples,
    baseline vs distilled (and guided), as a ratio, with the N reduction;
  * breakdown of the headline call: model, guidance, oracle, other; and the floor.

What dominates a call, and the floor (CPU, 1 intra-op thread; figures in the JSON's ``breakdown``):
  the network. With the level-specialised MLP plan a denoiser call is 1 + 4 x blocks + 2 kernels
  (``addmm`` and SiLU on (N, hidden) buffers); at N <= 32 each kernel costs its dispatch (~2-5 us), not
  its FLOPs, so a call of 2 x steps - 1 network evaluations costs about (2 x steps - 1) x 10 kernels x a
  few us; the Heun update adds 7 elementwise kernels per step and the oracle one batched call per round.
  The floor is the network alone: ``breakdown.floor_ms`` times ``plan.denoise`` called 2 x steps - 1
  times back to back; FastSampler's p50 over it is the sampler's own overhead. At N = 128 and above the
  products' FLOPs take over and the eager and planned paths converge (the time branch, precomputed per
  level, is the plan's remaining saving). Guided calls add the classifier gradients: one batched
  analytic forward+backward of the K classifiers per evaluation (CPU), about 2-3 network costs.
  On a GPU the whole round is one CUDA-graph replay (unmeasured in this session: no GPU).

Noise: this machine is shared (the load average at start and end is in the JSON); each figure is a
quantile of many calls, and ratios compare runs interleaved in the same minute.

Run:  .venv/bin/python benchmarks/latency.py [--quick] [--run-dir RUN] [--threads 1] [--device cpu]
      [--skip-naive] [--skip-traffic] [--out-dir DIR]
On CUDA the CUDA-graph candidates (baseline, distilled, fused guidance) are measured again with
``cuda_graphs=False`` (``<model>|no-graphs``) and the ratios are in the JSON's ``cuda_graphs``.
Writes benchmarks/results/latency-cpu.json (or latency-cpu-quick.json with --quick; -cuda on a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info, write_results

from genneg.diffusion import heun_sample, make_sigmas
from genneg.guidance import GuidedDenoiser
from genneg.io.rundir import RunDir
from genneg.metrics import num_parallel_samples, reduction
from genneg.oracles import evaluate_oracle, sample_verdicts
from genneg.pipeline.experiment import load_model, open_run, run_experiment
from genneg.pipeline.profiles import ExperimentConfig, get_profile
from genneg.pipeline.traffic_profiles import get_traffic_profile
from genneg.planning.fast_sampler import FastSampler, SamplerConfig
from genneg.planning.inpainting import InpaintCondition
from genneg.planning.traffic import scene_condition

P_HEADLINE = 0.99999


def quantiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean of call times, milliseconds."""
    t = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.quantile(t, 0.5)),
        "p90_ms": float(np.quantile(t, 0.9)),
        "p99_ms": float(np.quantile(t, 0.99)),
        "mean_ms": float(t.mean()),
        "calls": len(seconds),
    }


def time_calls(
    fn: Callable[[], Any], calls: int, cell_seconds: float, warmup: int = 3, min_calls: int = 5
) -> list[float]:
    """Call ``fn`` ``warmup`` times (once when a call takes more than a tenth of ``cell_seconds``), then up
    to ``calls`` timed times: at least ``min_calls``, fewer than ``calls`` only when their total would
    pass ``cell_seconds`` (the count is reported with every figure)."""
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0 and time.perf_counter() - t0 > cell_seconds / 10:
            break
    times: list[float] = []
    start = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i + 1 >= min_calls and time.perf_counter() - start > cell_seconds:
            break
    return times


# --- checkerboard -------------------------------------------------------------------------------------------


def finished_run(run_dir: str | None, config: Any, prefix: str) -> tuple[Path, float]:
    """A finished run: ``run_dir``, or ``config`` (a tiny profile) trained now. Returns (dir, seconds)."""
    if run_dir is not None:
        return Path(run_dir), 0.0
    target = Path(tempfile.mkdtemp(prefix=prefix))
    t0 = time.perf_counter()
    run_experiment(config, target, overwrite=True, progress=False)
    return target, time.perf_counter() - t0


def checkerboard_run(run_dir: str | None) -> tuple[Path, float]:
    """A finished checkerboard run: ``run_dir``, or the tiny profile trained now. Returns (dir, seconds)."""
    return finished_run(run_dir, get_profile("tiny"), "genneg-latency-run-")


def checkerboard_models(run_dir: Path) -> dict[str, Any]:
    """Baseline, guided stack and distilled model of a run, with their measured infraction rates."""
    run = RunDir(run_dir, read_only=True)
    config = run.read_config(ExperimentConfig)
    guided_name = f"iter{config.gen_neg.iterations}"
    out: dict[str, Any] = {"config": config}
    for label, name in (("baseline", "baseline"), ("guided", guided_name), ("distilled", "distilled")):
        task, _, model = load_model(run_dir, name)
        record = run.records(f"eval/{name}")[-1]
        out[label] = {
            "model": model.eval(),
            "name": name,
            "rate": float(record["infraction"]),
            "rate_high": float(record["infraction_high"]),
        }
        out["task"] = task
    return out


def checkerboard_variants(
    models: dict[str, Any], device: torch.device
) -> dict[str, tuple[Any, bool, bool]]:
    """Variant name -> (model, fast_paths, cuda_graphs). Guidance backends: autograd, analytic; triton on
    CUDA. On CUDA the CUDA-graph candidates (baseline, distilled, fused guidance) also run without graphs
    (``<name>|no-graphs``)."""
    guided: GuidedDenoiser = models["guided"]["model"]
    variants: dict[str, tuple[Any, bool, bool]] = {
        "baseline": (models["baseline"]["model"], True, True),
        "guided[analytic]": (guided, True, True),
        "guided[autograd]": (guided, False, True),
        "distilled": (models["distilled"]["model"], True, True),
    }
    if device.type == "cuda":
        fused = GuidedDenoiser(guided.denoiser, list(guided.classifiers), guided.scales, backend="triton")
        variants["guided[triton]"] = (fused, True, True)
        for name in ("baseline", "distilled", "guided[triton]"):
            variants[name + NO_GRAPHS] = (*variants[name][:2], False)
    return variants


def make_sampler(
    model: Any,
    oracle: Any,
    shape: tuple[int, ...],
    n: int,
    steps: int,
    edm: Any,
    fast: bool,
    device: torch.device,
    **kw: Any,
) -> FastSampler:
    cfg = SamplerConfig(
        num_parallel=n,
        num_steps=steps,
        sigma_min=edm.sigma_min,
        sigma_max=edm.sigma_max,
        fast_paths=fast,
        **kw,
    )
    return FastSampler(model, oracle, sample_shape=shape, config=cfg, device=device)


def stage_medians(results: list[Any]) -> dict[str, float]:
    keys = ("model_ms", "guidance_ms", "oracle_ms", "total_ms")
    med = {k: float(np.median([getattr(r.times, k) for r in results])) for k in keys}
    med["other_ms"] = med["total_ms"] - med["model_ms"] - med["guidance_ms"] - med["oracle_ms"]
    return med


def grid_rows(
    task_name: str,
    variants: dict[str, Callable[[int, int], FastSampler]],
    ns: list[int],
    steps_list: list[int],
    calls: int,
    cell_seconds: float,
    condition: Callable[[str], InpaintCondition | None],
) -> list[dict[str, Any]]:
    rows = []
    for name, build in variants.items():
        for steps in steps_list:
            for n in ns:
                sampler = build(n, steps)
                cond = condition(name)
                results: list[Any] = []
                times = time_calls(lambda s=sampler, c=cond, r=results: r.append(s(c)), calls, cell_seconds)
                row = {
                    "task": task_name,
                    "model": name,
                    "N": n,
                    "steps": steps,
                    "fast_path": sampler.fast_path,
                    "mode": sampler.mode,
                    "uses_cuda_graphs": sampler.uses_cuda_graphs,
                    **quantiles_ms(times),
                    "stages": stage_medians(results[-len(times) :]),
                }
                rows.append(row)
                print(
                    f"  {task_name:12s} {name:18s} N={n:4d} steps={steps:4d}  p50 {row['p50_ms']:9.3f} ms  "
                    f"p90 {row['p90_ms']:9.3f}  p99 {row['p99_ms']:9.3f}  ({row['calls']} calls)",
                    flush=True,
                )
    return rows


def naive_time_to_valid(
    model: Any,
    oracle: Any,
    sigmas: torch.Tensor,
    n: int,
    shape: tuple[int, ...],
    device: torch.device,
    max_rounds: int = 10_000,
) -> torch.Tensor | None:
    """The loop a user writes: fresh noise on the model's device, the library sampler, reject until one
    sample is valid."""
    for _ in range(max_rounds):
        x = torch.randn((n, *shape), device=device) * float(sigmas[0])
        x = heun_sample(model, x, sigmas)
        valid = sample_verdicts(evaluate_oracle(oracle, x))
        if bool(valid.any()):
            return x[valid][0]
    return None


def naive_rows(
    models: dict[str, Any], steps: int, calls: int, cell_seconds: float, device: torch.device
) -> list[dict[str, Any]]:
    task = models["task"]
    edm = task.edm
    sigmas = make_sigmas("log_linear", steps, edm.sigma_min, edm.sigma_max)
    rows = []
    for label in ("baseline", "distilled"):
        entry = models[label]
        n = num_parallel_samples(entry["rate"], P_HEADLINE)
        fast = make_sampler(
            entry["model"], task.oracle, task.sample_shape, n, steps, edm, True, device, max_rounds=10_000
        )
        exact = make_sampler(
            entry["model"], task.oracle, task.sample_shape, n, steps, edm, False, device, max_rounds=10_000
        )
        cases = {
            "naive_parallel": lambda m=entry["model"], n=n: naive_time_to_valid(
                m, task.oracle, sigmas, n, task.sample_shape, device
            ),
            "naive_sequential": lambda m=entry["model"]: naive_time_to_valid(
                m, task.oracle, sigmas, 1, task.sample_shape, device
            ),
            "fast_exact_path": lambda s=exact: s(),
            "fast": lambda s=fast: s(),
        }
        timings = {k: quantiles_ms(time_calls(f, calls, cell_seconds)) for k, f in cases.items()}
        row = {
            "model": label,
            "N": n,
            "steps": steps,
            "rate": entry["rate"],
            **timings,
            "speedup_p50_vs_naive_parallel": timings["naive_parallel"]["p50_ms"] / timings["fast"]["p50_ms"],
            "speedup_p99_vs_naive_parallel": timings["naive_parallel"]["p99_ms"] / timings["fast"]["p99_ms"],
            "speedup_p50_vs_naive_sequential": timings["naive_sequential"]["p50_ms"]
            / timings["fast"]["p50_ms"],
            "speedup_p99_vs_naive_sequential": timings["naive_sequential"]["p99_ms"]
            / timings["fast"]["p99_ms"],
        }
        rows.append(row)
        print(
            f"  naive vs fast ({label}, N={n}, steps={steps}): p50 naive "
            f"{timings['naive_parallel']['p50_ms']:.3f} ms, sequential "
            f"{timings['naive_sequential']['p50_ms']:.3f} ms, fast (exact path) "
            f"{timings['fast_exact_path']['p50_ms']:.3f} ms, fast {timings['fast']['p50_ms']:.3f} ms -> "
            f"{row['speedup_p50_vs_naive_parallel']:.2f}x (p99 {row['speedup_p99_vs_naive_parallel']:.2f}x)",
            flush=True,
        )
    return rows


def headline(
    models: dict[str, Any], steps: int, calls: int, cell_seconds: float, device: torch.device
) -> dict[str, Any]:
    """Time to a valid sample with probability p: one round of N(r, p) samples, baseline vs distilled."""
    task = models["task"]
    out: dict[str, Any] = {"p": P_HEADLINE, "steps": steps}
    for label in ("baseline", "guided", "distilled"):
        entry = models[label]
        n = num_parallel_samples(entry["rate"], P_HEADLINE)
        sampler = make_sampler(
            entry["model"], task.oracle, task.sample_shape, n, steps, task.edm, True, device
        )
        results: list[Any] = []
        times = time_calls(lambda s=sampler, r=results: r.append(s()), calls, cell_seconds)
        out[label] = {
            "rate": entry["rate"],
            "N": n,
            **quantiles_ms(times),
            "fast_path": sampler.fast_path,
            "stages": stage_medians(results[-len(times) :]),
            "valid_fraction": float(np.mean([r.valid_fraction for r in results])),
        }
    b, d = out["baseline"], out["distilled"]
    out["N_reduction_distilled"] = reduction(d["N"], b["N"])
    out["time_ratio_baseline_over_distilled_p50"] = b["p50_ms"] / d["p50_ms"]
    out["time_ratio_baseline_over_distilled_p99"] = b["p99_ms"] / d["p99_ms"]
    out["time_ratio_baseline_over_guided_p50"] = b["p50_ms"] / out["guided"]["p50_ms"]
    print(
        f"  headline p={P_HEADLINE}: baseline r={b['rate']:.4f} N={b['N']} p50 {b['p50_ms']:.3f} ms; "
        f"distilled r={d['rate']:.4f} N={d['N']} p50 {d['p50_ms']:.3f} ms; "
        f"N -{100 * out['N_reduction_distilled']:.0f}%, "
        f"time ratio {out['time_ratio_baseline_over_distilled_p50']:.2f}x",
        flush=True,
    )
    return out


def breakdown(
    models: dict[str, Any], steps: int, device: torch.device, cell_seconds: float = 5.0
) -> dict[str, Any]:
    """Floor of the headline baseline call: the network alone, called as often as the sampler calls it."""
    task = models["task"]
    entry = models["baseline"]
    n = num_parallel_samples(entry["rate"], P_HEADLINE)
    sampler = make_sampler(entry["model"], task.oracle, task.sample_shape, n, steps, task.edm, True, device)
    evals = 2 * steps - 1
    x = torch.randn((n, *task.sample_shape), device=device)
    out_buf = torch.empty_like(x)
    sigma = torch.full((n,), 1.0, device=device)
    model = entry["model"]

    def plan_floor() -> None:
        with torch.inference_mode():
            for i in range(evals):
                if sampler._plan is not None:
                    sampler._plan.denoise(x, i % steps, out_buf)
                else:
                    model(x, sigma)

    def eager_floor() -> None:
        with torch.inference_mode():
            for _ in range(evals):
                model(x, sigma)

    plan = quantiles_ms(time_calls(_synced(plan_floor, device), 200, cell_seconds))
    eager = quantiles_ms(time_calls(_synced(eager_floor, device), 200, cell_seconds))
    call = quantiles_ms(time_calls(lambda: sampler(), 200, cell_seconds))
    return {
        "N": n,
        "steps": steps,
        "network_evaluations": evals,
        "floor_ms": plan["p50_ms"],
        "eager_network_ms": eager["p50_ms"],
        "fast_call_p50_ms": call["p50_ms"],
        "fast_over_floor": call["p50_ms"] / plan["p50_ms"],
        "floor_path": "mlp_plan" if sampler._plan is not None else "model",
    }


def _synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by a CUDA synchronisation on a GPU (so the time covers the work, not the launch)."""
    if device.type != "cuda":
        return fn

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


NO_GRAPHS = "|no-graphs"


def graph_comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every grid cell measured with and without CUDA graphs (model names ``X`` and ``X|no-graphs``):
    p50 and p99 of both and the speed-up of the graphed call."""
    cells = {(r["task"], r["model"], r["N"], r["steps"]): r for r in rows}
    out = []
    for (task, name, n, steps), eager in cells.items():
        if not name.endswith(NO_GRAPHS):
            continue
        graphed = cells.get((task, name[: -len(NO_GRAPHS)], n, steps))
        if graphed is None:
            continue
        out.append({
            "task": task,
            "model": graphed["model"],
            "N": n,
            "steps": steps,
            "graphed_uses_cuda_graphs": graphed["uses_cuda_graphs"],
            "graphs_p50_ms": graphed["p50_ms"],
            "no_graphs_p50_ms": eager["p50_ms"],
            "graphs_p99_ms": graphed["p99_ms"],
            "no_graphs_p99_ms": eager["p99_ms"],
            "speedup_p50": eager["p50_ms"] / graphed["p50_ms"],
            "speedup_p99": eager["p99_ms"] / graphed["p99_ms"],
        })
    return out


# --- traffic ------------------------------------------------------------------------------------------------


def traffic_run(run_dir: str | None) -> tuple[Path, float]:
    """A finished traffic run: ``run_dir``, or the tiny profile trained now. Returns (dir, seconds)."""
    return finished_run(run_dir, get_traffic_profile("tiny"), "genneg-latency-traffic-")


def traffic_setup(run_dir: Path, device: torch.device) -> dict[str, Any]:
    """A planner's condition on the run's first held-out scene (ego and two seen vehicles fixed) and the
    run's measured infraction rates."""
    task, config, _ = open_run(run_dir)
    scene = task.heldout.rows(torch.tensor([0], device=task.device))
    valid = scene.cond["valid"][0].cpu()
    known = torch.zeros_like(valid)
    known[: min(3, int(valid.sum()))] = True
    map_index = int(scene.cond["map_index"][0])
    road = task.road_maps[map_index].drivable_map
    centre = tuple(float(c) for c in scene.cond["centre_m"][0])
    condition = scene_condition(scene.tokens[0].cpu(), known, valid, road, centre, norm=task.norm,
                                map_cells=config.data.crop_cells, crop_margin_m=config.data.crop_margin_m,
                                map_index=map_index)
    run = RunDir(run_dir, read_only=True)
    names = {"baseline": "baseline", "guided": f"iter{config.gen_neg.iterations}", "distilled": "distilled"}
    rates = {label: float(run.records(f"eval/{name}")[-1]["infraction"]) for label, name in names.items()}
    return {"run_dir": run_dir, "cond": condition, "road": road, "rates": rates, "names": names,
            "profile": config.profile, "A": int(valid.shape[0]), "classifiers_K": config.gen_neg.iterations,
            "sample_steps": config.gen_neg.sample_steps, "ddpm_steps_T": config.ddpm.num_steps}


def traffic_variants(t: dict[str, Any], device: torch.device) -> dict[str, Callable[[int, int], FastSampler]]:
    def build(model: str, graphs: bool = True) -> Callable[[int, int], FastSampler]:
        def make(n: int, steps: int) -> FastSampler:
            return FastSampler.from_run(t["run_dir"], model, num_parallel=n, num_steps=steps, device=device,
                                        drivable_map=t["road"], cuda_graphs=graphs)

        return make

    variants = {"baseline": build("baseline"), "guided[autograd]": build("guided"),
                "distilled": build("distilled")}
    if device.type == "cuda":  # the same calls without CUDA graphs
        variants["baseline" + NO_GRAPHS] = build("baseline", graphs=False)
    return variants


def traffic_headline(t: dict[str, Any], steps: int, calls: int, cell_seconds: float,
                     device: torch.device) -> dict[str, Any]:
    """Time to a valid scene with probability p: one round of N(r, p) conditioned samples per model."""
    out: dict[str, Any] = {"p": P_HEADLINE, "steps": steps}
    for label in ("baseline", "guided", "distilled"):
        rate = t["rates"][label]
        n = num_parallel_samples(rate, P_HEADLINE) if rate < 1 else None
        if n is None or n > 4096:
            out[label] = {"rate": rate, "N": n, "unmeasured": "N(r, p) above 4096 samples per round"}
            continue
        sampler = FastSampler.from_run(t["run_dir"], label, num_parallel=n, num_steps=steps, device=device,
                                       drivable_map=t["road"])
        results: list[Any] = []
        times = time_calls(lambda s=sampler, r=results: r.append(s(t["cond"])), calls, cell_seconds)
        out[label] = {"rate": rate, "N": n, **quantiles_ms(times), "mode": sampler.mode,
                      "stages": stage_medians(results[-len(times):]),
                      "valid_fraction": float(np.mean([r.valid_fraction for r in results]))}
    b, d = out["baseline"], out["distilled"]
    if "p50_ms" in b and "p50_ms" in d:
        out["N_reduction_distilled"] = reduction(d["N"], b["N"])
        out["time_ratio_baseline_over_distilled_p50"] = b["p50_ms"] / d["p50_ms"]
        print(f"  traffic headline p={P_HEADLINE}: baseline r={b['rate']:.4f} N={b['N']} p50 "
              f"{b['p50_ms']:.1f} ms; distilled r={d['rate']:.4f} N={d['N']} p50 {d['p50_ms']:.1f} ms",
              flush=True)
    return out


# --- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, fewer calls (a few minutes)")
    parser.add_argument("--run-dir", default=None, help="a finished checkerboard run (default: train tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--calls", type=int, default=None, help="timed calls per cell (default 500; quick 100)"
    )
    parser.add_argument("--cell-seconds", type=float, default=None, help="time cap per cell")
    parser.add_argument("--skip-traffic", action="store_true")
    parser.add_argument("--traffic-run-dir", default=None,
                        help="a finished traffic run (default: train the tiny profile)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive-loop comparison")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="folder for the JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    quick = args.quick
    calls = args.calls or (100 if quick else 500)
    cell_seconds = args.cell_seconds or (3.0 if quick else 20.0)
    ns = [1, 32] if quick else [1, 8, 32, 128]
    steps_list = [10, 25] if quick else [10, 25, 50, 100]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = machine_info(torch=torch.__version__, device=device_name, threads=str(args.threads))
    print(f"device {device_name}, {args.threads} thread(s), load {os.getloadavg()}", flush=True)

    run_dir, train_s = checkerboard_run(args.run_dir)
    models = checkerboard_models(run_dir)
    for label in ("baseline", "guided", "distilled"):
        models[label]["model"].to(device)
    task = models["task"]
    run_steps = models["config"].sampling.num_steps
    print(
        f"checkerboard run {run_dir} "
        f"({'trained in ' + format(train_s, '.0f') + ' s' if train_s else 'given'}); "
        f"rates: " + ", ".join(f"{k} {models[k]['rate']:.4f}" for k in ("baseline", "guided", "distilled")),
        flush=True,
    )

    variants = {
        name: (
            lambda n, s, m=m, f=f, g=g: make_sampler(
                m, task.oracle, task.sample_shape, n, s, task.edm, f, device, cuda_graphs=g
            )
        )
        for name, (m, f, g) in checkerboard_variants(models, device).items()
    }
    print("grid (checkerboard):", flush=True)
    rows = grid_rows("checkerboard", variants, ns, steps_list, calls, cell_seconds, lambda name: None)
    print("naive loop vs FastSampler (checkerboard):", flush=True)
    naive = [] if args.skip_naive else naive_rows(models, run_steps, calls, cell_seconds, device)
    head = headline(models, run_steps, calls, cell_seconds, device)
    floor = breakdown(models, run_steps, device, cell_seconds)
    print(
        f"  floor: network alone {floor['floor_ms']:.3f} ms for {floor['network_evaluations']} evaluations "
        f"(eager {floor['eager_network_ms']:.3f} ms); FastSampler call {floor['fast_call_p50_ms']:.3f} ms = "
        f"{floor['fast_over_floor']:.2f}x the floor",
        flush=True,
    )

    name = f"latency-{'cuda' if device.type == 'cuda' else 'cpu'}{'-quick' if quick else ''}"
    payload: dict[str, Any] = {
        "benchmark": "latency",
        "quick": quick,
        "complete": False,
        "machine": info,
        "device": device_name,
        "checkerboard": {
            "run_dir": str(run_dir),
            "profile": models["config"].profile,
            "trained_in_script_s": train_s,
            "sampler_steps": run_steps,
            "denoiser": str(models["config"].denoiser),
            "classifier": str(models["config"].classifier_net),
            "classifiers_K": models["config"].gen_neg.iterations,
            "rates": {k: models[k]["rate"] for k in ("baseline", "guided", "distilled")},
        },
        "calls_per_cell": calls,
        "cell_seconds_cap": cell_seconds,
        "grid": rows,
        "naive": naive,
        "headline": head,
        "breakdown": floor,
        "cuda_graphs": graph_comparisons(rows),
        "gpu": "unmeasured (no GPU in this session)" if device.type != "cuda" else "measured",
    }
    # checkerboard done: keep it even if the traffic grid is interrupted
    write_results(name, payload, args.out_dir)

    traffic: dict[str, Any] = {}
    if not args.skip_traffic:
        traffic_dir, traffic_train_s = traffic_run(args.traffic_run_dir)
        t = traffic_setup(traffic_dir, device)
        how = f"trained in {traffic_train_s:.0f} s" if traffic_train_s else "given"
        print(f"traffic run {traffic_dir} ({how}); rates: "
              + ", ".join(f"{k} {v:.4f}" for k, v in t["rates"].items()), flush=True)
        print("grid (traffic, trained models, planner condition):", flush=True)
        traffic_rows = grid_rows(
            "traffic",
            traffic_variants(t, device),
            [1, 8] if quick else ns,
            [t["sample_steps"]] if quick else sorted({10, t["sample_steps"]}),
            calls,
            cell_seconds,
            lambda name: t["cond"],
        )
        rows += traffic_rows
        traffic = {
            "weights": "trained",
            "run_dir": str(traffic_dir),
            "profile": t["profile"],
            "trained_in_script_s": traffic_train_s,
            "models": t["names"],
            "rates": t["rates"],
            "vehicle_slots": t["A"],
            "ddpm_steps_T": t["ddpm_steps_T"],
            "classifiers_K": t["classifiers_K"],
            "headline": traffic_headline(t, t["sample_steps"], calls, cell_seconds, device),
        }

    payload.update({
        "traffic": traffic,
        "cuda_graphs": graph_comparisons(rows),
        "complete": True,
        "load_average_end": list(os.getloadavg()),
    })
    for comparison in payload["cuda_graphs"]:
        print(
            f"  CUDA graphs {comparison['task']}/{comparison['model']} N={comparison['N']} "
            f"steps={comparison['steps']}: p50 {comparison['graphs_p50_ms']:.3f} ms vs "
            f"{comparison['no_graphs_p50_ms']:.3f} ms without -> {comparison['speedup_p50']:.2f}x",
            flush=True,
        )
    path = write_results(name, payload, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
