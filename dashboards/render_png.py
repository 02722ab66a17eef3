"""Draw the dashboards' panels from a Prometheus to PNG, laid out as Grafana lays them out.

    python dashboards/render_png.py --demo                          # the demo node -> docs/images/
    python dashboards/render_png.py --prometheus http://prom:9090 --out /tmp/png --var node=gpu-7

A reviewer sees what every panel shows without a Grafana: each panel sits at its ``gridPos``,
with its title, unit, thresholds, legend names and value mappings; time series, stats, bar
gauges, tables and state timelines are drawn with matplotlib from the same queries (variables
and Grafana's time macros substituted as in ``live.py``). It is a preview, not Grafana: fonts,
colours and the exact look differ. ``--demo`` draws the whole history of the simulated demo node
from a real Prometheus (``live.DemoNode``: a day of the agent's output, backfilled).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import live  # noqa: E402

WIDTH_INCHES = 20.0
ROW_INCHES = 0.36  # one gridPos height unit (Grafana: 30 px plus the margin)
DPI = 80
BACKGROUND, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e9a", "#2c3235"
PALETTE = ["#73BF69", "#F2CC0C", "#5794F2", "#FF9830", "#F2495C", "#B877D9", "#8AB8FF", "#FADE2A", "#96D98D",
           "#FFB357", "#CA95E5", "#FF7383"]
COLOURS = {"green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "purple": "#B877D9",
           "transparent": "#2c3235", "yellow": "#F2CC0C", "blue": "#5794F2"}


# -- Units --------------------------------------------------------------------------------------


def _scaled(value: float, base: float, units: list[str], digits: int = 1) -> str:
    i = 0
    while abs(value) >= base and i < len(units) - 1:
        value /= base
        i += 1
    return f"{value:.{digits}f} {units[i]}".replace(".0 ", " ")


def fmt(value: float | None, unit: str) -> str:
    """A value in Grafana's unit (the subset the dashboards use)."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.0f}%" if abs(value) >= 0.1 or value == 0 else f"{value * 100:.1f}%"
    if unit == "bytes":
        return _scaled(value, 1024, ["B", "KiB", "MiB", "GiB", "TiB"])
    if unit == "Bps":
        return _scaled(value, 1000, ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"])
    if unit == "watt":
        return _scaled(value, 1000, ["W", "kW", "MW"])
    if unit == "joule":
        return _scaled(value, 1000, ["J", "kJ", "MJ", "GJ"])
    if unit == "kwatth":
        return _scaled(value * 1000, 1000, ["Wh", "kWh", "MWh", "GWh"])
    if unit == "hertz":
        return _scaled(value, 1000, ["Hz", "kHz", "MHz", "GHz"], 2)
    if unit == "celsius":
        return f"{value:.0f} °C"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.1f} s"
    if unit.startswith("suffix:"):
        return f"{value:.2f}{unit[len('suffix:'):]}"
    if value != int(value) and abs(value) < 100:
        return f"{value:.2f}"
    return _scaled(value, 1000, ["", "k", "M", "G"]).strip()


def threshold_colour(value: float | None, defaults: dict[str, Any]) -> str:
    colour = "green"
    for step in defaults.get("thresholds", {}).get("steps", ()):
        if step["value"] is None or (value is not None and value >= step["value"]):
            colour = step["color"]
    return COLOURS.get(colour, colour)


def legend_name(legend: str, metric: dict[str, str]) -> str:
    if legend and legend != "__auto":
        return live_template(legend, metric)
    name = metric.get("__name__", "")
    return name + "{" + ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") + "}"


def live_template(legend: str, metric: dict[str, str]) -> str:
    out = legend
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    while "{{" in out:  # labels the series does not have
        start = out.index("{{")
        out = out[:start] + out[out.index("}}", start) + 2:]
    return out.strip()


# -- The time range -------------------------------------------------------------------------------

#: Points a range query draws across the panel's width, as Grafana's default max data points do.
POINTS = 150
#: A series every agent exports whatever its flags: where it has samples, the dashboards have data.
PRESENT = "count(kube_gpu_exporter_build_info)"


