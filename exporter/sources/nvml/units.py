"""NVML's raw values in the catalog's base units, and its strings as text."""

from __future__ import annotations

from typing import Any


def scaled(raw: float, factor: float) -> float:
    """``raw * factor`` for a ``vocabulary`` factor, computed so that decimals stay exact.

    A factor below 1 divides by its (integer) reciprocal: 41 * 1e-2 is 0.41000000000000003 in
    floating point, 41 / 100 is 0.41, and the exposition would show the difference.
    """
    if 0 < factor < 1:
        return raw / round(1 / factor)
    return raw * factor


def text(value: Any) -> str:
    """An NVML string (bytes from older pynvml) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
