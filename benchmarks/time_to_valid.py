"""Benchmark: compute to a valid sample, model x solver x steps, on a finished checkerboard (EDM) or
traffic (DDPM scene) run.

A planner pays, per call, ``N(r, p)`` parallel samples x solver steps x the cost of one (guided) step.
For every row (model x solver x steps) this script measures, on the run's own evaluation noise (stage
``eval/noise``, so rows are paired):

  * the infraction rate ``r`` with its 95% Wilson interval over ``--num-samples`` samples;
  * ``N(r, p)`` (``p = 0.99999`` unless ``--p``), from the point estimate and from the interval's upper end;
  * p50 / p99 of one ``genneg.planning.FastSampler`` call at that ``N`` (``solver`` and ``num_steps`` set,
    one round, the oracle included, one intra-op thread, ``--calls`` calls after 3 warm-up calls; with
    ``--compile-guidance`` the guided stack's gradient runs as one ``torch.compile`` graph, compiled in
    the warm-up);
  * p50 of the naive loop at the same ``N`` (``genneg.diffusion.get_sampler(solver)`` on fresh tensors,
    eager model, then the oracle; ``--naive-calls`` calls) and FastSampler's speed-up over it;
  * quality: MMD² between the row's samples and held-out data (the run's ``eval.mmd_points``) and the
    held-out ELBO of the model (nats per point; a property of the denoiser ``D_K``, not of the solver, so
    measured once per model with the run's evaluation draws).

Peers, as ratios in the JSON's ``summary``: each model's reference row (Heun at the run's step count, as
the run samples it) against its DPM-Solver++(2M) rows with <= 10 steps (infraction ratio, target
<= 1.1); the fastest row to a valid sample against the fastest reference row (target >= 3x); FastSampler
against the naive loop (target >= 3x).

Fitted schedules (``--fitted``): for each model x solver x steps (<= 10 unless ``--fit-steps``) a second row
on the levels of ``genneg.diffusion.fit_schedule`` (trajectory matching to a 128-level Heun reference of
the model's own PF-ODE from the run's sigma_max, on fitting noise from the stage seed ``fit/schedule``,
never the evaluation noise; no oracle in the fit). The schedules are written to
``<name>-schedules.json`` beside the results (and into each row); ``--schedules FILE`` re-uses them instead
of fitting again. The summary gives every model's rows with <= 10 steps against its reference.

Models: ``baseline``, ``guided`` (the baseline with the run's whole classifier stack, ``D_K``) and
``distilled`` (when the run has one). Solvers: ``heun`` (2 denoiser calls per level), ``dpmpp_2m`` and
``unipc`` (one call per level; ``genneg.diffusion.samplers``).

Traffic runs (a DDPM over scenes, conditioned on held-out contexts): rows are the run's own
Euler-ancestral sampler at the run's step count (the reference, DDPM's ancestral step) and the PF-ODE
solvers ``--solvers`` (``dpmpp_2m``, ``unipc``, ``euler``, ``heun``) at ``--steps``, the ε-network as a VE
denoiser (``as_denoiser``: nearest timestep in log sigma), on each of ``--scene-schedules``: ``ddpm``, the
DDPM's own levels (``DDPMSchedule.sampling_sigmas(steps)``, evenly spaced timesteps), or ``karras`` /
``log_linear`` levels over the same range ``[sigma_0, sigma_{T-1}]`` (k-diffusion's practice for
discrete-time models); every row samples the same ``--num-scenes`` evaluation contexts
(``task.eval_contexts``) from the same initial noise (stage ``eval/noise``, drawn batch by batch as
``sample_scenes`` draws it). Columns:
infraction per scene and per vehicle (collision or offroad, the run's oracle) with 95% intervals,
``N(r, p)`` from the per-scene rate, p50 / p99 of one library call that samples ``N`` scenes in one
context and judges them (``--naive-calls`` calls, the contexts cycled; ``FastSampler`` takes traffic
conditions as inpainting conditions, which need its Heun/ancestral path, so the few-step solvers are timed
through the library), and the held-out r-ELBO per vehicle of each model (``--r-elbo-scenes`` scenes x the
run's timesteps; a property of the model, not of the solver). With ``--fitted``, rows on schedules fitted
for the model (``fit_schedule`` from Karras levels over the DDPM's range, on ``--fit-samples`` training
contexts, the padding slots not counted); ``--include`` joins rows measured earlier (not re-measured).

Noise: this machine may be shared; the load average at start and end is in the JSON, and each latency is a
quantile of many calls.

Run:  .venv/bin/python benchmarks/time_to_valid.py --run-dir RUN [--quick] [--models baseline guided]
      [--solvers heun dpmpp_2m] [--steps 4 6 8 10 16 32] [--num-samples 20000] [--calls 200] [--name NAME]
Writes benchmarks/results/<name>.json and <name>.md (default name: time-to-valid-<run name>-cpu).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info, write_results

from genneg.diffusion import (
    FittedSchedule,
    ScheduleFitConfig,
    as_denoiser,
    fit_schedule,
    get_sampler,
    make_sigmas,
)
from genneg.diffusion.fitted_schedule import reference_solution
from genneg.io.rundir import stage_generator, stage_seed
from genneg.metrics import infraction_rate, mmd, num_parallel_samples
from genneg.oracles.base import evaluate_oracle, sample_verdicts
from genneg.pipeline.experiment import load_model, model_names
from genneg.pipeline.scene_training import mean_per_vehicle, sample_scenes, scene_r_elbo
from genneg.planning.fast_sampler import FastSampler, SamplerConfig

STEPS = (4, 6, 8, 10, 16, 32)
SOLVERS = ("heun", "dpmpp_2m", "unipc")


def _quantiles_ms(times_s: list[float]) -> tuple[float, float]:
    t = np.asarray(times_s) * 1e3
    return float(np.quantile(t, 0.5)), float(np.quantile(t, 0.99))


def _fast_sampler_times(model: Any, task: Any, n: int, calls: int, compile_guidance: bool = False
                        ) -> list[float]:
    sampling = task.config.sampling
    sampler_config = SamplerConfig(num_parallel=n, num_steps=sampling.num_steps, solver=sampling.sampler,
                                   schedule=sampling.schedule, sigma_min=task.edm.sigma_min,
                                   sigma_max=float(task.sigmas[0]), rho=sampling.rho,
                                   sigmas=tuple(task.sigmas.tolist()), compile_guidance=compile_guidance)
    sampler = FastSampler(model, task.oracle, sample_shape=task.sample_shape, config=sampler_config,
                          device=task.device, seed=0)
    sampler.warmup(calls=3)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        sampler(seed=1000 + i)
        times.append(time.perf_counter() - t0)
    return times


def _naive_times(model: Any, task: Any, solver: str, n: int, calls: int) -> list[float]:
    sample = get_sampler(solver)
    sigmas = task.sigmas
    times = []
    for i in range(calls + 1):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(2000 + i)
        x = sample(model, torch.randn((n, *task.sample_shape), generator=g) * float(sigmas[0]), sigmas)
        sample_verdicts(evaluate_oracle(task.oracle, x)).any()
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - t0)
    return times


def fit_row_schedule(run_dir: Path, name: str, solver: str, steps: int, args: argparse.Namespace,
                     references: dict[str, torch.Tensor]) -> FittedSchedule:
    """The schedule fitted for ``name`` x ``solver`` x ``steps`` (module docstring); ``references`` caches
    each model's reference solution across its fits."""
    task, config, model = load_model(run_dir, name)
    fit_config = ScheduleFitConfig(num_samples=args.fit_samples, seed=stage_seed(config.seed, "fit/schedule"),
                                   reference_steps=args.fit_reference_steps, sweeps=args.fit_sweeps,
                                   evaluations_per_knot=args.fit_evaluations)
    sampling = config.sampling
    options = {"sigma_min": task.edm.sigma_min, "sigma_max": task.edm.sigma_max, "initial": sampling.schedule,
               "rho": sampling.rho, "device": task.device}
    if name not in references:
        references[name] = reference_solution(model, fit_config, task.sample_shape, **options)
    return fit_schedule(model, solver, steps, sample_shape=task.sample_shape, config=fit_config,
                        reference=references[name], **options)


