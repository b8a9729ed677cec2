"""Typed configs: keyword-only dataclasses filled from YAML plus dotted command-line overrides.

Each stage declares its own dataclass (``ShardsConfig`` in :mod:`neurofm.data_shards.config`, …).
:func:`load_config` reads a YAML file into one of them, applies overrides such as
``eeg.h_freq=40`` or ``samples_per_shard=128`` and checks every field's type. An unknown key or a
wrongly typed value is a :class:`~neurofm.errors.ConfigError` that names the dotted field, what was
expected and, for typos, the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from neurofm.errors import ConfigError

T = TypeVar("T")


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where YAML is looser (int → float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{field} must not be null.")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, field)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{field}: got {value!r}, expected {tp}.")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"Invalid value for '{field}'. Allowed values are {', '.join(map(repr, allowed))}, "
                f"but got {value!r}."
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{field} must be a mapping of {tp.__name__} fields, got {value!r}.")
        return from_dict(tp, value, prefix=field)
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field} must be a list, got {value!r}.")
        return [_coerce(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{field} must be a mapping, got {value!r}.")
        return {_coerce(k, key_tp, field): _coerce(v, val_tp, f"{field}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field} must be a number, got {value!r}.")
        if not math.isfinite(value):  # YAML's .nan / .inf: no setting means them
            raise ConfigError(f"{field} must be a finite number, got {value!r}.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field} must be an integer, got {value!r}.")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field} must be true or false, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{field} must be a string, got {value!r}.")
        return str(value)
    raise ConfigError(f"{field}: unsupported config type {_type_name(tp)}.")  # pragma: no cover


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a plain mapping, checking names and types.

    Parameters
    ----------
    cls : dataclass type
        The config class; its fields' annotations are the schema.
    data : dict
        Plain values as YAML gives them.
    prefix : str
        Dotted path of ``data`` inside the whole config, used in error messages.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(
                f"Unknown config key '{dotted}'.{_suggest(str(key), list(fields))} "
                f"Valid keys here: {', '.join(fields)}."
            )
        kwargs[key] = _coerce(value, hints[key], dotted)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" under '{prefix}'" if prefix else ""
        raise ConfigError(f"Missing required config key(s) {', '.join(missing)}{where}.")
    try:
        return cls(**kwargs)
    except ValueError as err:  # __post_init__ validation names the field; prefix it with its path
        raise ConfigError(f"{prefix}.{err}" if prefix else str(err)) from None


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-value form of a config dataclass (what :func:`from_dict` reads back)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested mapping; values are parsed as YAML scalars.

    List items are addressed by index: ``inputs.0.h_freq=30``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like dotted.key=value (e.g. eeg.h_freq=40).")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node: Any = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[_list_index(part, node, key)]
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, key)] = value
        else:
            node[last] = value
    return data


def _list_index(part: str, node: list, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"Override '{key}': '{part}' is not an index of a list of {len(node)} items.")
    return int(part)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Layer ``extra`` over ``base``: mappings merge key by key, lists concatenate, other values replace."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value)
        elif isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass an existing YAML file to --config.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys at the top level.")
    return data


def load_config(
    cls: type[T], path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None
) -> T:
    """Read YAML file(s) into ``cls``, apply ``overrides`` and validate.

    Parameters
    ----------
    cls : dataclass type
        The stage's config class.
    path : path-like | list of path-like | None
        YAML file(s); several are layered in order with :func:`merge` (so their ``inputs`` lists add
        up). ``None`` starts from the class defaults.
    overrides : list of str
        ``dotted.key=value`` strings applied after the files.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    data: dict[str, Any] = {}
    for one in paths:
        data = merge(data, _read_yaml(Path(one)))
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def dump_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (round-trips through :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = ["apply_overrides", "dump_config", "from_dict", "load_config", "merge", "to_dict"]