@dataclass(frozen=True)
class Frame:
    """The time range drawn: ``start`` to ``end`` (unix seconds) by ``step``; ``asked`` the range
    asked for, longer when the Prometheus holds less history than that."""

    start: float
    end: float
    step: float
    asked: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def fitted(self) -> bool:
        return self.seconds < self.asked

    def no_data(self) -> str:
        """A panel's words for no series: with a range cut short, no series may just mean too
        little history (a rate needs two samples, an opt-in group may be off: it cannot tell)."""
        return f"No data in the {_duration(self.seconds)} there is" if self.fitted else "No data"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return " ".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


def fit_range(prometheus: live.Prometheus, range_seconds: float, end: float | None = None) -> Frame:
    """The last ``range_seconds`` up to ``end`` (now), cut to where the agent's series begin when
    the Prometheus holds less than that (a Prometheus started a minute ago): drawn over an hour,
    a minute of data is a few points at the right edge, and a rate over a window longer than the
    data is empty. The step follows the range drawn (``POINTS`` points), at least 1 s."""
    end = time.time() if end is None else end
    start = end - range_seconds
    probe_step = max(1.0, range_seconds / (2 * POINTS))
    probe = prometheus.query_range(PRESENT, start, end, probe_step)
    first = min((float(t) for series in probe for t, _ in series["values"]), default=start)
    if first - start > probe_step:  # within one probe step of the start, the data covers the range
        start = min(first, end - 1.0)
    return Frame(start, end, max(1.0, (end - start) / POINTS), range_seconds)


# -- Panels ------------------------------------------------------------------------------------


class Canvas:
    """The figure of one dashboard, in gridPos units (24 columns, rows of ROW_INCHES)."""

    def __init__(self, dashboard: dict[str, Any]) -> None:
        bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in live.panels(dashboard))
        self.rows = bottom + 2  # room for the title line
        self.fig = plt.figure(figsize=(WIDTH_INCHES, self.rows * ROW_INCHES), dpi=DPI, facecolor=BACKGROUND)
        self.fig.text(0.005, 1 - 0.6 / self.rows, dashboard["title"], color=TEXT, fontsize=16, weight="bold",
                      va="center")
        self.fig.text(0.995, 1 - 0.6 / self.rows, "kube-gpu-exporter · rendered by dashboards/render_png.py",
                      color=MUTED, fontsize=9, va="center", ha="right")

    def box(self, grid: dict[str, int]) -> tuple[float, float, float, float]:
        """(left, bottom, width, height) in figure fractions, with a small gap around."""
        gap_x, gap_y = 0.003, 0.12 / self.rows
        left = grid["x"] / 24 + gap_x
        width = grid["w"] / 24 - 2 * gap_x
        height = grid["h"] / self.rows - 2 * gap_y
        bottom = 1 - (grid["y"] + 2 + grid["h"]) / self.rows + gap_y
        return left, bottom, width, height

    def panel(self, panel: dict[str, Any]) -> Any:
        """The panel's frame and title; returns the axes for its content."""
        left, bottom, width, height = self.box(panel["gridPos"])
        if panel["type"] == "row":
            self.fig.text(left, bottom + height / 2, panel["title"], color=TEXT, fontsize=13, weight="bold",
                          va="center")
            return None
        self.fig.patches.append(Rectangle((left, bottom), width, height, transform=self.fig.transFigure,
                                          facecolor=PANEL, edgecolor=GRID, linewidth=0.8, zorder=-1))
        title_h = 0.75 / self.rows
        self.fig.text(left + 0.004, bottom + height - title_h / 2, panel["title"], color=TEXT, fontsize=10,
                      weight="bold", va="center")
        pad_x, pad_y = 0.022 * (24 / max(panel["gridPos"]["w"], 1)) ** 0.3, 0.4 / self.rows
        inner = [left + pad_x, bottom + pad_y, width - pad_x - 0.006, height - title_h - pad_y]
        if panel["type"] in ("stat", "table", "bargauge"):
            inner = [left + 0.004, bottom + 0.1 / self.rows, width - 0.008, height - title_h - 0.1 / self.rows]
        elif panel["type"] == "timeseries":  # the legend goes below the plot, as in Grafana
            legend_h = 1.1 / self.rows
            inner = [inner[0], inner[1] + legend_h, inner[2], inner[3] - legend_h]
        elif panel["type"] == "state-timeline":  # room for the lane names
            inner = [left + 0.075, inner[1], width - 0.081, inner[3]]
        ax = self.fig.add_axes(inner, facecolor=PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=MUTED, labelsize=8)
        return ax


