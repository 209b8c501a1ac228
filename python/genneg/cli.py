"""Command line: ``genneg train|sample|eval|report|demo`` (also ``python -m genneg``).

::

    genneg train checkerboard --profile quick --run-dir runs/cb --seed 0 --set classifier.iterations=500
    genneg train checkerboard --run-dir runs/cb --resume        # continue a killed run
    genneg train traffic --profile quick --run-dir runs/traffic   # traffic scenes (Table 1 report)
    genneg sample --run-dir runs/cb --model iter3 --num 10000 --out samples.npy
    genneg eval --run-dir runs/cb --model distilled --num 20000
    genneg report --run-dir runs/cb
    genneg demo                                                 # quick checkerboard end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``genneg`` command."""
    parser = argparse.ArgumentParser(prog="genneg", description="Gen-neG: diffusion models guided away from "
                                     "oracle-invalid samples by stacked time-dependent classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run (or resume) a named experiment stage by stage")
    train.add_argument("experiment", help="experiment name: 'checkerboard' or 'traffic'")
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
    sample.add_argument("--model", default="baseline",
                        help="baseline | iter<k> | ablation_<mode> | distilled")
    sample.add_argument("--num", type=int, default=10_000, help="number of samples")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, required=True, help="output .npy file (N, *shape) float32")

    evaluate = sub.add_parser("eval", help="evaluate a model of a finished run (prints JSON)")
    evaluate.add_argument("--run-dir", required=True, type=Path)
    evaluate.add_argument("--model", default="baseline")
    evaluate.add_argument("--num", type=int, default=None, help="samples (default: the run's eval size)")

    report = sub.add_parser("report", help="rewrite report.md and the plots of a run")
    report.add_argument("--run-dir", required=True, type=Path)

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


def _experiment_of(run_dir: Path) -> str | None:
    """The ``experiment`` saved in a run directory's ``config.json``, or None when there is none."""
    path = run_dir / "config.json"
    return json.loads(path.read_text()).get("experiment") if path.is_file() else None


def _refuse_traffic(args: argparse.Namespace) -> None:
    if _experiment_of(args.run_dir) == "traffic":
        raise ValueError(f"'genneg {args.command}' reads checkerboard runs; {args.run_dir} is a traffic run "
                         "(its report.md holds every model's evaluation; see genneg.pipeline.traffic)")


def _train(args: argparse.Namespace) -> int:
    from genneg.io.config import apply_overrides
    from genneg.io.rundir import RunDir
    from genneg.pipeline.experiment import run_experiment
    from genneg.pipeline.profiles import ExperimentConfig, get_profile
    from genneg.pipeline.report import format_table

    if args.experiment == "traffic":
        from genneg.pipeline.traffic import train_traffic_command

        if args.resume and _experiment_of(args.run_dir) not in (None, "traffic"):
            raise SystemExit(f"genneg: {args.run_dir} holds a '{_experiment_of(args.run_dir)}' run, not "
                             "'traffic'")
        return train_traffic_command(args.run_dir, profile=args.profile, seed=args.seed,
                                     overrides=args.overrides, threads=args.threads, resume=args.resume,
                                     overwrite=args.overwrite, quiet=args.quiet)

    if args.resume and (args.run_dir / "config.json").is_file():
        config = RunDir(args.run_dir, resume=True).read_config(ExperimentConfig)
        if config.experiment != args.experiment:
            raise SystemExit(f"genneg: {args.run_dir} holds a '{config.experiment}' run, not "
                             f"'{args.experiment}'")
        if args.profile is not None and args.profile != config.profile:
            raise SystemExit(f"genneg: {args.run_dir} was run with profile '{config.profile}'")
    else:
        config = get_profile(args.profile or "quick", args.experiment)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.threads is not None:
        config = dataclasses.replace(config, num_threads=args.threads)
    config = apply_overrides(config, args.overrides)
    start = time.perf_counter()
    rows = run_experiment(config, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.quiet)
    print(format_table(rows, config.eval.p))
    print(f"report: {args.run_dir / 'report.md'}  ({time.perf_counter() - start:.0f} s)")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from genneg.pipeline.experiment import load_model

    _refuse_traffic(args)
    task, _, model = load_model(args.run_dir, args.model)
    generator = torch.Generator(device=task.device).manual_seed(args.seed)
    x = task.sample(model, args.num, generator, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x.cpu().numpy())
    print(f"wrote {args.num} samples of {args.model} to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from genneg.pipeline.experiment import evaluate_model, load_model

    _refuse_traffic(args)
    task, config, model = load_model(args.run_dir, args.model)
    metrics, _, _ = evaluate_model(task, model, config, num_samples=args.num, progress=True)
    print(json.dumps({"model": args.model, **metrics}, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from genneg.io.rundir import RunDir
    from genneg.pipeline.experiment import write_run_report

    if _experiment_of(args.run_dir) == "traffic":
        from genneg.pipeline.traffic import write_traffic_report

        path = write_traffic_report(RunDir(args.run_dir, resume=True))
    else:
        path = write_run_report(RunDir(args.run_dir, resume=True))
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

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fetch-carla-maps"]:  # its own parser takes every remaining argument, --help included
        from genneg.data.traffic.carla import main as carla_main

        return carla_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (RunStateError, ValueError, FileNotFoundError) as err:
        print(f"genneg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
