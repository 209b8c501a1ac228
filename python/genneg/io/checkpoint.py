"""Checkpoints: tensors as safetensors plus a JSON metadata sidecar, each written atomically.

``save_checkpoint("runs/x/baseline.safetensors", module, {"stage": "baseline"})`` writes

- ``baseline.safetensors``: the module's ``state_dict`` (or a plain dict of tensors);
- ``baseline.json``: the metadata (any JSON-serialisable dict), plus ``"tensors"`` (names, shapes,
  dtypes) so that the sidecar alone says what the file holds.

Both are first written to a hidden temporary name in the same directory and then moved into place with
``os.replace``, so a run killed mid-write never leaves a half-written checkpoint under the real name. The
sidecar is written last: its presence means the tensor file is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "atomic_write_text",
    "checkpoint_exists",
    "load_checkpoint",
    "load_tensors",
    "metadata_path",
    "save_checkpoint",
    "save_tensors",
]


def metadata_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of a checkpoint: ``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _tensors_of(obj: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint entry '{name}' is a {type(value).__name__}, not a tensor")
        # safetensors refuses shared storage and non-contiguous views: store independent copies
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    return tensors


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Write a dict of tensors to a safetensors file atomically (no sidecar)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_tensors_of(tensors), str(tmp))
    os.replace(tmp, path)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a dict of CPU tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tensor file at {path}")
    return load_file(str(path))


def save_checkpoint(
    path: str | os.PathLike[str],
    module: nn.Module | Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``module``'s ``state_dict`` (or a dict of tensors) and its JSON metadata sidecar.

    Args:
        path: target ``*.safetensors`` file; the sidecar goes to the same name with ``.json``.
        module: an ``nn.Module`` or a mapping ``name -> tensor``.
        metadata: JSON-serialisable description (stage, config, metrics...).

    Returns:
        the path of the tensor file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    tensors = _tensors_of(module)
    meta = dict(metadata or {})
    meta["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                       for k, v in tensors.items()}
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"  # fail before writing anything
    save_tensors(path, tensors)
    atomic_write_text(metadata_path(path), text)
    return path


def checkpoint_exists(path: str | os.PathLike[str]) -> bool:
    """True when both the tensor file and its sidecar (written last) exist."""
    return Path(path).is_file() and metadata_path(path).is_file()


def load_checkpoint(
    path: str | os.PathLike[str], module: nn.Module | None = None, *, strict: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the ``*.safetensors`` file.
        module: if given, its parameters and buffers are loaded in place (``strict`` as in
            ``load_state_dict``).

    Returns:
        ``(tensors, metadata)``.
    """
    path = Path(path)
    if not checkpoint_exists(path):
        raise FileNotFoundError(
            f"no complete checkpoint at {path} (tensor file or {metadata_path(path).name} missing)"
        )
    tensors = load_tensors(path)
    metadata = json.loads(metadata_path(path).read_text())
    if module is not None:
        module.load_state_dict(tensors, strict=strict)
    return tensors, metadata