def _series(results: list[dict[str, Any]]) -> list[tuple[dict[str, str], list[float], list[float]]]:
    out = []
    for r in results:
        points = r.get("values") or [r["value"]]
        out.append((r["metric"], [float(t) for t, _ in points], [float(v) for _, v in points]))
    return out


def _no_data(ax: Any, why: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, why, color=MUTED, fontsize=11, ha="center", va="center", transform=ax.transAxes)


def draw_timeseries(ax: Any, panel: dict[str, Any], data: list[tuple[Any, list[dict]]], frame: Frame) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "short")
    lines = [(legend_name(target["legendFormat"], metric), times, values)
             for target, results in data for metric, times, values in _series(results)]
    if not lines:
        return _no_data(ax, frame.no_data())
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    lines.sort(key=lambda line: line[0])
    if stacked:
        grid = sorted({t for _, times, _ in lines for t in times})
        ys = [[dict(zip(times, values)).get(t, 0.0) for t in grid] for _, times, values in lines]
        ax.stackplot([datetime.fromtimestamp(t) for t in grid], ys, colors=PALETTE[:len(lines)] * 4, alpha=0.6,
                     labels=[name for name, _, _ in lines])
    else:
        for i, (name, times, values) in enumerate(lines):
            dashed = any(name.endswith(s) for s in ("slowdown", "limit", "max", "total"))
            ax.plot([datetime.fromtimestamp(t) for t in times], values, color=PALETTE[i % len(PALETTE)],
                    linewidth=1.3, linestyle="--" if dashed else "-", label=name)
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "dashed":
        for step in defaults["thresholds"]["steps"][1:]:
            ax.axhline(step["value"], color=COLOURS.get(step["color"], step["color"]), linestyle="--", linewidth=1)
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"] * 1.02)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    # The frame's range, whatever the data covers: a lone point would get a day around it.
    ax.set_xlim(datetime.fromtimestamp(frame.start), datetime.fromtimestamp(frame.end))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=6))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.grid(color=GRID, linewidth=0.6)
    shown = min(len(lines), max(2, panel["gridPos"]["w"] // 2))
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[:shown], labels[:shown], loc="upper left", fontsize=7, frameon=False, labelcolor=TEXT,
              ncol=max(1, min(shown, panel["gridPos"]["w"] // 4)), bbox_to_anchor=(0, -0.1), borderaxespad=0)
    if shown < len(lines):
        ax.text(1, -0.1, f"+{len(lines) - shown} more", color=MUTED, fontsize=7, ha="right", va="top",
                transform=ax.transAxes)


def draw_stat(ax: Any, panel: dict[str, Any], data: list[tuple[Any, list[dict]]], frame: Frame) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    series = [s for _, results in data for s in _series(results)]
    ax.set_axis_off()
    if not series:
        return _no_data(ax, frame.no_data())
    _, times, values = series[0]
    colour = threshold_colour(values[-1], defaults)
    if len(values) > 1:
        low = min(values)
        ax.fill_between(times, values, low, color=colour, alpha=0.15, linewidth=0)
        ax.set_ylim(low, max(values) + (max(values) - low or 1) * 1.5)
    ax.text(0.5, 0.45, fmt(values[-1], defaults.get("unit", "short")), color=colour, fontsize=26, weight="bold",
            ha="center", va="center", transform=ax.transAxes)


def draw_bargauge(ax: Any, panel: dict[str, Any], data: list[tuple[Any, list[dict]]], frame: Frame) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "short")
    bars = [(legend_name(target["legendFormat"], metric), values[-1])
            for target, results in data for metric, _, values in _series(results)]
    ax.set_axis_off()
    if not bars:
        return _no_data(ax, frame.no_data())
    top = max(v for _, v in bars) or 1
    for i, (name, value) in enumerate(bars[:10]):
        y = 1 - (i + 0.5) / max(len(bars[:10]), 4)
        ax.text(0.0, y, name, color=TEXT, fontsize=8, va="center", transform=ax.transAxes)
        ax.add_patch(Rectangle((0.32, y - 0.035), 0.5, 0.07, transform=ax.transAxes, color=GRID))
        ax.add_patch(Rectangle((0.32, y - 0.035), 0.5 * value / top, 0.07, transform=ax.transAxes,
                               color=PALETTE[2]))
        ax.text(1.0, y, fmt(value, unit), color=TEXT, fontsize=8, va="center", ha="right", transform=ax.transAxes)


def draw_table(ax: Any, panel: dict[str, Any], data: list[tuple[Any, list[dict]]], frame: Frame) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "short")
    hidden, order = set(), {}
    for t in panel.get("transformations", ()):
        hidden |= {k for k, v in t["options"].get("excludeByName", {}).items() if v}
        order.update(t["options"].get("indexByName", {}))
    names = {o["matcher"]["options"]: p["value"] for o in panel["fieldConfig"]["overrides"]
             for p in o["properties"] if p["id"] == "displayName"}
    rows = [(metric, values[-1]) for _, results in data for metric, _, values in _series(results)]
    ax.set_axis_off()
    if not rows:
        return _no_data(ax, frame.no_data())
    columns = [c for c in dict.fromkeys(k for metric, _ in rows for k in metric) if c not in hidden]
    columns.sort(key=lambda c: order.get(c, len(order)))
    show_value = "Value" not in hidden
    headers = columns + ([names.get("Value", "Value")] if show_value else [])
    fit = max(1, int(panel["gridPos"]["h"] * 1.6) - 2)
    cells = [[metric.get(c, "") for c in columns] + ([fmt(v, unit)] if show_value else []) for metric, v in rows]
    table = ax.table(cellText=cells[:fit] or [[""] * len(headers)], colLabels=headers, loc="upper left",
                     cellLoc="left", colLoc="left", edges="horizontal")
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for (r, _), cell in table.get_celld().items():
        cell.set_edgecolor(GRID)
        cell.set_facecolor(PANEL)
        cell.get_text().set_color(MUTED if r == 0 else TEXT)
        cell.set_height(1 / (fit + 1.5))
    if show_value:
        for r, (_, v) in enumerate(rows[:fit], start=1):
            table[r, len(headers) - 1].get_text().set_color(threshold_colour(v, defaults)
                                                          if defaults.get("color") else TEXT)
    if len(rows) > fit:
        ax.text(1, 0, f"+{len(rows) - fit} more rows", color=MUTED, fontsize=7, ha="right",
                transform=ax.transAxes)


def draw_state_timeline(ax: Any, panel: dict[str, Any], data: list[tuple[Any, list[dict]]], frame: Frame) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    states = {k: v for m in defaults.get("mappings", ()) for k, v in m["options"].items()}
    lanes = sorted(((legend_name(target["legendFormat"], metric), times, values)
                    for target, results in data for metric, times, values in _series(results)), key=lambda x: x[0])
    if not lanes:
        return _no_data(ax, frame.no_data())
    step = min((b - a for _, times, _ in lanes for a, b in zip(times, times[1:])), default=1.0)
    for i, (name, times, values) in enumerate(lanes):
        for t, v in zip(times, values):
            state = states.get(str(int(v)), {})
            colour = COLOURS.get(state.get("color", "blue"), state.get("color", PALETTE[2]))
            ax.add_patch(Rectangle((t, i + 0.1), step, 0.8, color=colour, linewidth=0))
    ax.set_xlim(frame.start, frame.end)
    ax.set_ylim(0, len(lanes))
    ax.set_yticks([i + 0.5 for i in range(len(lanes))], [name for name, _, _ in lanes], fontsize=7, color=TEXT)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: datetime.fromtimestamp(t).strftime("%H:%M:%S")))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    labels = ", ".join(f"{k}: {v['text']}" for k, v in states.items())
    ax.set_title(labels, color=MUTED, fontsize=7, loc="right")


