"""Strict conversion between dataclass configs and plain dictionaries.

Every config in metatele is a dataclass whose defaults are the paper's values. The same
dataclass is printed by ``--help``, saved into checkpoints (as a dict) and sent to wandb as
``config``. Converting a dict back is strict: an unknown or misspelled key is an error that
names the key and lists the allowed ones, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config field has an unknown name or an impossible value."""


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain-Python dict of a dataclass config (tuples become lists)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(config)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with a helpful message.

    Nested dataclass fields accept dicts. Every value is checked against its field's type
    (:func:`check_value`) before the dataclass's own ``__post_init__`` validates it. Keys the class
    lists in a ``REMOVED`` mapping (removed options, each with the value a saved config may still
    hold) are dropped, and those of its ``MOVED`` mapping are moved into their group
    (:func:`move_keys`), so that old checkpoints and YAML files load.
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    data = move_keys(cls, data or {}, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, old in getattr(cls, "REMOVED", {}).items():
        if k in data:
            name = f"{where}.{k}" if where else k
            held = tuple(data[k]) if isinstance(data[k], list) and isinstance(old, tuple) else data[k]  # YAML/JSON lists
            require(held == old, name, f"was removed: its behaviour is fixed at the old default {old!r} "
                    f"(a saved config may hold only that value), got {data[k]!r}")
            del data[k]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        name = f"{where}.{k}" if where else k
        raise ConfigError(
            f"unknown config key '{name}'{hint}; allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for k, v in data.items():
        tp = _unwrap_optional(hints[k])
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            v = from_dict(tp, v, where=f"{where}.{k}" if where else k)
        elif typing.get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    for k, v in kwargs.items():
        check_value(f"{where}.{k}" if where else k, hints[k], v)
    return cls(**kwargs)


def move_keys(cls: type, data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``data`` (a copy) with the keys that dataclass ``cls`` lists in its ``MOVED`` mapping (an old
    key → ``group.key``, the option's place in a nested group now) moved there: what a config saved,
    or a YAML file written, before the option moved into the group. Raises :class:`ConfigError`
    where both places hold different values."""
    data = dict(data)
    for old, new in getattr(cls, "MOVED", {}).items():
        if old not in data:
            continue
        group, key = new.split(".")
        section = data.get(group) if isinstance(data.get(group), dict) else {}
        name = f"{where}.{old}" if where else old
        if section.get(key, data[old]) != data[old]:
            raise ConfigError(f"{name}: moved to {where + '.' if where else ''}{new}, which holds another value "
                              f"({section[key]!r}, here {data[old]!r}): set it there only")
        data[group] = {**section, key: data.pop(old)}
    return data


_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
          str: ("a string", "strings"), dict: ("a mapping", "mappings")}


def _expects(tp: Any, plural: bool = False) -> str | None:
    """What a value of annotation ``tp`` must be, in words, or ``None`` where it is not checked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        words = [_expects(a, plural) for a in args]
        if None in words:
            return None
        return " or ".join(words) + (" or null" if len(args) < len(typing.get_args(tp)) else "")
    if origin in (list, tuple):
        inner = {_expects(a, plural=True) for a in typing.get_args(tp) if a is not Ellipsis}
        return "lists" if plural else "a list" + (f" of {inner.pop()}" if len(inner) == 1 and None not in inner else "")
    words = _WORDS.get(origin or tp)
    return words and words[plural]


def _fits(tp: Any, v: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, v) for a in typing.get_args(tp))
    if tp is type(None):
        return v is None
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and len(args) == len(v) and Ellipsis not in typing.get_args(tp):
            return all(_fits(a, x) for a, x in zip(args, v))
        return len(args) != 1 or all(_fits(args[0], x) for x in v)
    if origin is dict or tp is dict:
        return isinstance(v, dict)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return is_int(v)
    if tp is float:
        return is_number(v) and math.isfinite(v)
    if tp is str:
        return isinstance(v, str)
    return True  # a nested dataclass (it checks itself) or a type this check does not cover


def check_value(name: str, tp: Any, v: Any) -> None:
    """Raise :class:`ConfigError` naming ``name`` unless ``v`` fits the field annotation ``tp``.

    The one type check of every config key: ``int`` takes an integer (not a bool, not 2.5),
    ``float`` a finite int or float (no nan, inf or string), ``bool`` true or false, ``str`` a
    string, ``X | None`` also null, and ``list[X]`` / ``tuple[X, ...]`` a list of such values.
    Nested dataclasses and other types are left to their own validation.
    """
    if _fits(tp, v):
        return
    inner = _unwrap_optional(tp)
    args = [a for a in typing.get_args(inner) if a is not Ellipsis]
    if typing.get_origin(inner) in (list, tuple) and isinstance(v, (list, tuple)) and len(set(args)) == 1:
        i, x = next((i, x) for i, x in enumerate(v) if not _fits(args[0], x))
        if _expects(args[0]) is not None:
            raise ConfigError(f"{name}: entry {i} must be {_expects(args[0])}, got {x!r} in {list(v)}")
    expects = _expects(tp)
    if expects is not None:
        raise ConfigError(f"{name}: must be {expects}, got {v!r}")


def check_fields(config: Any, prefix: str = "") -> None:
    """:func:`check_value` for every field of dataclass instance ``config`` (keys named
    ``prefix.field``): a config's ``__post_init__`` calls it first, so that a value set in Python
    (``BaselineConfig(lr=math.inf)``) is refused like one read from YAML."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        check_value(f"{prefix}.{f.name}" if prefix else f.name, hints[f.name], getattr(config, f.name))


def changed_fields(config: Any, default: Any = None) -> list[str]:
    """Names of the fields of dataclass instance ``config`` that differ from ``default`` (by
    default its class's defaults); within a nested dataclass field, dotted: ``group.key``."""
    default = type(config)() if default is None else default
    out = []
    for f in dataclasses.fields(config):
        a, b = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            out += [f"{f.name}.{k}" for k in changed_fields(a, b)]
        elif a != b:
            out.append(f.name)
    return out


def defaults_dir() -> Path:
    """The folder of the shipped default configs and protocols (package data ``metatele/defaults``)."""
    return Path(str(importlib.resources.files("metatele") / "defaults"))


def default_names() -> list[str]:
    """Names of the shipped defaults (``update_tele``, ``benchmark_quick``, ``ship/update_tele``, ...)."""
    root = defaults_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


#: the shipped study protocols and configs (``metatele benchmark``, ``search``, ``digits``), and the
#: selection they read: not meta-training configs
STUDY_PREFIXES = ("benchmark", "search", "digits")


def training_names() -> list[str]:
    """The shipped meta-training configs (``metatele train --config NAME``): no study protocol."""
    return [n for n in default_names() if not n.startswith(STUDY_PREFIXES)]


def resolve_config(name_or_path: str | os.PathLike, what: str = "config", names: list[str] | None = None) -> Path:
    """The YAML file meant by ``name_or_path``: an existing file, else a shipped default by name.

    ``update_tele``, ``update_tele.yaml`` and ``ship/update_tele`` name files in
    :func:`defaults_dir`; a path that exists is taken as it is (it wins over a shipped name).

    ``names``: the shipped names this caller accepts (default: every one); another shipped
    name is refused as not a ``what``.

    Raises:
        ConfigError: neither a file nor an accepted shipped name; the message lists the accepted names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml")
    shipped = defaults_dir() / f"{name}.yaml"
    accepted = default_names() if names is None else names
    if not path.is_absolute() and shipped.is_file():
        if name in accepted:
            return shipped
        raise ConfigError(f"{name_or_path} is a shipped file of another kind (a study protocol of `metatele "
                          f"benchmark`, `search` or `digits`), not a {what}; shipped {what}s: {', '.join(accepted)}")
    raise ConfigError(f"{what} file not found: {name_or_path} (neither a file nor a shipped default; shipped "
                      f"defaults in {defaults_dir()}: {', '.join(accepted)})")


def load_yaml_mapping(path: str, what: str = "config") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; clear :class:`ConfigError` otherwise."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold a mapping of keys to values")
    return data


def parse_value(text: str) -> Any:
    """Parse a ``--set key=value`` value with YAML rules (numbers, lists, booleans, null).

    Numbers in exponent notation without a dot (``3e-4``, ``1e5``), which YAML 1.1 reads as
    strings, are read as floats.
    """
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
        list("-+0123456789."),
    )
    return yaml.load(text, Loader=Loader)


def _section(node: dict[str, Any], parts: list[str], key: str, what: str = "--set") -> dict[str, Any]:
    """The nested dict at ``parts`` under ``node``, creating missing or unset (None) sections."""
    for p in parts:
        if node.get(p) is None:  # a missing or unset (None) optional section
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"{what} {key}: '{p}' is not a section")
    return node


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b=value`` strings to a nested config dict (copy)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        _section(out, parts[:-1], key)[parts[-1]] = parse_value(text)
    return out


def merge_overrides(data: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """Apply a mapping of overrides to a nested config dict (copy), by the rules of
    :func:`apply_overrides`: a dotted key ``a.b`` sets a nested field, and a mapping value is
    merged into the section it names (``{"learned": {"lstm": {"hidden": 64}}}`` changes only
    ``hidden``) rather than replacing it."""
    out = copy.deepcopy(data)

    def merge(node: dict[str, Any], items: Any) -> None:
        for key, value in items.items():
            parts = str(key).split(".")
            if isinstance(value, dict):
                merge(_section(node, parts, str(key), "override"), value)
            else:
                _section(node, parts[:-1], str(key), "override")[parts[-1]] = copy.deepcopy(value)

    merge(out, overrides or {})
    return out


def is_int(v: Any) -> bool:
    """An integer that is not a bool (YAML's ``true`` would pass ``isinstance(v, int)``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require(cond: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` naming ``field`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"{field}: {message}")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's meaning, from the ``Attributes:`` section of dataclass ``cls``'s docstring.

    A line ``name: text`` (or ``a, b: text`` for several fields) starts an entry; more deeply
    indented lines continue it. Fields the docstring does not describe are absent.
    """
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return docs
    fields = {f.name for f in dataclasses.fields(cls)}
    names: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        head, sep, text = line.strip().partition(":")
        entry = [n.strip() for n in head.split(",")]
        if depth == indent and sep and all(n in fields for n in entry):
            names = entry
            for n in names:
                docs[n] = text.strip()
        elif names:
            for n in names:
                docs[n] += " " + line.strip()
    return docs
