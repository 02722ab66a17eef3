"""Validation of a dashboard against the types of Grafana Labs' grafana-foundation-sdk.

The SDK's models are plain classes with annotated fields and ``to_json``/``from_json``; nothing
in them checks a value. ``validate`` holds a dashboard to them both ways: every field of the
model (panel options and queries included, by their plugin's types) holds a value of its
annotated type, enums among their values (``type_problems``); and the JSON decodes through the
SDK's models back to itself (``roundtrip_problems``): a key that no type knows is dropped on the
way, a panel kind's options are read by that kind's types.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dm


class InvalidDashboard(ValueError):
    """A dashboard that the SDK's types do not accept; ``problems`` says where and why."""

    def __init__(self, title: str, problems: list[str]) -> None:
        super().__init__(f"{title}: " + "; ".join(problems[:10]))
        self.problems = problems


def _is_model(value: Any) -> bool:
    return callable(getattr(value, "to_json", None)) and bool(getattr(type(value), "__annotations__", None))


def type_problems(value: Any, hint: Any, path: str) -> list[str]:
    """Where ``value`` does not hold to ``hint``, an annotation of the SDK's models: enums among
    their values, literals, lists, maps, numbers, and every model field by field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        ok = True
    elif origin is typing.Union or origin is types.UnionType:
        found = [type_problems(value, arg, path) for arg in args]
        return [] if any(not f for f in found) else min(found, key=len)
    elif origin is typing.Literal:
        ok = value in args
    elif origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [p for i, item in enumerate(value) for p in type_problems(item, args[0], f"{path}[{i}]")]
    elif origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not a map"]
        return [p for key, item in value.items() for p in type_problems(item, args[1], f"{path}.{key}")]
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        ok = not isinstance(value, bool) and value in {member.value for member in hint}
    elif hint in (int, float):
        ok = isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        return [f"{path}: {value!r} is not {getattr(hint, '__name__', hint)}"]
    if not _is_model(value):
        return []
    return [p for name, field in typing.get_type_hints(type(value)).items()
            for p in type_problems(getattr(value, name), field, f"{path}.{name}")]


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for key in {**a, **b} for p in _differences(a.get(key, "<absent>"), b.get(key, "<absent>"),
                                                                f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} becomes {b!r}"]


def roundtrip_problems(dashboard: dict[str, Any]) -> list[str]:
    """What changes when ``dashboard`` (JSON) is decoded into the SDK's models (queries and panel
    options by their plugin's types) and encoded again: a key the types do not know is dropped."""
    register_default_plugins()
    again = json.loads(json.dumps(dm.Dashboard.from_json(dashboard), cls=JSONEncoder))
    return _differences(dashboard, again)


def validate(dashboard: dm.Dashboard, schema_version: int) -> dict[str, Any]:
    """The dashboard's JSON, once the SDK's types accept it both ways, and its schema version is
    ``schema_version`` (the one the generator documents: a newer SDK's types are a new schema)."""
    problems = type_problems(dashboard, dm.Dashboard, "dashboard")
    if dashboard.schema_version != schema_version:
        problems.append(f"dashboard.schema_version: {dashboard.schema_version}, not {schema_version}")
    encoded = json.loads(json.dumps(dashboard, cls=JSONEncoder))
    problems += roundtrip_problems(encoded)
    if problems:
        raise InvalidDashboard(str(dashboard.title), problems)
    return encoded