DRAW: dict[str, Callable[[Any, dict[str, Any], list[tuple[Any, list[dict]]], Frame], None]] = {
    "timeseries": draw_timeseries, "stat": draw_stat, "bargauge": draw_bargauge, "table": draw_table,
    "state-timeline": draw_state_timeline,
}


def render(dashboard: dict[str, Any], prometheus: live.Prometheus, out: Path, range_seconds: float,
           values: dict[str, str] | None = None, frame: Frame | None = None) -> tuple[Frame, dict[str, int]]:
    """Draw one dashboard to ``out`` over the last ``range_seconds``, or as much of them as the
    Prometheus holds (``fit_range``); returns the range drawn and the number of series each panel
    drew, by title."""
    values = values if values is not None else live.resolve_variables(dashboard, prometheus)
    frame = frame or fit_range(prometheus, range_seconds)
    start, end, step, range_seconds = frame.start, frame.end, frame.step, frame.seconds
    canvas = Canvas(dashboard)
    drawn: dict[str, int] = {}
    for panel in live.panels(dashboard):
        ax = canvas.panel(panel)
        if ax is None:
            continue
        data = []
        for target in panel["targets"]:
            if target.get("instant"):
                data.append((target, prometheus.query(live.substitute(target["expr"], values, range_seconds), end)))
            else:
                expr = live.substitute(target["expr"], values, range_seconds, step)
                data.append((target, prometheus.query_range(expr, start, end, step)))
        DRAW[panel["type"]](ax, panel, data, frame)
        drawn[panel["title"]] = sum(len(results) for _, results in data)
    subtitle = " · ".join(f"{k}={v if len(v) < 40 else v[:37] + '...'}" for k, v in values.items())
    subtitle += f" · last {_duration(frame.seconds)}"
    if frame.fitted:
        subtitle += f" (all the data there is; asked {_duration(frame.asked)})"
    canvas.fig.text(0.005, 1 - 1.4 / canvas.rows, subtitle, color=MUTED, fontsize=9, va="center")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.fig.savefig(out, facecolor=BACKGROUND)
    plt.close(canvas.fig)
    return frame, drawn


