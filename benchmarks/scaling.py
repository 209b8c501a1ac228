"""Data-parallel scaling of the two expensive Gen-neG stages under ``torchrun`` (issue 14).

Measures, for 1 and 2 processes (``torchrun --standalone --nproc-per-node=N``, gloo on the CPU, nccl on
CUDA):

- **data stage**: samples drawn and labelled per second by :func:`genneg.pipeline.balanced.draw_balanced`
  on the checkerboard (the quick profile's denoiser and sampler: residual MLP hidden 128, 32 Heun steps;
  the data stage's cost is sampling, so the network's weights do not matter), for each global sampling
  batch of ``--sample-batch`` (a comma-separated list): the batch is the global batch, so each of 2
  processes draws half of it per call and the two configurations do the same work per round;
- **classifier training**: examples per second of :func:`genneg.pipeline.classifier.train_classifier`
  at the paper's batch size 8192 with the paper's classifier (residual MLP hidden 256, two blocks);
- the **communication** of a classifier step: the bytes DDP all-reduces (every gradient, float32) and
  the measured time of one gloo all-reduce of that size.

Peers: one process with one intra-op thread (the unit that 2 processes of 1 thread each scale from) and
one process with every core (PyTorch's default on one process). Each figure is the median of
``--repeats`` runs; the JSON (``benchmarks/results/scaling-<device>.json``) names the machine and its
load average, and holds the on-paper estimate for 8 and 64 GPUs (``estimate``) from the measured bytes
per step and the compute per step.

    python benchmarks/scaling.py            # CPU: 1 process x 1 thread, 1 x all cores, 2 x (cores / 2)
    python benchmarks/scaling.py --quick    # fewer draws and steps
    python benchmarks/scaling.py --device cuda   # one GPU per process (needs as many GPUs)
    python benchmarks/scaling.py --sample-batch 1000,2000,4000 --data-only   # the data stage alone
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS_DIR, machine_info, write_results


def _worker(args: argparse.Namespace) -> None:
    """One rank of a measurement (run under torchrun)."""
    import torch
    import torch.distributed as dist

    from genneg.io.rundir import stage_generator
    from genneg.pipeline import distributed
    from genneg.pipeline.balanced import BalancedDataset, draw_balanced
    from genneg.pipeline.checkerboard import CheckerboardTask
    from genneg.pipeline.classifier import train_classifier
    from genneg.pipeline.profiles import get_profile

    world = distributed.init_from_env(args.device)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{world.local_rank}")
    out: dict[str, Any] = {"world_size": world.world_size, "threads": args.threads, "backend": world.backend}

    # data stage: the quick profile's denoiser and sampler --------------------------------------------
    quick = get_profile("quick")
    quick = dataclasses.replace(quick, device=str(device))
    task = CheckerboardTask()
    task.setup(quick, Path(tempfile.gettempdir()))
    torch.manual_seed(0)
    denoiser = task.new_denoiser().eval()

    def sample_fn(n: int, start: int) -> torch.Tensor:
        return task.sample(denoiser, n, stage_generator(0, f"bench/rows{start}", task.generator_device))

    out["data_by_batch"] = {}
    for batch in [int(b) for b in args.sample_batch.split(",")]:
        data_s, drawn = [], 0
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            distributed.barrier()
            t0 = time.perf_counter()
            with torch.no_grad():
                dataset = draw_balanced(sample_fn, task.oracle, args.num_samples, batch_size=batch,
                                        max_draws=100 * args.num_samples)
            distributed.barrier()
            if repeat:
                data_s.append(time.perf_counter() - t0)
            drawn = dataset.num_drawn
        out["data_by_batch"][str(batch)] = {
            "num_samples": args.num_samples, "num_drawn": drawn, "sample_batch": batch,
            "rank_batch": distributed.rank_batch(batch), "sampling_steps": quick.sampling.num_steps,
            "seconds": data_s, "denoiser_parameters": sum(p.numel() for p in denoiser.parameters()),
            "samples_per_s": drawn / statistics.median(data_s)}
    out["data"] = next(iter(out["data_by_batch"].values()))
    if args.data_only:
        if world.is_main:
            Path(args.out).write_text(json.dumps(out, indent=2))
        distributed.shutdown()
        return

    # classifier training at the paper's batch --------------------------------------------------------
    paper = get_profile("paper")
    paper = dataclasses.replace(paper, device=str(device))
    ptask = CheckerboardTask()
    ptask.setup(paper, Path(tempfile.gettempdir()))
    g = torch.Generator().manual_seed(1)
    x = (torch.rand((20_000, 2), generator=g) * 4 - 2).to(device)
    labels = torch.as_tensor(ptask.oracle(x)).to(device)
    pos, neg = torch.nonzero(labels).flatten()[:5000], torch.nonzero(~labels).flatten()[:5000]
    keep = torch.cat([pos, neg])
    data = BalancedDataset(x[keep], labels[keep], None, 0.93, 0.07, 20_000)
    cfg = dataclasses.replace(paper.classifier, iterations=args.classifier_steps)
    clf_s = []
    for repeat in range(args.repeats + 1):
        torch.manual_seed(0)
        classifier = ptask.new_classifier(True)
        distributed.barrier()
        t0 = time.perf_counter()
        train_classifier(classifier, data, cfg, ptask.classifier_noise,
                         generator=torch.Generator(device=device).manual_seed(2))
        if device.type == "cuda":
            torch.cuda.synchronize()
        distributed.barrier()
        if repeat:
            clf_s.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    grad_bytes = sum(p.numel() * p.element_size() for p in classifier.parameters() if p.requires_grad)
    out["classifier"] = {"batch_size": cfg.batch_size, "steps": cfg.iterations, "seconds": clf_s,
                         "examples_per_s": cfg.iterations * cfg.batch_size / statistics.median(clf_s),
                         "step_ms": 1e3 * statistics.median(clf_s) / cfg.iterations,
                         "parameters": params, "allreduce_bytes_per_step": grad_bytes}
    if world.distributed:
        buf = torch.zeros(params, dtype=torch.float32, device=device)
        times = []
        for _ in range(30):
            distributed.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out["classifier"]["allreduce_ms"] = 1e3 * statistics.median(times[5:])
    if world.is_main:
        Path(args.out).write_text(json.dumps(out, indent=2))
    distributed.shutdown()


def _launch(nproc: int, threads: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           __file__, "--worker", "--out", str(out), "--threads", str(threads), "--device", args.device,
           "--repeats", str(args.repeats), "--num-samples", str(args.num_samples),
           "--sample-batch", str(args.sample_batch), "--classifier-steps", str(args.classifier_steps),
           *(["--data-only"] if args.data_only else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def _estimate(step_compute_ms: float, grad_bytes: int, flops_per_step: float,
              sample_flops: float) -> dict[str, Any]:
    """Scaling to W GPUs, on paper.

    Classifier training at the paper's batch: ``t(W) = max(t_c / W, t_launch) + t_allreduce(W)``, the
    all-reduce as NCCL picks it, the faster of ring (``2 (W-1)/W · bytes / bw + 2 (W-1) · lat``) and tree
    (``2 · bytes / bw + 2 log2(W) · lat``). Data stage: each rank samples and labels its own batches; per
    draw one label byte travels (the kept set once at the end), against ``sample_flops`` of sampling, so
    its efficiency is that of the per-rank batch filling a device."""
    assumptions = {
        "gpu_step_compute_ms_1gpu": step_compute_ms,
        "gpu_fp32_flops_per_s": 20e12,  # small fp32 matmuls on an H100-class GPU, well below its peak
        "flops_per_step": flops_per_step,
        "launch_floor_ms": 0.3,  # ~60 kernels (forward, backward, Adam) x ~5 us each: a step's floor
        "nvlink_GBps": 200.0, "nvlink_latency_us": 10.0,      # 8 GPUs in one node (NVLink, nccl)
        "infiniband_GBps": 25.0, "infiniband_latency_us": 20.0,  # 64 GPUs over 8 nodes (200 Gb/s per GPU)
        "data_stage_flops_per_draw": sample_flops,
    }
    rows: dict[str, Any] = {}
    one = max(step_compute_ms, assumptions["launch_floor_ms"])
    for w, bw, lat in ((8, assumptions["nvlink_GBps"], assumptions["nvlink_latency_us"]),
                       (64, assumptions["infiniband_GBps"], assumptions["infiniband_latency_us"])):
        ring_ms = 1e3 * (2 * (w - 1) / w * grad_bytes / (bw * 1e9)) + 2 * (w - 1) * lat * 1e-3
        tree_ms = 1e3 * (2 * grad_bytes / (bw * 1e9)) + 2 * math.log2(w) * lat * 1e-3
        allreduce_ms = min(ring_ms, tree_ms)
        step_ms = max(step_compute_ms / w, assumptions["launch_floor_ms"]) + allreduce_ms
        # data stage: 1 byte per draw gathered (plus the kept set once) against sample_flops per draw
        draw_s = sample_flops / assumptions["gpu_fp32_flops_per_s"]
        label_s = 1.0 / (bw * 1e9)
        rows[f"{w}_gpus"] = {
            "classifier_allreduce_ms": allreduce_ms, "classifier_step_ms": step_ms,
            "classifier_speedup_vs_1_gpu": one / step_ms, "classifier_efficiency": one / step_ms / w,
            "data_stage_efficiency": draw_s / (draw_s + label_s),
        }
    return {"assumptions": assumptions, **rows}


def _merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One run per configuration from several rounds: the timed seconds of every round pooled, the rates
    recomputed from their median."""
    runs = json.loads(json.dumps(rounds[0]))
    for key, run in runs.items():
        for batch, row in _by_batch(run).items():
            row["seconds"] = [t for m in rounds for t in _by_batch(m[key])[batch]["seconds"]]
            row["samples_per_s"] = row["num_drawn"] / statistics.median(row["seconds"])
        if "data_by_batch" in run:
            run["data"] = next(iter(run["data_by_batch"].values()))
        if "classifier" in run and len(rounds) > 1:
            clf = run["classifier"]
            clf["seconds"] = [t for m in rounds for t in m[key]["classifier"]["seconds"]]
            clf["examples_per_s"] = clf["steps"] * clf["batch_size"] / statistics.median(clf["seconds"])
            clf["step_ms"] = 1e3 * statistics.median(clf["seconds"]) / clf["steps"]
    return runs


