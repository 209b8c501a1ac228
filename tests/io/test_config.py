"""Config dataclasses <-> JSON round trips and ``key.sub=value`` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from genneg.io import apply_overrides, config_from_dict, config_from_json, config_to_dict, config_to_json


@dataclass(frozen=True)
class Inner:
    iterations: int = 10
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    seed_offset: int | None = None
    enabled: bool = True
    inner: Inner = field(default_factory=Inner)
    pair: tuple[float, float] = (0.5, 1.5)


def test_round_trip_through_json(tmp_path):
    cfg = Outer(name="x", seed_offset=3, inner=Inner(iterations=7, mode="b", sizes=(4, 5, 6)))
    config_to_json(cfg, tmp_path / "c.json")
    back = config_from_json(Outer, tmp_path / "c.json")
    assert back == cfg
    assert isinstance(back.inner.sizes, tuple) and isinstance(back.pair, tuple)
    assert config_to_dict(cfg)["inner"]["sizes"] == [4, 5, 6]


def test_missing_keys_take_defaults_and_unknown_keys_raise():
    assert config_from_dict(Outer, {"inner": {"lr": 0.5}}) == Outer(inner=Inner(lr=0.5))
    with pytest.raises(ValueError, match=r"iteratons.*inner"):
        config_from_dict(Outer, {"inner": {"iteratons": 3}})


def test_type_errors_name_the_key():
    with pytest.raises(ValueError, match=r"inner.iterations"):
        config_from_dict(Outer, {"inner": {"iterations": "many"}})
    with pytest.raises(ValueError, match=r"inner.mode"):
        config_from_dict(Outer, {"inner": {"mode": "c"}})
    with pytest.raises(ValueError, match="enabled"):
        config_from_dict(Outer, {"enabled": 1})


def test_overrides_parse_by_field_type():
    cfg = apply_overrides(Outer(), ["inner.iterations=500", "inner.lr=2e-4", "name=123", "enabled=false",
                                   "seed_offset=null", "inner.sizes=[3,4]", "inner.mode=b", "pair=[1,2]"])
    assert cfg.inner == Inner(iterations=500, lr=2e-4, mode="b", sizes=(3, 4))
    assert cfg.name == "123" and cfg.enabled is False and cfg.seed_offset is None
    assert cfg.pair == (1.0, 2.0) and isinstance(cfg.pair[0], float)
    assert apply_overrides(Outer(), ["seed_offset=4"]).seed_offset == 4


@pytest.mark.parametrize("bad, match", [
    ("inner.iterations", "key.subkey=value"),
    ("inner.nope=3", "no field 'nope'"),
    ("inner.iterations=abc", "inner.iterations"),
    ("inner=3", "is a section"),
    ("name.x=3", "non-config"),
    ("inner..lr=3", "empty key"),
])
def test_bad_overrides_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Outer(), [bad])
