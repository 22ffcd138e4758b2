"""Configs as data: nested dataclasses loaded from YAML, with `key=value` overrides.

Each stage declares one config dataclass whose fields are documented with
`field(metadata={"help": ...})`. Loading rejects unknown keys (naming the closest known
ones), coerces scalar types, and runs each dataclass's `validate()` when it defines one.
Presets are YAML files shipped as package data; a preset may name a `base:` preset it
derives from, so paper recipes share one base and state only what differs.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llava_plugin.errors import GenfeedbackError

T = TypeVar("T")


class ConfigError(GenfeedbackError, ValueError):
    """A config value or key that cannot be used; the message names the key and the fix."""


def documented(text: str, default: Any = dataclasses.MISSING, factory=None):
    """A dataclass field with its help text (shown by `help_text` and the CLIs' --help)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and coercing scalars."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {close}?" if close else f"; known keys: {sorted(known)}"
        raise ConfigError(f"unknown config key {path + key!r}{hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, path + name)
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"config {path or cls.__name__}: {err}") from err
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        last_err = None
        for arg in non_none:
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                last_err = err
        raise last_err or ConfigError(f"{key}: cannot use {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, key + ".")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: expected one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            number = float(value) if tp is float else int(float(value)) if str(value).strip() else None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}={value!r}: expected {tp.__name__}") from err
        if tp is int and float(value) != number:
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    return value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["optim.lr=1e-4", "method.num_noise=2"]` -> nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. --set optim.lr=1e-4)")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_preset(preset_dir: Path, name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset by name (a YAML file in `preset_dir`) or path, resolving `base:` chains."""
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in preset_dir.glob("*.yaml"))
        raise ConfigError(f"preset {name_or_path!r} not found (looked for {path}); available presets: {available}")
    if str(path) in _seen:
        raise ConfigError(f"preset inheritance loops: {' -> '.join(_seen + (str(path),))}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a YAML mapping")
    base = data.pop("base", None)
    if base:
        data = deep_merge(load_yaml_preset(preset_dir, base, _seen + (str(path),)), data)
    return data


def list_presets(preset_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))


def help_text(cls, prefix: str = "") -> list[str]:
    """One line per field, `key (type, default): help`, for --help and docs."""
    lines = []
    for f in dataclasses.fields(cls):
        hints = typing.get_type_hints(cls)
        if dataclasses.is_dataclass(hints[f.name]):
            lines += help_text(hints[f.name], prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"{prefix}{f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return lines


ZOO_PREFIX = "zoo:"


def resolve_zoo_refs(data, zoo: str | None, key: str = ""):
    """String values `zoo:NAME` (the tiny and world presets use them) become paths of the zoo at `zoo`
    (its zoo.json): `zoo:clip` -> zoo.clip, `zoo:data/scenes` -> zoo.data["scenes"]."""
    if isinstance(data, dict):
        return {k: resolve_zoo_refs(v, zoo, f"{key}{k}.") for k, v in data.items()}
    if not (isinstance(data, str) and data.startswith(ZOO_PREFIX)):
        return data
    where = key.rstrip(".")
    if not zoo:
        raise ConfigError(f"{where}={data!r} refers to the tiny zoo: pass --zoo DIR (built by "
                          "`python -m llava_plugin.toy --out DIR`) or give a real path")
    from llava_plugin.toy import load_zoo

    loaded = load_zoo(zoo)
    name = data[len(ZOO_PREFIX):]
    if name.startswith("data/"):
        value = loaded.data.get(name[len("data/"):])
    else:
        value = getattr(loaded, name, None)
    if value is None:
        raise ConfigError(f"{where}={data!r}: the zoo at {zoo} has no {name!r} (was its part built?); "
                          f"it has {sorted(k for k, v in vars(loaded).items() if v)} and data "
                          f"{sorted(loaded.data)}")
    return str(value)
