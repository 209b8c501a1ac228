"""Benchmark: the price of stacked classifier guidance per sampler step, and what removes it (issue 5).

Networks are the paper's checkerboard size: denoiser and K classifiers are residual MLPs with hidden
256, 2 residual blocks, embedding 128, data dimension 2 (``genneg.models.mlp``). A sampler step is one
Heun step (two guided evaluations, ``genneg.diffusion.heun_step``); a full sample is ``--steps`` Heun
steps on a Karras schedule (the last one Euler). Paths:

  * eager: ``GuidedDenoiser(backend="torch")``, exact autograd (the reference path);
  * analytic: the same ``D_K`` with the classifier gradient from ``genneg.guidance.analytic`` (batched
    over K, no autograd, time features once per step);
  * compile: ``torch.compile`` of the analytic step (the eager step graph-breaks at ``autograd.grad``),
    on a subset of (K, batch) because every new shape recompiles (compile time reported);
  * fused: ``GuidedDenoiser(backend="triton")``, one kernel launch per Heun step
    (``genneg.kernels.fused_mlp_guidance``); CUDA only, skipped with the reason printed elsewhere
    (the Triton interpreter is a correctness tool, not a performance path).

Reported: median time per step and per full sample, per-classifier overhead as a multiple of the K = 0
eager step of the same batch (``(t_K − t_0) / (K · t_0)``; the paper measured ≈ 1.5), and speed-up over
eager. Full samples are measured for small batches; for large ones they are ``steps × per-step`` (marked
``derived`` in the JSON). Also the cost of an NVTX range when switched off and on.

Floor (FLOPs and bytes per Heun step, batch B, hidden H = 256, NB = 2 blocks, K classifiers):
  * one hidden layer costs 2·B·H² FLOPs; a network's forward is 2·NB such layers (+ thin input/output
    layers), its input-gradient backward the same again (no weight gradients). Per evaluation: denoiser
    forward + K × (forward + backward) = 4·NB·B·H²·(1 + 2K) FLOPs; per Heun step twice that:
    8·NB·B·H²·(1 + 2K) = 1.05e6·B·(1 + 2K) FLOPs. At B = 1024, K = 5: 1.2e10 FLOPs; B = 8192, K = 8:
    1.8e11 FLOPs.
  * bytes: weights (1 + K) × 0.54 MB float32 (read once per step from HBM, then from L2), samples
    2 × B × 2 × 4 B; the fused kernel keeps activations in a per-tile scratch that stays in L1/L2.
  * H100 SXM peaks: 495 TFLOP/s dense TF32 tensor cores, 67 TFLOP/s FP32 without them, 3.35 TB/s HBM3.
    So at B = 1024, K = 5 the floor is 24 µs (TF32) / 0.18 ms (FP32) of arithmetic, and ~3 MB of
    weights is ~1 µs of HBM traffic: compute-bound for large batches; at B = 1 the step is bound by
    latency (one launch, 2 × (1 + 2K) × 2·NB dependent layer products per step).
  Targets (GPU, not measurable here): per-classifier overhead ≤ 0.3× the baseline step; fused ≥ 3×
  faster than eager at K = 5, B = 1024.

Compiled CPU guidance (issue 13, ``--compiled``): on a trained run's real weights (default the checkerboard
quick run ``/work/runs/cb-quick-final``, copied to a temporary folder first), one guided evaluation
``D_K = D + σ² Σ_k γ_k ∇ log c_k`` at planner batch sizes, for K = 1..(the run's stack), per guidance path:

  * analytic: ``genneg.guidance.analytic`` (today's ``FastSampler`` CPU path: time branches every call);
  * eager: ``genneg.guidance.compiled.CompiledMLPGuidance(compile=False)`` (time branches cached per
    level, the graph's function run eagerly);
  * compiled: the same with ``torch.compile`` (Inductor C++), ``dynamic=False``.

The baseline is the run's denoiser as ``FastSampler`` runs it (``ResidualMLPDenoiserPlan``). Reported per
row: per-classifier added time / baseline step time ``(t_K − t_0) / (K · t_0)`` (target <= 1.0), the FLOP
floor of the same ratio (``classifier_flops``: forward + input-gradient backward of one classifier over
the denoiser's forward), and compile time. Timing: ``--rounds`` rounds, each timing every candidate over
``--calls`` calls (process CPU time, one thread) one after the other, so a neighbour's load hits all
candidates alike; the figures are medians over rounds (ratios: median of the per-round ratios). Then
whole ``FastSampler`` calls (guided, the run's Heun step count, N = 2 as the issue measured it, and the
baseline at N = 7) with ``compile_guidance`` off and on: p50 over ``--sampler-calls`` calls.

Conditioned (traffic) guidance (issue 13, ``--traffic --run-dir RUN``, a traffic run, copied first): is a
compiled guidance call worth building for the scene transformers? At N in ``--batches`` (default 1, 8,
32) scenes of one held-out context, one eager guided evaluation ``D_K`` (``GuidedDenoiser``, exact
autograd, the path every conditioned call takes) for K = 1..(the run's stack) against the baseline
evaluation (the ε-network as a VE denoiser) at sigma 0.7: per-classifier added time / baseline
``(t_K − t_0) / (K · t_0)`` (process CPU time, one thread, interleaved rounds as above), and its FLOP floor
counted by ``torch.utils.flop_counter.FlopCounterMode`` (one classifier's forward + input-gradient backward
over the denoiser's forward). A compiled call can at best remove the overhead above that floor. Candidate
``compiled`` (whole stack): ``D + σ² · torch.compile(torch.func.grad(Σ_k Σ_real vehicles log c_k))``
(Inductor, ``dynamic=False``; its graphs and graph breaks, from ``torch._dynamo.explain``, are in the JSON).

Run:  .venv/bin/python benchmarks/guidance.py [--quick | --full] [--steps 18] [--batches 1,32 --ks 0,5]
      [--no-compile] [--out-dir DIR]
      .venv/bin/python benchmarks/guidance.py --compiled [--run-dir RUN] [--batches 1,8,32] [--rounds 15]
      .venv/bin/python benchmarks/guidance.py --traffic --run-dir RUN [--batches 1,8,32] [--rounds 7]
Writes benchmarks/results/guidance-<cpu|cuda>.json (``-quick`` suffix with --quick); with --compiled
benchmarks/results/guidance-compiled-cpu.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, Timing, machine_info, ratio, time_call, write_results

from genneg.diffusion import EDMPrecond, heun_step, make_sigmas
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.guidance.analytic import AnalyticMLPGuidance
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig
from genneg.profiling import nvtx_available, nvtx_range, set_nvtx_enabled

SIGMA_DATA = 0.5
DIM = 2


def _int_list(text: str) -> list[int]:
    """``"1,32,1024"`` -> ``[1, 32, 1024]`` (argparse type; positive integers)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def build(k: int, device: torch.device, hidden: int) -> tuple[EDMPrecond, list[TimeClassifier]]:
    """Denoiser and K classifiers of the checkerboard size, random weights (timing only)."""
    torch.manual_seed(0)
    cfg = ResidualMLPConfig(DIM, DIM, hidden=hidden, num_blocks=2, embedding_dim=128)
    denoiser = EDMPrecond(ResidualMLP(cfg), SIGMA_DATA).to(device).eval()
    cls_cfg = ResidualMLPConfig(DIM, 1, hidden=hidden, num_blocks=2, embedding_dim=128)
    classifiers = [TimeClassifier(ResidualMLP(cls_cfg), SIGMA_DATA).to(device).eval() for _ in range(k)]
    return denoiser, classifiers