def measure_row(run_dir: Path, name: str, solver: str, steps: int, sigma_max: float | None,
                args: argparse.Namespace, fitted: FittedSchedule | None = None) -> dict[str, Any]:
    """One row: infraction rate, N(r, p), MMD², FastSampler and naive latencies (module docstring); on the
    ``fitted`` schedule's levels when given."""
    task, config, model = load_model(run_dir, name, sampling={
        "sampler": solver, "num_steps": steps, "schedule": args.schedule, "sigma_max": sigma_max})
    if fitted is not None:
        if fitted.num_steps != steps or fitted.solver != solver:
            raise ValueError(f"the fitted schedule is for {fitted.solver} {fitted.num_steps}, not {solver} "
                             f"{steps}")
        task.sigmas = fitted.sigmas.clone()  # the task samples on task.sigmas
    num = args.num_samples or config.eval.num_samples
    t0 = time.perf_counter()
    samples = task.sample(model, num, stage_generator(config.seed, "eval/noise", task.device))
    sample_s = time.perf_counter() - t0
    rate = infraction_rate(sample_verdicts(evaluate_oracle(task.oracle, samples)))
    m = min(config.eval.mmd_points, num, task.heldout_x.shape[0])
    mmd2 = float(mmd(samples[:m], task.heldout_x[:m]))
    row = {"model": name, "solver": solver, "steps": steps,
           "schedule": "fitted" if fitted is not None else config.sampling.schedule,
           "sigmas": task.sigmas.tolist(), "sigma_max": float(task.sigmas[0]), "infraction": rate.rate,
           "infraction_low": rate.low, "infraction_high": rate.high, "num_samples": rate.total, "mmd": mmd2,
           "library_sample_seconds": sample_s}
    if fitted is not None:
        row["fit"] = {k: v for k, v in fitted.to_dict().items() if k not in ("sigmas", "initial_sigmas")}
    if rate.rate >= args.max_rate:  # N(r, p) beyond any planner: no latency row
        return {**row, "n_parallel": None, "n_parallel_upper": None, "p50_ms": math.nan, "p99_ms": math.nan,
                "naive_p50_ms": math.nan, "fast_over_naive": math.nan, "calls": 0, "naive_calls": 0}
    n_est = num_parallel_samples(rate.rate, args.p)
    n_upper = num_parallel_samples(rate.high, args.p) if rate.high < 1 else None
    fast = _fast_sampler_times(model, task, n_est, args.calls, args.compile_guidance)
    naive = _naive_times(model, task, solver, n_est, args.naive_calls)
    p50, p99 = _quantiles_ms(fast)
    naive_p50, _ = _quantiles_ms(naive)
    return {**row,
        "n_parallel": n_est, "n_parallel_upper": n_upper, "p50_ms": p50, "p99_ms": p99,
        "naive_p50_ms": naive_p50, "fast_over_naive": naive_p50 / p50, "calls": len(fast),
        "naive_calls": len(naive),
    }