def _by_batch(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{global batch: data-stage row}`` of one run (files written before the batch list: its one batch)."""
    return run.get("data_by_batch") or {str(run["data"]["sample_batch"]): run["data"]}


def _summarise(runs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Ratios of the measured runs (data stage: per global batch, against the same batch in one process
    and against the fastest one-process run at any batch) and the on-paper estimate (None without a
    classifier measurement)."""
    one = runs["1proc_x_1thread"]
    two = next(v for k, v in runs.items() if k.startswith("2proc"))
    ones = [v for k, v in runs.items() if k.startswith("1proc")]
    best_any = max(row["samples_per_s"] for v in ones for row in _by_batch(v).values())
    data: dict[str, Any] = {}
    for batch, row in _by_batch(two).items():
        same = [_by_batch(v)[batch]["samples_per_s"] for v in ones if batch in _by_batch(v)]
        data[batch] = {
            "2proc_samples_per_s": row["samples_per_s"],
            "vs_1proc_1thread": row["samples_per_s"] / _by_batch(one)[batch]["samples_per_s"],
            "vs_best_1proc_same_batch": row["samples_per_s"] / max(same),
            "vs_best_1proc_any_batch": row["samples_per_s"] / best_any,
        }
    first = next(iter(data.values()))
    ratios: dict[str, Any] = {"data_2proc_vs_1proc_1thread": first["vs_1proc_1thread"],
                              "data_2proc_vs_best_1proc": first["vs_best_1proc_same_batch"],
                              "data_by_global_batch": data}
    if "classifier" not in one:
        return ratios, None
    best_clf = max(v["classifier"]["examples_per_s"] for v in ones)
    ratios["classifier_2proc_vs_1proc_1thread"] = \
        two["classifier"]["examples_per_s"] / one["classifier"]["examples_per_s"]
    ratios["classifier_2proc_vs_best_1proc"] = two["classifier"]["examples_per_s"] / best_clf
    clf = one["classifier"]
    flops = 6.0 * clf["parameters"] * clf["batch_size"]  # forward + backward of the MLP, 2 flops per MAC
    row = one["data"]
    # a draw: 2 denoiser calls per Heun step of the quick profile's MLP (about the classifier's size / 3)
    sample_flops = 2.0 * 2 * row["sampling_steps"] * row.get("denoiser_parameters", clf["parameters"] / 3)
    estimate = _estimate(1e3 * flops / 20e12, clf["allreduce_bytes_per_step"], flops, sample_flops)
    return ratios, estimate


def _print(runs: dict[str, Any], ratios: dict[str, Any], estimate: dict[str, Any] | None) -> None:
    for key, run in runs.items():
        data = ", ".join(f"batch {b}: {row['samples_per_s']:.0f}" for b, row in _by_batch(run).items())
        clf = run.get("classifier")
        print(f"{key:>18}: data samples/s ({data})" + (
            "" if clf is None else f"; classifier {clf['examples_per_s']:.0f} examples/s "
                                   f"({clf['step_ms']:.1f} ms/step)"))
    for batch, row in ratios["data_by_global_batch"].items():
        print(f"data stage, global batch {batch:>6}: 2 processes {row['vs_1proc_1thread']:.2f}x 1 process "
              f"x 1 thread, {row['vs_best_1proc_same_batch']:.2f}x the best 1 process at this batch, "
              f"{row['vs_best_1proc_any_batch']:.2f}x the best 1 process at any batch")
    for name, value in ratios.items():
        if name.startswith("classifier"):
            print(f"{name:>36}: {value:.2f}x")
    if estimate is None:
        return
    clf = runs["1proc_x_1thread"]["classifier"]
    two = next(v for k, v in runs.items() if k.startswith("2proc"))
    print(f"classifier step: {clf['allreduce_bytes_per_step']:,} bytes all-reduced, "
          f"{estimate['assumptions']['flops_per_step'] / 1e9:.1f} GFLOP; one all-reduce of it here "
          f"{two['classifier'].get('allreduce_ms', math.nan):.2f} ms")
    for w in ("8_gpus", "64_gpus"):
        e = estimate[w]
        print(f"estimate {w}: classifier step {e['classifier_step_ms']:.3f} ms (all-reduce "
              f"{e['classifier_allreduce_ms']:.3f} ms), speedup {e['classifier_speedup_vs_1_gpu']:.2f}x "
              f"(efficiency {100 * e['classifier_efficiency']:.0f}%); data stage efficiency "
              f"{100 * e['data_stage_efficiency']:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer draws and steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median taken)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="launch every configuration this many times in turn (each with --repeats): "
                             "a machine whose speed drifts over minutes then slows every configuration "
                             "alike, and the data stage's ratios are also taken round by round (median)")
    parser.add_argument("--num-samples", type=int, default=None, help="balanced examples per draw")
    parser.add_argument("--sample-batch", default="2000",
                        help="global samples per round of the data stage (comma-separated list: each is "
                             "measured); each of W processes draws ceil(batch / W) per call")
    parser.add_argument("--data-only", action="store_true", help="measure the data stage alone")
    parser.add_argument("--name", default=None, help="results file name (default scaling-<device>)")
    parser.add_argument("--classifier-steps", type=int, default=None, help="classifier steps per repeat")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--from-json", type=Path, default=None,
                        help="recompute the ratios and the estimate of a results file (no measuring)")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        payload["ratios"], payload["estimate"] = _summarise(payload["runs"])
        _print(payload["runs"], payload["ratios"], payload["estimate"])
        print(f"rewrote {write_results(args.from_json.stem, payload, args.from_json.parent)}")
        return
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.num_samples = args.num_samples or (4000 if args.quick else 10_000)
    args.classifier_steps = args.classifier_steps or (5 if args.quick else 20)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load_before = os.getloadavg()
    configs = [(1, 1), (1, cores), (2, max(1, cores // 2))] if args.device == "cpu" else [(1, 1), (2, 1)]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            measured = {}
            for nproc, threads in configs:
                key = f"{nproc}proc_x_{threads}thread"
                measured[key] = _launch(nproc, threads, args, Path(tmp) / f"{key}.json")
                print(f"round {r + 1}/{args.rounds}, {key}: measured", flush=True)
            rounds.append(measured)
    runs = _merge_rounds(rounds)
    ratios, estimate = _summarise(runs)
    if args.rounds > 1:  # the same ratios per round (each configuration measured minutes apart), median
        per_round = [_summarise(m)[0]["data_by_global_batch"] for m in rounds]
        for batch, row in ratios["data_by_global_batch"].items():
            for name in ("vs_1proc_1thread", "vs_best_1proc_same_batch", "vs_best_1proc_any_batch"):
                values = [p[batch][name] for p in per_round]
                row[f"{name}_per_round"] = values
                row[f"{name}_median_of_rounds"] = statistics.median(values)
    _print(runs, ratios, estimate)
    for batch, row in ratios["data_by_global_batch"].items():
        if "vs_1proc_1thread_per_round" in row:
            print(f"data stage, global batch {batch:>6}, median of {args.rounds} rounds: 2 processes "
                  f"{row['vs_1proc_1thread_median_of_rounds']:.2f}x 1 process x 1 thread, "
                  f"{row['vs_best_1proc_same_batch_median_of_rounds']:.2f}x the best 1 process at this batch "
                  f"(per round: {', '.join(f'{v:.2f}' for v in row['vs_1proc_1thread_per_round'])})")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    name = args.name or f"scaling-{args.device}" + ("-quick" if args.quick else "")
    path = write_results(name, {
        "benchmark": "scaling", "device": args.device, "machine": machine_info(),
        "load_average_before": list(load_before), "uptime_after": uptime,
        "settings": {"repeats": args.repeats, "rounds": args.rounds, "num_samples": args.num_samples,
                     "sample_batch": args.sample_batch, "classifier_steps": args.classifier_steps},
        "runs": runs, "ratios": ratios, "targets": {"data_2proc": 1.7, "classifier_2proc": 1.5},
        "estimate": estimate,
        "note": "ratios of medians; 2 processes of cores/2 threads against 1 process of 1 thread (the unit "
                "of process scaling) and against the faster of 1 process x 1 thread and 1 process x all "
                "cores. Data stage: sample_batch is the global batch of a round (2 processes draw half of "
                "it each per call). The estimate is on paper, not measured on GPUs.",
    }, args.out_dir)
    print(f"wrote {path}  (load: {uptime})")
    if not math.isfinite(ratios["data_2proc_vs_1proc_1thread"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
