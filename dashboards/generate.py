"""Generate the Grafana dashboards of kube-gpu-exporter (Grafana 10 and 11, schemaVersion 39).

    python dashboards/generate.py                 # rewrite dashboards/*.json and the ConfigMap
    python dashboards/generate.py --check         # exit 1 when the committed files are stale
    python dashboards/generate.py --multi-cluster # show the cluster variable (Prometheus with a `cluster` label)

Three dashboards, linked to each other: Fleet (``kube-gpu-exporter-fleet``), Node and GPU
(``kube-gpu-exporter-node``), Namespace and workload (``kube-gpu-exporter-workload``). Panel ids are
given in definition order, so they stay put across runs; every query uses the ``$datasource``
variable and the dashboard's own variables. Thresholds and batch workload kinds are the alert
rules' own (``alerts/params.py`` ``Params``), XID tiers the agent's ``tier`` label (the alerts'), and
the fleet and workload panels read the recording rules of ``alerts/recording.py``; per-pod panels
join the raw series as docs/attribution.md shows.

Series are expected with a ``node`` label (added at scrape time by relabelling: see
deploy/prometheus-scrape-config.yaml) and, optionally, a ``cluster`` label.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from alerts.rules import Params, recording_rules  # noqa: E402 - the rule set's thresholds and rules
from exporter import catalog  # noqa: E402 - the collector groups of the metrics a panel reads

TAG = "kube-gpu-exporter"
SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CONFIGMAP = HERE / "configmap.yaml"

#: The alert rules' parameters: every threshold a panel draws comes from here.
P = Params()
#: Recording rules of alerts/rules.py, by name.
RULES = dict(recording_rules(P))
#: Clock-event reasons that hold a GPU below the clocks it wants (the others are normal operation).
THROTTLE_REASONS = "sw_power_cap|hw_slowdown|sw_thermal_slowdown|hw_thermal_slowdown|hw_power_brake_slowdown"
#: Workload kinds, split into batch (the alerts' batch kinds), interactive and other.
INTERACTIVE_KINDS = "Deployment|StatefulSet|ReplicaSet|Pod"
#: Names of the alerts of alerts/rules.py (tests/test_dashboards.py checks that it matches all).
ALERT_NAMES = "(Gpu|KubeGpuExporter)[A-Za-z]+"


# -- Selectors ----------------------------------------------------------------------------------

CLUSTER = 'cluster=~"$cluster"'
FLEET = f'{CLUSTER}, node=~"$node"'  # device series on the fleet dashboard
NODE = f'{CLUSTER}, node="$node"'  # the node dashboard: one node
GPU = f'{NODE}, gpu=~"$gpu"'  # ... and its chosen GPUs
WORKLOAD = f'{CLUSTER}, namespace="$namespace", workload=~"$workload", pod=~"$pod"'  # allocation_info
CONTAINER = f'{CLUSTER}, namespace="$namespace", pod=~"$pod"'  # nvidia_gpu_container_*
PER_WORKLOAD = f'{CLUSTER}, namespace="$namespace", workload=~"$workload"'  # namespace_workload: rules
DEVICE_KEY = "uuid, gpu_instance_id, compute_instance_id"  # a GPU or MIG instance (docs/attribution.md)
#: Profiling (GPM) series name a MIG GPU instance without compute_instance_id (docs/metrics.md).
PROFILING_KEY = "uuid, gpu_instance_id"
HOLDER_KEY = f"cluster, namespace, pod, container, {DEVICE_KEY}"


def with_workload(metric: str, container_selector: str, allocation_selector: str) -> str:
    """A per-container metric with the workload of its holder joined in (and filtered by it)."""
    return (f"{metric}{{{container_selector}}} * on ({HOLDER_KEY}) group_left (workload_kind, workload) "
            f"max by ({HOLDER_KEY}, workload_kind, workload) (nvidia_gpu_allocation_info{{{allocation_selector}}})")


def workload_class(expr: str) -> str:
    """``expr`` (with a workload_kind label) with a ``class`` label: batch, interactive or other."""
    other = f'label_replace({expr}, "class", "other", "workload_kind", ".*")'
    interactive = f'label_replace({other}, "class", "interactive", "workload_kind", "{INTERACTIVE_KINDS}")'
    return f'label_replace({interactive}, "class", "batch", "workload_kind", "{P.batch_kinds}")'


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


def rule(name: str, selector: str) -> str:
    """A recording rule of alerts/rules.py (a KeyError here means it was renamed there)."""
    if name not in RULES:
        raise KeyError(f"recording rule {name} is not defined in alerts/rules.py")
    return f"{name}{{{selector}}}"


# -- Panels ---------------------------------------------------------------------------------------


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False

    def json(self, ref: str) -> dict[str, Any]:
        return {
            "datasource": DATASOURCE, "refId": ref, "expr": self.expr, "legendFormat": self.legend or "__auto",
            "range": not self.instant, "instant": self.instant, "format": "table" if self.table else "time_series",
            "editorMode": "code",
        }


@dataclass
class Panel:
    kind: str  # stat, timeseries, table, bargauge, state-timeline, row
    title: str
    targets: list[Target] = field(default_factory=list)
    description: str = ""
    unit: str = ""
    width: int = 6
    height: int = 8
    thresholds: list[tuple[float | None, str]] | None = None  # [(from, colour)], the first from None
    minimum: float | None = None
    maximum: float | None = None
    stack: bool = False
    links: list[dict[str, Any]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    hidden_columns: tuple[str, ...] = ("Time",)
    columns: tuple[str, ...] = ()  # a table's columns in this order first

    def json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        grid = {"h": self.height, "w": self.width, "x": x, "y": y}
        if self.kind == "row":
            return {"type": "row", "id": panel_id, "title": self.title, "collapsed": False, "gridPos": grid,
                    "panels": []}
        defaults: dict[str, Any] = {"unit": self.unit or "short", "mappings": self.mappings}
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": colour, "value": start} for start, colour in (self.thresholds or [(None, "green")])]}
        if self.thresholds:
            defaults["color"] = {"mode": "thresholds"}
        if self.minimum is not None:
            defaults["min"] = self.minimum
        if self.maximum is not None:
            defaults["max"] = self.maximum
        if self.links:
            defaults["links"] = self.links
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if self.stack else 5, "showPoints": "never",
                "stacking": {"mode": "normal" if self.stack else "none", "group": "A"},
                "thresholdsStyle": {"mode": "dashed" if self.thresholds else "off"},
            }
        options = {
            "timeseries": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "desc"}},
            "stat": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "colorMode": "value", "graphMode": "area", "textMode": "auto"},
            "bargauge": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True},
            "table": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
            "state-timeline": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                               "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}},
        }[self.kind] | self.options
        note = opt_in_note(t.expr for t in self.targets)
        description = f"{self.description} {note}".strip()
        panel: dict[str, Any] = {
            "type": self.kind, "id": panel_id, "title": self.title, "description": description,
            "datasource": DATASOURCE, "gridPos": grid, "options": options,
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "targets": [t.json(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
        }
        if self.kind == "table":
            panel["transformations"] = [
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {"excludeByName": {c: True for c in self.hidden_columns},
                                               "indexByName": {c: i for i, c in enumerate(self.columns)}}},
            ]
        return panel


def row(title: str) -> Panel:
    return Panel("row", title, width=24, height=1)


def stat(title: str, expr: str, unit: str = "short", **kw: Any) -> Panel:
    return Panel("stat", title, [Target(expr, instant=False)], unit=unit, width=kw.pop("width", 4),
                 height=kw.pop("height", 4), **kw)


def timeseries(title: str, *targets: Target, unit: str = "short", **kw: Any) -> Panel:
    return Panel("timeseries", title, list(targets), unit=unit, width=kw.pop("width", 12), **kw)


_BY = re.compile(r"^\w+ by \(([^)]*)\)")


def table(title: str, expr: str, unit: str = "short", hide: Iterable[str] = (), **kw: Any) -> Panel:
    """An instant table; its columns in the order of the query's outer ``by (...)``, if any."""
    by = _BY.match(expr)
    kw.setdefault("columns", tuple(c.strip() for c in by.group(1).split(",")) if by else ())
    return Panel("table", title, [Target(expr, instant=True, table=True)], unit=unit, width=kw.pop("width", 12),
                 hidden_columns=("Time", "__name__", "job", "instance", *hide), **kw)