def _scene_sigmas(task: Any, steps: int, schedule: str) -> torch.Tensor:
    """The PF-ODE solvers' levels on a DDPM: its own (``ddpm``) or a named schedule over its range."""
    own = task.schedule.sampling_sigmas(steps)
    if schedule == "ddpm":
        return own
    return make_sigmas(schedule, steps, float(task.schedule.sigmas[0]), float(own[0]))


def _scene_solve(model: Any, task: Any, cond: dict[str, torch.Tensor], solver: str, steps: int,
                 generator: torch.Generator, batch_size: int, sigmas: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``(n, A, 7)`` scenes of ``model`` in the contexts ``cond``: the run's Euler-ancestral sampler
    (``solver == "euler_ancestral"``) or a PF-ODE solver on the DDPM's levels; initial noise (and the
    ancestral step's seed) drawn from ``generator`` batch by batch as ``sample_scenes`` draws them, so that
    rows of every solver start from the same noise."""
    if solver == "euler_ancestral":
        return sample_scenes(model, cond, task.schedule, num_steps=steps, batch_size=batch_size,
                             generator=generator)[0]
    denoiser = as_denoiser(model, task.schedule)
    sigmas = _scene_sigmas(task, steps, "ddpm") if sigmas is None else sigmas
    sample = get_sampler(solver)
    valid = cond["valid"]
    out = []
    for start in range(0, valid.shape[0], batch_size):
        batch = {k: v[start:start + batch_size] for k, v in cond.items()}
        m, a = batch["valid"].shape
        x_T = task.schedule.initial_noise((m, a, 7), generator=generator, num_steps=steps).to(valid.device)
        torch.randint(2**62, (1,), generator=generator)  # the ancestral step's seed: keep the draws aligned
        x = sample(denoiser, x_T, sigmas, cond=batch)
        out.append(torch.where(batch["valid"][..., None], x, torch.zeros_like(x)))
    return torch.cat(out)


def measure_scene_row(run_dir: Path, name: str, solver: str, steps: int, args: argparse.Namespace,
                      schedule: str = "ddpm", fitted: FittedSchedule | None = None) -> dict[str, Any]:
    """One traffic row (module docstring): per-scene and per-vehicle infraction, N(r, p), library latency;
    on the ``fitted`` schedule's levels when given (``schedule`` is then ``"fitted"``)."""
    task, config, model = load_model(run_dir, name)
    sigmas = _scene_sigmas(task, steps, schedule) if fitted is None else fitted.sigmas
    n = args.num_scenes or config.eval.num_scenes
    cond = task.eval_contexts(n)
    batch_size = config.gen_neg.sample_batch_size
    t0 = time.perf_counter()
    with torch.no_grad():
        tokens = _scene_solve(model, task, cond, solver, steps, stage_generator(config.seed, "eval/noise"),
                              batch_size, sigmas)
    sample_s = time.perf_counter() - t0
    verdicts = task.scene_oracle.details(tokens, **cond)
    valid = cond["valid"]
    ok = ~(verdicts.collision | verdicts.offroad)
    scene, vehicle = infraction_rate(ok | ~valid), infraction_rate(ok[valid])
    row = {"model": name, "solver": solver, "steps": steps, "schedule": schedule, "sigmas": sigmas.tolist(),
           "sigma_max": float(sigmas[0]), "infraction": scene.rate,
           "infraction_low": scene.low, "infraction_high": scene.high, "infraction_vehicle": vehicle.rate,
           "infraction_vehicle_low": vehicle.low, "infraction_vehicle_high": vehicle.high,
           "collision": float((verdicts.collision & valid).any(1).float().mean()),
           "offroad": float((verdicts.offroad & valid).any(1).float().mean()),
           "num_samples": scene.total, "library_sample_seconds": sample_s, "mmd": math.nan}
    if fitted is not None:
        row["fit"] = {k: v for k, v in fitted.to_dict().items() if k not in ("sigmas", "initial_sigmas")}
    if scene.rate >= args.max_rate:
        return {**row, "n_parallel": None, "n_parallel_upper": None, "p50_ms": math.nan, "p99_ms": math.nan,
                "naive_p50_ms": math.nan, "fast_over_naive": math.nan, "calls": 0, "naive_calls": 0}
    n_est = num_parallel_samples(scene.rate, args.p)
    times = []
    for i in range(args.naive_calls + 1):
        one = {k: v[i % n: i % n + 1].expand(n_est, *v.shape[1:]) for k, v in cond.items()}
        t0 = time.perf_counter()
        with torch.no_grad():
            x = _scene_solve(model, task, one, solver, steps, torch.Generator().manual_seed(2000 + i), n_est,
                             sigmas)
        task.scene_oracle(x, **one).all(dim=1).any()
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - t0)
    p50, p99 = _quantiles_ms(times)
    return {**row, "n_parallel": n_est,
            "n_parallel_upper": num_parallel_samples(scene.high, args.p) if scene.high < 1 else None,
            "p50_ms": math.nan, "p99_ms": math.nan, "naive_p50_ms": p50, "naive_p99_ms": p99,
            "fast_over_naive": math.nan, "calls": 0, "naive_calls": len(times)}


