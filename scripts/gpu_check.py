"""Every GPU check of genneg in one command (issue 17), for a short loan of a bare H100/H200 machine.

Parts, in order, each with its own time budget (seconds, ``--budget PART=S`` changes one) inside a total
budget (``--total-budget-s``, default 450 s, so the whole stays under 8 minutes); a part that fails or
runs out of time is reported and the next one still runs:

  ``build``             ``pip install --no-build-isolation --no-deps -e .`` with the preinstalled toolchain
                        (retried with ``--break-system-packages`` where pip refuses an externally managed
                        Python); ``--skip-build`` uses the installed package.
  ``env``               versions, the GPU's name, which optional packages (triton, shapely, nvtx) exist.
  ``tests``             ``pytest -m gpu`` with ``TRITON_INTERPRET=0``: the kernel tests against their
                        references on CUDA tensors, the CUDA-graph sampler tests, the Triton oracle backend.
  ``guidance``          ``benchmarks/guidance.py``: fused Triton guidance vs eager autograd (and analytic).
  ``oracle_kernels``    ``benchmarks/oracle_kernels.py``: Triton oracle kernels vs the C++ oracles.
  ``e2e_checkerboard``  ``genneg train checkerboard --profile tiny --set device=cuda``.
  ``latency``           ``benchmarks/latency.py`` on that run: ``FastSampler`` with CUDA graphs vs without.
  ``e2e_traffic``       ``genneg train traffic --profile tiny --set device=cuda``.

Without a CUDA device (or with ``--cpu-only``) the same parts run on the CPU at tiny sizes: the build,
argument handling, time budgets, result files and the summary are exercised; the ``tests`` part then
selects the same tests, which skip. This is what the default test suite runs (``tests/test_gpu_check.py``).

Writes into OUT: ``env.json``; ``part-<name>.json`` per part (status, seconds, budget, command, exit
code, headline figures, log tail); the benchmarks' own JSON files (device named); ``logs/<name>.log``;
``runs/`` (the end-to-end run directories); ``summary.json`` and ``summary.md`` (one table). The summary
table is printed last. Exit status 0 when parts ran and all passed, else 1 (2 for bad arguments).

Only the standard library is imported here: the script runs before the package is built.

Run:  bash scripts/gpu_check.sh OUT [--cpu-only] [--skip-build] [--only a,b] [--budget tests=200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOTAL_BUDGET_S = 450.0
LOG_TAIL_CHARS = 4000


@dataclass
class Context:
    """What the parts share: the output folder, the mode, and facts learnt by earlier parts."""

    out: Path
    cpu_only: bool
    python: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.cpu_only else "cuda"

    def path(self, *names: str) -> Path:
        return self.out.joinpath(*names)


@dataclass(frozen=True)
class Part:
    """One check: its command (or None with a reason to skip), and what to read from its results."""

    name: str
    budget_s: float
    command: Callable[[Context], list[str] | str]  # a str is the reason the part is skipped
    headline: Callable[[Context, int], dict[str, Any]] = lambda ctx, rc: {}
    env: Callable[[Context], dict[str, str]] = lambda ctx: {}  # extra environment variables


# --- small helpers ------------------------------------------------------------------------------------------


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``path`` (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def run_logged(
    command: list[str], log: Path, timeout_s: float, env: dict[str, str]
) -> tuple[int | None, float]:
    """Run ``command`` in the repository root with stdout and stderr to ``log``. Returns (exit code or
    None on timeout, seconds). On timeout the command's whole process group is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        sink.flush()
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc: int | None = proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.perf_counter() - start


def subprocess_env(ctx: Context, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            # compiled kernels on the GPU; on the CPU nothing here uses Triton outside the tests part
            "TRITON_INTERPRET": "0",
        }
    )
    if ctx.cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU mode must not touch a GPU even where one exists
    env.update(extra)
    return env


# --- the parts ----------------------------------------------------------------------------------------------


