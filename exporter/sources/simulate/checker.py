"""Typed reads of YAML data that collect problems instead of stopping at the first one.

``Checker`` reads a value as the kind it must be (string, integer, number, boolean, size) and,
when it is not, records a problem prefixed with the value's path (``gpus[2].memory: ...``) and
goes on with a default, so that a file with several mistakes is reported whole.

A value that must be a string is never made from a number: YAML reads an unquoted
``driver_version: 550.90`` as the float 550.9 and ``serial: 0123`` as the octal 83, so converting
back would silently change what was written. ``YamlLoader`` keeps each number's text, so that the
problem can show it as written and say to quote it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ...model.vocabulary import BYTES_PER_KIB

__all__ = ["Checker", "YamlLoader", "parse_size", "typename"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
               "KiB": BYTES_PER_KIB, "MiB": BYTES_PER_KIB ** 2, "GiB": BYTES_PER_KIB ** 3, "TiB": BYTES_PER_KIB ** 4}


class _Written:
    """A YAML number that remembers its text."""

    written: str


class _WrittenInt(_Written, int):
    pass


class _WrittenFloat(_Written, float):
    pass


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose numbers keep the text they were written as (see the module doc)."""


def _keeping_text(cls: type, construct: Any) -> Any:
    def constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = cls(construct(loader, node))
        value.written = node.value
        return value

    return constructor


YamlLoader.add_constructor("tag:yaml.org,2002:int", _keeping_text(_WrittenInt, yaml.SafeLoader.construct_yaml_int))
YamlLoader.add_constructor("tag:yaml.org,2002:float",
                           _keeping_text(_WrittenFloat, yaml.SafeLoader.construct_yaml_float))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_written(number: float) -> str:
    return number.written if isinstance(number, _Written) else repr(number)


def typename(v: Any) -> str:
    """A value as a problem names it: ``a mapping``, ``string 'x'``, ``the number 550.90``."""
    if v is None:
        return "nothing"
    if _is_number(v):
        return f"the number {_as_written(v)}"
    return {dict: "a mapping", list: "a list", str: f"string {v!r}", bool: f"boolean {v}"}.get(
        type(v), f"{type(v).__name__} {v!r}")


def parse_size(v: Any) -> int | None:
    """Bytes from an integer or a string like ``40GiB``; None when it is neither."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return int(v) if v >= 0 else None
    if isinstance(v, str):
        m = _SIZE.match(v)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    return None


class Checker:
    """Collects problems while reading; ``problems`` is empty when everything read was valid."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.problems.append(f"{path or '(document)'}: {msg}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict | None:
        """``value`` as a mapping with only ``allowed`` keys (a typo is a problem, not a default)."""
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping, got {typename(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.add(_join(path, key), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self.add(_join(path, key), "required")
        return value

    def string(self, v: Any, path: str) -> str | None:
        """``v`` as a non-empty string; a number is a problem that says to quote it."""
        if _is_number(v):
            self.add(path, f"expected a string, got {typename(v)}: write it in quotes (\"{_as_written(v)}\") "
                           "so that it is kept as written")
            return None
        if not isinstance(v, str) or not v:
            self.add(path, f"expected a non-empty string, got {typename(v)}")
            return None
        return v

    def get(self, m: dict, key: str, path: str, kind: str, default: Any = None, *,
            lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
        """Read ``m[key]`` as ``kind`` (str, int, number, bool, size); a problem and ``default`` when wrong."""
        p = _join(path, key)
        if key not in m or m[key] is None and default is not None:
            return default
        v = m[key]
        if kind == "str":
            v = self.string(v, p)
            if v is None:
                return default
            if choices is not None and v not in choices:
                self.add(p, f"unknown value {v!r} (one of: {', '.join(choices)})")
                return default
            return v
        if kind == "bool":
            if not isinstance(v, bool):
                self.add(p, f"expected true or false, got {typename(v)}")
                return default
            return v
        if kind == "size":
            size = parse_size(v)
            if size is None:
                self.add(p, f"expected a size in bytes or like '40GiB', got {typename(v)}")
                return default
            v = size
        elif kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                self.add(p, f"expected an integer, got {typename(v)}")
                return default
            v = int(v)
        elif kind == "number":
            if not _is_number(v):
                self.add(p, f"expected a number, got {typename(v)}")
                return default
            v = float(v)
        if lo is not None and v < lo:
            self.add(p, f"must be >= {lo:g}, got {v:g}")
            return default
        if hi is not None and v > hi:
            self.add(p, f"must be <= {hi:g}, got {v:g}")
            return default
        return v

    def seq(self, m: dict, key: str, path: str, *, required: bool = False) -> list:
        """``m[key]`` as a list (``[]`` when absent, unless ``required``)."""
        p = _join(path, key)
        v = m.get(key)
        if v is None:
            if required:
                self.add(p, "required (a non-empty list)")
            return []
        if not isinstance(v, list):
            self.add(p, f"expected a list, got {typename(v)}")
            return []
        if required and not v:
            self.add(p, "must not be empty")
        return v


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
