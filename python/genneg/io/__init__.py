"""Runs on disk: checkpoints (safetensors + JSON sidecar), run directories, config (de)serialisation."""

from genneg.io.checkpoint import (
    atomic_write_text,
    checkpoint_exists,
    load_checkpoint,
    load_tensors,
    metadata_path,
    save_checkpoint,
    save_tensors,
)
from genneg.io.config import (
    apply_overrides,
    config_from_dict,
    config_from_json,
    config_to_dict,
    config_to_json,
    parse_override,
)
from genneg.io.rundir import RunDir, RunStateError, stage_generator, stage_seed

__all__ = [
    "RunDir",
    "RunStateError",
    "apply_overrides",
    "atomic_write_text",
    "checkpoint_exists",
    "config_from_dict",
    "config_from_json",
    "config_to_dict",
    "config_to_json",
    "load_checkpoint",
    "load_tensors",
    "metadata_path",
    "parse_override",
    "save_checkpoint",
    "save_tensors",
    "stage_generator",
    "stage_seed",
]