def bargauge(title: str, expr: str, legend: str, unit: str = "short", **kw: Any) -> Panel:
    return Panel("bargauge", title, [Target(expr, legend, instant=True)], unit=unit, width=kw.pop("width", 8),
                 **kw)


def red_from(value: float, amber: float | None = None) -> list[tuple[float | None, str]]:
    steps: list[tuple[float | None, str]] = [(None, "green")]
    if amber is not None:
        steps.append((amber, "orange"))
    return steps + [(value, "red")]


PERCENT = {"unit": "percentunit", "minimum": 0, "maximum": 1}
STATES = [{"type": "value", "options": {"0": {"text": "no", "color": "transparent"},
                                        "1": {"text": "active", "color": "red"}}}]


def dashboard_link(uid: str, title: str, **variables: str) -> dict[str, Any]:
    query = "".join(f"&var-{k}={v}" for k, v in variables.items())
    return {"title": title, "url": f"/d/{uid}?${{__url_time_range}}&var-datasource=${{datasource}}{query}"}


def column_link(column: str, link: dict[str, Any]) -> dict[str, Any]:
    """A table override: the cells of ``column`` link to ``link``."""
    return {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "links", "value": [link]}]}


# -- Dashboards -----------------------------------------------------------------------------------

FLEET_UID, NODE_UID, WORKLOAD_UID = "kube-gpu-exporter-fleet", "kube-gpu-exporter-node", "kube-gpu-exporter-workload"
#: From a table row to the other dashboards, with the row's own values.
TO_WORKLOAD = dashboard_link(WORKLOAD_UID, "Namespace and workload", namespace="${__data.fields.namespace}",
                             workload="${__data.fields.workload}", pod="${__data.fields.pod}")
TO_NODE = dashboard_link(NODE_UID, "Node and GPU", node="${__data.fields.node}", gpu="${__data.fields.gpu}")
IDLE = P.idle_ratio
MARGIN = P.temperature_margin