def build_command(ctx: Context) -> list[str] | str:
    if ctx.facts.get("skip_build"):
        return "--skip-build: using the installed package"
    pip = [ctx.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-input",
           "--disable-pip-version-check", "-e", "."]
    # pip refuses to write into an "externally managed" Python (PEP 668); the loaned machine is bare and
    # discarded afterwards, so the retry overrides that.
    quoted = " ".join(pip)
    return ["bash", "-c", f"{quoted} || {{ echo '[gpu_check] retrying with --break-system-packages'; "
            f"{quoted} --break-system-packages; }}"]


ENV_PROBE = r"""
import importlib, json, platform, sys
info = {"python": platform.python_version(), "platform": platform.platform()}
for name in ("torch", "triton", "numpy", "genneg", "genneg_ext", "shapely", "nvtx", "hypothesis", "pytest"):
    try:
        module = importlib.import_module(name)
        info[name] = getattr(module, "__version__", "present")
    except Exception as err:  # absent or broken: said so, the parts that need it skip
        info[name] = None
        info[name + "_error"] = f"{type(err).__name__}: {err}"[:300]
import torch
info["cuda_available"] = torch.cuda.is_available()
info["torch_cuda"] = torch.version.cuda
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    info["compute_capability"] = f"{props.major}.{props.minor}"
    info["gpu_count"] = torch.cuda.device_count()
try:
    import genneg_ext
    info["cpu_cores"] = genneg_ext.available_cores()
except Exception:
    pass
print("GPU_CHECK_ENV " + json.dumps(info))
"""


def env_command(ctx: Context) -> list[str]:
    return [ctx.python, "-c", ENV_PROBE]


def env_headline(ctx: Context, rc: int) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for line in tail(ctx.path("logs", "env.log"), 100_000).splitlines():
        if line.startswith("GPU_CHECK_ENV "):
            info = json.loads(line.split(" ", 1)[1])
    info["cpu"] = _cpu_model()
    ctx.facts["env"] = info
    if not ctx.cpu_only and not info.get("cuda_available"):
        ctx.cpu_only = True
        ctx.facts["mode_note"] = "no CUDA device found: CPU mode (CUDA parts run at tiny sizes on the CPU)"
    info["mode"] = "cpu" if ctx.cpu_only else "cuda"
    write_json(ctx.path("env.json"), info)
    missing = [name for name in ("triton", "shapely", "nvtx") if info.get(name) is None]
    return {
        "gpu": info.get("gpu"),
        "torch": info.get("torch"),
        "triton": info.get("triton"),
        "missing_optional": missing,
    }


def tests_command(ctx: Context) -> list[str]:
    return [ctx.python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs",
            "--continue-on-collection-errors", f"--junitxml={ctx.path('tests-gpu.xml')}",
            *ctx.facts.get("test_paths", ["tests"])]


def tests_headline(ctx: Context, rc: int) -> dict[str, Any]:
    try:
        root = ET.parse(ctx.path("tests-gpu.xml")).getroot()
    except (OSError, ET.ParseError):
        return {"junit": "missing"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in keys}
    failed = []
    skip_reasons: dict[str, int] = {}
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        skipped = case.find("skipped")
        if skipped is not None:
            reason = (skipped.get("message") or "").removeprefix("Skipped: ")[:120]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    top = dict(sorted(skip_reasons.items(), key=lambda kv: -kv[1])[:8])
    return {"passed": passed, **counts, "failed_tests": failed[:50], "skip_reasons": top}


def guidance_command(ctx: Context) -> list[str]:
    common = [ctx.python, "benchmarks/guidance.py", "--quick", "--out-dir", str(ctx.out), "--no-compile"]
    if ctx.cpu_only:
        return [*common, "--batches", "1,32", "--ks", "0,1", "--steps", "3", "--max-seconds", "0.2"]
    # the guidance benchmark's batch sizes and the K of its default grid, short timings
    return [*common, "--batches", "1,32,1024,8192", "--ks", "0,1,3,5,8", "--max-seconds", "0.3"]


