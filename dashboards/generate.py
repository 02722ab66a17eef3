"""Generate the Grafana dashboards of kube-gpu-exporter with Grafana's own types (grafana-foundation-sdk).

    python dashboards/generate.py                 # rewrite dashboards/*.json and the ConfigMap
    python dashboards/generate.py --check         # exit 1 when the committed files are stale
    python dashboards/generate.py --multi-cluster # show the cluster variable (Prometheus with a `cluster` label)

Three dashboards, linked to each other: Fleet (``kube-gpu-exporter-fleet``), Node and GPU
(``kube-gpu-exporter-node``), Namespace and workload (``kube-gpu-exporter-workload``). They are
built with the typed builders of Grafana Labs' ``grafana-foundation-sdk`` (its Grafana 11.6
types: schema version ``SCHEMA_VERSION``; our kinds of panel are dashboards/panels.py), and every
dashboard is validated against those types before it is written (dashboards/validation.py).
What is ours: the queries, the thresholds (the alert rules' own, ``alerts/params.py``
``Params``), the layout, panel ids given in definition order (so they stay put across runs), the
variables and the links between the dashboards. Every query uses the
``$datasource`` variable and the dashboard's own variables; batch workload kinds are the alert
rules' own, XID tiers the agent's ``tier`` label (the alerts'), and the fleet and workload panels
read the recording rules of ``alerts/recording.py``; per-pod panels join the raw series as
docs/attribution.md shows.

Series are expected with a ``node`` label (added at scrape time by relabelling: see
deploy/prometheus-scrape-config.yaml) and, optionally, a ``cluster`` label.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries as timeseries_panel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from alerts import efficiency  # noqa: E402 - the efficiency rules (GPU-hours)
from alerts.params import minutes  # noqa: E402
from alerts.rules import Params, recording_rules  # noqa: E402 - the rule set's thresholds and rules
from panels import (  # noqa: E402 - dashboards/panels.py
    ACTIVE, DASHED, DATASOURCE, PERCENT, bargauge, column_link, dashboard_link, layout, override, red_from, row, stat,
    opt_in_metrics, state_timeline, states, table, target, timeseries,
)
from validation import validate  # noqa: E402 - dashboards/validation.py

TAG = "kube-gpu-exporter"
#: The dashboard schema of Grafana 11.6, the one the SDK's types (pinned in pyproject.toml)
#: describe; Grafana 12 migrates it on load.
SCHEMA_VERSION = 41
CONFIGMAP = HERE / "configmap.yaml"

#: The alert rules' parameters: every threshold a panel draws comes from here.
P = Params()
#: Recording rules of alerts/rules.py and alerts/efficiency.py, by name.
RULES = dict(recording_rules(P)) | dict(efficiency.efficiency_rules(P))
#: The efficiency rules' interval in seconds: a sample of theirs stands for this long.
EFFICIENCY_SECONDS = 60 * minutes(P.efficiency_interval)
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


def hours_over_range(name: str, selector: str, by: str = "") -> str:
    """GPU-hours (watt-hours for power) of an efficiency rule over the time range, summed (``by``
    some labels): the sum of its samples times its interval (docs/efficiency.md); a workload that
    held nothing for part of the range adds nothing for it."""
    grouping = f" by ({by})" if by else ""
    return f"(sum{grouping} (sum_over_time({rule(name, selector)}[$__range])) * {EFFICIENCY_SECONDS} / 3600)"


def rule(name: str, selector: str) -> str:
    """A recording rule of alerts/rules.py (a KeyError here means it was renamed there)."""
    if name not in RULES:
        raise KeyError(f"recording rule {name} is not defined in alerts/rules.py")
    return f"{name}{{{selector}}}"


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


def efficiency_row(per_ns: str) -> list[Builder[Any]]:
    """The figures of ``kube-gpu-exporter report`` (without prices) over the dashboard's time range,
    from the efficiency rules (alerts/efficiency.py; docs/efficiency.md)."""
    held = hours_over_range(efficiency.ALLOCATED, per_ns)
    used = hours_over_range(efficiency.USED, per_ns)
    workload_key = "namespace, workload_kind, workload"
    ratio = [(None, "red"), (IDLE, "orange"), (0.5, "green")]
    return [
        row("GPU-hours held, used and idle (time range)"),
        stat("GPU-hours held", held, unit="suffix: GPU-h", description="GPUs held times hours over the time range: "
             "a shared GPU counts 1/n for each of its n holders, a MIG instance its compute slices of the GPU."),
        stat("GPU-hours used", used, unit="suffix: GPU-h",
             description="Held GPU-hours weighted by the holders' utilisation (MIG: docs/efficiency.md)."),
        stat("GPU-hours idle", hours_over_range(efficiency.IDLE, per_ns), unit="suffix: GPU-h",
             description=f"Held while the holder was busy below {IDLE:.0%} (GpuAllocatedIdle's threshold)."),
        stat("Efficiency", f"{used} / {held}", **PERCENT, thresholds=ratio,
             description="GPU-hours used / held over the time range."),
        stat("SM-active GPU-hours", hours_over_range(efficiency.SM_ACTIVE, per_ns), unit="suffix: GPU-h",
             description="Held GPU-hours weighted by SM activity: only GPUs with --collector.profiling."),
        stat("Energy", f"{hours_over_range(efficiency.POWER, per_ns)} / 1000", unit="kwatth",
             description="Board power times each holder's share of the board, over the time range."),
        table("Idle GPU-hours per workload (time range)",
              f"sort_desc({hours_over_range(efficiency.IDLE, per_ns, workload_key)} > 0)",
              columns=("namespace", "workload_kind", "workload"), unit="suffix: GPU-h",
              overrides=[override("byName", "Value", displayName="idle GPU-h")],
              description="The workloads that held GPUs without using them, most idle first: kube-gpu-exporter "
                          "report prices them (docs/efficiency.md)."),
        table("Efficiency per workload (time range)",
              f"sort({hours_over_range(efficiency.USED, per_ns, workload_key)}"
              f" / {hours_over_range(efficiency.ALLOCATED, per_ns, workload_key)})",
              columns=("namespace", "workload_kind", "workload"), **PERCENT, thresholds=ratio,
              overrides=[override("byName", "Value", displayName="used / held",
                                  custom__cellOptions=cm.TableColoredBackgroundCellOptions())],
              description="GPU-hours used / held per workload, least efficient first."),
        timeseries("GPUs held, used and idle",
                   target(f"sum({rule(efficiency.ALLOCATED, per_ns)})", "held"),
                   target(f"sum({rule(efficiency.USED, per_ns)})", "used"),
                   target(f"sum({rule(efficiency.IDLE, per_ns)})", "idle"), width=24, minimum=0,
                   description="The efficiency rules now: their integral over the time range is the row above."),
    ]


def fleet() -> list[Builder[Any]]:
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
        timeseries("Allocated devices by namespace", target(
            f"sum by (namespace) ({rule('namespace:nvidia_gpu_allocated_devices:sum', per_ns)})", "{{namespace}}"),
            stack=True, description="Devices held; a device shared by n containers counts 1/n for each.", width=8),
        timeseries("Utilisation by namespace", target(
            f"sum by (namespace) ({rule('namespace:nvidia_gpu_container_utilization_ratio:sum', per_ns)})",
            "{{namespace}}"), stack=True, width=8,
            description="Sum of the utilisation of the devices each namespace holds: GPUs' worth of work."),
        timeseries("GPU memory by namespace", target(
            f"sum by (namespace) ({rule('namespace:nvidia_gpu_container_memory_used_bytes:sum', per_ns)})",
            "{{namespace}}"), unit="bytes", stack=True, width=8),
        table("Most idle allocated pods",
              f"bottomk(15, max by (node, namespace, workload_kind, workload, pod) ("
              f"nvidia_gpu_allocation_info{{{allocation}}} * on (uuid) group_left () {peak_1h}))",
              description="Pods holding a whole or time-sliced GPU, by the GPU's peak utilisation over the last "
                          "hour (lowest first). Click a pod for its workload dashboard.", **PERCENT,
              overrides=[column_link("pod", TO_WORKLOAD),
                         override("byName", "Value", displayName="peak utilisation (1h)",
                                  custom__cellOptions=cm.TableColoredBackgroundCellOptions())],
              thresholds=[(None, "red"), (IDLE, "orange"), (0.5, "green")], height=9,
              columns=("namespace", "pod", "workload_kind", "workload", "node")),
        bargauge("GPU-hours by namespace (time range)",
                 f"sort_desc({hours_over_range(efficiency.ALLOCATED, per_ns, 'namespace')})",
                 "{{namespace}}", unit="suffix: GPU-h", width=6, height=9,
                 description="GPUs held times hours over the time range (a shared GPU 1/n per holder, a MIG "
                             "instance its compute slices), from the efficiency rules (docs/efficiency.md)."),
        bargauge("Energy by namespace (time range)",
                 f"sort_desc({hours_over_range(efficiency.POWER, per_ns, 'namespace')} * 3600)",
                 "{{namespace}}", unit="joule", width=6, height=9,
                 description="Board power times each holder's share of the board, over the time range."),
        timeseries("Allocated devices: batch vs interactive", target(
            f"sum by (class) ({workload_class(rule('namespace_workload:nvidia_gpu_allocated_devices:sum', per_ns))})",
            "{{class}}"), stack=True, width=12,
            description=f"batch: {P.batch_kinds}; interactive: {INTERACTIVE_KINDS}; other: the rest (DaemonSet, "
                        "unknown without --kubernetes.enabled)."),
        timeseries("Utilisation: batch vs interactive", target(
            f"sum by (class) ({workload_class(rule('namespace_workload:nvidia_gpu_container_utilization_ratio:sum', per_ns))})",
            "{{class}}"), stack=True, description="Sum of the utilisation of the devices each class holds.",
            width=12),
        *efficiency_row(per_ns),
        row("Hardware health"),
        stat("Lost GPUs", f"count(nvidia_gpu_up{{{FLEET}}} == 0) or vector(0)", thresholds=red_from(1), height=8,
             description="GPUs whose NVML reads fail or hang (nvidia_gpu_up 0); GpuLost pages."),
        timeseries("XID events by tier", target(
            f"sum by (tier) (increase(nvidia_gpu_xid_events_total{{{FLEET}}}[$__rate_interval]))", "{{tier}}"),
            description="The alerts' tiers: reboot (fell off the bus), reset (the GPU needs a reset), application "
            "(the job's fault), informational, other (codes the tiers do not name); see docs/alerts.md. The "
            "tier counts exist at 0 from the start, so the first event of a node shows.", width=7, stack=True),
        timeseries("ECC errors", target(
            f"sum by (type) (increase(nvidia_gpu_ecc_errors_total{{{FLEET}}}[$__rate_interval]))", "{{type}}"),
            description="Volatile ECC errors; uncorrected ones page.", width=7),
        timeseries("GPUs throttled", target(
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


def violation(reason: str, ratio: float, alert: str) -> timeseries_panel.Panel:
    """Time held below target clocks by one policy, over the alert's window, against its threshold."""
    return timeseries(f"{reason.capitalize()} violation time ({P.capping_window})", target(
        f'rate(nvidia_gpu_violation_seconds_total{{{GPU}, reason="{reason}"}}[{P.capping_window}])', "GPU {{gpu}}"),
        **PERCENT, thresholds=red_from(ratio), width=6,
        description=f"Fraction of the last {P.capping_window} the {reason} policy held clocks down; {alert} "
                    f"fires above {ratio:.0%} (docs/alerts.md).")