def alerts(extra: str = "") -> str:
    """Our alerts firing now (docs/alerts.md), with more matchers in ``extra``."""
    return f'ALERTS{{alertstate="firing", cluster=~"$cluster", alertname=~"{ALERT_NAMES}"{extra}}}'


def fleet() -> list[Panel]:
    per_node = f'{CLUSTER}, node=~"$node"'  # node-level recording rules
    per_ns = f'{CLUSTER}, namespace=~"$namespace"'  # namespace-level recording rules
    allocation = f'{FLEET}, namespace=~"$namespace"'
    peak_1h = f"max_over_time(nvidia_gpu_utilization_ratio{{{FLEET}}}[1h])"
    utilisation_by_kind = (
        f"sum by (workload_kind) ({with_workload('nvidia_gpu_container_utilization_ratio', per_ns, allocation)})")
    gpus = f"sum({rule('node:nvidia_gpu_gpus:count', per_node)})"
    return [
        row("Capacity"),
        stat("GPUs", gpus, description="Physical GPUs, whatever their state."),
        stat("GPUs allocated", f"sum({rule('node:nvidia_gpu_gpus_allocated:count', per_node)}) or vector(0)",
             description="GPUs of which something (the whole GPU, a MIG instance, a replica) is held."),
        stat("GPUs in use", f"sum({rule('node:nvidia_gpu_gpus_in_use:count', per_node)}) or vector(0)",
             description=f"GPUs above {P.in_use_ratio:.0%} utilisation, or with processes where NVML has no "
                         "utilisation (MIG)."),
        stat("Idle but allocated", f"sum({rule('node:nvidia_gpu_gpus_idle_allocated:count', per_node)}) or vector(0)",
             description="Allocated GPUs not in use now; GpuAllocatedIdle fires when it lasts (docs/alerts.md).",
             thresholds=red_from(1, amber=None), links=[dashboard_link(WORKLOAD_UID, "Namespace and workload")]),
        stat("Unhealthy GPUs", f"{gpus} - sum({rule('node:nvidia_gpu_gpus_healthy:sum', per_node)})",
             thresholds=red_from(1), description="Lost, a failed or pending row remap or page retirement, "
             "uncorrectable ECC errors or a reset-tier XID in the last hour."),
        stat("Free devices",
             f"sum(nvidia_gpu_allocatable_devices{{{FLEET}}}) - sum(nvidia_gpu_allocated_devices{{{FLEET}}})",
             description="Devices the kubelets could still allocate (replicas and MIG instances count one each)."),
        row("Namespaces"),
        timeseries("Allocated devices by namespace", Target(
            f"sum by (namespace) ({rule('namespace:nvidia_gpu_allocated_devices:sum', per_ns)})", "{{namespace}}"),
            stack=True, description="Devices held; a device shared by n containers counts 1/n for each.", width=8),
        timeseries("Utilisation by namespace", Target(
            f"sum by (namespace) ({rule('namespace:nvidia_gpu_container_utilization_ratio:sum', per_ns)})",
            "{{namespace}}"), stack=True, width=8,
            description="Sum of the utilisation of the devices each namespace holds: GPUs' worth of work."),
        timeseries("GPU memory by namespace", Target(
            f"sum by (namespace) ({rule('namespace:nvidia_gpu_container_memory_used_bytes:sum', per_ns)})",
            "{{namespace}}"), unit="bytes", stack=True, width=8),
        table("Most idle allocated pods",
              f"bottomk(15, max by (node, namespace, workload_kind, workload, pod) ("
              f"nvidia_gpu_allocation_info{{{allocation}}} * on (uuid) group_left () {peak_1h}))",
              description="Pods holding a whole or time-sliced GPU, by the GPU's peak utilisation over the last "
                          "hour (lowest first). Click a pod for its workload dashboard.", **PERCENT,
              overrides=[column_link("pod", TO_WORKLOAD),
                         {"matcher": {"id": "byName", "options": "Value"},
                          "properties": [{"id": "displayName", "value": "peak utilisation (1h)"},
                                         {"id": "custom.cellOptions", "value": {"type": "color-background"}}]}],
              thresholds=[(None, "red"), (IDLE, "orange"), (0.5, "green")], height=9,
              columns=("namespace", "pod", "workload_kind", "workload", "node")),
        bargauge("GPU-hours by namespace (time range)",
                 f"sort_desc(avg_over_time((sum by (namespace) ("
                 f"{rule('namespace:nvidia_gpu_allocated_devices:sum', per_ns)}))[$__range:]) * $__range_s / 3600)",
                 "{{namespace}}", unit="suffix: GPU-h", width=6, height=9,
                 description="Allocated devices times hours over the dashboard's time range."),
        bargauge("Energy by namespace (time range)",
                 f"sort_desc(avg_over_time((sum by (namespace) ("
                 f"{rule('namespace:nvidia_gpu_power_watts:sum', per_ns)}))[$__range:]) * $__range_s)",
                 "{{namespace}}", unit="joule", width=6, height=9,
                 description="Board power split evenly between the holders of each board, over the time range."),
        timeseries("Allocated devices: batch vs interactive", Target(
            f"sum by (class) ({workload_class(rule('namespace_workload:nvidia_gpu_allocated_devices:sum', per_ns))})",
            "{{class}}"), stack=True, width=12,
            description=f"batch: {P.batch_kinds}; interactive: {INTERACTIVE_KINDS}; other: the rest (DaemonSet, "
                        "unknown without --kubernetes.enabled)."),
        timeseries("Utilisation: batch vs interactive", Target(
            f"sum by (class) ({workload_class(rule('namespace_workload:nvidia_gpu_container_utilization_ratio:sum', per_ns))})",
            "{{class}}"), stack=True, description="Sum of the utilisation of the devices each class holds.",
            width=12),
        row("Hardware health"),
        stat("Lost GPUs", f"count(nvidia_gpu_up{{{FLEET}}} == 0) or vector(0)", thresholds=red_from(1), height=8,
             description="GPUs whose NVML reads fail or hang (nvidia_gpu_up 0); GpuLost pages."),
        timeseries("XID events by tier", Target(
            f"sum by (tier) (increase(nvidia_gpu_xid_events_total{{{FLEET}}}[$__rate_interval]))", "{{tier}}"),
            description="The alerts' tiers: reboot (fell off the bus), reset (the GPU needs a reset), application "
            "(the job's fault), informational, other (codes the tiers do not name); see docs/alerts.md. The "
            "tier counts exist at 0 from the start, so the first event of a node shows.", width=7, stack=True),
        timeseries("ECC errors", Target(
            f"sum by (type) (increase(nvidia_gpu_ecc_errors_total{{{FLEET}}}[$__rate_interval]))", "{{type}}"),
            description="Volatile ECC errors; uncorrected ones page.", width=7),
        timeseries("GPUs throttled", Target(
            f'count by (reason) (nvidia_gpu_clock_event_active{{{FLEET}, reason=~"{THROTTLE_REASONS}"}} == 1)',
            "{{reason}}"), description="GPUs whose clocks a power or thermal reason holds down.", width=6,
            stack=True),
        table("GPUs with problems",
              f"max by (node, gpu, uuid) (nvidia_gpu_up{{{FLEET}}} == 0) "
              f"or max by (node, gpu, uuid) (increase(nvidia_gpu_xid_events_total{{{FLEET}}}[1h]) > 0) "
              f"or max by (node, gpu, uuid) (nvidia_gpu_remapped_rows_failure{{{FLEET}}} == 1) "
              f"or max by (node, gpu, uuid) (increase(nvidia_gpu_ecc_errors_total{{{FLEET}, type=\"uncorrected\"}}[1h]) > 0)",
              description="Lost (value 0), XIDs or uncorrected ECC errors in the last hour (value: their count), "
                          "failed row remap. Click a node for its dashboard.",
              overrides=[column_link("node", TO_NODE)], height=8),
        table("Firing alerts", f"max by (alertname, severity, node, gpu, namespace, pod) ({alerts()})",
              description="Alerts of docs/alerts.md firing now.", height=8),
        row("Agents"),
        stat("Agents", f"count(kube_gpu_exporter_build_info{{{FLEET}}})", width=6),
        stat("Failing collectors", f"count(kube_gpu_exporter_collector_success{{{FLEET}}} == 0) or vector(0)",
             thresholds=red_from(1), width=6),
        stat("Stale GPU readings", f"sum(kube_gpu_exporter_gpu_snapshot_stale{{{FLEET}}})", width=6,
             thresholds=red_from(1), description="Agents serving old readings because an NVML call hangs."),
        stat("Simulated nodes", f'count(kube_gpu_exporter_build_info{{{FLEET}, simulated="true"}}) or vector(0)',
             thresholds=[(None, "green"), (1, "purple")], width=6,
             description="Agents reading a simulated node (--simulate), not real GPUs."),
    ]


