"""``scripts/gpu_check.sh`` in its CPU mode: what a GPU loan will run, exercised here without the GPU.

The script is run as a user runs it (a subprocess, the shell wrapper), with ``--cpu-only --skip-build``
(the package is already installed here; the build part's command is checked separately), on a few parts
at tiny sizes: the device probe, the ``-m gpu`` test selection (on one file: the collection of the whole
suite alone takes ~40 s here), the guidance and oracle-kernel benchmarks writing their JSON into OUT, and
one end-to-end part with a 2-second budget, which must be reported as a timeout while the rest still runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(*args: str, timeout_s: float = 170.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script sets what each part needs
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("gpu-check") / "out"  # created by the script
    result = _run(
        str(out),
        "--cpu-only",
        "--skip-build",
        "--only",
        "build,tests,guidance,oracle_kernels,e2e_traffic",
        "--tests",
        "tests/planning/test_fast_sampler.py",
        "--budget",
        "e2e_traffic=2",
    )
    return out, result


def test_cpu_mode_runs_every_selected_part_and_writes_results(cpu_run) -> None:
    out, result = cpu_run
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # one part timed out
    summary = json.loads((out / "summary.json").read_text())
    status = {r["part"]: r["status"] for r in summary["parts"]}
    assert status == {
        "build": "skipped",
        "env": "ok",
        "tests": "ok",
        "guidance": "ok",
        "oracle_kernels": "ok",
        "e2e_traffic": "timeout",
    }
    assert summary["mode"] == "cpu" and summary["device_name"].startswith("CPU: ")
    env = json.loads((out / "env.json").read_text())
    assert env["cuda_available"] is False and env["mode"] == "cpu" and env["torch"]
    for part in status:
        record = json.loads((out / f"part-{part}.json").read_text())
        assert record["part"] == part and record["status"] == status[part]
        assert record["device_name"] == summary["device_name"]
        assert record["seconds"] <= record["budget_s"] + 5.0
    # the -m gpu selection ran and every selected test skipped (no CUDA), none failed
    tests = json.loads((out / "part-tests.json").read_text())["headline"]
    assert tests["skipped"] >= 4 and tests["failures"] == tests["errors"] == tests["passed"] == 0
    # the benchmarks wrote their JSON into OUT, device named, and the headline read it
    guidance = json.loads((out / "guidance-cpu-quick.json").read_text())
    assert guidance["device"] and {r["path"] for r in guidance["rows"]} == {"eager", "analytic"}
    assert {(r["batch"], r["K"]) for r in guidance["rows"]} == {(1, 0), (1, 1), (32, 0), (32, 1)}
    assert "B=32,K=1" in json.loads((out / "part-guidance.json").read_text())["headline"]["analytic_vs_eager"]
    kernels = json.loads((out / "oracle-kernels-cpu-quick.json").read_text())
    assert kernels["runs"][0]["num_scenes"] == 50 and kernels["machine"]["gpu"] is None
    kernels_part = json.loads((out / "part-oracle_kernels.json").read_text())
    assert kernels_part["headline"]["disagreements_50_scenes"] == 0
    # the timed-out part: killed at its budget, its log kept and quoted
    traffic = json.loads((out / "part-e2e_traffic.json").read_text())
    assert traffic["exit_code"] is None and traffic["seconds"] < 10.0 and "log_tail" in traffic
    assert (out / "logs" / "e2e_traffic.log").exists()
    # the summary table is written and printed last
    table = (out / "summary.md").read_text()
    assert table.splitlines()[0].startswith("# GPU check: CPU: ")
    for part, state in status.items():
        assert f"| {part} | {state} |" in table
    assert result.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])


def test_build_command_uses_the_preinstalled_toolchain() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    ctx = gpu_check.Context(out=Path("/nonexistent"), cpu_only=True, python="python3")
    command = gpu_check.build_command(ctx)
    assert command[:2] == ["bash", "-c"]
    assert "pip install --no-build-isolation --no-deps" in command[2]
    assert "--break-system-packages" in command[2]  # the retry where pip refuses a system Python
    ctx.facts["skip_build"] = True
    assert "skip-build" in gpu_check.build_command(ctx)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nonsense"], "--only expects"),
        (["--budget", "tests"], "--budget expects PART=SECONDS"),
        (["--budget", "tests=-1"], "must be > 0"),
        (["--budget", "tests=soon"], "must be a number"),
        (["--total-budget-s", "0"], "--total-budget-s must be > 0"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run(str(tmp_path / "out"), *args, timeout_s=30)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_build_part_installs_the_package(tmp_path: Path) -> None:
    """The real build part (editable install into this interpreter's environment, as setup.sh does)."""
    out = tmp_path / "out"
    result = _run(str(out), "--cpu-only", "--only", "build", timeout_s=900)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["parts"]] == ["ok", "ok"]  # build, env
    assert summary["env"]["genneg"] and summary["env"]["genneg_ext"]


def test_parts_beyond_the_total_budget_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(str(out), "--cpu-only", "--only", "guidance", "--total-budget-s", "0.5", timeout_s=60)
    assert result.returncode == 1  # nothing ran
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["part"], r["status"], r["reason"]) for r in summary["parts"]] == [
        ("env", "skipped", "total budget spent"),
        ("guidance", "skipped", "total budget spent"),
    ]
    assert "| guidance | skipped |" in (out / "summary.md").read_text()


def test_a_failing_part_is_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = "guidance,oracle_kernels"
    result = _run(str(out), "--cpu-only", "--only", parts, "--python", "/nonexistent/python", timeout_s=60)
    assert result.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["part"], r["status"]) for r in summary["parts"]] == [
        ("env", "failed"), ("guidance", "failed"), ("oracle_kernels", "failed")
    ]
    assert "could not start" in json.loads((out / "part-guidance.json").read_text())["log_tail"]
    assert "| oracle_kernels | failed |" in result.stdout
