"""Frozen-dataclass configs to and from JSON, and ``key.sub=value`` overrides.

A run's configuration is a tree of frozen dataclasses (``ExperimentConfig`` with nested stage configs).
It is saved as JSON beside the run (after NVlabs/edm's ``training_options.json``) and read back into the
same types, so that ``--resume`` can check that the run on disk is the run being asked for.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``None``, ``Literal[...]`` of those,
``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_from_json",
    "config_to_dict",
    "config_to_json",
    "parse_override",
]

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance -> a JSON-ready dict (tuples become lists, nested dataclasses dicts)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return {f.name: _to_json_value(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _to_json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Rebuild a dataclass of type ``cls`` from :func:`config_to_dict`'s output.

    Fields missing from ``data`` take their defaults (configs may grow); unknown keys raise ``ValueError``
    naming the key, so that a typo in a saved or hand-written config is not silently ignored.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass type")
    if not isinstance(data, Mapping):
        raise ValueError(f"config{_where(path)} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}{_where(path)} for {cls.__name__}; "
                         f"known: {sorted(fields)}")
    kwargs = {name: _from_json_value(hints[name], data[name], _join(path, name))
              for name in fields if name in data}
    return cls(**kwargs)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _where(path: str) -> str:
    return f" at '{path}'" if path else ""


def _from_json_value(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, path=path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_json_value(arg, value, path)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(f"value {value!r} at '{path}' matches none of {args}: {errors}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"value {value!r} at '{path}' must be one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"value at '{path}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"value at '{path}' must have {len(args)} entries, got {len(value)}")
        return tuple(_from_json_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"value at '{path}' must be a list, got {value!r}")
        return [_from_json_value(args[0] if args else Any, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"value at '{path}' must be an object, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _from_json_value(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"value at '{path}' must be true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"value at '{path}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"value at '{path}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"value at '{path}' must be a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ValueError(f"value at '{path}' must be null, got {value!r}")
        return None
    raise TypeError(f"unsupported config field type {tp!r} at '{path}'")


def config_to_json(config: Any, path: str | os.PathLike[str]) -> None:
    """Write ``config`` as indented JSON to ``path`` (temporary name, then atomic rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def config_from_json(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read a config of type ``cls`` written by :func:`config_to_json`."""
    return config_from_dict(cls, json.loads(Path(path).read_text()))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"classifier.iterations=500"`` -> ``(["classifier", "iterations"], 500)``.

    The value is parsed as JSON when it is valid JSON (numbers, ``true``, ``null``, lists) and kept as a
    string otherwise (``schedule=karras``); :func:`apply_overrides` then converts it to the field's type.
    """
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ValueError(f"override {text!r} has an empty key component")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return keys, value


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Return a copy of the frozen dataclass ``config`` with ``key.sub=value`` overrides applied.

    Values are checked against the field's annotated type (``"500"`` for an ``int`` field becomes 500, a
    string for an ``int`` field raises ``ValueError`` naming the key). Later overrides win.
    """
    for text in overrides:
        keys, value = parse_override(text)
        config = _replace_path(config, keys, value, text, "")
    return config


def _replace_path(config: Any, keys: list[str], value: Any, text: str, prefix: str) -> Any:
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"override {text!r}: '{keys[0]}' is below a non-config value")
    names = {f.name for f in dataclasses.fields(config)}
    if keys[0] not in names:
        raise ValueError(f"override {text!r}: {type(config).__name__} has no field '{keys[0]}'; "
                         f"fields: {sorted(names)}")
    if len(keys) > 1:
        new_value = _replace_path(getattr(config, keys[0]), keys[1:], value, text, _join(prefix, keys[0]))
    else:
        tp = typing.get_type_hints(type(config))[keys[0]]
        if dataclasses.is_dataclass(tp) and not isinstance(value, Mapping):
            raise ValueError(f"override {text!r}: '{keys[0]}' is a section; set one of its fields")
        if tp is str and not isinstance(value, str):
            value = text.split("=", 1)[1]  # e.g. a numeric-looking name, keep it verbatim
        if dataclasses.is_dataclass(tp):
            merged = {**config_to_dict(getattr(config, keys[0])), **value}
            new_value = config_from_dict(tp, merged, path=_join(prefix, keys[0]))
        else:
            new_value = _from_json_value(tp, value, _join(prefix, keys[0]))
    return dataclasses.replace(config, **{keys[0]: new_value})
