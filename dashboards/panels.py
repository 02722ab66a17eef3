"""Our panels on the typed builders of Grafana Labs' grafana-foundation-sdk.

One function per kind of panel the dashboards use (``stat``, ``timeseries``, ``table``,
``bargauge``, ``state_timeline``, ``row``), each setting the SDK builder's options the way every
panel of that kind of ours has them, and ``layout``, which places them; the queries, thresholds
and links of each panel are dashboards/generate.py's.
"""

from __future__ import annotations

import re
import string
from typing import Any, Iterable

from grafana_foundation_sdk.builders import bargauge as bargauge_panel
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat as stat_panel
from grafana_foundation_sdk.builders import statetimeline as state_timeline_panel
from grafana_foundation_sdk.builders import table as table_panel
from grafana_foundation_sdk.builders import timeseries as timeseries_panel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from exporter import catalog  # the collector groups of the metrics a panel reads

#: Every query's data source: the dashboard's ``datasource`` variable (no UID in the JSON).
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


Thresholds = list[tuple[float | None, str]]  # [(from, colour)], the first from None


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> prom.Dataquery:
    """A PromQL query of a panel (its refId is given by the panel, in order)."""
    query = (prom.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DATASOURCE)
             .editor_mode(pm.QueryEditorMode.CODE)
             .format(pm.PromQueryFormat.TABLE if table else pm.PromQueryFormat.TIME_SERIES))
    return query.instant() if instant else query.range()


def _panel(panel: Any, title: str, targets: Iterable[prom.Dataquery], *, width: int, height: int,
           description: str = "", unit: str = "short", thresholds: Thresholds | None = None,
           minimum: float | None = None, maximum: float | None = None, links: Iterable[db.DashboardLink] = (),
           mappings: Iterable[dm.ValueMap] = (), overrides: Iterable[db.DashboardFieldConfigSourceOverrides] = (),
           ) -> Any:
    """What every panel has: title, queries, size, unit, thresholds and links; ``panel`` is the
    SDK's builder of the panel's kind, with its options set. A panel reading a collector group
    that is off by default says so in its description."""
    targets = list(targets)
    description = f"{description} {opt_in_note(t.build().expr for t in targets)}".strip()
    panel.title(title).datasource(DATASOURCE).span(width).height(height).unit(unit).mappings(list(mappings))
    panel.targets([t.ref_id(ref) for ref, t in zip(string.ascii_uppercase, targets)])
    panel.thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=start, color=colour) for start, colour in thresholds or [(None, "green")]]))
    if thresholds:
        panel.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
    if description:
        panel.description(description)
    if minimum is not None:
        panel.min(minimum)
    if maximum is not None:
        panel.max(maximum)
    if links:
        panel.data_links(list(links))
    return panel.overrides(list(overrides))


def opt_in_metrics(exprs: Iterable[str]) -> dict[str, list[str]]:
    """The metrics ``exprs`` read from collector groups that are off by default, by group."""
    found: dict[str, list[str]] = {}
    for spec in catalog.all_metrics():
        if catalog.GROUPS[spec.group].default is False and any(re.search(rf"\b{spec.name}\b", e) for e in exprs):
            found.setdefault(spec.group, []).append(spec.name)
    return found


def opt_in_note(exprs: Iterable[str]) -> str:
    """What a panel's description says when it reads an opt-in group: the flag and the metrics."""
    return " ".join(f"Needs {', '.join(names)} from --collector.{group} (off by default)."
                    for group, names in opt_in_metrics(list(exprs)).items())


def row(title: str) -> db.Row:
    return db.Row(title).collapsed(False).grid_pos(dm.GridPos(h=1, w=24))


def _reduce_last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _legend(show: bool) -> cb.VizLegendOptions:
    return cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST).placement(cm.LegendPlacement.BOTTOM) \
        .show_legend(show)


def stat(title: str, expr: str, unit: str = "short", *, width: int = 4, height: int = 4, **kw: Any) -> stat_panel.Panel:
    panel = (stat_panel.Panel().reduce_options(_reduce_last()).color_mode(cm.BigValueColorMode.VALUE)
             .graph_mode(cm.BigValueGraphMode.AREA).text_mode(cm.BigValueTextMode.AUTO))
    return _panel(panel, title, [target(expr)], unit=unit, width=width, height=height, **kw)


def timeseries(title: str, *targets: prom.Dataquery, unit: str = "short", stack: bool = False, width: int = 12,
               height: int = 8, **kw: Any) -> timeseries_panel.Panel:
    panel = (timeseries_panel.Panel().legend(_legend(True))
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
             .draw_style(cm.GraphDrawStyle.LINE).line_width(1).fill_opacity(20 if stack else 5)
             .show_points(cm.VisibilityMode.NEVER)
             .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE).group("A"))
             .thresholds_style(cb.GraphThresholdsStyleConfig().mode(
                 cm.GraphThresholdsStyleMode.DASHED if kw.get("thresholds") else cm.GraphThresholdsStyleMode.OFF)))
    return _panel(panel, title, targets, unit=unit, width=width, height=height, **kw)