def node() -> list[Builder[Any]]:
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
        timeseries("Utilisation", target(f"nvidia_gpu_utilization_ratio{{{GPU}}}", by_gpu), **PERCENT, width=8),
        timeseries("Memory used", target(f"nvidia_gpu_memory_used_bytes{{{GPU}}}", by_gpu),
                   target(f"max(nvidia_gpu_memory_total_bytes{{{GPU}}})", "total"), unit="bytes", width=8),
        timeseries("Memory used / total", target(
            f"nvidia_gpu_memory_used_bytes{{{GPU}}} / nvidia_gpu_memory_total_bytes{{{GPU}}}", by_gpu), **PERCENT,
            thresholds=red_from(P.memory_full_ratio), width=8),
        row("Temperature and power"),
        timeseries("Temperature", target(f"nvidia_gpu_temperature_celsius{{{GPU}}}", by_gpu),
                   target(f'nvidia_gpu_temperature_threshold_celsius{{{GPU}, threshold="slowdown"}}',
                          "GPU {{gpu}} slowdown"), unit="celsius", width=8,
                   overrides=[override("byRegexp", ".*slowdown", custom__lineStyle=DASHED,
                                       color=dm.FieldColor(mode=dm.FieldColorModeId.FIXED, fixed_color="red"))],
                   description="Each GPU against its own slowdown temperature (dashed)."),
        timeseries("Margin to slowdown temperature", target(
            f'nvidia_gpu_temperature_threshold_celsius{{{GPU}, threshold="slowdown"}} - ignoring (threshold) '
            f"nvidia_gpu_temperature_celsius{{{GPU}}}", by_gpu), unit="celsius",
            thresholds=[(None, "red"), (MARGIN, "green")], width=8,
            description=f"Alerting below {MARGIN} °C."),
        timeseries("Power / limit", target(
            f"nvidia_gpu_power_watts{{{GPU}}} / nvidia_gpu_power_limit_watts{{{GPU}}}", by_gpu), **PERCENT, width=8),
        timeseries("Power", target(f"nvidia_gpu_power_watts{{{GPU}}}", by_gpu),
                   target(f"nvidia_gpu_power_limit_watts{{{GPU}}}", "GPU {{gpu}} limit"), unit="watt", width=8,
                   overrides=[override("byRegexp", ".*limit", custom__lineStyle=DASHED)]),
        timeseries("Energy", target(f"increase(nvidia_gpu_energy_joules_total{{{GPU}}}[$__rate_interval])", by_gpu),
                   unit="joule", width=8, description="Energy used per interval."),
        timeseries("SM clock", target(f'nvidia_gpu_clock_hertz{{{GPU}, clock="sm"}}', by_gpu),
                   target(f'max(nvidia_gpu_clock_max_hertz{{{GPU}, clock="sm"}})', "max"), unit="hertz", width=8,
                   description="The SM clock of each GPU; the line \"max\" is the highest the GPUs allow."),
        row("Throttling"),
        state_timeline("Clock-event reasons", target(
            f'nvidia_gpu_clock_event_active{{{GPU}, reason=~"{THROTTLE_REASONS}"}} and on (uuid, reason) '
            f'(max_over_time(nvidia_gpu_clock_event_active{{{GPU}, reason=~"{THROTTLE_REASONS}"}}[$__range]) > 0)',
            "GPU {{gpu}} {{reason}}"), mappings=[ACTIVE], width=12, height=8,
            description="Reasons that held clocks down at some point in the time range."),
        violation("thermal", P.thermal_capping_ratio, "GpuThermalCapping"),
        violation("power", P.power_capping_ratio, "GpuPowerCapping"),
        row("Errors"),
        timeseries("XID events", target(
            f"increase(nvidia_gpu_xid_events_total{{{GPU}}}[$__rate_interval]) > 0", "GPU {{gpu}} {{tier}}"), width=6,
            description="By the alerts' tiers; the counts exist at 0 from the start, so the first event shows."),
        table("XID codes since the agent started",
              f"sum by (gpu, xid) (nvidia_gpu_xid_errors_total{{{GPU}}}) > 0", width=6,
              description="Events per code, counted since the agent started (a code's series appears with its "
                          "first event).",
              overrides=[override("byName", "Value", displayName="events")]),
        timeseries("ECC errors (volatile)", target(
            f"increase(nvidia_gpu_ecc_errors_total{{{GPU}}}[$__rate_interval])", "GPU {{gpu}} {{type}}"), width=6),
        timeseries("Remapped rows", target(f"nvidia_gpu_remapped_rows{{{GPU}}}", "GPU {{gpu}} {{type}}"),
                   target(f"nvidia_gpu_remapped_rows_pending{{{GPU}}} + 2 * nvidia_gpu_remapped_rows_failure{{{GPU}}} > 0",
                          "GPU {{gpu}} pending (1) / failed (2)"), width=6),
        row("PCIe and NVLink"),
        timeseries("PCIe traffic", target(
            f"rate(nvidia_gpu_pcie_data_bytes_total{{{GPU}}}[$__rate_interval])", "GPU {{gpu}} {{direction}}"),
            unit="Bps", width=6),
        timeseries("PCIe replays", target(
            f"increase(nvidia_gpu_pcie_replays_total{{{GPU}}}[$__rate_interval])", by_gpu), width=6),
        timeseries("NVLink traffic", target(
            f"rate(nvidia_gpu_nvlink_data_bytes_total{{{GPU}}}[$__rate_interval])", "GPU {{gpu}} {{direction}}"),
            unit="Bps", width=6),
        timeseries("NVLink errors", target(
            f"sum by (gpu, type) (increase(nvidia_gpu_nvlink_errors_total{{{GPU}}}[$__rate_interval]))",
            "GPU {{gpu}} {{type}}"), width=6),
        row("Efficiency (profiling: --collector.profiling)"),
        timeseries("SM active", target(f"nvidia_gpu_sm_active_ratio{{{GPU}}}", by_gpu), **PERCENT, width=8,
                   description="Fraction of SMs busy (NVML GPM, Hopper and newer)."),
        timeseries("Tensor cores active", target(f"nvidia_gpu_tensor_active_ratio{{{GPU}}}", by_gpu), **PERCENT,
                   width=8),
        timeseries("DRAM bandwidth used", target(f"nvidia_gpu_dram_active_ratio{{{GPU}}}", by_gpu), **PERCENT,
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
        timeseries("Processes", target(f"nvidia_gpu_processes{{{GPU}}}", by_gpu), width=12),
        timeseries("Container memory", target(
            f"nvidia_gpu_container_memory_used_bytes{{{GPU}}}", "GPU {{gpu}} {{namespace}}/{{pod}}/{{container}}"),
            unit="bytes", width=12),
        row("Agent"),
        state_timeline("Collector success", target(
            f"kube_gpu_exporter_collector_success{{{NODE}}}", "{{collector}}"), width=8, height=6,
            mappings=[states(**{"0": ("failing", "red"), "1": ("ok", "green")})]),
        timeseries("GPU readings age", target(f"kube_gpu_exporter_gpu_snapshot_age_seconds{{{NODE}}}", "age"),
                   unit="s", width=8, height=6),
        timeseries("Cycle and scrape duration",
                   target(f"kube_gpu_exporter_cycle_duration_seconds{{{NODE}}}", "cycle"),
                   target(f"scrape_duration_seconds{{{NODE}}} and on (instance, job) kube_gpu_exporter_build_info{{{NODE}}}",
                          "scrape"), unit="s", width=8, height=6),
        timeseries("Collector errors", target(
            f"sum by (collector, kind) (increase(kube_gpu_exporter_collector_errors_total{{{NODE}}}[$__rate_interval])) > 0",
            "{{collector}} {{kind}}"), width=12, height=6),
        timeseries("Agent memory", target(f"process_resident_memory_bytes{{{NODE}}} and on (instance, job) "
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


def workload() -> list[Builder[Any]]:
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
        timeseries("Utilisation per container", target(
            with_workload("nvidia_gpu_container_utilization_ratio", CONTAINER, WORKLOAD),
            "{{pod}}/{{container}} GPU {{gpu}}"), **PERCENT,
            description="On a shared GPU each container's own share (its processes' SM time)."),
        timeseries("GPU memory per container", target(
            with_workload("nvidia_gpu_container_memory_used_bytes", CONTAINER, WORKLOAD),
            "{{pod}}/{{container}} GPU {{gpu}}"), unit="bytes"),
        timeseries("Used vs allocated GPUs", target(allocated, "allocated"), target(used, "used (utilisation)"),
                   description="The gap is allocated GPU time that did no work (MIG instances' use from GPM).",
                   width=12, minimum=0),
        timeseries("Efficiency (profiling)",
                   target(f"avg({held} * on ({PROFILING_KEY}) group_left () nvidia_gpu_sm_active_ratio{{{CLUSTER}}})",
                          "SM active"),
                   target(f"avg({held} * on ({PROFILING_KEY}) group_left () nvidia_gpu_tensor_active_ratio{{{CLUSTER}}})",
                          "tensor active"),
                   target(f"avg({held} * on ({PROFILING_KEY}) group_left () nvidia_gpu_dram_active_ratio{{{CLUSTER}}})",
                          "DRAM bandwidth"), **PERCENT, width=12,
                   description="NVML GPM profiling of the devices held (Hopper and newer)."),
        row("Alerts"),
        table("Firing alerts on this workload or its GPUs",
              f"max by (alertname, severity, node, gpu, namespace, pod) ({alerts(in_namespace)}"
              f" or ({alerts()} and on (uuid) {held}))", width=24, height=6),
    ]


# -- Variables and assembly --------------------------------------------------------------------


def query_variable(name: str, label: str, query: str, *, multi: bool, hide: dm.VariableHide) -> db.QueryVariable:
    everything = multi or name == "cluster"  # the cluster's All matches series without the label
    variable = (db.QueryVariable(name).label(label).datasource(DATASOURCE).hide(hide)
                .query({"query": query, "refId": f"{name}-variable"}).refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dm.VariableSort.ALPHABETICAL_ASC).multi(multi).include_all(everything).regex(""))
    return variable.all_value(".*") if everything else variable


def variables(names: Iterable[str], multi: set[str], multi_cluster: bool) -> list[Builder[dm.VariableModel]]:
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
    out: list[Builder[dm.VariableModel]] = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus").hide(dm.VariableHide.DONT_HIDE)
        .regex("")]
    for name in names:
        label, query = source[name]
        hidden = name == "cluster" and not multi_cluster
        out.append(query_variable(name, label, query, multi=name in multi,
                                  hide=dm.VariableHide.HIDE_VARIABLE if hidden else dm.VariableHide.DONT_HIDE))
    return out