def guidance_headline(ctx: Context, rc: int) -> dict[str, Any]:
    data = read_json(ctx.path(f"guidance-{ctx.device}-quick.json"))
    if not data:
        return {}
    rows = data["rows"]
    out: dict[str, Any] = {"device": data.get("device"), "fused_skipped": data.get("fused_skipped_reason")}
    for path in ("fused", "analytic"):
        speedups = {f"B={r['batch']},K={r['K']}": r["speedup_vs_eager"] for r in rows if r["path"] == path}
        if speedups:
            out[f"{path}_vs_eager"] = speedups
    fused = out.get("fused_vs_eager", {})
    if "B=1024,K=5" in fused:
        out["fused_vs_eager_B1024_K5"] = fused["B=1024,K=5"]
    return out


def oracle_kernels_command(ctx: Context) -> list[str]:
    common = [ctx.python, "benchmarks/oracle_kernels.py", "--quick", "--out-dir", str(ctx.out)]
    if ctx.cpu_only:
        return [*common, "--scenes", "50"]
    return [*common, "--scenes", "1000,20000", "--no-cpu-reference"]


def oracle_kernels_headline(ctx: Context, rc: int) -> dict[str, Any]:
    data = read_json(ctx.path(f"oracle-kernels-{ctx.device}-quick.json"))
    if not data:
        return {}
    out: dict[str, Any] = {"gpu": data["machine"].get("gpu")}
    for run in data["runs"]:
        scenes = run["num_scenes"]
        out[f"ratios_{scenes}_scenes"] = run["ratios"]
        out[f"disagreements_{scenes}_scenes"] = sum(
            v["collisions"] + v["offroad"] for v in run["disagreements_with_cpp"].values()
        )
    return out


def e2e_command(experiment: str) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        run_dir = ctx.path("runs", experiment)
        return [ctx.python, "-m", "genneg", "train", experiment, "--profile", "tiny", "--run-dir",
                str(run_dir), "--overwrite", "--quiet", "--set", f"device={ctx.device}"]

    return command


def e2e_headline(experiment: str) -> Callable[[Context, int], dict[str, Any]]:
    def headline(ctx: Context, rc: int) -> dict[str, Any]:
        metrics = ctx.path("runs", experiment, "metrics.jsonl")
        evals: dict[str, Any] = {}
        try:
            lines = metrics.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            record = json.loads(line)
            stage = str(record.get("stage", ""))
            if stage.startswith("eval/"):
                evals[stage] = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if rc == 0:
            ctx.facts[f"{experiment}_run"] = str(ctx.path("runs", experiment))
        infraction = {stage.removeprefix("eval/"): r["infraction"] for stage, r in evals.items()
                      if "infraction" in r}
        return {"run_dir": str(ctx.path("runs", experiment)), "infraction": infraction, "evaluations": evals}

    return headline


def latency_command(ctx: Context) -> list[str]:
    cmd = [ctx.python, "benchmarks/latency.py", "--quick", "--device", ctx.device, "--out-dir", str(ctx.out)]
    run = ctx.facts.get("checkerboard_run")
    if run:
        cmd += ["--run-dir", run]  # else the benchmark trains the tiny profile itself
    if ctx.cpu_only:
        return [*cmd, "--calls", "5", "--cell-seconds", "0.2", "--skip-traffic", "--skip-naive"]
    return [*cmd, "--calls", "50", "--cell-seconds", "0.3"]


def latency_headline(ctx: Context, rc: int) -> dict[str, Any]:
    data = read_json(ctx.path(f"latency-{ctx.device}-quick.json"))
    if not data:
        return {}
    out: dict[str, Any] = {"device": data.get("device"), "complete": data.get("complete")}
    if data.get("cuda_graphs"):
        out["cuda_graphs_speedup_p50"] = {
            f"{r['task']}/{r['model']} N={r['N']} steps={r['steps']}": r["speedup_p50"]
            for r in data["cuda_graphs"]
        }
    head = data.get("headline") or {}
    if "time_ratio_baseline_over_distilled_p50" in head:
        out["headline_baseline_over_distilled_p50"] = head["time_ratio_baseline_over_distilled_p50"]
    return out