def _format_scene_table(rows: list[dict[str, Any]], quality: dict[str, float], p: float) -> str:
    head = ("| model | solver | steps | levels | infraction / scene % (95% CI) | infraction / vehicle % | "
            f"collision / offroad (scene) % | N(r, {p}) (upper) | library p50 ms | library p99 ms | "
            "r-ELBO / vehicle |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['steps']} | {r['schedule']} | {100 * r['infraction']:.1f} "
            f"({100 * r['infraction_low']:.1f}-{100 * r['infraction_high']:.1f}) | "
            f"{100 * r['infraction_vehicle']:.1f} | {100 * r['collision']:.1f} / {100 * r['offroad']:.1f} | "
            f"{r['n_parallel'] or '-'} ({r['n_parallel_upper'] or '-'}) | {r['naive_p50_ms']:.0f} | "
            f"{r.get('naive_p99_ms', math.nan):.0f} | {quality[r['model']]:.4f} |")
    return "\n".join(lines)


def _scene_summary(rows: list[dict[str, Any]], reference_steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"per_model": {}}
    for name in dict.fromkeys(r["model"] for r in rows):
        ref = next((r for r in rows if r["model"] == name and r["solver"] == "euler_ancestral"
                    and r["steps"] == reference_steps), None)
        if ref is None:
            continue
        few = [r for r in rows if r["model"] == name and r is not ref and r["steps"] <= 10]
        out["per_model"][name] = {
            "reference": f"euler_ancestral {reference_steps}", "reference_infraction": ref["infraction"],
            "reference_naive_p50_ms": ref["naive_p50_ms"],
            "le_10_infraction_ratio": {
                f"{r['solver']} {r['steps']} {r['schedule']}":
                    r["infraction"] / ref["infraction"] if ref["infraction"] > 0 else math.nan for r in few},
            "le_10_naive_speedup": {
                f"{r['solver']} {r['steps']} {r['schedule']}": ref["naive_p50_ms"] / r["naive_p50_ms"]
                for r in few if r["n_parallel"] is not None},
        }
    return out


def fit_scene_schedule(run_dir: Path, name: str, solver: str, steps: int, args: argparse.Namespace,
                       references: dict[str, torch.Tensor]) -> FittedSchedule:
    """A traffic model's schedule fitted by trajectory matching (``fit_schedule``): ``--fit-samples``
    training contexts (stage ``fit/contexts``), the real vehicles' tokens counted (not the padding), Karras
    levels over the DDPM's range as the start and the reference family."""
    task, config, model = load_model(run_dir, name)
    fit_config = ScheduleFitConfig(num_samples=args.fit_samples, seed=stage_seed(config.seed, "fit/schedule"),
                                   reference_steps=args.fit_reference_steps, sweeps=args.fit_sweeps,
                                   evaluations_per_knot=args.fit_evaluations)
    cond = task.train_contexts(args.fit_samples, stage_generator(config.seed, "fit/contexts"))
    shape = tuple(task.train.tokens.shape[1:])
    options = {"sigma_min": float(task.schedule.sigmas[0]),
               "sigma_max": float(task.schedule.sampling_sigmas(steps)[0]), "initial": "karras", "rho": 7.0,
               "cond": cond, "device": task.device}
    denoiser = as_denoiser(model, task.schedule)
    if name not in references:
        with torch.no_grad():
            references[name] = reference_solution(denoiser, fit_config, shape, **options)
    return fit_schedule(denoiser, solver, steps, sample_shape=shape, config=fit_config,
                        reference=references[name], mask=cond["valid"][..., None], **options)


