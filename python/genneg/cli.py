"""Command line: ``genneg train|sample|eval|report|demo`` (also ``python -m genneg``).

::

    genneg train checkerboard --profile quick --run-dir runs/cb --seed 0 --set classifier.iterations=500
    genneg train checkerboard --run-dir runs/cb --resume        # continue a killed run
    genneg train traffic --profile quick --run-dir runs/traffic   # traffic scenes (Table 1 report)
    genneg train --data train.npy --oracle mypkg.rules:is_valid --profile quick --run-dir runs/x
    genneg train --task mypkg.tasks:make_task --profile quick --run-dir runs/y
    genneg sample --run-dir runs/cb --model iter3 --num 10000 --out samples.npy
    genneg eval --run-dir runs/cb --model distilled --num 20000
    genneg eval --run-dir runs/cb --model iter3 --sampler dpmpp_2m --steps 8   # a few-step solver
    genneg report --run-dir runs/cb
    genneg demo                                                 # quick checkerboard end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``genneg`` command."""
    from genneg.pipeline.registry import experiment_names

    parser = argparse.ArgumentParser(prog="genneg", description="Gen-neG: diffusion models guided away from "
                                     "oracle-invalid samples by stacked time-dependent classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run (or resume) Gen-neG on an experiment or on your own data")
    train.add_argument("experiment", nargs="?", default=None,
                       help=f"a registered experiment ({', '.join(experiment_names())}); omit it with "
                            "--data/--oracle or --task")
    train.add_argument("--data", default=None,
                       help="your training data: .npy, .npz or .safetensors, (N, d) (needs --oracle)")
    train.add_argument("--heldout", default=None, help="held-out data (default: 10%% of --data)")
    train.add_argument("--oracle", default=None,
                       help="your oracle, 'package.module:function' or 'path/to/file.py:function': "
                            "oracle(x) -> bool (n,), True = valid")
    train.add_argument("--oracle-input", default="numpy", choices=("numpy", "torch"),
                       help="what the --oracle function is given: a NumPy array (default) or a torch tensor")
    train.add_argument("--name", default="arrays", help="experiment name of a --data run (report title)")
    train.add_argument("--task", default=None,
                       help="a task factory 'package.module:function' or 'path/to/file.py:function' "
                            "returning a genneg.Task")
    train.add_argument("--profile", default=None, help="tiny | quick | paper (default: quick; on --resume "
                       "the saved config is used)")
    train.add_argument("--run-dir", required=True, type=Path, help="run directory")
    train.add_argument("--seed", type=int, default=None, help="run seed (default 0)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. classifier.iterations=500 (repeatable)")
    train.add_argument("--threads", type=int, default=None, help="PyTorch intra-op threads (0 = default)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train.add_argument("--overwrite", action="store_true", help="start afresh in an existing --run-dir")
    train.add_argument("--quiet", action="store_true", help="no progress output")

    sample = sub.add_parser("sample", help="draw samples from a model of a finished run")
    sample.add_argument("--run-dir", required=True, type=Path)
    sample.add_argument("--model", default="baseline", help=_MODELS_HELP)
    # --num-samples: the spelling torchrun passes on (its parser takes --num for --numa-binding, abbreviated)
    sample.add_argument("--num", "--num-samples", dest="num", type=int, default=10_000,
                        help="number of samples")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, required=True,
                        help="output file: .npy (N, *shape) float32, or .npz with the samples as 'x' and "
                             "their conditioning as 'cond.<key>' (conditioned tasks such as traffic)")
    sample.add_argument("--oracle", default=None, help="the oracle, for a run whose oracle has no reference")
    _sampling_arguments(sample)

    evaluate = sub.add_parser("eval", help="evaluate a model of a finished run (prints JSON)")
    evaluate.add_argument("--run-dir", required=True, type=Path)
    evaluate.add_argument("--model", default="baseline", help=_MODELS_HELP)
    evaluate.add_argument("--num", "--num-samples", dest="num", type=int, default=None,
                          help="samples (default: the run's eval size)")
    evaluate.add_argument("--oracle", default=None,
                          help="the oracle, for a run whose oracle has no reference")
    _sampling_arguments(evaluate)

    report = sub.add_parser("report", help="rewrite report.md and the plots of a run")
    report.add_argument("--run-dir", required=True, type=Path)
    report.add_argument("--oracle", default=None, help="the oracle, for a run whose oracle has no reference")

    demo = sub.add_parser("demo", help="the quick checkerboard profile end to end, with report and plots")
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--profile", default="quick")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--resume", action="store_true")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--skip-oracle-demo", action="store_true",
                      help="skip the traffic-oracle timing demo that runs first")

    carla = sub.add_parser("fetch-carla-maps", add_help=False,
                           help="build drivable maps of the CARLA towns shipped in the torchdrivesim wheel "
                                "(see: genneg fetch-carla-maps --help)")
    carla.add_argument("args", nargs="*", help="handed to the map builder's own parser")
    return parser


