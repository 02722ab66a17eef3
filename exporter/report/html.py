"""The report as one self-contained HTML page: inline CSS and inline SVG charts (per-namespace
stacked bars of used, idle and the rest of what was held; the daily trend of the same), no
JavaScript, no external fetch. Rendered by Jinja2 (``templates/report.html``), which escapes every
value: a workload named ``<script>`` is shown as text."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .figures import Report, Total
from .output import span_text, timestamp

if TYPE_CHECKING:
    import jinja2

#: The three parts of a bar: used, idle (held, busy below idle_ratio), the rest of what was held.
PARTS = (("used", "#1f77b4"), ("idle", "#d62728"), ("rest", "#c7c7c7"))


@dataclass(frozen=True)
class Bar:
    label: str
    held: float
    widths: tuple[tuple[str, str, float, float, float], ...]  # (part, colour, x, width, GPU-hours)


def _parts(total: Total) -> list[tuple[str, float]]:
    used = min(total.used_gpu_hours, total.held_gpu_hours)
    idle = min(total.idle_gpu_hours, total.held_gpu_hours - used)
    return [("used", used), ("idle", idle), ("rest", max(0.0, total.held_gpu_hours - used - idle))]


def bars(totals: list[Total] | tuple[Total, ...], length: float) -> list[Bar]:
    """Each total as a stacked bar of ``length`` for the largest held."""
    top = max((t.held_gpu_hours for t in totals), default=0.0) or 1.0
    out = []
    for t in totals:
        x, parts = 0.0, []
        for (part, hours), (_, colour) in zip(_parts(t), PARTS):
            width = hours / top * length
            parts.append((part, colour, x, width, hours))
            x += width
        out.append(Bar(t.name, t.held_gpu_hours, tuple(parts)))
    return out


def _days(report: Report) -> list[Total]:
    out = []
    for day in report.days:
        total = Total(timestamp(day.start)[:10])
        for t in day.namespaces:
            total = Total(total.name, total.held_gpu_hours + t.held_gpu_hours, total.used_gpu_hours + t.used_gpu_hours,
                          total.idle_gpu_hours + t.idle_gpu_hours)
        out.append(total)
    return out


def to_html(report: Report) -> str:
    return _templates().get_template("report.html").render(
        report=report, start=timestamp(report.start), end=timestamp(report.end),
        span=span_text(report.end - report.start), namespace_bars=bars(report.namespaces, 330.0),
        day_bars=bars(_days(report), 220.0), parts=PARTS)


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


@functools.cache
def _templates() -> "jinja2.Environment":
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, percent=_percent)
    return env