def traffic_main(args: argparse.Namespace, argv: list[str] | None, load_start: tuple[float, ...]) -> int:
    """The traffic table (module docstring)."""
    task, config, _ = load_model(args.run_dir, "baseline")
    reference_steps = config.gen_neg.sample_steps
    models = _known_models(args, config)
    quality: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for earlier in args.include:
        data = json.loads(earlier.read_text())
        if Path(data["run_dir"]).resolve() != args.run_dir.resolve():
            raise ValueError(f"{earlier} measured run {data['run_dir']}, not {args.run_dir}")
        rows += data["rows"]
        quality.update(data["r_elbo"])
    r_elbo_scenes = min(args.r_elbo_scenes or config.eval.r_elbo_scenes, len(task.heldout))
    for name in models:
        if name in quality:  # measured with the included rows
            continue
        task, config, model = load_model(args.run_dir, name)
        held = task.heldout.rows(torch.arange(r_elbo_scenes, device=task.device))
        r = scene_r_elbo(model, held, task.schedule, num_timesteps=config.eval.r_elbo_timesteps,
                         seed=stage_seed(config.seed, "eval/r_elbo"))
        quality[name] = mean_per_vehicle(r, held.cond["valid"])
        print(f"{name}: held-out r-ELBO {quality[name]:.4f} nats per vehicle", flush=True)
    done = {(r["model"], r["solver"], r["steps"], r["schedule"]) for r in rows}
    schedules: dict[str, dict[str, Any]] = {}
    if args.schedules is not None:
        schedules = json.loads(args.schedules.read_text())["schedules"]
    references: dict[str, torch.Tensor] = {}
    fit_steps = set(args.fit_steps) if args.fit_steps else {s for s in args.steps if s <= 10}
    for name in models:
        plan = [("euler_ancestral", reference_steps, "ddpm")]
        plan += [(solver, steps, levels) for solver, levels, steps in
                 itertools.product(args.solvers, args.scene_schedules, args.steps)
                 if solver != "euler_ancestral"]
        if args.fitted:
            plan += [(solver, steps, "fitted") for solver, steps in
                     itertools.product(args.solvers, args.steps)
                     if solver != "euler_ancestral" and steps in fit_steps]
        for solver, steps, levels in plan:
            if (name, solver, steps, levels) in done:
                continue
            fitted = None
            if levels == "fitted":
                key = f"{name}/{solver}/{steps}"
                if key in schedules:
                    fitted = FittedSchedule.from_dict(schedules[key])
                else:
                    fitted = fit_scene_schedule(args.run_dir, name, solver, steps, args, references)
                    schedules[key] = fitted.to_dict()
                    print(f"fitted {key}: trajectory error {fitted.initial_error:.4f} -> {fitted.error:.4f} "
                          f"in {fitted.seconds:.1f} s ({fitted.evaluations} solves); levels "
                          f"{[round(v, 4) for v in fitted.sigmas.tolist()]}", flush=True)
            row = measure_scene_row(args.run_dir, name, solver, steps, args, levels, fitted)
            rows.append(row)
            print(f"{name:9s} {solver:15s} {steps:3d} {levels:10s}: infraction "
                  f"{100 * row['infraction']:.1f}% / scene "
                  f"{100 * row['infraction_vehicle']:.1f}% / vehicle N={row['n_parallel']} library p50 "
                  f"{row['naive_p50_ms']:.0f} ms ({row['library_sample_seconds']:.1f} s for the rate)",
                  flush=True)
    summary = _scene_summary(rows, reference_steps)
    table = _format_scene_table(rows, quality, args.p)
    print(table)
    print(summary)
    stem = args.name or f"time-to-valid-{args.run_dir.resolve().name}-cpu"
    payload = {
        "benchmark": "time_to_valid", "task": "traffic", "run_dir": str(args.run_dir),
        "run_profile": config.profile, "run_sampling": {"sampler": "euler_ancestral",
                                                        "num_steps": reference_steps},
        "p": args.p, "threads": args.threads, "num_scenes": rows[0]["num_samples"] if rows else 0,
        "r_elbo_scenes": r_elbo_scenes, "r_elbo_timesteps": config.eval.r_elbo_timesteps,
        "machine": machine_info(torch=torch.__version__), "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()), "r_elbo": quality, "rows": rows, "summary": summary,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "included": [str(p) for p in args.include],
        "fit": _fit_record(args),
    }
    details = (f"{payload['num_scenes']} evaluation scenes per row; r-ELBO on {r_elbo_scenes} held-out "
               f"scenes x {config.eval.r_elbo_timesteps} timesteps")
    title = f"a valid scene: {args.run_dir} ({config.profile})"
    return _save(args, stem, payload, schedules, title, details, table, load_start)