PARTS: list[Part] = [
    Part("build", 150, build_command, env=lambda ctx: {"PIP_NO_INDEX": "1"}),  # never wait on a network
    Part("env", 30, env_command, env_headline),
    Part("tests", 150, tests_command, tests_headline),
    Part("guidance", 60, guidance_command, guidance_headline),
    Part("oracle_kernels", 40, oracle_kernels_command, oracle_kernels_headline),
    Part("e2e_checkerboard", 90, e2e_command("checkerboard"), e2e_headline("checkerboard")),
    Part("latency", 75, latency_command, latency_headline),
    Part("e2e_traffic", 120, e2e_command("traffic"), e2e_headline("traffic")),
]
PART_NAMES = [p.name for p in PARTS]


# --- driver -------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_budgets(items: list[str]) -> dict[str, float]:
    """``["tests=200", ...]`` -> ``{"tests": 200.0}``; raises ValueError naming a bad item."""
    budgets: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in PART_NAMES:
            raise ValueError(f"--budget expects PART=SECONDS with PART one of {PART_NAMES}, got {item!r}")
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"--budget {item!r}: seconds must be a number") from None
        if not seconds > 0:
            raise ValueError(f"--budget {item!r}: seconds must be > 0")
        budgets[name] = seconds
    return budgets


def parse_only(text: str | None) -> list[str]:
    if text is None:
        return list(PART_NAMES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PART_NAMES]
    if unknown or not names:
        raise ValueError(f"--only expects a comma-separated subset of {PART_NAMES}, got {text!r}")
    return [n for n in PART_NAMES if n in names]


def device_name(ctx: Context) -> str:
    """The GPU's name once ``env`` has probed it (else the CPU's, marked as such)."""
    env = ctx.facts.get("env", {})
    return env.get("gpu") or f"CPU: {env.get('cpu') or _cpu_model()}"


def run_part(part: Part, ctx: Context, budget_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {"part": part.name, "budget_s": budget_s, "device": ctx.device}
    record["device_name"] = device_name(ctx)
    command = part.command(ctx)
    if isinstance(command, str):
        record.update(status="skipped", reason=command, seconds=0.0)
        return record
    log = ctx.path("logs", f"{part.name}.log")
    try:
        rc, seconds = run_logged(command, log, budget_s, subprocess_env(ctx, part.env(ctx)))
    except OSError as err:  # the command could not start (e.g. a missing interpreter): reported, go on
        with log.open("a") as sink:
            sink.write(f"[gpu_check] could not start: {err}\n")
        record.update(status="failed", seconds=0.0, exit_code=None, command=command, log=str(log),
                      headline={}, log_tail=tail(log))
        return record
    status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
    record.update(status=status, seconds=round(seconds, 2), exit_code=rc, command=command, log=str(log))
    try:
        record["headline"] = part.headline(ctx, -1 if rc is None else rc)
    except Exception as err:  # a part's results unreadable: said so, the run goes on
        record["headline"] = {"error": f"{type(err).__name__}: {err}"}
        if status == "ok":
            record["status"] = "failed"
    if record["status"] != "ok":
        record["log_tail"] = tail(log)
    return record


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in list(value.items())[:6]) + (
            ", ..." if len(value) > 6 else "")
    if isinstance(value, list):
        return ", ".join(_short(v) for v in value[:6]) + (", ..." if len(value) > 6 else "")
    return str(value)


