"""Typed configs: YAML file for defaults, CLI flags win, unknown keys fail.

A config is a tree of dataclasses. Every leaf can be set as `--section.key value` (or
`--section.key=value`); a leaf whose name is unique in the tree can also be set as `--key value`
(so `--max_steps 10` works for `training.max_steps`). Values are parsed as YAML scalars/lists
and then checked against the field's type, so a typo is an error and never a silent `None`.
The DeepSpeed launcher's `--local_rank` is accepted and ignored (the env var carries it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

IGNORED_FLAGS = {"local_rank", "local-rank"}


class ConfigError(ValueError):
    """A config file or flag that does not match the config dataclasses."""


def help_field(default: Any, doc: str, **kw: Any) -> Any:
    """A config dataclass field with its help string (what `format_help` and `--help` print); a
    list or dict default goes through default_factory, so instances never share it."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": doc}, **kw)
    return dataclasses.field(default=default, metadata={"help": doc}, **kw)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a parsed YAML value against a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported config type {tp}")


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys in "
            f"{where or 'the top level'}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], path)
    # Sections not mentioned still get their defaults through default_factory.
    return cls(**kwargs)


def leaf_paths(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Map every dotted leaf path to its tuple of keys, e.g. 'training.max_steps'."""
    out: dict[str, tuple[str, ...]] = {}
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        if _is_dataclass_type(tp):
            out.update(leaf_paths(tp, path))
        else:
            out[path] = tuple(path.split("."))
    return out


def _resolve_flag(cls: type, key: str) -> tuple[str, ...]:
    key = key.replace("-", "_")
    paths = leaf_paths(cls)
    if key in paths:
        return paths[key]
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return paths[matches[0]]
    if len(matches) > 1:
        raise ConfigError(f"--{key} is ambiguous; use one of {['--' + m for m in matches]}")
    raise ConfigError(f"unknown flag --{key}; run with --help to list the config keys")


def _split_argv(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Pull `--config` out and pair the remaining `--key value` / `--key=value` flags."""
    config_path = None
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; flags look like --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = "true"  # a bare flag switches a boolean on
            else:
                i += 1
                value = argv[i]
        i += 1
        if key in IGNORED_FLAGS:
            continue
        if key == "config":
            config_path = value
        else:
            pairs.append((key, value))
    return config_path, pairs


def _set_path(tree: dict, keys: tuple[str, ...], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def config_from_dict(cls: type[T], data: dict) -> T:
    return _build(cls, data)


def parse_config(cls: type[T], argv: list[str], default_config: str | None = None) -> T:
    """Build `cls` from `--config file.yaml` (or `default_config`) plus CLI overrides."""
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(cls))
        raise SystemExit(0)
    config_path, pairs = _split_argv(argv)
    config_path = config_path or default_config
    tree = load_yaml(config_path) if config_path else {}
    for key, raw in pairs:
        keys = _resolve_flag(cls, key)
        _set_path(tree, keys, yaml.safe_load(raw) if raw != "" else "")
    return _build(cls, tree)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def format_help(cls: type, prefix: str = "") -> str:
    lines = [] if prefix else [f"Config keys for {cls.__name__} (set in YAML or as --key value):"]
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        if _is_dataclass_type(tp):
            lines.append(f"  [{path}]")
            lines.append(format_help(tp, path))
            continue
        default = f.default if f.default is not dataclasses.MISSING else "(factory)"
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        lines.append(f"  --{path} (default: {default!r}) {help_text}")
    return "\n".join(lines)
