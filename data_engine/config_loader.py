"""Builds config dataclasses from plain YAML data, collecting every problem at once.

Unknown keys are errors (a typo must not silently fall back to a default), and each
problem names the dotted field it concerns. Unknown keys, wrong types and bad values are
reported together: an object with a wrongly typed field is checked with that field at its
default, and the problems that name the field are left to its type error.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from data_engine.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: `2e-4` and `1e5` (no dot) are
    numbers, not the strings YAML 1.1 makes of them (a learning rate written as papers write
    it would otherwise fail the type check)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path | None, origin: str = "config"
              ) -> tuple[dict[str, Any], Path, str]:
    """(the mapping in the YAML file, the folder relative paths in it start from, its name
    for messages); no file: an empty mapping relative to the working directory."""
    if path is None:
        return {}, Path.cwd(), origin
    path = Path(path)
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"], str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"], str(path)) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level"], str(path))
    return loaded or {}, path.resolve().parent, str(path)


def from_dict(cls: type[T], data: Any, origin: str = "config") -> T:
    """Returns ``cls`` built from ``data`` or raises ConfigError listing every problem."""
    problems: list[str] = []
    value = _build(cls, data, "", problems)
    mistyped = [p.split(": ", 1)[0] for p in problems if ": unknown key" not in p]
    problems.extend(validate(value, skip=mistyped))
    if problems:
        raise ConfigError(problems, origin)
    return value


def validate(obj: Any, prefix: str = "", skip: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Runs ``check()`` of every nested config dataclass; returns the problems found.

    ``skip``: the fields (dotted paths) whose value has the wrong type. An object holding
    one is checked with those fields at their defaults, and problems naming them are dropped
    (they would describe the default, not the user's value); an object put in place of a
    wrong value, or holding a required field of the wrong type, is not checked.
    """
    problems: list[str] = []
    if not dataclasses.is_dataclass(obj):
        return problems
    check = getattr(obj, "check", None)
    if check is not None:
        held = _held(obj, prefix, skip)
        checked = obj if held == set() else _with_defaults(obj, held)
        if checked is not None:
            problems.extend(f"{prefix}{p}" for p in checked.check() if not any(
                re.search(rf"\b{re.escape(name)}\b", p) for name in held or ()))
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        items = child if isinstance(child, list) else [child]
        for i, item in enumerate(items):
            where = f"{prefix}{f.name}[{i}]." if isinstance(child, list) else f"{prefix}{f.name}."
            problems.extend(validate(item, where, skip))
    return problems


def _held(obj: Any, prefix: str, paths: list[str] | tuple[str, ...]) -> set[str] | None:
    """The names of ``obj``'s own fields with a wrong value somewhere inside them (rather
    than in a config object nested in them); None when ``obj`` itself is a default put in
    place of a wrong value."""
    if not paths:
        return set()
    if (prefix[:-1] if prefix else "<root>") in paths:
        return None
    held = set()
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        child = getattr(obj, f.name)
        nested = dataclasses.is_dataclass(child) or (
            isinstance(child, list) and any(dataclasses.is_dataclass(c) for c in child))
        for path in paths:
            rest = path[len(key):] if path.startswith(key) else None
            if rest == "" or (rest and rest[:1] in (".", "[")
                              and (not nested or re.fullmatch(r"\[\d+\]", rest))):
                held.add(f.name)  # the value itself, inside a plain value, or a list item
    return held


def _with_defaults(obj: Any, names: set[str] | None) -> Any:
    """``obj`` with the named fields at their defaults; None when one has no default."""
    if names is None:
        return None
    values = {}
    for f in dataclasses.fields(obj):
        if f.name not in names:
            continue
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            return None
    return dataclasses.replace(obj, **values)


def _optional_section(tp: Any) -> type | None:
    """The config class of an optional section (``X | None``) that builds with no
    arguments, else None."""
    args = typing.get_args(tp)
    inner = [a for a in args if a is not type(None)]
    if type(None) not in args or len(inner) != 1 or not dataclasses.is_dataclass(inner[0]):
        return None
    try:
        inner[0]()
    except TypeError:  # required fields: no defaults to show
        return None
    return inner[0]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, data: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = where or "<root>"
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], data, where, problems)
    if dataclasses.is_dataclass(tp):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{label}: expected a mapping, got {type(data).__name__}")
            return tp()
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        for key in data:
            if key not in names:
                problems.append(f"{where}{'.' if where else ''}{key}: unknown key "
                                f"(known: {', '.join(sorted(names))})")
        kwargs = {}
        for name in names:
            if name in data:
                sub = f"{where}.{name}" if where else name
                kwargs[name] = _build(hints[name], data[name], sub, problems)
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            problems.append(f"{label}: {exc}")
            return None
    if origin is list:
        if not isinstance(data, list):
            problems.append(f"{label}: expected a list, got {type(data).__name__}")
            return []
        return [_build(args[0], item, f"{where}[{i}]", problems) for i, item in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            problems.append(f"{label}: expected a mapping, got {type(data).__name__}")
            return {}
        return {str(k): _build(args[1], v, f"{where}.{k}", problems) for k, v in data.items()}
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if tp is float and isinstance(data, float) and math.isnan(data):
        problems.append(f"{label}: expected a number, got .nan")
        return data
    if tp in (int, float, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            problems.append(f"{label}: expected {_type_name(tp)}, got {data!r}")
        return data
    if tp is Any:
        return data
    problems.append(f"{label}: unsupported type {_type_name(tp)}")
    return data


def to_yaml_comments(obj: Any, indent: int = 0) -> str:
    """Renders a config dataclass as YAML with each field's help as a comment. A section
    that is off (null) is followed by its fields with their defaults, commented out."""
    pad = "  " * indent
    out: list[str] = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        help_text = f.metadata.get("help")
        if help_text:
            out.append(f"{pad}# {help_text}")
        section = _optional_section(hints[f.name]) if value is None else None
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:")
            out.append(to_yaml_comments(value, indent + 1))
        elif section is not None:
            out.append(f"{pad}{f.name}: null")
            out.append(f"{pad}# on, with its defaults (uncomment to edit):")
            out.append(f"{pad}# {f.name}:")
            out += [f"{pad}# {line[len(pad):]}"
                    for line in to_yaml_comments(section(), indent + 1).splitlines()]
        else:
            rendered = yaml.safe_dump({f.name: value}, default_flow_style=True,
                                      allow_unicode=True, width=10_000).strip()
            if rendered.startswith("{") and rendered.endswith("}"):
                rendered = rendered[1:-1]
            out.append(f"{pad}{rendered}")
    return "\n".join(out)
