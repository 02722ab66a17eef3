"""A scenario's shape: ``scenario.schema.json`` (JSON Schema draft 7, what editors check best), and its errors as problems.

The schema is the one an editor checks a scenario file against (``docs/scenarios.md``);
``jsonschema`` gives every error with its path, and ``problems`` words each one as
``gpus[2].memory: expected a size in bytes or like '40GiB', got string '40 gigs'``. What a
schema cannot say (a device a pod holds exists, MIG instances fit their GPU) is checked in
``parse.py``.

A value that must be a string is never made from a number: YAML reads an unquoted
``driver_version: 550.90`` as the float 550.9 and ``serial: 0123`` as the octal 83, so converting
back would silently change what was written. ``YamlLoader`` keeps each number's text, so that the
problem can show it as written and say to quote it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from importlib import resources
from typing import Any, Iterator

import yaml
from jsonschema import Draft7Validator, validators

__all__ = ["Path", "YamlLoader", "pattern", "plain", "problems", "schema", "typename", "with_defaults"]

Path = tuple[Any, ...]  # keys and list indices from the document's root

_TYPES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
          "object": "a mapping", "array": "a list", "null": "nothing"}
_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">"}


class _Written:
    """A YAML number that remembers its text."""

    written: str


class _WrittenInt(_Written, int): ...


class _WrittenFloat(_Written, float): ...


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


def plain(v: Any) -> Any:
    """``v`` with the numbers ``YamlLoader`` made as plain ``int`` and ``float``."""
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return (int if isinstance(v, int) else float)(v) if isinstance(v, _Written) else v


def typename(v: Any) -> str:
    """A value as a problem names it: ``a mapping``, ``string 'x'``, ``the number 550.90``."""
    if v is None:
        return "nothing"
    if _is_number(v):
        return f"the number {_as_written(v)}"
    return {dict: "a mapping", list: "a list", str: f"string {v!r}", bool: f"boolean {v}"}.get(
        type(v), f"{type(v).__name__} {v!r}")


@functools.cache
def schema() -> dict[str, Any]:
    """``scenario.schema.json``, read once."""
    return json.loads(resources.files(__package__).joinpath("scenario.schema.json").read_text("utf-8"))


def _definition(name: str, *keys: Any) -> Any:
    node = schema()["definitions"][name] if name else schema()
    for key in keys:
        node = node[key]
    return node


def pattern(definition: str, *keys: Any) -> re.Pattern[str]:
    """The ``pattern`` of ``definitions[definition]`` (then ``keys`` down), for code that reads its groups."""
    return re.compile(_definition(definition, *keys)["pattern"])


def with_defaults(value: dict[str, Any], definition: str, *keys: Any) -> dict[str, Any]:
    """``value`` with the ``default`` of each key of ``definitions[definition]`` (then ``keys`` down; ``""``:
    the document) it lacks."""
    properties = _definition(definition, *keys)["properties"].items()
    return {**{k: v["default"] for k, v in properties if isinstance(v, dict) and "default" in v}, **value}


@functools.cache
def _validator() -> Any:
    # JSON Schema takes 1.0 for an integer, and has no infinity or NaN (YAML has: .inf, .nan);
    # a scenario writes a count or an index as an integer, and every number finite.
    types = Draft7Validator.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: _is_number(v) and isinstance(v, int),
        "number": lambda _, v: _is_number(v) and math.isfinite(v)})
    return validators.extend(Draft7Validator, type_checker=types)(schema())


def problems(data: Any) -> list[tuple[Path, str]]:
    """Every way ``data`` breaks the schema, one problem per value (the first found)."""
    found: dict[Path, str] = {}
    for error in _validator().iter_errors(data):
        for path, message in _explain(error):
            found.setdefault(path, message)
    return list(found.items())


def _explain(error: Any) -> Iterator[tuple[Path, str]]:
    """A ``jsonschema`` error in the words of ``docs/scenarios.md``: (path, problem) pairs."""
    path, keyword, expected, instance, where = (
        tuple(error.absolute_path), error.validator, error.validator_value, error.instance, error.schema)
    if "propertyNames" in error.schema_path:  # a key, not a value, is wrong
        path += (instance,)
    if keyword == "anyOf":
        # The branch whose type the value has says what is wrong with it; the schema's own
        # sentence, or the types it takes, when the value fits none (or the sentence is all).
        branches: dict[int, list[Any]] = {}
        for e in error.context:
            branches.setdefault(e.relative_schema_path[0], []).append(e)
        fits = [es for es in branches.values() if not any(e.validator == "type" and not e.relative_path for e in es)]
        if fits and "errorMessage" not in where:
            for e in fits[0]:
                yield from _explain(e)
            return
        types = [_TYPES[e.validator_value] for es in branches.values() for e in es
                 if e.validator == "type" and not e.relative_path]
        yield path, f"{where.get('errorMessage') or 'expected ' + ' or '.join(types)}, got {typename(instance)}"
    elif keyword == "type":
        want = _TYPES[expected if isinstance(expected, str) else expected[0]]
        if want == "a string" and _is_number(instance):
            yield path, (f"expected a string, got {typename(instance)}: write it in quotes "
                         f"(\"{_as_written(instance)}\") so that it is kept as written")
        else:
            finite = want == "a number" and _is_number(instance)  # a number that is not one: .inf or .nan
            yield path, f"expected {'a finite number' if finite else want}, got {typename(instance)}"
    elif keyword == "required":
        for key in expected:
            if key not in instance:
                yield path + (key,), "required" + (f" for {where['title']}" if "then" in error.schema_path else "")
    elif keyword == "additionalProperties":
        allowed = list(where.get("properties", ()))
        for key in instance:
            if key not in allowed:
                yield path + (key,), f"unknown key (allowed: {', '.join(allowed)})"
    elif keyword == "enum":
        yield path, f"unknown value {instance!r} (one of: {', '.join(map(str, expected))})"
    elif keyword in _BOUNDS:
        yield path, f"must be {_BOUNDS[keyword]} {expected:g}, got {instance:g}"
    elif keyword in ("minLength", "minItems"):
        yield path, "must not be empty"
    elif keyword == "pattern":
        yield path, f"{where['errorMessage']}, got {typename(instance)}"
    else:  # a keyword this schema does not use: jsonschema's own words
        yield path, error.message