def _format_table(rows: list[dict[str, Any]], elbo: dict[str, float], p: float) -> str:
    head = (f"| model | solver | steps | schedule | σ_max | infraction % (95% CI) | N(r, {p}) (upper) | "
            "p50 ms | p99 ms | naive p50 ms | fast/naive | MMD² | ELBO |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['steps']} | {r.get('schedule', '-')} | "
            f"{r['sigma_max']:g} | "
            f"{100 * r['infraction']:.3f} "
            f"({100 * r['infraction_low']:.3f}-{100 * r['infraction_high']:.3f}) | {r['n_parallel'] or '-'} "
            f"({r['n_parallel_upper'] or '-'}) | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['naive_p50_ms']:.2f} | {r['fast_over_naive']:.1f} | {r['mmd']:.2e} | "
            f"{elbo[r['model']]:.3f} |")
    return "\n".join(lines)


def _summary(rows: list[dict[str, Any]], reference_steps: int, reference_sigma_max: float,
             mmd_tolerance: float) -> dict[str, Any]:
    out: dict[str, Any] = {"per_model": {}}
    refs = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        ref = next((r for r in rows if r["model"] == name and r["solver"] == "heun"
                    and r["steps"] == reference_steps and r["sigma_max"] == reference_sigma_max), None)
        if ref is None or ref["n_parallel"] is None:
            continue
        refs[name] = ref
        few = [r for r in rows if r["model"] == name and r["solver"] == "dpmpp_2m" and r["steps"] <= 10
               and r.get("schedule") != "fitted"]
        le_10 = [r for r in rows if r["model"] == name and r["steps"] <= 10 and r is not ref]
        best = min(le_10, key=lambda r: r["infraction"], default=None)
        ratio = {f"{r['solver']} {r['steps']} {r.get('schedule', '-')}@{r['sigma_max']:g}":
                 (r["infraction"] / ref["infraction"] if ref["infraction"] > 0 else math.nan) for r in le_10}
        out["per_model"][name] = {
            "le_10_infraction_ratio": ratio,
            "best_le_10": None if best is None else {
                k: best.get(k) for k in ("solver", "steps", "schedule", "sigma_max", "infraction", "mmd")},
            "best_le_10_ratio": None if best is None or ref["infraction"] == 0 else
            best["infraction"] / ref["infraction"],
            "reference_mmd": ref["mmd"],
            "reference": f"heun {reference_steps}", "reference_infraction": ref["infraction"],
            "reference_p50_ms": ref["p50_ms"],
            "dpmpp_2m_le_10_infraction_ratio": {
                f"{r['steps']}@{r['sigma_max']:g}": (r["infraction"] / ref["infraction"]
                                                     if ref["infraction"] > 0 else math.nan)
                for r in few},
        }
    if refs and rows:
        fastest_ref = min(refs.values(), key=lambda r: r["p50_ms"])
        timed = [r for r in rows if r["n_parallel"] is not None]
        fastest = min(timed, key=lambda r: r["p50_ms"])
        out["fastest_reference_row"] = {k: fastest_ref[k] for k in ("model", "solver", "steps", "p50_ms")}
        out["fastest_row"] = {k: fastest[k] for k in ("model", "solver", "steps", "p50_ms", "infraction",
                                                      "n_parallel")}
        out["fastest_speedup_over_reference"] = fastest_ref["p50_ms"] / fastest["p50_ms"]
        # quality kept: MMD² within mmd_tolerance x the model's own reference row
        kept = [r for r in timed
                if r["model"] in refs and r["mmd"] <= mmd_tolerance * refs[r["model"]]["mmd"]]
        if kept:
            best = min(kept, key=lambda r: r["p50_ms"])
            out["fastest_row_quality_kept"] = {k: best[k] for k in ("model", "solver", "steps", "sigma_max",
                                                                    "p50_ms", "infraction", "n_parallel",
                                                                    "mmd")}
            out["fastest_quality_kept_speedup_over_reference"] = fastest_ref["p50_ms"] / best["p50_ms"]
            out["mmd_tolerance"] = mmd_tolerance
    ratios = [r["fast_over_naive"] for r in rows if r["n_parallel"] is not None]
    out["fast_over_naive_min"] = min(ratios) if ratios else None
    return out



