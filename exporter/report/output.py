"""The report as a terminal table, CSV (one row per workload and GPU model) or JSON (everything;
docs/report.schema.json). CSV columns: docs/report-csv.schema.json. The HTML page is html.py."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from typing import Any, Sequence

from .figures import Report, Row, Total

#: The CSV's columns, in order (docs/report-csv.schema.json).
CSV_COLUMNS = ("namespace", "workload_kind", "workload", "model", "held_gpu_hours", "used_gpu_hours",
               "idle_gpu_hours", "efficiency", "sm_active_gpu_hours", "energy_kwh", "price_per_gpu_hour", "cost",
               "idle_cost")
SCHEMA_VERSION = 1


def timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def span_text(seconds: float) -> str:
    days, rest = divmod(int(round(seconds)), 86400)
    hours = rest // 3600
    return f"{days}d{hours}h" if days and hours else (f"{days}d" if days else f"{hours}h")


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: list[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header)] + [line(r) for r in rows]


def _total_cells(t: Total) -> list[str]:
    return [_num(t.held_gpu_hours), _num(t.used_gpu_hours), _num(t.idle_gpu_hours), _percent(t.efficiency),
            _num(t.energy_kwh, 1), _num(t.cost), _num(t.idle_cost)]


def table(report: Report) -> str:
    cur = f" ({report.currency})" if report.currency else ""
    money = [f"COST{cur}", f"IDLE COST{cur}"]
    figures = ["HELD GPU-h", "USED GPU-h", "IDLE GPU-h", "EFFICIENCY", "ENERGY kWh", *money]
    out = [f"GPU efficiency {timestamp(report.start)} .. {timestamp(report.end)} "
           f"({span_text(report.end - report.start)}; rules every {report.interval_seconds:g}s)", "",
           "Per namespace"]
    rows = [[t.name, *_total_cells(t)] for t in report.namespaces] + [["total", *_total_cells(report.total)]]
    out += _table(["NAMESPACE", *figures], rows, set(range(1, 8))) + ["", "Per workload"]
    rows = [[r.namespace, r.workload_kind, r.workload, r.model, _num(r.held_gpu_hours), _num(r.used_gpu_hours),
             _num(r.idle_gpu_hours), _percent(r.efficiency), _num(r.sm_active_gpu_hours), _num(r.energy_kwh, 1),
             _num(r.cost), _num(r.idle_cost)] for r in report.rows]
    out += _table(["NAMESPACE", "KIND", "WORKLOAD", "MODEL", "HELD GPU-h", "USED GPU-h", "IDLE GPU-h", "EFFICIENCY",
                   "SM GPU-h", "ENERGY kWh", *money], rows, set(range(4, 12)))
    for title, workloads in (("Longest-idle interactive holders", report.idle_interactive),
                             ("Least efficient batch workloads", report.inefficient_batch)):
        out += ["", title]
        if workloads:
            out += _table(["WORKLOAD", "KIND", "IDLE GPU-h", "HELD GPU-h", "EFFICIENCY", f"IDLE COST{cur}"],
                          [[w.name, w.workload_kind, _num(w.idle_gpu_hours), _num(w.held_gpu_hours),
                            _percent(w.efficiency), _num(w.idle_cost)] for w in workloads], {2, 3, 4, 5})
        else:
            out.append("(none)")
    if report.unpriced_models:
        out += ["", "No price for: " + ", ".join(report.unpriced_models) + " (--price MODEL=PRICE)"]
    return "\n".join(out) + "\n"


def _cell(value: Any) -> Any:
    return "" if value is None else (repr(value) if isinstance(value, float) else value)


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        values = row.as_dict()
        writer.writerow([_cell(values[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def _workload(total: Total) -> dict[str, Any]:
    namespace, _, workload = total.name.partition("/")
    values = total.as_dict()
    del values["name"]
    return {"namespace": namespace, "workload": workload} | values


def as_json_data(report: Report) -> dict[str, Any]:
    def named(total: Total, key: str) -> dict[str, Any]:
        values = total.as_dict()
        del values["workload_kind"]
        return {key: values.pop("name")} | values

    return {
        "schema_version": SCHEMA_VERSION,
        "range": {"from": timestamp(report.start), "to": timestamp(report.end), "seconds": report.end - report.start},
        "interval_seconds": report.interval_seconds,
        "currency": report.currency,
        "total": named(report.total, "name"),
        "namespaces": [named(t, "namespace") for t in report.namespaces],
        "workloads": [row.as_dict() for row in report.rows],
        "days": [{"from": timestamp(d.start), "to": timestamp(d.end),
                  "namespaces": [named(t, "namespace") for t in d.namespaces]} for d in report.days],
        "idle_interactive": [_workload(w) for w in report.idle_interactive],
        "inefficient_batch": [_workload(w) for w in report.inefficient_batch],
        "unpriced_models": list(report.unpriced_models),
    }


def to_json(report: Report) -> str:
    return json.dumps(as_json_data(report), indent=2) + "\n"