def violation(reason: str, ratio: float, alert: str) -> Panel:
    """Time held below target clocks by one policy, over the alert's window, against its threshold."""
    return timeseries(f"{reason.capitalize()} violation time ({P.capping_window})", Target(
        f'rate(nvidia_gpu_violation_seconds_total{{{GPU}, reason="{reason}"}}[{P.capping_window}])', "GPU {{gpu}}"),
        **PERCENT, thresholds=red_from(ratio), width=6,
        description=f"Fraction of the last {P.capping_window} the {reason} policy held clocks down; {alert} "
                    f"fires above {ratio:.0%} (docs/alerts.md).")


def node() -> list[Panel]:
    by_gpu = "GPU {{gpu}}"
    return [
        row("Node"),
        stat("GPUs up", f"sum(nvidia_gpu_up{{{NODE}}})", width=4),
        stat("GPUs down", f"count(nvidia_gpu_up{{{NODE}}} == 0) or vector(0)", thresholds=red_from(1), width=4),
        stat("Mean utilisation", f"avg(nvidia_gpu_utilization_ratio{{{GPU}}})", **PERCENT, width=4),
        stat("Power", f"sum(nvidia_gpu_power_watts{{{GPU}}})", unit="watt", width=4),
        stat("Devices allocated", f"sum(nvidia_gpu_allocated_devices{{{NODE}}})", width=4,
             description="Whole GPUs, replicas of shared GPUs and MIG instances held by containers."),
        stat("XID events (time range)", f"sum(increase(nvidia_gpu_xid_events_total{{{GPU}}}[$__range]))",
             thresholds=red_from(1), width=4),
        row("Utilisation and memory"),
        timeseries("Utilisation", Target(f"nvidia_gpu_utilization_ratio{{{GPU}}}", by_gpu), **PERCENT, width=8),
        timeseries("Memory used", Target(f"nvidia_gpu_memory_used_bytes{{{GPU}}}", by_gpu),
                   Target(f"max(nvidia_gpu_memory_total_bytes{{{GPU}}})", "total"), unit="bytes", width=8),
        timeseries("Memory used / total", Target(
            f"nvidia_gpu_memory_used_bytes{{{GPU}}} / nvidia_gpu_memory_total_bytes{{{GPU}}}", by_gpu), **PERCENT,
            thresholds=red_from(P.memory_full_ratio), width=8),
        row("Temperature and power"),
        timeseries("Temperature", Target(f"nvidia_gpu_temperature_celsius{{{GPU}}}", by_gpu),
                   Target(f'nvidia_gpu_temperature_threshold_celsius{{{GPU}, threshold="slowdown"}}',
                          "GPU {{gpu}} slowdown"), unit="celsius", width=8,
                   overrides=[{"matcher": {"id": "byRegexp", "options": ".*slowdown"}, "properties": [
                       {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                       {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}],
                   description="Each GPU against its own slowdown temperature (dashed)."),
        timeseries("Margin to slowdown temperature", Target(
            f'nvidia_gpu_temperature_threshold_celsius{{{GPU}, threshold="slowdown"}} - ignoring (threshold) '
            f"nvidia_gpu_temperature_celsius{{{GPU}}}", by_gpu), unit="celsius",
            thresholds=[(None, "red"), (MARGIN, "green")], width=8,
            description=f"Alerting below {MARGIN} °C."),
        timeseries("Power / limit", Target(
            f"nvidia_gpu_power_watts{{{GPU}}} / nvidia_gpu_power_limit_watts{{{GPU}}}", by_gpu), **PERCENT, width=8),
        timeseries("Power", Target(f"nvidia_gpu_power_watts{{{GPU}}}", by_gpu),
                   Target(f"nvidia_gpu_power_limit_watts{{{GPU}}}", "GPU {{gpu}} limit"), unit="watt", width=8,
                   overrides=[{"matcher": {"id": "byRegexp", "options": ".*limit"}, "properties": [
                       {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        timeseries("Energy", Target(f"increase(nvidia_gpu_energy_joules_total{{{GPU}}}[$__rate_interval])", by_gpu),
                   unit="joule", width=8, description="Energy used per interval."),
        timeseries("SM clock", Target(f'nvidia_gpu_clock_hertz{{{GPU}, clock="sm"}}', by_gpu),
                   Target(f'max(nvidia_gpu_clock_max_hertz{{{GPU}, clock="sm"}})', "max"), unit="hertz", width=8,
                   description="The SM clock of each GPU; the line \"max\" is the highest the GPUs allow."),
        row("Throttling"),
        Panel("state-timeline", "Clock-event reasons", [Target(
            f'nvidia_gpu_clock_event_active{{{GPU}, reason=~"{THROTTLE_REASONS}"}} and on (uuid, reason) '
            f'(max_over_time(nvidia_gpu_clock_event_active{{{GPU}, reason=~"{THROTTLE_REASONS}"}}[$__range]) > 0)',
            "GPU {{gpu}} {{reason}}")], mappings=STATES, width=12, height=8,
            description="Reasons that held clocks down at some point in the time range."),
        violation("thermal", P.thermal_capping_ratio, "GpuThermalCapping"),
        violation("power", P.power_capping_ratio, "GpuPowerCapping"),
        row("Errors"),
        timeseries("XID events", Target(
            f"increase(nvidia_gpu_xid_events_total{{{GPU}}}[$__rate_interval]) > 0", "GPU {{gpu}} {{tier}}"), width=6,
            description="By the alerts' tiers; the counts exist at 0 from the start, so the first event shows."),
        table("XID codes since the agent started",
              f"sum by (gpu, xid) (nvidia_gpu_xid_errors_total{{{GPU}}}) > 0", width=6,
              description="Events per code, counted since the agent started (a code's series appears with its "
                          "first event).",
              overrides=[{"matcher": {"id": "byName", "options": "Value"},
                          "properties": [{"id": "displayName", "value": "events"}]}]),
        timeseries("ECC errors (volatile)", Target(
            f"increase(nvidia_gpu_ecc_errors_total{{{GPU}}}[$__rate_interval])", "GPU {{gpu}} {{type}}"), width=6),
        timeseries("Remapped rows", Target(f"nvidia_gpu_remapped_rows{{{GPU}}}", "GPU {{gpu}} {{type}}"),
                   Target(f"nvidia_gpu_remapped_rows_pending{{{GPU}}} + 2 * nvidia_gpu_remapped_rows_failure{{{GPU}}} > 0",
                          "GPU {{gpu}} pending (1) / failed (2)"), width=6),
        row("PCIe and NVLink"),
        timeseries("PCIe traffic", Target(
            f"rate(nvidia_gpu_pcie_data_bytes_total{{{GPU}}}[$__rate_interval])", "GPU {{gpu}} {{direction}}"),
            unit="Bps", width=6),
        timeseries("PCIe replays", Target(
            f"increase(nvidia_gpu_pcie_replays_total{{{GPU}}}[$__rate_interval])", by_gpu), width=6),
        timeseries("NVLink traffic", Target(
            f"rate(nvidia_gpu_nvlink_data_bytes_total{{{GPU}}}[$__rate_interval])", "GPU {{gpu}} {{direction}}"),
            unit="Bps", width=6),
        timeseries("NVLink errors", Target(
            f"sum by (gpu, type) (increase(nvidia_gpu_nvlink_errors_total{{{GPU}}}[$__rate_interval]))",
            "GPU {{gpu}} {{type}}"), width=6),
        row("Efficiency (profiling: --collector.profiling)"),
        timeseries("SM active", Target(f"nvidia_gpu_sm_active_ratio{{{GPU}}}", by_gpu), **PERCENT, width=8,
                   description="Fraction of SMs busy (NVML GPM, Hopper and newer)."),
        timeseries("Tensor cores active", Target(f"nvidia_gpu_tensor_active_ratio{{{GPU}}}", by_gpu), **PERCENT,
                   width=8),
        timeseries("DRAM bandwidth used", Target(f"nvidia_gpu_dram_active_ratio{{{GPU}}}", by_gpu), **PERCENT,
                   width=8),
        row("MIG instances and holders"),
        table("MIG instances",
              f"(nvidia_gpu_allocation_info{{{GPU}}} * on ({DEVICE_KEY}) group_left (profile) nvidia_gpu_mig_info{{{GPU}}}"
              f" * on ({DEVICE_KEY}) group_left () nvidia_gpu_mig_memory_used_bytes{{{GPU}}})"
              f" or (nvidia_gpu_mig_memory_used_bytes{{{GPU}}} * on ({DEVICE_KEY}) group_left (profile) "
              f"nvidia_gpu_mig_info{{{GPU}}} unless on ({DEVICE_KEY}) nvidia_gpu_allocation_info{{{GPU}}})",
              unit="bytes", hide=("cluster", "node", "uuid", "resource", "shared", "workload_kind"),
              columns=("gpu", "gpu_instance_id", "compute_instance_id", "profile", "namespace", "pod", "container",
                       "workload"),
              description="Every MIG instance with its holder (none: free) and the memory used.", width=12),
        table("Holders",
              f"max by (gpu, gpu_instance_id, namespace, pod, container, workload_kind, workload, shared) "
              f"(nvidia_gpu_allocation_info{{{GPU}}})", hide=("Value",), width=12,
              overrides=[column_link("pod", TO_WORKLOAD)]),
        timeseries("Processes", Target(f"nvidia_gpu_processes{{{GPU}}}", by_gpu), width=12),
        timeseries("Container memory", Target(
            f"nvidia_gpu_container_memory_used_bytes{{{GPU}}}", "GPU {{gpu}} {{namespace}}/{{pod}}/{{container}}"),
            unit="bytes", width=12),
        row("Agent"),
        Panel("state-timeline", "Collector success", [Target(
            f"kube_gpu_exporter_collector_success{{{NODE}}}", "{{collector}}")], width=8, height=6,
            mappings=[{"type": "value", "options": {"0": {"text": "failing", "color": "red"},
                                                      "1": {"text": "ok", "color": "green"}}}]),
        timeseries("GPU readings age", Target(f"kube_gpu_exporter_gpu_snapshot_age_seconds{{{NODE}}}", "age"),
                   unit="s", width=8, height=6),
        timeseries("Cycle and scrape duration",
                   Target(f"kube_gpu_exporter_cycle_duration_seconds{{{NODE}}}", "cycle"),
                   Target(f"scrape_duration_seconds{{{NODE}}} and on (instance, job) kube_gpu_exporter_build_info{{{NODE}}}",
                          "scrape"), unit="s", width=8, height=6),
        timeseries("Collector errors", Target(
            f"sum by (collector, kind) (increase(kube_gpu_exporter_collector_errors_total{{{NODE}}}[$__rate_interval])) > 0",
            "{{collector}} {{kind}}"), width=12, height=6),
        timeseries("Agent memory", Target(f"process_resident_memory_bytes{{{NODE}}} and on (instance, job) "
                                          f"kube_gpu_exporter_build_info{{{NODE}}}", "RSS"), unit="bytes", width=12,
                   height=6),
    ]


MIG_KEY = "node, uuid, gpu_instance_id"  # a GPU instance: MIG activity (GPM) is per GPU instance
MIG_HOLDER_KEY = f"{MIG_KEY}, namespace, pod, container"


def mig_activity(selector: str) -> str:
    """What the chosen workloads' MIG instances do, in devices' worth of work, for the holders
    without a container utilisation (NVML has none on MIG): the instance's graphics-engine activity
    (NVML GPM, Hopper and newer), split evenly between the containers holding the instance, as
    namespace:nvidia_gpu_allocated_devices:sum splits a shared device."""
    holders = f'max by ({MIG_HOLDER_KEY}) (nvidia_gpu_allocation_info{{{selector}, gpu_instance_id!=""}})'
    return (f"sum(({holders} unless on ({MIG_HOLDER_KEY}) nvidia_gpu_container_utilization_ratio{{{CLUSTER}}})"
            f" * on ({MIG_KEY}) group_left () max by ({MIG_KEY}) "
            f'(nvidia_gpu_graphics_active_ratio{{{CLUSTER}, gpu_instance_id!=""}})'
            f" / on ({MIG_KEY}) group_left () count by ({MIG_KEY}) "
            f'(max by ({MIG_HOLDER_KEY}) (nvidia_gpu_allocation_info{{{CLUSTER}, gpu_instance_id!=""}})))')


def workload() -> list[Panel]:
    # Workload-level figures read the recording rules (cheap over long ranges); per-pod ones the
    # raw series, so that the pod variable applies to them. Utilisation is the containers' own, and
    # for MIG instances (which have none) the instance's activity.
    used = (f"(sum({rule('namespace_workload:nvidia_gpu_container_utilization_ratio:sum', PER_WORKLOAD)}) or vector(0))"
            f" + ({mig_activity(PER_WORKLOAD)} or vector(0))")
    allocated = f"sum({rule('namespace_workload:nvidia_gpu_allocated_devices:sum', PER_WORKLOAD)})"
    memory = f"sum({rule('namespace_workload:nvidia_gpu_container_memory_used_bytes:sum', PER_WORKLOAD)})"
    held = f"nvidia_gpu_allocation_info{{{WORKLOAD}}}"
    in_namespace = ', namespace="$namespace"'
    return [
        row("Allocation"),
        stat("Devices allocated", allocated, width=4,
             description="Of the chosen workloads; a device shared by n containers counts 1/n."),
        stat("Pods", f"count(count by (pod) ({held}))", width=4),
        stat("Utilisation of held devices", f"({used}) / {allocated}", **PERCENT, width=4,
             thresholds=[(None, "red"), (IDLE, "orange"), (0.5, "green")],
             description="Containers' utilisation, and for MIG instances (no utilisation in NVML) the "
                         "instance's activity (GPM; without it they count 0), over the devices held."),
        stat("GPU memory used", memory, unit="bytes", width=4),
        stat("Power (even split)", f"sum({rule('namespace_workload:nvidia_gpu_power_watts:sum', PER_WORKLOAD)})",
             unit="watt", width=4, description="Board power split evenly between the holders of each board."),
        stat("Efficiency (time range)",
             f"sum_over_time(({used})[$__range:]) / sum_over_time(({allocated})[$__range:])", **PERCENT, width=4,
             thresholds=[(None, "red"), (IDLE, "orange"), (0.5, "green")],
             description="GPU-hours used (utilisation; MIG instances' from GPM, as above) / GPU-hours allocated, "
                         "over the time range."),
        table("Devices held", f"max by (node, gpu, gpu_instance_id, pod, container, resource, shared, workload_kind, "
                              f"workload) ({held})", hide=("Value",), width=24, height=6,
              overrides=[column_link("node", TO_NODE)]),
        row("Usage over time"),
        timeseries("Utilisation per container", Target(
            with_workload("nvidia_gpu_container_utilization_ratio", CONTAINER, WORKLOAD),
            "{{pod}}/{{container}} GPU {{gpu}}"), **PERCENT,
            description="On a shared GPU each container's own share (its processes' SM time)."),
        timeseries("GPU memory per container", Target(
            with_workload("nvidia_gpu_container_memory_used_bytes", CONTAINER, WORKLOAD),
            "{{pod}}/{{container}} GPU {{gpu}}"), unit="bytes"),
        timeseries("Used vs allocated GPUs", Target(allocated, "allocated"), Target(used, "used (utilisation)"),
                   description="The gap is allocated GPU time that did no work (MIG instances' use from GPM).",
                   width=12, minimum=0),
        timeseries("Efficiency (profiling)",
                   Target(f"avg({held} * on ({PROFILING_KEY}) group_left () nvidia_gpu_sm_active_ratio{{{CLUSTER}}})",
                          "SM active"),
                   Target(f"avg({held} * on ({PROFILING_KEY}) group_left () nvidia_gpu_tensor_active_ratio{{{CLUSTER}}})",
                          "tensor active"),
                   Target(f"avg({held} * on ({PROFILING_KEY}) group_left () nvidia_gpu_dram_active_ratio{{{CLUSTER}}})",
                          "DRAM bandwidth"), **PERCENT, width=12,
                   description="NVML GPM profiling of the devices held (Hopper and newer)."),
        row("Alerts"),
        table("Firing alerts on this workload or its GPUs",
              f"max by (alertname, severity, node, gpu, namespace, pod) ({alerts(in_namespace)}"
              f" or ({alerts()} and on (uuid) {held}))", width=24, height=6),
    ]


# -- Variables and assembly --------------------------------------------------------------------


def query_variable(name: str, label: str, query: str, *, multi: bool, hide: int = 0) -> dict[str, Any]:
    return {
        "type": "query", "name": name, "label": label, "datasource": DATASOURCE, "hide": hide,
        "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi or name == "cluster",
        "allValue": ".*" if multi or name == "cluster" else None, "current": {}, "options": [], "regex": "",
    }


def variables(names: Iterable[str], multi: set[str], multi_cluster: bool) -> list[dict[str, Any]]:
    source = {
        "cluster": ("Cluster", "label_values(nvidia_gpu_info, cluster)"),
        "node": ("Node", 'label_values(nvidia_gpu_info{cluster=~"$cluster"}, node)'),
        "gpu": ("GPU", 'label_values(nvidia_gpu_info{cluster=~"$cluster", node="$node"}, gpu)'),
        "namespace": ("Namespace", 'label_values(nvidia_gpu_allocation_info{cluster=~"$cluster"}, namespace)'),
        "workload": ("Workload",
                     'label_values(nvidia_gpu_allocation_info{cluster=~"$cluster", namespace="$namespace"}, workload)'),
        "pod": ("Pod", 'label_values(nvidia_gpu_allocation_info{cluster=~"$cluster", namespace="$namespace", '
                       'workload=~"$workload"}, pod)'),
    }
    out: list[dict[str, Any]] = [{
        "type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
        "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": "",
    }]
    for name in names:
        label, query = source[name]
        hide = 0 if name != "cluster" or multi_cluster else 2
        out.append(query_variable(name, label, query, multi=name in multi, hide=hide))
    return out


@dataclass(frozen=True)
class Spec:
    uid: str
    title: str
    file: str
    panels: Any  # () -> list[Panel]
    variables: tuple[str, ...]
    multi: frozenset[str]
    description: str


SPECS = (
    Spec(FLEET_UID, "GPU fleet", "fleet.json", fleet, ("cluster", "node", "namespace"),
         frozenset({"node", "namespace"}), "Every GPU of the fleet: capacity, who uses it, and hardware health."),
    Spec(NODE_UID, "GPU node", "node.json", node, ("cluster", "node", "gpu"), frozenset({"gpu"}),
         "One node's GPUs and MIG instances, their holders, and the agent's own health."),
    Spec(WORKLOAD_UID, "GPU namespace and workload", "workload.json", workload,
         ("cluster", "namespace", "workload", "pod"), frozenset({"workload", "pod"}),
         "A namespace's or workload's GPUs: what it holds, how much of it it uses, and its alerts."),
)


def layout(panels: list[Panel]) -> list[dict[str, Any]]:
    """Place panels left to right, wrapping at 24 columns; a row starts on its own line."""
    out, x, y, line_height = [], 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if panel.kind == "row" or x + panel.width > 24:
            x, y, line_height = 0, y + line_height, 0
        out.append(panel.json(panel_id, x, y))
        x += panel.width
        line_height = max(line_height, panel.height)
        if panel.kind == "row":
            x, y, line_height = 0, y + 1, 0
    return out


def build(spec: Spec, multi_cluster: bool = False) -> dict[str, Any]:
    return {
        "uid": spec.uid, "title": spec.title, "description": spec.description, "tags": [TAG, "gpu"],
        "editable": True, "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "1m", "timezone": "",
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": [TAG], "asDropdown": False, "includeVars": False,
                   "keepTime": True, "title": "GPU dashboards", "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": variables(spec.variables, set(spec.multi), multi_cluster)},
        "panels": layout(spec.panels()),
    }


def opt_in_groups() -> list[str]:
    """The groups off by default that some panel reads (the demo node turns them on)."""
    exprs = [t.expr for spec in SPECS for panel in spec.panels() for t in panel.targets]
    return sorted(opt_in_metrics(exprs))


def render_all(multi_cluster: bool = False) -> dict[str, str]:
    """File name -> content, for every generated file."""
    files = {s.file: json.dumps(build(s, multi_cluster), indent=2, ensure_ascii=False) + "\n" for s in SPECS}
    configmap = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-gpu-exporter-dashboards",
                     "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "kube-gpu-exporter"},
                     "annotations": {"grafana_folder": "GPU"}},
        # Compact: kubectl apply keeps a copy in an annotation, which may not exceed 256 KiB.
        "data": {f"kube-gpu-exporter-{s.file}": json.dumps(build(s, multi_cluster), separators=(",", ":"))
                 for s in SPECS},
    }
    header = ("# Generated by dashboards/generate.py: the three dashboards for Grafana's dashboard sidecar\n"
              "# (label grafana_dashboard: \"1\"). Apply it in the namespace the sidecar watches (docs/dashboards.md).\n")
    files[CONFIGMAP.name] = header + yaml.safe_dump(configmap, sort_keys=False, width=1 << 20)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file differs")
    parser.add_argument("--multi-cluster", action="store_true", help="show the cluster variable")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to (default: dashboards/)")
    args = parser.parse_args(argv)
    stale = []
    for name, content in render_all(args.multi_cluster).items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            path.write_text(content)
    if stale:
        print(f"stale: {', '.join(stale)}: run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