@dataclass(frozen=True)
class Spec:
    uid: str
    title: str
    file: str
    panels: Callable[[], list[Builder[Any]]]
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


def model(spec: Spec, multi_cluster: bool = False) -> dm.Dashboard:
    """The dashboard, as the SDK's model."""
    dashboard = (
        db.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags([TAG, "gpu"]).editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR).time("now-6h", "now").refresh("1m").timezone("")
        .fiscal_year_start_month(0).live_now(False).week_start("").version(1)
        .link(db.DashboardLink("GPU dashboards").type(dm.DashboardLinkType.DASHBOARDS).tags([TAG]).as_dropdown(False)
              .include_vars(False).keep_time(True).icon("external link").target_blank(False).tooltip(""))
        .variables(variables(spec.variables, set(spec.multi), multi_cluster)))
    for panel in layout(spec.panels()):
        if isinstance(panel, db.Row):
            dashboard.with_row(panel)
        else:
            dashboard.with_panel(panel)
    return dashboard.build()


def build(spec: Spec, multi_cluster: bool = False) -> dict[str, Any]:
    """The dashboard's JSON, once the SDK's types accept it (``validation.validate``)."""
    return validate(model(spec, multi_cluster), SCHEMA_VERSION)


def opt_in_groups() -> list[str]:
    """The groups off by default that some panel reads (the demo node turns them on)."""
    exprs = [t["expr"] for spec in SPECS for panel in build(spec)["panels"] for t in panel.get("targets", [])]
    return sorted(opt_in_metrics(exprs))


def render_all(multi_cluster: bool = False) -> dict[str, str]:
    """File name -> content, for every generated file."""
    dashboards = {spec.file: build(spec, multi_cluster) for spec in SPECS}
    files = {name: json.dumps(d, indent=2, ensure_ascii=False) + "\n" for name, d in dashboards.items()}
    configmap = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-gpu-exporter-dashboards",
                     "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "kube-gpu-exporter"},
                     "annotations": {"grafana_folder": "GPU"}},
        # Compact: kubectl apply keeps a copy in an annotation, which may not exceed 256 KiB
        # (tests/test_deploy.py: test_every_object_fits_a_client_side_apply).
        "data": {f"kube-gpu-exporter-{name}": json.dumps(d, separators=(",", ":")) for name, d in dashboards.items()},
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
