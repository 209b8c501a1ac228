"""Checkpoints: safetensors + JSON sidecar, atomic writes, round trip into a module."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genneg.io import checkpoint_exists, load_checkpoint, metadata_path, save_checkpoint
from genneg.models.mlp import ResidualMLP, ResidualMLPConfig


def test_module_round_trip(tmp_path):
    torch.manual_seed(0)
    net = ResidualMLP(ResidualMLPConfig(hidden=24, embedding_dim=8))
    path = save_checkpoint(tmp_path / "m.safetensors", net, {"stage": "baseline", "iteration": 3})
    assert checkpoint_exists(path)
    meta = json.loads(metadata_path(path).read_text())
    assert meta["stage"] == "baseline" and meta["tensors"]["input_fc.weight"]["shape"] == [24, 2]
    other = ResidualMLP(ResidualMLPConfig(hidden=24, embedding_dim=8))
    tensors, meta2 = load_checkpoint(path, other)
    assert meta2["iteration"] == 3
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert set(tensors) == set(net.state_dict())


def test_shared_and_strided_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    save_checkpoint(tmp_path / "t.safetensors", {"a": base, "b": base.t(), "c": base[:, 1]}, {})
    tensors, _ = load_checkpoint(tmp_path / "t.safetensors")
    assert torch.equal(tensors["b"], base.t()) and torch.equal(tensors["c"], base[:, 1])


def test_no_temporary_files_left_and_missing_sidecar_is_incomplete(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", nn.Linear(3, 2), {"k": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    metadata_path(path).unlink()
    assert not checkpoint_exists(path)
    with pytest.raises(FileNotFoundError, match=r"m.json"):
        load_checkpoint(path)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match=r".safetensors"):
        save_checkpoint(tmp_path / "m.pt", nn.Linear(2, 2), {})
    with pytest.raises(TypeError, match="'x'"):
        save_checkpoint(tmp_path / "m.safetensors", {"x": 3}, {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m.safetensors", nn.Linear(2, 2), {"bad": object()})
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(RuntimeError):
        load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", nn.Linear(2, 2), {}), nn.Linear(3, 2))