_MODELS_HELP = "baseline | iter<k> | guided (the last iteration's stack) | ablation_<mode> | distilled"


def _strict_json(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None (null): a metric that could not be computed,
    e.g. the MMD of non-finite samples, without breaking strict JSON readers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler", default=None,
                        help="PF-ODE sampler instead of the run's: heun | euler | dpmpp_2m | unipc "
                             "(EDM tasks; traffic: ancestral)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps instead of the run's")
    parser.add_argument("--schedule", default=None, help="sigma schedule instead of the run's: log_linear | "
                        "karras (EDM tasks)")
    parser.add_argument("--sigma-max", type=float, default=None,
                        help="first noise level of the schedule instead of the run's (EDM tasks)")


def _load(args: argparse.Namespace) -> Any:
    from genneg.pipeline.experiment import load_model

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    sampling = {"sampler": args.sampler, "num_steps": args.steps, "schedule": args.schedule,
                "sigma_max": args.sigma_max}
    return load_model(args.run_dir, args.model, oracle=_oracle(args), sampling=sampling)


def _train(args: argparse.Namespace) -> int:
    from genneg.pipeline.experiment import train

    sources = [name for name, value in (("an experiment", args.experiment), ("--data", args.data),
                                        ("--task", args.task)) if value]
    if not sources and args.resume:  # the run records its task, data reference and config
        from genneg.pipeline.experiment import resume_run

        if args.profile or args.overrides or args.seed is not None or args.threads is not None:
            raise ValueError("--resume without an experiment, --data or --task continues the run as it was "
                             "recorded: --profile, --set, --seed and --threads cannot change it")
        start = time.perf_counter()
        rows = resume_run(args.run_dir, progress=not args.quiet, oracle=_oracle(args))
        _print_table(args.run_dir, rows, start)
        return 0
    if len(sources) != 1:
        raise ValueError("give exactly one of: an experiment name, --data (with --oracle), or --task; got "
                         + (", ".join(sources) or "none"))
    if (args.data is None) != (args.oracle is None):
        raise ValueError("--data and --oracle go together")
    if args.oracle_input != "numpy" and args.data is None:
        raise ValueError("--oracle-input goes with --data/--oracle")
    if args.heldout is not None and args.data is None:
        raise ValueError("--heldout needs --data")
    task: Any
    if args.data is not None:
        import genneg

        task = genneg.Task.from_arrays(args.data, oracle=args.oracle, heldout_x=args.heldout, name=args.name,
                                       oracle_input=args.oracle_input)
    else:
        task = args.experiment or args.task
    start = time.perf_counter()
    rows = train(task, run_dir=args.run_dir, profile=args.profile, seed=args.seed, threads=args.threads,
                 overrides=args.overrides, resume=args.resume, overwrite=args.overwrite,
                 progress=not args.quiet)
    _print_table(args.run_dir, rows, start)
    return 0


def _print_table(run_dir: Path, rows: list[dict[str, Any]], start: float) -> None:
    from genneg.pipeline.distributed import world

    if not world().is_main:  # under torchrun, rank 0 speaks for the job
        return
    from genneg.pipeline.experiment import open_run

    task, _, _ = open_run(run_dir)
    print(task.format_table(rows))
    print(f"report: {run_dir / 'report.md'}  ({time.perf_counter() - start:.0f} s)")