_BY = re.compile(r"^\w+ by \(([^)]*)\)")


def table(title: str, expr: str, unit: str = "short", hide: Iterable[str] = (), columns: Iterable[str] | None = None,
          *, width: int = 12, height: int = 8, **kw: Any) -> table_panel.Panel:
    """An instant table; its columns in the order of the query's outer ``by (...)``, if any."""
    by = _BY.match(expr)
    order = tuple(columns) if columns is not None else tuple(c.strip() for c in by.group(1).split(",")) if by else ()
    hidden = ("Time", "__name__", "job", "instance", *hide)
    panel = (table_panel.Panel().show_header(True).cell_height(cm.TableCellHeight.SM)
             .footer(cb.TableFooterOptions().show(False)).align(cm.FieldTextAlignment.AUTO).inspect(False)
             .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
             .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                 "excludeByName": {c: True for c in hidden}, "indexByName": {c: i for i, c in enumerate(order)}})))
    return _panel(panel, title, [target(expr, instant=True, table=True)], unit=unit, width=width, height=height, **kw)


def bargauge(title: str, expr: str, legend: str, unit: str = "short", *, width: int = 8, height: int = 8,
             **kw: Any) -> bargauge_panel.Panel:
    panel = (bargauge_panel.Panel().reduce_options(_reduce_last()).orientation(cm.VizOrientation.HORIZONTAL)
             .display_mode(cm.BarGaugeDisplayMode.GRADIENT).show_unfilled(True))
    return _panel(panel, title, [target(expr, legend, instant=True)], unit=unit, width=width, height=height, **kw)


def state_timeline(title: str, query: prom.Dataquery, *, width: int, height: int,
                   **kw: Any) -> state_timeline_panel.Panel:
    panel = (state_timeline_panel.Panel().show_value(cm.VisibilityMode.NEVER).merge_values(True).row_height(0.9)
             .legend(_legend(False)).line_width(0).fill_opacity(70))
    return _panel(panel, title, [query], width=width, height=height, **kw)


def red_from(value: float, amber: float | None = None) -> Thresholds:
    steps: Thresholds = [(None, "green")]
    if amber is not None:
        steps.append((amber, "orange"))
    return steps + [(value, "red")]


def states(**texts: tuple[str, str]) -> dm.ValueMap:
    """Value mappings of a state panel: ``{"0": (text, colour), ...}``."""
    return dm.ValueMap(options={value: dm.ValueMappingResult(text=text, color=colour)
                                for value, (text, colour) in texts.items()})


PERCENT = {"unit": "percentunit", "minimum": 0, "maximum": 1}
ACTIVE = states(**{"0": ("no", "transparent"), "1": ("active", "red")})


def dashboard_link(uid: str, title: str, **variables: str) -> db.DashboardLink:
    query = "".join(f"&var-{k}={v}" for k, v in variables.items())
    return db.DashboardLink(title).url(f"/d/{uid}?${{__url_time_range}}&var-datasource=${{datasource}}{query}")


def override(matcher: str, options: str, **properties: Any) -> db.DashboardFieldConfigSourceOverrides:
    """Field overrides: the fields ``matcher`` (byName, byRegexp) ``options`` select get ``properties``
    (a property id's dots as double underscores: ``custom__lineStyle``)."""
    return db.DashboardFieldConfigSourceOverrides().matcher(dm.MatcherConfig(id_val=matcher, options=options)) \
        .properties([dm.DynamicConfigValue(id_val=name.replace("__", "."), value=value)
                     for name, value in properties.items()])


def column_link(column: str, link: db.DashboardLink) -> db.DashboardFieldConfigSourceOverrides:
    """A table override: the cells of ``column`` link to ``link``."""
    return override("byName", column, links=[link.build()])


DASHED = cm.LineStyle(fill="dash", dash=[10, 10])


def layout(panels: list[Builder[Any]]) -> list[Builder[Any]]:
    """Ids in definition order, and places left to right, wrapping at 24 columns (a row on a line
    of its own); each panel keeps the size its helper gave it. (The SDK's own placement does not
    wrap a panel that would overflow the line.)"""
    x, y, line_height = 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        size = panel.build().grid_pos
        is_row = isinstance(panel, db.Row)
        if is_row or x + size.w > 24:
            x, y, line_height = 0, y + line_height, 0
        panel.id(panel_id).grid_pos(dm.GridPos(h=size.h, w=size.w, x=x, y=y))
        x += size.w
        line_height = max(line_height, size.h)
        if is_row:
            x, y, line_height = 0, y + 1, 0
    return panels
