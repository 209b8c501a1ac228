"""One registry of experiments, and references that reopen a run's task (issue 11).

An experiment is a name bound to ``(config class, profiles, task factory)``. The package registers
``checkerboard`` and ``traffic``; a third-party package registers its own with
:func:`register_experiment` or, without being imported first, through a Python entry point in the group
``genneg.experiments`` whose object is an :class:`Experiment` (or a zero-argument callable returning one)::

    [project.entry-points."genneg.experiments"]
    motion = "mypkg.genneg_motion:EXPERIMENT"

A run directory records how to rebuild its task in ``task.json`` (:func:`open_task`): a registered name,
an importable ``module:function`` task factory, or a user's array task with its oracle's reference.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "Experiment",
    "TaskImportError",
    "absolute_reference",
    "experiments",
    "get_experiment",
    "import_object",
    "object_reference",
    "register_experiment",
]

ENTRY_POINT_GROUP = "genneg.experiments"


class TaskImportError(ImportError):
    """A reference (``module:attr`` or ``path/to/file.py:attr``) that cannot be imported."""


@dataclass(frozen=True)
class Experiment:
    """A named experiment.

    Attributes:
        name: the name used on the command line (``genneg train NAME``) and in the run's config.
        config_class: the frozen-dataclass type of its run config.
        profiles: profile name -> zero-argument function returning that profile's config.
        task_factory: zero-argument function returning a fresh (not yet set up) task.
        description: one line for ``genneg train --help``.
    """

    name: str
    config_class: type
    profiles: Mapping[str, Callable[[], Any]]
    task_factory: Callable[[], Any]
    description: str = ""

    def profile(self, name: str) -> Any:
        """The config of profile ``name``."""
        if name not in self.profiles:
            raise ValueError(f"unknown profile {name!r} for experiment {self.name!r}; choose from "
                             f"{sorted(self.profiles)}")
        return self.profiles[name]()


_BUILTIN = {
    "checkerboard": "genneg.pipeline.checkerboard:EXPERIMENT",
    "traffic": "genneg.pipeline.traffic:EXPERIMENT",
    "motion": "genneg.pipeline.motion:EXPERIMENT",
}
_REGISTERED: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment, *, replace: bool = False) -> None:
    """Add ``experiment`` to the registry (``ValueError`` if its name is taken, unless ``replace``)."""
    if not isinstance(experiment, Experiment):
        raise TypeError(f"register_experiment takes an Experiment, got {type(experiment).__name__}")
    if not replace and (experiment.name in _REGISTERED or experiment.name in _BUILTIN):
        raise ValueError(f"an experiment named {experiment.name!r} is already registered")
    _REGISTERED[experiment.name] = experiment


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def experiment_names() -> list[str]:
    """Every registered experiment name (built-in, registered, and entry points), sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``.

    Raises:
        ValueError: no such experiment (the message lists the known ones).
        TaskImportError: its module or entry point does not import.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        found = import_object(_BUILTIN[name])
    else:
        points = _entry_points()
        if name not in points:
            raise ValueError(f"unknown experiment {name!r}; known: {experiment_names()}")
        try:
            found = points[name].load()
        except Exception as err:  # an entry point can fail in any way its package does
            raise TaskImportError(f"entry point {name!r} ({points[name].value}) of group "
                                  f"{ENTRY_POINT_GROUP!r} does not load: {err}") from err
    if callable(found) and not isinstance(found, Experiment):
        found = found()
    if not isinstance(found, Experiment):
        raise TypeError(f"experiment {name!r} resolves to {type(found).__name__}, not an Experiment")
    _REGISTERED[name] = found
    return found


def experiments() -> dict[str, Experiment]:
    """Every experiment by name (loads entry points)."""
    return {name: get_experiment(name) for name in experiment_names()}


def import_object(reference: str) -> Any:
    """The object named by ``"package.module:attr"`` or ``"path/to/file.py:attr"`` (``attr`` may be dotted).

    Raises:
        TaskImportError: malformed reference, missing module or file, or missing attribute; the message
            names what could not be imported.
    """
    if not isinstance(reference, str) or ":" not in reference:
        raise TaskImportError(f"reference {reference!r} must look like 'package.module:function' or "
                              "'path/to/file.py:function'")
    target, _, attr = reference.rpartition(":")
    if not target or not attr:
        raise TaskImportError(f"reference {reference!r} must name a module and an attribute")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise TaskImportError(f"cannot import {reference!r}: no file {path}")
        name = f"_genneg_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise TaskImportError(f"cannot import {reference!r}: {path} is not a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[name]
                raise TaskImportError(f"cannot import {reference!r}: executing {path} raised "
                                      f"{type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise TaskImportError(f"cannot import {reference!r}: module {target!r} not found "
                                  f"({err})") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskImportError(f"cannot import {reference!r}: {target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def absolute_reference(reference: str) -> str:
    """``reference`` with a ``path/to/file.py`` target made absolute (a run records it so that it reopens
    from any working directory); module references unchanged."""
    target, sep, attr = reference.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return reference


def object_reference(obj: Any) -> str | None:
    """A reference that :func:`import_object` turns back into ``obj`` (a module-level function or class),
    or None when there is none (lambdas, closures, bound methods, instances). A function defined in the
    script being run (``__main__``) is referenced by the script's path."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    if module == "__main__" or module.startswith("_genneg_user_"):
        # a script run as the main program, or a file imported by path: referenced by its path (importing
        # it by path runs it with another __name__, so its `if __name__ == "__main__":` block does not run)
        source = getattr(sys.modules.get(module), "__file__", None)
        return f"{Path(source).resolve()}:{qualname}" if source else None
    reference = f"{module}:{qualname}"
    try:
        return reference if import_object(reference) is obj else None
    except TaskImportError:
        return None