def _known_models(args: argparse.Namespace, config: Any) -> list[str]:
    """``--models`` that the run has; an unknown name is an error unless ``--include`` brings rows
    (re-summarising earlier measurements)."""
    if args.fitted and args.fit_steps and not set(args.fit_steps) <= set(args.steps):
        raise SystemExit(f"time_to_valid.py: --fit-steps {sorted(set(args.fit_steps) - set(args.steps))} "
                         f"not among --steps {args.steps}")
    have = set(model_names(config)) | {"guided"}
    unknown = [m for m in args.models if m not in have]
    if unknown and not args.include:
        raise SystemExit(f"time_to_valid.py: unknown model(s) {unknown}; this run has {sorted(have)}")
    return [m for m in args.models if m in have]


def _fit_record(args: argparse.Namespace) -> dict[str, Any] | None:
    """The schedule-fit options of a ``--fitted`` run, for its JSON (None without ``--fitted``)."""
    if not args.fitted:
        return None
    return {"samples": args.fit_samples, "reference_steps": args.fit_reference_steps,
            "sweeps": args.fit_sweeps, "evaluations_per_knot": args.fit_evaluations,
            "schedules_from": str(args.schedules or "")}


def _save(args: argparse.Namespace, stem: str, payload: dict[str, Any], schedules: Any, title: str,
          details: str, table: str, load_start: Any) -> int:
    """Write the JSON (and the fitted schedules' JSON), then the Markdown table, atomically."""
    path = write_results(stem, payload, args.out_dir)
    if schedules:
        write_results(f"{stem}-schedules", {"run_dir": str(args.run_dir), "schedules": schedules},
                      args.out_dir)
    md = path.with_suffix(".md")
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(f"# time to {title}\n\n"
                   f"machine: {payload['machine']['cpu']}, {args.threads} thread(s), load "
                   f"{load_start[0]:.1f} -> {payload['load_average_end'][0]:.1f}; {details}\n\n"
                   f"command: `{payload['command']}`\n\n{table}\n")
    os.replace(tmp, md)
    print(f"wrote {path} and {md}")
    return 0

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished EDM (checkerboard-like) run")
    parser.add_argument("--models", nargs="+", default=["baseline", "guided", "distilled"])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS))
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    parser.add_argument("--sigma-max", nargs="+", type=float, default=[None],
                        help="first levels of the sampling schedule (default: the run's)")
    parser.add_argument("--schedule", default=None, help="log_linear | karras (default: the run's)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="samples per row for the infraction rate (default: the run's eval size)")
    parser.add_argument("--p", type=float, default=0.99999)
    parser.add_argument("--calls", type=int, default=200, help="timed FastSampler calls per row")
    parser.add_argument("--naive-calls", type=int, default=20, help="timed naive-loop calls per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-rate", type=float, default=0.9,
                        help="rows whose infraction rate reaches this get no latency (N(r, p) too large)")
    parser.add_argument("--quick", action="store_true", help="10k samples, 50 calls, 5 naive calls")
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument("--mmd-tolerance", type=float, default=1.25,
                        help="summary: the fastest row whose MMD² is within this factor of its model's "
                             "reference row")
    parser.add_argument("--include", nargs="*", type=Path, default=[],
                        help="earlier results JSON of the same run whose rows (and ELBOs) join the table and "
                             "summary (e.g. a model measured later)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--fitted", action="store_true",
                        help="add rows on schedules fitted by trajectory matching (module docstring)")
    parser.add_argument("--fit-steps", nargs="+", type=int, default=None,
                        help="step counts that get a fitted row (default: those <= 10)")
    parser.add_argument("--fit-samples", type=int, default=500, help="fitting noise draws")
    parser.add_argument("--fit-reference-steps", type=int, default=128, help="Heun levels of the reference")
    parser.add_argument("--fit-sweeps", type=int, default=3, help="passes over the knots")
    parser.add_argument("--fit-evaluations", type=int, default=8,
                        help="golden-section evaluations per knot and pass")
    parser.add_argument("--schedules", type=Path, default=None,
                        help="fitted schedules written by an earlier run (<name>-schedules.json) to re-use")
    parser.add_argument("--num-scenes", type=int, default=None,
                        help="traffic: evaluation scenes per row (default: the run's eval size)")
    parser.add_argument("--scene-schedules", nargs="+", default=["ddpm", "karras"],
                        choices=["ddpm", "karras", "log_linear"],
                        help="traffic: levels of the PF-ODE solvers (module docstring)")
    parser.add_argument("--r-elbo-scenes", type=int, default=None,
                        help="traffic: held-out scenes of each model's r-ELBO (default: the run's)")
    parser.add_argument("--compile-guidance", action="store_true",
                        help="FastSampler with SamplerConfig(compile_guidance=True): the guided stack's "
                             "gradient as one torch.compile graph (genneg.guidance.compiled)")
    args = parser.parse_args(argv)
    if args.compile_guidance:
        # one compiled graph per batch size N (dynamic=False): the rows' N values exceed Dynamo's default
        # recompile limit (8), after which it would silently run the guidance eagerly
        torch._dynamo.config.recompile_limit = 64
    if args.quick:
        args.num_samples = args.num_samples or 10_000
        args.calls, args.naive_calls = min(args.calls, 50), min(args.naive_calls, 5)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    task, config, _ = load_model(args.run_dir, "baseline")
    if hasattr(task, "scene_oracle"):  # a traffic (DDPM scene) run
        return traffic_main(args, argv, load_start)
    models = _known_models(args, config)
    elbo = {}
    for name in models:
        task, config, model = load_model(args.run_dir, name)
        elbo[name] = task.elbo(model, task.heldout_x[: config.eval.elbo_points],
                               num_sigmas=config.eval.elbo_num_sigmas,
                               seed=stage_seed(config.seed, "eval/elbo"))
        print(f"{name}: held-out ELBO {elbo[name]:.4f} nats", flush=True)
    rows: list[dict[str, Any]] = []
    for earlier in args.include:
        data = json.loads(earlier.read_text())
        if Path(data["run_dir"]).resolve() != args.run_dir.resolve():
            raise ValueError(f"{earlier} measured run {data['run_dir']}, not {args.run_dir}")
        rows += data["rows"]
        elbo = {**data["elbo"], **elbo}
    schedules: dict[str, dict[str, Any]] = {}
    if args.schedules is not None:
        schedules = json.loads(args.schedules.read_text())["schedules"]
    references: dict[str, torch.Tensor] = {}
    fit_steps = set(args.fit_steps) if args.fit_steps else {s for s in args.steps if s <= 10}
    seen: set[tuple[str, str, int, float | str | None]] = set()

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['model']:9s} {row['solver']:8s} {row['steps']:3d} {row['schedule']:10s} σmax "
              f"{row['sigma_max']:g}: infraction {100 * row['infraction']:.3f}% N={row['n_parallel']} p50 "
              f"{row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms naive {row['naive_p50_ms']:.2f} ms MMD² "
              f"{row['mmd']:.2e}", flush=True)

    for name in models:
        for solver, sigma_max, steps in itertools.product(args.solvers, args.sigma_max, args.steps):
            start = None if solver == "heun" else sigma_max  # Heun rows are the reference: the run's start
            if (name, solver, steps, start) not in seen:
                seen.add((name, solver, steps, start))
                report(measure_row(args.run_dir, name, solver, steps, start, args))
            key = f"{name}/{solver}/{steps}"
            if not args.fitted or steps not in fit_steps or (name, solver, steps, "fitted") in seen:
                continue
            seen.add((name, solver, steps, "fitted"))
            if key in schedules:
                fitted = FittedSchedule.from_dict(schedules[key])
            else:
                fitted = fit_row_schedule(args.run_dir, name, solver, steps, args, references)
                schedules[key] = fitted.to_dict()
                print(f"fitted {key}: trajectory error {fitted.initial_error:.4f} -> {fitted.error:.4f} in "
                      f"{fitted.seconds:.1f} s ({fitted.evaluations} solves); levels "
                      f"{[round(v, 4) for v in fitted.sigmas.tolist()]}", flush=True)
            report(measure_row(args.run_dir, name, solver, steps, None, args, fitted))
    summary = _summary(rows, config.sampling.num_steps, float(task.sigmas[0]), args.mmd_tolerance)
    table = _format_table(rows, elbo, args.p)
    print(table)
    print(summary)
    stem = args.name or f"time-to-valid-{args.run_dir.resolve().name}-cpu{'-quick' if args.quick else ''}"
    payload = {
        "benchmark": "time_to_valid", "run_dir": str(args.run_dir), "run_profile": config.profile,
        "run_sampling": {"sampler": config.sampling.sampler, "num_steps": config.sampling.num_steps,
                         "schedule": config.sampling.schedule},
        "p": args.p, "threads": args.threads, "num_samples": args.num_samples or config.eval.num_samples,
        "compile_guidance": args.compile_guidance,
        "machine": machine_info(torch=torch.__version__), "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()), "elbo": elbo, "rows": rows, "summary": summary,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "included": [str(p) for p in args.include],
        "fit": _fit_record(args),
    }
    details = ("FastSampler guidance "
               f"{'compiled (torch.compile)' if args.compile_guidance else 'analytic (eager)'}")
    title = f"a valid sample: {args.run_dir} ({config.profile})"
    return _save(args, stem, payload, schedules, title, details, table, load_start)


if __name__ == "__main__":
    sys.exit(main())
