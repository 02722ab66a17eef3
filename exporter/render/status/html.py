"""The status page as HTML: plain server-rendered markup with inline CSS (no JavaScript, no external
assets, a refresh meta tag), from the page's model (``model.py``) through the Jinja2 templates of
``templates/`` (``status.html``, its ``status.css``, and ``starting.html``).

Jinja2 escapes every value (``autoescape``): a pod named ``<script>`` is shown as text. It is
imported when the first page is rendered: ``--once`` renders none, and never loads it.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .model import NodeStatus

if TYPE_CHECKING:
    import jinja2

GIB = 1 << 30


def to_html(model: NodeStatus) -> str:
    return _templates().get_template("status.html").render(page=model)


@functools.cache
def starting_page() -> str:
    """Served at ``/`` (with status 503) until the first cycle has finished."""
    return _templates().get_template("starting.html").render()


@functools.cache
def _templates() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the render, not the reader
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters.update(percent=_percent, gib=_gib, utc=_time, unit=_unit, bar_width=_bar_width)
    env.globals["ratio"] = _ratio
    return env


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.0f}%"


def _gib(value: float | None, unit: bool = True) -> str:
    return "n/a" if value is None else f"{value / GIB:.1f}{' GiB' if unit else ''}"


def _unit(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.0f} {unit}"


def _time(unix: float | None) -> str:
    if not unix:
        return "never"
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ratio(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else part / whole


def _bar_width(fraction: float | None) -> str:
    """A gauge's bar, in percent of its width: the fraction, within 0 and 1."""
    return "0" if fraction is None else f"{max(0.0, min(1.0, fraction)) * 100:.0f}"