HEADLINE_KEYS = {
    "env": ("gpu", "torch", "triton", "missing_optional"),
    "tests": ("passed", "failures", "errors", "skipped", "failed_tests", "skip_reasons"),
    "guidance": ("fused_vs_eager_B1024_K5", "fused_vs_eager", "analytic_vs_eager", "fused_skipped"),
    "oracle_kernels": ("ratios_1000_scenes", "ratios_50_scenes", "disagreements_1000_scenes",
                       "disagreements_50_scenes", "disagreements_20000_scenes"),
    "e2e_checkerboard": ("infraction",),
    "latency": ("cuda_graphs_speedup_p50", "headline_baseline_over_distilled_p50"),
    "e2e_traffic": ("infraction",),
}


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {summary['device_name']}",
        "",
        f"mode `{summary['mode']}`, total {summary['total_seconds']:.0f} s of "
        f"{summary['total_budget_s']:.0f} s budget, git {summary.get('git_commit') or 'unknown'}, "
        f"{summary['time_utc']}",
        "",
    ]
    if summary.get("mode_note"):
        lines += [summary["mode_note"], ""]
    lines += ["| part | status | seconds | budget s | figures |", "|---|---|---:|---:|---|"]
    for r in summary["parts"]:
        head = r.get("headline") or {}
        keys = HEADLINE_KEYS.get(r["part"], ())
        figures = "; ".join(f"{k}: {_short(head[k])}" for k in keys if head.get(k) not in (None, {}, []))
        if r["status"] == "skipped":
            figures = r.get("reason", "")
        elif r["status"] != "ok" and not figures:
            last = [ln for ln in r.get("log_tail", "").splitlines() if ln.strip()][-1:]
            figures = f"see {r.get('log', 'log')}" + (f": {last[0][:160]}" if last else "")
        figures = figures.replace("|", "/").replace("\n", " ")
        cells = [r["part"], r["status"], f"{r['seconds']:.1f}", f"{r['budget_s']:.0f}", figures]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for the results (created; e.g. $OUT)")
    parser.add_argument("--cpu-only", action="store_true",
                        help="run every part on the CPU at tiny sizes (automatic without a CUDA device)")
    parser.add_argument("--skip-build", action="store_true", help="use the package already installed")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated parts to run, of {','.join(PART_NAMES)} (env always runs)")
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                        help="time budget of one part (repeatable)")
    parser.add_argument("--total-budget-s", type=float, default=DEFAULT_TOTAL_BUDGET_S,
                        help="budget of the whole run; a part gets min(its budget, what is left)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the parts")
    parser.add_argument("--tests", nargs="+", default=["tests"], metavar="PATH",
                        help="where the tests part looks for -m gpu tests (default: tests)")
    args = parser.parse_args(argv)
    try:
        budgets = parse_budgets(args.budget)
        selected = parse_only(args.only)
        if not args.total_budget_s > 0:
            raise ValueError(f"--total-budget-s must be > 0, got {args.total_budget_s}")
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"OUT {args.out} exists and is not a folder")
    except ValueError as err:
        parser.error(str(err))

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, cpu_only=args.cpu_only, python=args.python)
    ctx.facts["skip_build"] = args.skip_build
    ctx.facts["test_paths"] = args.tests
    start = time.perf_counter()
    records = []
    for part in PARTS:
        if part.name not in selected and part.name != "env":  # env names the device: always probed
            continue
        left = args.total_budget_s - (time.perf_counter() - start)
        budget = min(budgets.get(part.name, part.budget_s), left)
        if budget < 1.0:
            record = {"part": part.name, "status": "skipped", "reason": "total budget spent", "seconds": 0.0,
                      "budget_s": 0.0, "device": ctx.device}
        else:
            where = "device probe" if part.name == "env" else ctx.device
            print(f"[gpu_check] {part.name} (budget {budget:.0f} s, {where}) ...", flush=True)
            record = run_part(part, ctx, budget)
        record["device_name"] = device_name(ctx)  # also on env's own record and on a skipped part
        print(f"[gpu_check] {part.name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
        write_json(ctx.path(f"part-{part.name}.json"), record)
        records.append(record)

    summary = {
        "device_name": device_name(ctx),
        "mode": "cpu" if ctx.cpu_only else "cuda",
        "mode_note": ctx.facts.get("mode_note"),
        "total_seconds": time.perf_counter() - start,
        "total_budget_s": args.total_budget_s,
        "git_commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": ctx.facts.get("env", {}),
        "parts": records,
    }
    write_json(ctx.path("summary.json"), summary)
    table = summary_markdown(summary)
    write_text(ctx.path("summary.md"), table)
    print()
    print(table, flush=True)
    ran = [r for r in records if r["status"] != "skipped"]
    return 0 if ran and all(r["status"] == "ok" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