class AnalyticGuided:
    """``D_K`` with the analytic classifier-stack gradient: the CPU/PyTorch fast path under test."""

    def __init__(self, denoiser: EDMPrecond, classifiers: list[TimeClassifier]) -> None:
        self.denoiser = denoiser
        self.guidance = AnalyticMLPGuidance(classifiers, [1.0] * len(classifiers)) if classifiers else None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d = self.denoiser(x, sigma)
        if self.guidance is None:
            return d
        return d + (sigma * sigma)[:, None] * self.guidance.gradient(x, sigma)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_fn(model: Any, x: torch.Tensor, device: torch.device):
    def run() -> torch.Tensor:
        with torch.no_grad():
            out = heun_step(model, x, 2.0, 1.6)
        _sync(device)
        return out

    return run


def sample_fn(model: Any, x: torch.Tensor, sigmas: list[float], device: torch.device):
    def run() -> torch.Tensor:
        y = x
        with torch.no_grad():
            for s_cur, s_next in itertools.pairwise(sigmas):
                y = heun_step(model, y, s_cur, s_next)
        _sync(device)
        return y

    return run


def nvtx_cost(n: int = 200_000) -> dict[str, float]:
    """Nanoseconds per ``with nvtx_range(...)`` block, off and on, minus an empty loop."""

    def loop(enabled: bool | None) -> float:
        if enabled is not None:
            set_nvtx_enabled(enabled)
        t0 = time.perf_counter()
        if enabled is None:
            for _ in range(n):
                pass
        else:
            for _ in range(n):
                with nvtx_range("bench"):
                    pass
        return (time.perf_counter() - t0) / n * 1e9

    empty = min(loop(None) for _ in range(3))
    off = min(loop(False) for _ in range(3)) - empty
    if not nvtx_available():  # optional dependency absent: the feature is off (one warning), no "on" cost
        return {"available": False, "off_ns_per_range": off, "on_ns_per_range": float("nan")}
    on = min(loop(True) for _ in range(3)) - empty
    set_nvtx_enabled(False)
    return {"available": True, "off_ns_per_range": off, "on_ns_per_range": on}


