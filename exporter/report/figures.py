"""The report's figures from the integrals: per workload and GPU model, per namespace, per day,
and the two lists (the longest-idle interactive holders, the least efficient batch workloads).
Plain data, the same for every output (table, CSV, JSON, HTML)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .prometheus import RECORDS, Key, Span

#: The workload kinds of batch work (alerts/params.py ``batch_kinds``): every other kind is
#: interactive or serving (Deployment, StatefulSet, a bare Pod, ...).
BATCH_KINDS = re.compile("Job|CronJob")


@dataclass(frozen=True)
class Row:
    """One workload on one GPU model over the range. GPU-hours; energy in kWh; cost in the
    prices' currency, None where the model has no price."""

    namespace: str
    workload_kind: str
    workload: str
    model: str
    held_gpu_hours: float
    used_gpu_hours: float
    idle_gpu_hours: float
    sm_active_gpu_hours: float | None  # None: no profiling on these GPUs
    energy_kwh: float
    price_per_gpu_hour: float | None
    cost: float | None
    idle_cost: float | None

    @property
    def efficiency(self) -> float | None:
        return self.used_gpu_hours / self.held_gpu_hours if self.held_gpu_hours else None

    @property
    def batch(self) -> bool:
        return bool(BATCH_KINDS.fullmatch(self.workload_kind))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"efficiency": self.efficiency}


@dataclass(frozen=True)
class Total:
    """Rows summed (a namespace, a workload over its models, a day): cost None when no row had a price."""

    name: str
    held_gpu_hours: float = 0.0
    used_gpu_hours: float = 0.0
    idle_gpu_hours: float = 0.0
    energy_kwh: float = 0.0
    cost: float | None = None
    idle_cost: float | None = None
    workload_kind: str = ""

    @property
    def efficiency(self) -> float | None:
        return self.used_gpu_hours / self.held_gpu_hours if self.held_gpu_hours else None

    def plus(self, row: Row) -> "Total":
        def add(a: float | None, b: float | None) -> float | None:
            return a if b is None else (b if a is None else a + b)

        return Total(self.name, self.held_gpu_hours + row.held_gpu_hours, self.used_gpu_hours + row.used_gpu_hours,
                     self.idle_gpu_hours + row.idle_gpu_hours, self.energy_kwh + row.energy_kwh,
                     add(self.cost, row.cost), add(self.idle_cost, row.idle_cost), self.workload_kind)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"efficiency": self.efficiency}


@dataclass(frozen=True)
class Day:
    start: float
    end: float
    namespaces: tuple[Total, ...]


@dataclass(frozen=True)
class Report:
    start: float
    end: float
    interval_seconds: float
    currency: str
    rows: tuple[Row, ...]
    namespaces: tuple[Total, ...]
    total: Total
    days: tuple[Day, ...]
    idle_interactive: tuple[Total, ...]
    inefficient_batch: tuple[Total, ...]
    unpriced_models: tuple[str, ...] = field(default=())


def price_of(model: str, prices: Mapping[str, float]) -> float | None:
    """The price of ``model``: its exact name, else the last given glob pattern (``*H100*``) that
    matches it, case-insensitively (a ``--price`` flag comes after the price file's entries)."""
    if model in prices:
        return prices[model]
    for pattern, price in reversed(prices.items()):
        if fnmatch.fnmatchcase(model.lower(), pattern.lower()):
            return price
    return None


def _rows(figures: Mapping[str, Mapping[Key, float]], prices: Mapping[str, float]) -> list[Row]:
    keys = sorted({key for per_key in figures.values() for key in per_key})
    rows = []
    for key in keys:
        held = figures["held"].get(key, 0.0)
        if held <= 0:
            continue
        price = price_of(key[3], prices)
        idle = figures["idle"].get(key, 0.0)
        rows.append(Row(*key, held_gpu_hours=held, used_gpu_hours=figures["used"].get(key, 0.0), idle_gpu_hours=idle,
                        sm_active_gpu_hours=figures["sm_active"].get(key), energy_kwh=figures["power"].get(key, 0.0) / 1000,
                        price_per_gpu_hour=price, cost=None if price is None else held * price,
                        idle_cost=None if price is None else idle * price))
    return rows


def _totals(rows: list[Row], name_of: Any, kind_of: Any = lambda row: "") -> list[Total]:
    totals: dict[str, Total] = {}
    for row in rows:
        name = name_of(row)
        totals[name] = totals.get(name, Total(name, workload_kind=kind_of(row))).plus(row)
    return list(totals.values())


def build(spans: list[Span], per_span: list[dict[str, dict[Key, float]]], prices: Mapping[str, float],
          interval_seconds: float, currency: str = "", top: int = 10) -> Report:
    """The report of ``per_span`` (``prometheus.integrals``), priced by ``prices`` (model or glob
    -> price per GPU-hour)."""
    whole: dict[str, dict[Key, float]] = {figure: {} for figure in RECORDS}
    for figures in per_span:
        for figure, per_key in figures.items():
            for key, value in per_key.items():
                whole[figure][key] = whole[figure].get(key, 0.0) + value
    # A row per workload and model; watt-hours -> kWh, and GPU-hours as integrated.
    rows = _rows(whole, prices)
    days = tuple(Day(span.start, span.end, tuple(sorted(_totals(_rows(figures, prices), lambda r: r.namespace),
                                                        key=lambda t: t.name)))
                 for span, figures in zip(spans, per_span))
    namespaces = sorted(_totals(rows, lambda r: r.namespace), key=lambda t: (-t.held_gpu_hours, t.name))
    total = Total("total")
    for row in rows:
        total = total.plus(row)
    workloads = _totals(rows, lambda r: f"{r.namespace}/{r.workload}", lambda r: r.workload_kind)
    batch = [w for w in workloads if BATCH_KINDS.fullmatch(w.workload_kind)]
    interactive = [w for w in workloads if not BATCH_KINDS.fullmatch(w.workload_kind) and w.idle_gpu_hours > 0]
    return Report(
        start=spans[0].start, end=spans[-1].end, interval_seconds=interval_seconds, currency=currency,
        rows=tuple(sorted(rows, key=lambda r: (r.namespace, -r.held_gpu_hours, r.workload, r.model))),
        namespaces=tuple(namespaces), total=total, days=days,
        idle_interactive=tuple(sorted(interactive, key=lambda w: (-w.idle_gpu_hours, w.name))[:top]),
        inefficient_batch=tuple(sorted(batch, key=lambda w: (w.efficiency or 0.0, w.name))[:top]),
        unpriced_models=tuple(sorted({r.model for r in rows if r.price_per_gpu_hour is None})) if prices else (),
    )