def render_all(prometheus: live.Prometheus, out_dir: Path, range_seconds: float,
               overrides: dict[str, str] | None = None) -> dict[str, Path]:
    written = {}
    frame = fit_range(prometheus, range_seconds)  # one range for the three
    for name, dashboard in live.dashboards().items():
        values = live.resolve_variables(dashboard, prometheus)
        values.update({k: v for k, v in (overrides or {}).items() if k in values})
        path = out_dir / f"dashboard-{Path(name).stem}.png"
        render(dashboard, prometheus, path, range_seconds, values, frame)
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="URL of a Prometheus that scrapes kube-gpu-exporter")
    source.add_argument("--demo", action="store_true", help="run the simulated demo node and a Prometheus")
    parser.add_argument("--out", type=Path, default=live.ROOT / "docs" / "images", help="directory for the PNGs")
    parser.add_argument("--seconds", type=float, default=6 * 3600,
                        help="time range to draw, ending now (with --demo: its whole history); cut to the "
                             "data there is when the Prometheus holds less")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a variable's value")
    args = parser.parse_args(argv)
    overrides = dict(v.split("=", 1) for v in args.var)
    if args.demo:
        with live.DemoNode() as node:
            written = render_all(node.prometheus, args.out, node.span, overrides)
    else:
        written = render_all(live.Prometheus(args.prometheus), args.out, args.seconds, overrides)
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
