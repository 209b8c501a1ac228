"""A run directory: config, append-only metrics, checkpoints and per-stage completion markers.

Layout of ``RunDir(root)``::

    root/config.json            the run's frozen-dataclass config (JSON)
    root/metrics.jsonl          one JSON record per line, appended; each names its ``stage``
    root/stages/<stage>.done    JSON written when a stage has finished and all its outputs are on disk
    root/<stage>/...            the stage's files (checkpoints, datasets, samples)

A pipeline runs stage by stage: ``if run.is_done(name): load outputs; else: compute, save outputs,
run.mark_done(name)``. The marker is written after the outputs, atomically, so a killed run resumes at the
first stage without a marker. Metric records of a stage that never finished are dropped when the run is
reopened with ``resume=True`` (they will be written again by the rerun of that stage), so that
``metrics.jsonl`` holds each finished stage's records exactly once.

Every stage draws its randomness from :func:`stage_generator`, a ``torch.Generator`` seeded from the run
seed and the stage's name, so a stage rerun after a resume reproduces the numbers it would have given.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from genneg.io.checkpoint import atomic_write_text
from genneg.io.config import config_from_dict, config_to_dict

__all__ = ["RunDir", "RunStateError", "stage_generator", "stage_seed"]

T = TypeVar("T")

_STAGE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class RunStateError(RuntimeError):
    """The run directory does not match the request (exists without resume, or a different config)."""


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed derived from the run seed and a stage name (SHA-256, stable across processes)."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stage_generator(seed: int, stage: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`stage_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(stage_seed(seed, stage))
    return g


def _write_if_changed(path: Path, text: str) -> None:
    """``text`` written to ``path`` atomically unless the file already holds it (a resumed run rewrites
    nothing it need not)."""
    if not (path.is_file() and path.read_text() == text):
        atomic_write_text(path, text)


def _valid_stage(name: object) -> bool:
    return (isinstance(name, str) and _STAGE_NAME.match(name) is not None
            and all(part not in (".", "..") for part in name.split("/")))


def _check_stage(name: str) -> None:
    if not _valid_stage(name):
        raise ValueError(f"stage name {name!r} must be path-like: letters, digits, '_', '-', '.', '/'")


class RunDir:
    """One run's directory (see the module docstring).

    Args:
        root: the directory; created if missing.
        resume: reopen an existing run; records of unfinished stages are dropped from ``metrics.jsonl``.
            Without it, a directory that already holds a run raises :class:`RunStateError` unless
            ``overwrite`` is set.
        overwrite: allow starting a new run in a directory that has one (old markers and metrics are
            removed; other files are overwritten as stages rerun).
        read_only: open an existing run to read it without changing anything on disk (no directory
            created, ``metrics.jsonl`` not rewritten); every writing method then raises
            :class:`RunStateError`. For reopening a finished run (``genneg sample|eval``) and for the
            ranks of a data-parallel run that read what rank 0 writes.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
        read_only: bool = False,
    ) -> None:
        self.root = Path(root)
        self.read_only = read_only
        existing = self.config_path.is_file() or self.stages_dir.is_dir()
        if read_only:
            if resume or overwrite:
                raise ValueError("read_only=True cannot be combined with resume or overwrite")
            if not existing:
                raise RunStateError(f"{self.root} holds no run (no config.json)")
            return
        if existing and not (resume or overwrite):
            raise RunStateError(f"{self.root} already holds a run; pass resume=True (CLI: --resume) to "
                                "continue it, overwrite=True (CLI: --overwrite) to start it afresh, or "
                                "choose another run directory")
        if resume and not existing:
            raise RunStateError(f"cannot resume: {self.root} holds no run (no config.json)")
        self.root.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            for marker in self.stages_dir.rglob("*.done") if self.stages_dir.is_dir() else []:
                marker.unlink()
            if self.metrics_path.exists():
                self.metrics_path.unlink()
        self.stages_dir.mkdir(exist_ok=True)
        if resume:
            self._drop_unfinished_records()

    # paths -------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"

    def path(self, *parts: str) -> Path:
        """``root / parts...``, with parent directories created (not in a read-only run)."""
        p = self.root.joinpath(*parts)
        if not self.read_only:
            p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise RunStateError(f"{self.root} is open read-only; cannot {what}")

    # config ------------------------------------------------------------------------------------------
    def write_config(self, config: Any) -> None:
        """Save the run's config; on a resumed run, require it to equal the saved one."""
        self._writable("write the config")
        data = config_to_dict(config)
        if self.config_path.is_file():
            saved = json.loads(self.config_path.read_text())
            if saved != data and self.completed_stages():
                diff = sorted(k for k in set(saved) | set(data) if saved.get(k) != data.get(k))
                raise RunStateError(f"config differs from the one saved in {self.config_path} "
                                    f"(sections {diff}); resume with the saved config or use a new run dir")
        _write_if_changed(self.config_path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def read_config(self, cls: type[T]) -> T:
        """Load the saved config as an instance of ``cls``."""
        if not self.config_path.is_file():
            raise RunStateError(f"{self.root} has no config.json")
        return config_from_dict(cls, json.loads(self.config_path.read_text()))

    # stages ------------------------------------------------------------------------------------------
    def _marker(self, stage: str) -> Path:
        _check_stage(stage)
        return self.stages_dir / f"{stage}.done"

    def is_done(self, stage: str) -> bool:
        """True when ``stage`` has finished (its marker exists)."""
        return self._marker(stage).is_file()

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        """Record that ``stage`` finished; call after all its outputs are saved."""
        self._writable(f"mark stage {stage!r} done")
        marker = self._marker(stage)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"stage": stage, "finished_unix_s": time.time(),
                                              **(info or {})}, sort_keys=True) + "\n")

    def stage_info(self, stage: str) -> dict[str, Any]:
        """The JSON stored in a finished stage's marker."""
        if not self.is_done(stage):
            raise RunStateError(f"stage {stage!r} of {self.root} has not finished")
        return json.loads(self._marker(stage).read_text())

    def completed_stages(self) -> list[str]:
        """Names of finished stages, in the order they finished."""
        if not self.stages_dir.is_dir():
            return []
        infos = [json.loads(p.read_text()) for p in self.stages_dir.rglob("*.done")]
        return [i["stage"] for i in sorted(infos, key=lambda i: i["finished_unix_s"])]

    # metrics -----------------------------------------------------------------------------------------
    def log(self, stage: str, record: dict[str, Any]) -> None:
        """Append ``{"stage": stage, **record}`` as one line of ``metrics.jsonl`` (flushed and synced)."""
        _check_stage(stage)
        self._writable("append to metrics.jsonl")
        line = json.dumps({"stage": stage, **record}, sort_keys=True, allow_nan=True)
        with open(self.metrics_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self, stage: str | None = None) -> list[dict[str, Any]]:
        """All metric records, or those of one stage, in the order written."""
        return [r for r in self._iter_records() if stage is None or r.get("stage") == stage]

    def _iter_records(self) -> Iterator[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill mid-write; its stage will be rerun

    def _drop_unfinished_records(self) -> None:
        if not self.metrics_path.is_file():
            return
        records = list(self._iter_records())
        kept = [r for r in records if _valid_stage(r.get("stage")) and self.is_done(r["stage"])]
        lines = len([line for line in self.metrics_path.read_text().splitlines() if line.strip()])
        if len(kept) < lines:  # a finished run's log stays untouched
            atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