def _interleaved(candidates: dict[str, Any], rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call (process CPU time) of each candidate, per round; candidates alternate in a round."""
    out: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up (and compilation) outside the rounds
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.process_time()
            for _ in range(calls):
                fn()
            out[name].append((time.process_time() - t0) / calls)
    return out


def _guided_evaluation(plan: Any, x: torch.Tensor, sigma: torch.Tensor, den: torch.Tensor,
                       guidance: Any = None) -> torch.Tensor:
    """One guided evaluation as ``FastSampler`` does it: ``D`` (level plan 0) ``+ σ² · gradient``."""
    d = plan.denoise(x, 0, den)
    if guidance is None:
        return d
    return d + (sigma * sigma)[:, None] * guidance.gradient(x, sigma)


def compiled_main(args: argparse.Namespace) -> None:
    """The ``--compiled`` benchmark (module docstring): real weights, planner batch sizes, one thread."""
    import shutil
    import statistics
    import tempfile

    from genneg.guidance.compiled import CompiledMLPGuidance, classifier_flops
    from genneg.pipeline.experiment import load_model
    from genneg.planning.fast_sampler import FastSampler
    from genneg.planning.mlp_plan import ResidualMLPDenoiserPlan

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="genneg-guidance-compiled-"))
    run_dir = workdir / args.run_dir.name
    shutil.copytree(args.run_dir, run_dir)  # the trained run stays untouched
    _, config, guided = load_model(run_dir, "guided")
    classifiers, scales = list(guided.classifiers), list(guided.scales)
    den_cfg, cls_cfg = guided.denoiser.net.config, classifiers[0].net.config
    sigma = 0.7  # a mid-trajectory level; the graph takes the level as tensors, so any level costs the same
    batches = args.batches or [1, 2, 8, 32]
    rows: list[dict[str, Any]] = []
    print(f"run {args.run_dir} ({config.profile}): denoiser hidden {den_cfg.hidden}, {len(classifiers)} "
          f"classifiers hidden {cls_cfg.hidden}; process CPU time, 1 thread; {args.rounds} rounds x "
          f"{args.calls} calls")
    print(f"{'N':>3} {'K':>2} {'path':>9} {'eval us':>9} {'added/cls':>10} {'floor':>6} {'compile s':>9}")
    for n in batches:
        x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(n)) * 0.7
        sig = torch.full((n,), sigma)
        plan = ResidualMLPDenoiserPlan(guided.denoiser, [sigma], n, torch.device("cpu"))
        den = torch.empty(n, DIM)
        flops = classifier_flops(n, cls_cfg.dim_in, cls_cfg.hidden, cls_cfg.num_blocks, cls_cfg.dim_out)
        den_flops = classifier_flops(n, den_cfg.dim_in, den_cfg.hidden, den_cfg.num_blocks,
                                     den_cfg.dim_out)["denoiser_forward"]
        floor = (flops["classifier_forward"] + flops["classifier_backward"]) / den_flops
        for k in (args.ks or range(1, len(classifiers) + 1)):
            paths = {
                "analytic": AnalyticMLPGuidance(classifiers[:k], scales[:k]),
                "eager": CompiledMLPGuidance(classifiers[:k], scales[:k], compile=False),
                "compiled": CompiledMLPGuidance(classifiers[:k], scales[:k]),
            }
            with torch.inference_mode():
                t0 = time.perf_counter()
                paths["compiled"].gradient(x, sig)
                compile_s = time.perf_counter() - t0

                evaluation = functools.partial(_guided_evaluation, plan, x, sig, den)
                candidates = {"baseline": evaluation}
                candidates.update({name: functools.partial(evaluation, g) for name, g in paths.items()})
                per_round = _interleaved(candidates, args.rounds, args.calls)
            base = per_round["baseline"]
            for name in ("baseline", *paths):
                times = per_round[name]
                added = None
                if name != "baseline":
                    added = statistics.median((t - b) / (k * b) for t, b in zip(times, base))
                row = {"batch": n, "K": k, "path": name, "evaluation_median_s": statistics.median(times),
                       "evaluation_per_round_s": times, "added_per_classifier_over_baseline": added,
                       "flop_floor_per_classifier": floor,
                       "compile_s": compile_s if name == "compiled" else None,
                       "backend": getattr(paths.get(name), "backend", None),
                       "function": (paths[name].function_for(n).__name__ if name in ("eager", "compiled")
                                    else None)}
                rows.append(row)
                if name == "baseline" and k > 1:
                    continue
                ad = f"{added:10.2f}" if added is not None else f"{'-':>10}"
                cs = f"{compile_s:9.1f}" if name == "compiled" else f"{'':>9}"
                us = row["evaluation_median_s"] * 1e6
                print(f"{n:3d} {k:2d} {name:>9} {us:9.1f} {ad} {floor:6.2f}{cs}", flush=True)
    # whole planner calls: the measurement (guided N = 2, baseline N = 7, the run's Heun steps)
    sampler_rows = []
    for model, n, compiled in (("baseline", 7, False), ("guided", 2, False), ("guided", 2, True)):
        sampler = FastSampler.from_run(run_dir, model, num_parallel=n, guidance_backend="torch",
                                       compile_guidance=compiled)
        sampler.warmup(calls=3)
        times = []
        for i in range(args.sampler_calls):
            t0 = time.process_time()
            sampler(seed=i)
            times.append(time.process_time() - t0)
        times.sort()
        p50 = times[len(times) // 2]
        sampler_rows.append({"model": model, "N": n, "compile_guidance": compiled,
                             "fast_path": sampler.fast_path, "steps": sampler.config.num_steps,
                             "solver": sampler.config.solver, "p50_cpu_s": p50, "calls": len(times)})
        print(f"FastSampler {model} N={n} {sampler.config.solver} {sampler.config.num_steps} steps "
              f"[{sampler.fast_path}]: p50 {p50 * 1e3:.2f} ms CPU")
    shutil.rmtree(workdir, ignore_errors=True)
    headline = {}
    for n in batches:
        for path in ("analytic", "eager", "compiled"):
            values = [r["added_per_classifier_over_baseline"] for r in rows
                      if r["batch"] == n and r["path"] == path]
            headline[f"N={n} {path} max over K"] = max(values)
    payload = {
        "benchmark": "guidance-compiled", "device": machine_info()["cpu"],
        "machine": machine_info(torch=torch.__version__), "time_measure": "process CPU time, 1 thread",
        "run_dir": str(args.run_dir), "sigma": sigma, "rounds": args.rounds, "calls_per_round": args.calls,
        "compile": {"dynamic": False, "backend": "inductor", "mode": "auto"},
        "target": "added_per_classifier_over_baseline <= 1.0 at N <= 32",
        "headline_added_per_classifier": headline, "rows": rows, "fast_sampler": sampler_rows,
        "command": " ".join(["guidance.py", *sys.argv[1:]]),
    }
    print(f"wrote {write_results('guidance-compiled-cpu', payload, args.out_dir)}")


def traffic_main(args: argparse.Namespace) -> None:
    """The ``--traffic`` benchmark (module docstring): eager conditioned guidance against its FLOP floor."""
    import shutil
    import statistics
    import tempfile

    from torch.utils.flop_counter import FlopCounterMode

    from genneg.diffusion import as_denoiser
    from genneg.guidance import GuidedDenoiser
    from genneg.pipeline.experiment import load_model

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="genneg-guidance-traffic-"))
    run_dir = workdir / args.run_dir.name
    shutil.copytree(args.run_dir, run_dir, ignore=shutil.ignore_patterns("samples", "*.png"))
    task, config, guided = load_model(run_dir, "guided")
    if not isinstance(guided, GuidedDenoiser) or not hasattr(task, "scene_oracle"):
        raise ValueError(f"{args.run_dir} is not a traffic run with a classifier stack")
    base = guided.denoiser
    classifiers, scales = list(guided.classifiers), list(guided.scales)
    sigma = 0.7
    batches = args.batches or [1, 8, 32]
    rows: list[dict[str, Any]] = []
    print(f"run {args.run_dir} ({config.profile}): {len(classifiers)} classifiers; process CPU time, "
          f"1 thread; {args.rounds} rounds x {args.calls} calls")
    print(f"{'N':>3} {'K':>2} {'eval ms':>9} {'added/cls':>10} {'flop floor':>10}")
    for n in batches:
        one = task.eval_contexts(1)
        cond = {k: v.expand(n, *v.shape[1:]).contiguous() for k, v in one.items()}
        a = cond["valid"].shape[1]
        x = torch.randn(n, a, 7, generator=torch.Generator().manual_seed(n)) * (1 + sigma * sigma) ** 0.5
        sig = torch.full((n,), sigma)
        den = as_denoiser(base, task.schedule)

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            den(x, sig, **cond)
        den_flops = counter.get_total_flops()
        # one classifier: forward + input-gradient backward (weights frozen so that no weight gradient is
        # counted; .backward() because the counter does not follow autograd.grad)
        flags = [q.requires_grad for q in classifiers[0].parameters()]
        for q in classifiers[0].parameters():
            q.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            xg = x.clone().requires_grad_(True)
            classifiers[0](xg, sig, **cond).sum().backward()
        for q, flag in zip(classifiers[0].parameters(), flags):
            q.requires_grad_(flag)
        floor = counter.get_total_flops() / den_flops
        models = {0: den}
        models.update({k: GuidedDenoiser(base, classifiers[:k], scales[:k], part_mask_key="valid")
                       for k in range(1, len(classifiers) + 1)})

        def log_c(xx: torch.Tensor, ss: torch.Tensor, cc: dict[str, torch.Tensor]) -> torch.Tensor:
            total = xx.new_zeros(())
            for c, g in zip(classifiers, scales):
                logits = torch.nn.functional.logsigmoid(c(xx, ss, **cc))
                total = total + g * torch.where(cc["valid"], logits, torch.zeros_like(logits)).sum()
            return total

        frozen = [(q, q.requires_grad) for c in classifiers for q in c.parameters()]
        for q, _ in frozen:
            q.requires_grad_(False)
        gradient = torch.func.grad(log_c)
        compiled = torch.compile(gradient, dynamic=False)
        t_compile = time.perf_counter()
        compiled(x, sig, cond)
        compile_s = time.perf_counter() - t_compile
        explanation = torch._dynamo.explain(gradient)(x, sig, cond)
        breaks, graphs = len(explanation.break_reasons), explanation.graph_count
        with torch.no_grad():
            reference = models[len(classifiers)](x, sig, **cond)
        compiled_eval = den(x, sig, **cond) + (sig * sig)[:, None, None] * compiled(x, sig, cond)
        max_error = float((compiled_eval.detach() - reference).abs().max())

        def compiled_call(den: Any = den, x: torch.Tensor = x, sig: torch.Tensor = sig,
                          cond: dict[str, torch.Tensor] = cond, compiled: Any = compiled) -> torch.Tensor:
            with torch.no_grad():
                d = den(x, sig, **cond)
            return d + (sig * sig)[:, None, None] * compiled(x, sig, cond)

        with torch.no_grad():
            candidates = {k: functools.partial(m, x, sig, **cond) for k, m in models.items()}
        candidates["compiled"] = compiled_call
        per_round = _interleaved(candidates, args.rounds, args.calls)
        for q, flag in frozen:
            q.requires_grad_(flag)
        t0 = per_round[0]
        for k, times in per_round.items():
            stack = len(classifiers) if k == "compiled" else k
            added = None if k == 0 else statistics.median((t - b) / (stack * b) for t, b in zip(times, t0))
            extra = {} if k != "compiled" else {"compile_s": compile_s, "graph_breaks": breaks,
                                                "graphs": graphs, "max_abs_error_vs_eager": max_error}
            rows.append({"batch": n, "K": stack, "path": "compiled" if k == "compiled" else "eager", **extra,
                         "evaluation_median_s": statistics.median(times),
                         "evaluation_per_round_s": times, "added_per_classifier_over_baseline": added,
                         "flop_floor_per_classifier": floor, "denoiser_flops": den_flops})
            ad = f"{added:10.2f}" if added is not None else f"{'-':>10}"
            label = f"{stack:2d}{'c' if k == 'compiled' else ' '}"
            print(f"{n:3d} {label} {statistics.median(times) * 1e3:9.2f} {ad} {floor:10.2f}"
                  + (f"  compile {compile_s:.1f} s, {graphs} graphs, {breaks} breaks, max error "
                     f"{max_error:.1e}" if k == "compiled" else ""), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    payload = {
        "benchmark": "guidance-traffic-eager", "machine": machine_info(torch=torch.__version__),
        "time_measure": "process CPU time, 1 thread", "run_dir": str(args.run_dir), "sigma": sigma,
        "rounds": args.rounds, "calls_per_round": args.calls, "load_average_end": list(os.getloadavg()),
        "target": "added_per_classifier_over_baseline <= 1.0 at N <= 32", "rows": rows,
        "command": " ".join(["guidance.py", *sys.argv[1:]]),
    }
    print(f"wrote {write_results('guidance-traffic-cpu', payload, args.out_dir)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid (smoke run)")
    parser.add_argument("--full", action="store_true", help="every K at every batch (slow on a CPU)")
    parser.add_argument("--steps", type=int, default=18, help="Heun steps per full sample")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--max-seconds", type=float, default=4.0, help="time budget per measurement")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch (CPU runs)")
    parser.add_argument("--batches", type=_int_list, default=None,
                        help="comma-separated batch sizes (replaces the grid's; with --ks)")
    parser.add_argument("--ks", type=_int_list, default=None,
                        help="comma-separated K values measured at every batch size")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="folder for the JSON")
    parser.add_argument("--compiled", action="store_true",
                        help="the compiled CPU guidance benchmark on a trained run (module docstring)")
    parser.add_argument("--run-dir", type=Path, default=Path("/work/runs/cb-quick-final"),
                        help="--compiled: the trained checkerboard run (copied, never written)")
    parser.add_argument("--rounds", type=int, default=15, help="--compiled: interleaved timing rounds")
    parser.add_argument("--calls", type=int, default=40, help="--compiled: calls per candidate per round")
    parser.add_argument("--sampler-calls", type=int, default=100, help="--compiled: FastSampler calls")
    parser.add_argument("--traffic", action="store_true",
                        help="eager conditioned guidance on a traffic run against its FLOP floor (docstring)")
    args = parser.parse_args()
    if args.traffic:
        traffic_main(args)
        return
    if args.compiled:
        compiled_main(args)
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # On a CPU, one thread and the process's CPU time: on a shared machine that measures the work and
    # not the neighbours (wall time is in the JSON too). On a GPU, wall time with synchronisation.
    use_cpu_time = device.type == "cpu" and args.threads == 1
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    def seconds(t: Timing) -> float:
        return t.cpu_median_s if use_cpu_time else t.median_s

    batches = [1, 32, 1024, 8192]
    ks_by_batch = {1: list(range(9)), 32: list(range(9)), 1024: [0, 1, 3, 5, 8], 8192: [0, 1, 5]}
    compile_cases = {(1, 32), (5, 32), (5, 1024)}
    sample_batches = {1, 32}
    if args.full or device.type == "cuda":
        ks_by_batch = {b: list(range(9)) for b in batches}
        sample_batches = set(batches)
    if args.quick:
        batches = [1, 32, 1024]
        ks_by_batch = {1: [0, 1, 5], 32: [0, 1, 5], 1024: [0, 1]}
        compile_cases = {(1, 32)}
    if args.batches is not None or args.ks is not None:
        batches = args.batches or batches
        ks = args.ks or sorted({k for b in batches for k in ks_by_batch.get(b, [0, 1])})
        ks_by_batch = {b: ks for b in batches}
        sample_batches = {b for b in batches if b <= 32 or device.type == "cuda"}
    if args.no_compile:
        compile_cases = set()
    from genneg.kernels._backend import has_triton

    fused_reason = None
    if device.type != "cuda":
        fused_reason = "no CUDA device (the Triton interpreter is for tests, not timing)"
    elif not has_triton():
        fused_reason = "triton is not installed"
    if fused_reason:
        print(f"fused Triton: skipped: {fused_reason}")

    sigmas = [float(s) for s in make_sigmas("karras", args.steps, 0.002, 80.0)]
    rows: list[dict[str, Any]] = []
    print(
        f"device {device}; Heun step 2.0 -> 1.6; full sample = {args.steps} steps; hidden {args.hidden}; "
        f"{'CPU time, 1 thread' if use_cpu_time else 'wall time'}"
    )
    print(
        f"{'B':>5} {'K':>2} {'path':>9} {'step ms':>10} {'sample ms':>11} {'overhead/cls':>12} "
        f"{'vs eager':>8}"
    )
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else machine_info()["cpu"]
    result_name = f"guidance-{device.type}" + ("-quick" if args.quick else "")

    def payload(nvtx: dict[str, float] | None, complete: bool) -> dict[str, Any]:
        return {
            "benchmark": "guidance",
            "device": device_name,
            "complete": complete,
            "machine": machine_info(torch=torch.__version__),
            "time_measure": "process CPU time, 1 thread" if use_cpu_time else "wall clock",
            "config": {
                "threads": args.threads,
                "hidden": args.hidden,
                "num_blocks": 2,
                "dim": DIM,
                "steps": args.steps,
                "step_sigmas": [2.0, 1.6],
                "ks_by_batch": ks_by_batch,
                "compile_cases": sorted(compile_cases),
            },
            "fused_skipped_reason": fused_reason,
            "nvtx": nvtx,
            "rows": rows,
        }

    for batch in batches:
        baseline: Timing | None = None
        for k in ks_by_batch[batch]:
            denoiser, classifiers = build(k, device, args.hidden)
            x = torch.randn(batch, DIM, device=device) * 2.0
            models: dict[str, Any] = {
                "eager": GuidedDenoiser(denoiser, classifiers, backend="torch"),
                "analytic": AnalyticGuided(denoiser, classifiers),
            }
            if fused_reason is None:
                models["fused"] = GuidedDenoiser(denoiser, classifiers, backend="triton")
            budget = dict(repeats=5, warmup=1 if batch <= 1024 else 0, max_total_s=args.max_seconds)
            timings: dict[str, Timing] = {}
            compile_s = None
            for name, model in models.items():
                timings[name] = time_call(step_fn(model, x, device), **budget)
            if (k, batch) in compile_cases:
                compiled = torch.compile(step_fn(models["analytic"], x, device))
                t0 = time.perf_counter()
                compiled()
                compile_s = time.perf_counter() - t0
                timings["compile"] = time_call(compiled, **budget)
            if k == 0:
                baseline = timings["eager"]
            for name, t in timings.items():
                sample = None
                derived = batch not in sample_batches or name == "compile"
                if not derived:
                    fn = sample_fn(models[name], x * 40.0, sigmas, device)
                    sample = time_call(fn, repeats=3, warmup=0, max_total_s=args.max_seconds)
                step_s = seconds(t)
                sample_s = seconds(sample) if sample is not None else step_s * args.steps
                overhead = None
                if k > 0 and baseline is not None:
                    overhead = (step_s - seconds(baseline)) / (k * seconds(baseline))
                speedup = ratio(timings["eager"], t, cpu=use_cpu_time)
                row = {
                    "batch": batch,
                    "K": k,
                    "path": name,
                    "step": t,
                    "sample": sample,
                    "sample_median_s": sample_s,
                    "sample_derived": derived,
                    "overhead_per_classifier": overhead,
                    "speedup_vs_eager": speedup,
                    "compile_time_s": compile_s if name == "compile" else None,
                }
                rows.append(row)
                ov = f"{overhead:12.2f}" if overhead is not None else f"{'-':>12}"
                mark = "*" if derived else " "
                note = f"  (compile {compile_s:.1f} s)" if name == "compile" else ""
                print(
                    f"{batch:5d} {k:2d} {name:>9} {step_s * 1e3:10.3f} {sample_s * 1e3:10.1f}{mark} "
                    f"{ov} {speedup:8.2f}{note}"
                )
        # after every batch: a run cut short keeps its rows
        write_results(result_name, payload(None, complete=False), args.out_dir)
    print("* = steps x per-step (not measured as a whole sample)")
    nvtx = nvtx_cost()
    if nvtx["available"]:
        print(f"NVTX range: {nvtx['off_ns_per_range']:.0f} ns off, {nvtx['on_ns_per_range']:.0f} ns on")
    else:
        print(f"NVTX range: {nvtx['off_ns_per_range']:.0f} ns off; NVTX not installed, 'on' not measured")
    print(f"wrote {write_results(result_name, payload(nvtx, complete=True), args.out_dir)}")


if __name__ == "__main__":
    main()