def _oracle(args: argparse.Namespace) -> Any:
    from genneg.pipeline.registry import import_object

    return import_object(args.oracle) if args.oracle else None


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    suffix = args.out.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"--out must end in .npy or .npz, got {args.out}")
    from genneg.pipeline.distributed import world

    if not world().is_main:  # under torchrun, rank 0 draws the one stream of --seed and writes it alone
        return 0
    task, _, model = _load(args)
    generator = torch.Generator(device=task.generator_device).manual_seed(args.seed)
    cond = task.eval_contexts(args.num)
    x = task.sample(model, args.num, generator, cond=cond, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        arrays = {"x": x.cpu().numpy()}
        arrays.update({f"cond.{k}": v.cpu().numpy() for k, v in (cond or {}).items()})
        np.savez(args.out, **arrays)
    else:
        np.save(args.out, x.cpu().numpy())
        if cond is not None:
            print(f"note: these samples are conditioned on held-out contexts {sorted(cond)}; write .npz to "
                  "keep them", file=sys.stderr)
    print(f"wrote {args.num} samples of {args.model} to {args.out}")
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:
        print(f"warning: {bad} of {args.num} samples are not finite (NaN/inf): the model or the sampling "
              "options (--sigma-max, --steps) are at fault", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.num is not None and args.num < 2:
        raise ValueError(f"--num must be >= 2, got {args.num}")
    from genneg.pipeline.distributed import init_from_env

    task, config, model = _load(args)
    world = init_from_env(config.device)  # under torchrun: a sharded evaluation, rank 0 prints
    if not (world.is_main or task.shards_evaluation):
        return 0
    metrics, _ = task.evaluate(model, num_samples=args.num, progress=world.is_main)
    if not world.is_main:
        return 0
    sampling = getattr(config, "sampling", None)
    if sampling is not None:
        metrics = {"sampler": sampling.sampler, "steps": sampling.num_steps, "schedule": sampling.schedule,
                   "sigma_max": float(task.sigmas[0]), **metrics}
    print(json.dumps(_strict_json({"model": args.model, **metrics}), indent=2, allow_nan=False))
    return 0


def _report(args: argparse.Namespace) -> int:
    from genneg.pipeline.distributed import world
    from genneg.pipeline.experiment import open_run, write_run_report

    if not world().is_main:  # under torchrun, rank 0 writes the report alone
        return 0
    task, _, run = open_run(args.run_dir, oracle=_oracle(args))
    path = write_run_report(run, task=task)
    print(path.read_text())
    print(f"report: {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from genneg.io.config import apply_overrides
    from genneg.pipeline.experiment import run_experiment
    from genneg.pipeline.profiles import get_profile
    from genneg.pipeline.report import format_table

    config = apply_overrides(dataclasses.replace(get_profile(args.profile), seed=args.seed), args.overrides)
    if not args.skip_oracle_demo:
        from genneg.oracles.demo import format_oracle_demo, run_oracle_demo

        print(format_oracle_demo(run_oracle_demo(args.run_dir, seed=args.seed)), flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = run_experiment(config, args.run_dir, resume=args.resume, overwrite=not args.resume,
                          progress=not args.quiet)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(format_table(rows, config.eval.p))
    print(f"report: {(args.run_dir / 'report.md').resolve()}")
    for name in ("samples.png", "classifiers.png", "progress.png"):
        if (args.run_dir / name).is_file():
            print(f"plot:   {(args.run_dir / name).resolve()}")
    print(f"wall time: {seconds:.0f} s (CPU time of this process: {cpu_seconds:.0f} s)")
    return 0


_COMMANDS = {"train": _train, "sample": _sample, "eval": _eval, "report": _report, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``genneg`` (and ``python -m genneg``); returns the exit status."""
    from genneg.io.rundir import RunStateError
    from genneg.pipeline.arrays import OracleError
    from genneg.pipeline.balanced import InfractionBudgetError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fetch-carla-maps"]:  # its own parser takes every remaining argument, --help included
        from genneg.data.traffic.carla import main as carla_main

        return carla_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (RunStateError, ValueError, TypeError, FileNotFoundError, ImportError, OracleError) as err:
        print(f"genneg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except InfractionBudgetError as err:
        print(f"genneg {args.command}: error: {err} Finished stages are kept in --run-dir. To go on, train "
              "again (a new --run-dir, or --overwrite) with one of --set gen_neg.max_draws=<more>, --set "
              "gen_neg.budget_policy=shrink (a smaller balanced set) or --set gen_neg.iterations=<fewer>.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        hint = (f"; continue with: genneg train --run-dir {run_dir} --resume" if args.command == "train"
                else "")
        print(f"\ngenneg {args.command}: interrupted (finished stages are kept{hint})", file=sys.stderr)
        return 130
    finally:
        from genneg.pipeline.distributed import shutdown

        shutdown()  # leave the process group of a torchrun job (nothing for one process)


if __name__ == "__main__":
    sys.exit(main())
