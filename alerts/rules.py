"""The rule set, written once: recording rules, alerts, their parameters, docs and test cases.

``python -m alerts.generate`` turns this module into the plain rule file, the PrometheusRule
object, the promtool tests (their thresholds come from the same ``Params``), docs/alerts.md and
docs/runbooks.md. Tune a threshold or a ``for:`` by changing ``Params`` (or by passing other
``Params`` to ``alerts.generate.rule_groups``) and regenerating.

Label model: Prometheus adds ``node`` to every series of the agent at scrape time (relabelling);
every rule aggregates by the labels it keeps, which drops the scrape target's ``instance``,
``job``, ``pod``, ``namespace``. **Labels identify the device, annotations say who holds it.**
Device alerts are labelled ``node, gpu, uuid`` (plus ``xid`` or ``link`` where the alert is about
one of those), never with a pod: a holder change or a kubelet outage must not end an alert and
start another (restarting its ``for:``, paging twice). Their ``holders`` annotation names the pods
holding the device, filled at notification time by a template query on
``nvidia_gpu_allocation_info``; the agent's pushed alerts carry the same labels and the same
annotation (exporter/push/definitions.py). Container alerts (idle, stuck, memory) are about a
container and keep ``namespace, pod, container``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from exporter.push import definitions as D

# -- Parameters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Every threshold, window and ``for:`` of the rule set, in one place."""

    job: str = "kube-gpu-exporter"  # the scrape job of the agent (for up / absent)
    runbook_base: str = D.RUNBOOK_BASE
    # The selector of kube-state-metrics' GPU capacity, to find GPU nodes without an agent.
    gpu_capacity: str = 'kube_node_status_capacity{resource="nvidia_com_gpu"}'
    bridge: str = "5m"  # last_over_time window that carries a gauge over missed scrapes
    event_window: str = "10m"  # an XID or ECC event keeps its alert active this long
    xid_recurring_window: str = "24h"
    xid_recurring_increase: int = 2  # increase() of reset-tier XIDs of one code in the window
    ecc_for: str = "0s"
    xid_for: str = "0s"
    gpu_lost_for: str = "1m"
    gpu_missing_window: str = "1d"
    gpu_missing_for: str = "5m"
    row_remap_failure_for: str = "1m"
    pending_for: str = "15m"  # row remap / page retirement pending
    nvlink_window: str = "10m"
    nvlink_errors: int = 50
    nvlink_for: str = "10m"
    nvlink_down_for: str = "5m"
    pcie_replay_window: str = "10m"
    pcie_replays: int = 10
    pcie_replay_for: str = "10m"
    pcie_busy_ratio: float = 0.5
    pcie_degraded_for: str = "10m"
    hw_slowdown_for: str = "2m"
    capping_window: str = "15m"
    thermal_capping_ratio: float = 0.5  # fraction of time
    thermal_capping_for: str = "15m"
    power_capping_ratio: float = 0.8
    power_capping_for: str = "30m"
    temperature_margin: float = 5  # degrees below the slowdown / HBM maximum threshold
    temperature_for: str = "5m"
    idle_ratio: float = 0.05
    idle_interactive_window: str = "1h"
    idle_interactive_for: str = "3h"
    idle_batch_ratio: float = 0.01
    idle_batch_window: str = "30m"
    idle_batch_for: str = "30m"
    batch_kinds: str = "Job|CronJob"
    memory_full_ratio: float = 0.95
    memory_full_for: str = "15m"
    busy_unallocated_ratio: float = 0.1
    busy_unallocated_for: str = "15m"
    agent_down_for: str = "5m"
    agent_absent_for: str = "15m"
    nvml_down_for: str = "5m"
    collector_failing_for: str = "15m"
    snapshot_stale_for: str = "5m"
    kubelet_for: str = "5m"
    apiserver_for: str = "10m"
    unknown_ids_for: str = "15m"
    notifications_for: str = "10m"
    in_use_ratio: float = 0.05  # a GPU counts as in use above this utilisation


# -- PromQL building blocks -----------------------------------------------------------------

def gauge(metric: str, p: Params) -> str:
    """The latest sample of a gauge, carried over missed scrapes for ``p.bridge``: a failed scrape
    must not reset the ``for:`` of an alert that is still true."""
    return f"last_over_time({metric}[{p.bridge}])"


def happened(counter: str, window: str) -> str:
    """The counter grew in the window, or its series appeared in it above 0 (a per-code XID series
    of a code outside ``XID_ZERO_CODES`` is born at 1 with its first event)."""
    return f"increase({counter}[{window}]) > 0 or ({counter} > 0 unless {counter} offset {window})"


def codes(xids: tuple[int, ...]) -> str:
    return "|".join(str(x) for x in xids)


def listing(label: str, query: str) -> str:
    """An annotation template: the values of ``label`` in the result of ``query`` (a Go format
    string given the alert's ``node`` and ``uuid`` as ``%[1]q`` and ``%[2]q``), sorted as text
    and joined by ", "; "" when the query returns nothing. Prometheus runs the query at each
    evaluation for each active (pending or firing) alert only: its cost grows with the alerts
    active, not with the nodes, unlike a join in the alert's expression."""
    return (f'{{{{ range $i, $s := sortByLabel "{label}" (query (printf `{query}` $labels.node $labels.uuid)) }}}}'
            f"{{{{ if $i }}}}, {{{{ end }}}}{{{{ $s.Labels.{label} }}}}{{{{ end }}}}")


#: The ``holders`` annotation (definitions.HOLDERS_ANNOTATION): distinct ``namespace/pod`` of the
#: pods holding the GPU or any of its MIG instances or replicas, as ``definitions.holders_text``.
HOLDERS_TEMPLATE = listing("holder", "count by (holder) (label_join(nvidia_gpu_allocation_info"
                                      '{node=%[1]q, uuid=%[2]q}, "holder", "/", "namespace", "pod"))')


def xids_template(matcher: str, p: Params) -> str:
    """The ``xids`` annotation (definitions.XIDS_ANNOTATION) of an XID alert: the codes of its tier
    (``matcher`` on ``xid``) with an event in the event window, as ``definitions.xids_text``."""
    series = f"nvidia_gpu_xid_errors_total{{node=%[1]q, uuid=%[2]q, {matcher}}}"
    return listing("xid", f"max by (xid) ({happened(series, p.event_window)})")


def xid_expr(tier: str, p: Params) -> str:
    """XID events of one tier in the event window, per GPU. The tier's series is there at 0 from
    the start, so ``increase()`` sees the first event; a series first seen already above 0 (a
    Prometheus that starts scraping an agent that saw an XID an hour ago) shows no increase."""
    return (f"max by (node, gpu, uuid) (\n  increase(nvidia_gpu_xid_events_total{{tier=\"{tier}\"}}"
            f"[{p.event_window}])\n) > 0")


def xid_threshold(xids: tuple[int, ...] | None, p: Params) -> str:
    named = f"any XID of {', '.join(map(str, xids))}" if xids else "any XID the tiers above do not name"
    return f"{named} in {p.event_window}"


# -- Recording rules ---------------------------------------------------------------------------

_ALLOC_KEY = "node, uuid, gpu_instance_id, compute_instance_id"
_CONTAINER_KEY = "node, namespace, pod, container, uuid, gpu_instance_id, compute_instance_id"


def _per_workload(metric: str) -> str:
    return (f"sum by (namespace, workload_kind, workload) (\n  {metric}\n"
            f"  * on ({_CONTAINER_KEY}) group_left (workload_kind, workload)\n"
            f"    max by ({_CONTAINER_KEY}, workload_kind, workload) (nvidia_gpu_allocation_info)\n)")


def _power_split(by: str) -> str:
    """Each board's power split evenly between the containers holding it or its MIG instances."""
    return (f"sum by ({by}) (\n  max by (node, uuid) (nvidia_gpu_power_watts)\n"
            f"  * on (node, uuid) group_right ()\n"
            f"    (\n      count by (node, uuid, {by}) (nvidia_gpu_allocation_info)\n"
            f"      / on (node, uuid) group_left ()\n        count by (node, uuid) (nvidia_gpu_allocation_info)\n"
            f"    )\n)")


def recording_rules(p: Params) -> list[tuple[str, str]]:
    """(record, expr), in evaluation order (later rules read earlier ones)."""
    devices = (f"nvidia_gpu_allocation_info\n  / on ({_ALLOC_KEY}) group_left ()\n"
               f"    count by ({_ALLOC_KEY}) (nvidia_gpu_allocation_info)")
    in_use = (f"max by (node, uuid) (nvidia_gpu_utilization_ratio) > {p.in_use_ratio}\n"
              "or (max by (node, uuid) (nvidia_gpu_processes) > 0\n"
              "    unless on (node, uuid) nvidia_gpu_utilization_ratio)")
    unhealthy = " or ".join([
        "max by (node, gpu, uuid) (nvidia_gpu_up) == 0",
        "max by (node, gpu, uuid) (nvidia_gpu_remapped_rows_failure) == 1",
        "max by (node, gpu, uuid) (nvidia_gpu_remapped_rows_pending) == 1",
        "max by (node, gpu, uuid) (nvidia_gpu_retired_pages_pending) == 1",
        'sum by (node, gpu, uuid) (increase(nvidia_gpu_ecc_errors_total{type="uncorrected"}[1h])) > 0',
        'sum by (node, gpu, uuid) (increase(nvidia_gpu_xid_events_total{tier=~"reset|reboot"}[1h])) > 0',
    ])
    return [
        ("namespace:nvidia_gpu_allocated_devices:sum", f"sum by (namespace) (\n  {devices}\n)"),
        ("namespace_workload:nvidia_gpu_allocated_devices:sum",
         f"sum by (namespace, workload_kind, workload) (\n  {devices}\n)"),
        ("namespace:nvidia_gpu_container_utilization_ratio:sum",
         "sum by (namespace) (nvidia_gpu_container_utilization_ratio)"),
        ("namespace_workload:nvidia_gpu_container_utilization_ratio:sum",
         _per_workload("nvidia_gpu_container_utilization_ratio")),
        ("namespace:nvidia_gpu_container_memory_used_bytes:sum",
         "sum by (namespace) (nvidia_gpu_container_memory_used_bytes)"),
        ("namespace_workload:nvidia_gpu_container_memory_used_bytes:sum",
         _per_workload("nvidia_gpu_container_memory_used_bytes")),
        ("namespace:nvidia_gpu_power_watts:sum", _power_split("namespace")),
        ("namespace_workload:nvidia_gpu_power_watts:sum", _power_split("namespace, workload_kind, workload")),
        ("node:nvidia_gpu_gpus:count", "count by (node) (max by (node, uuid) (nvidia_gpu_info))"),
        ("node:nvidia_gpu_gpus_allocated:count",
         "count by (node) (max by (node, uuid) (nvidia_gpu_allocation_info))"),
        ("node:nvidia_gpu_gpus_in_use:count", f"count by (node) (\n  {in_use}\n)"),
        ("node:nvidia_gpu_gpus_idle_allocated:count",
         f"count by (node) (\n  max by (node, uuid) (nvidia_gpu_allocation_info)\n"
         f"  unless on (node, uuid) (\n    {in_use}\n  )\n)"),
        ("node_gpu:nvidia_gpu_healthy:bool",
         f"(max by (node, gpu, uuid) (nvidia_gpu_up) * 0 + 1)\n  unless on (node, uuid) (\n    {unhealthy}\n  )\n"
         "or on (node, gpu, uuid) max by (node, gpu, uuid) (nvidia_gpu_up) * 0"),
        ("node:nvidia_gpu_gpus_healthy:sum", "sum by (node) (node_gpu:nvidia_gpu_healthy:bool)"),
    ]


RECORDING_DOCS: Mapping[str, str] = {
    "namespace:nvidia_gpu_allocated_devices:sum":
        "Devices held per namespace; a device shared by n containers counts 1/n, a MIG instance as one.",
    "namespace_workload:nvidia_gpu_allocated_devices:sum": "The same per `namespace, workload_kind, workload`.",
    "namespace:nvidia_gpu_container_utilization_ratio:sum":
        "Sum of the containers' utilisation per namespace (1 = one GPU fully busy).",
    "namespace_workload:nvidia_gpu_container_utilization_ratio:sum": "The same per workload.",
    "namespace:nvidia_gpu_container_memory_used_bytes:sum": "GPU memory the containers of a namespace use.",
    "namespace_workload:nvidia_gpu_container_memory_used_bytes:sum": "The same per workload.",
    "namespace:nvidia_gpu_power_watts:sum":
        "Board power split evenly between the containers holding each GPU (or its MIG instances).",
    "namespace_workload:nvidia_gpu_power_watts:sum": "The same per workload.",
    "node:nvidia_gpu_gpus:count": "GPUs on the node (physical GPUs, whatever their state).",
    "node:nvidia_gpu_gpus_allocated:count": "GPUs of which at least something (whole, MIG instance, replica) is held.",
    "node:nvidia_gpu_gpus_in_use:count":
        "GPUs busy above `in_use_ratio`, or (MIG GPUs, which report no utilisation) running processes.",
    "node:nvidia_gpu_gpus_idle_allocated:count": "GPUs held by a pod but not in use.",
    "node_gpu:nvidia_gpu_healthy:bool":
        "Per GPU: 1 healthy, 0 when it is down, has a failed or pending row remap, pending page "
        "retirement, an uncorrectable ECC error or a reset/reboot-tier XID in the last hour.",
    "node:nvidia_gpu_gpus_healthy:sum": "Healthy GPUs per node; compare with `node:nvidia_gpu_gpus:count`.",
}


# -- Alerts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A promtool test of one alert: input series (one sample per ``interval``), the minute from
    which the expression holds, the labels it fires with. ``checks`` adds (minute, firing?) checks,
    e.g. for the traps; the default checks are: silent one minute before ``for:`` runs out, firing
    after. The expected ``holders`` annotation of a check is computed from the case's
    ``nvidia_gpu_allocation_info`` series present at that minute (alerts/generate.py); ``xids`` is
    the expected ``xids`` annotation's codes, the same at every firing check of the case."""

    series: Mapping[str, str]
    active_from: int
    labels: Mapping[str, str] = field(default_factory=dict)
    checks: tuple[tuple[int, bool], ...] = ()
    defaults: bool = True  # the silent-then-firing checks
    name: str = ""
    xids: tuple[int, ...] = ()
    interval: str = "1m"


@dataclass(frozen=True)
class Runbook:
    meaning: str
    impact: str
    diagnose: str
    action: str


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    expr: str
    for_: str
    summary: str
    description: str
    threshold: str  # for the docs
    why: str  # why this expression, threshold and for:
    runbook: Runbook
    cases: tuple[Case, ...]
    group: str
    holders: bool = False  # a device alert: the holders annotation names who holds the device
    xid_matcher: str = ""  # an XID tier alert: the xids annotation lists its codes (a matcher on xid)

    def annotations(self, p: Params) -> dict[str, str]:
        annotations = {"summary": self.summary, "description": self.description,
                       "runbook_url": D.AlertText(self.name, self.severity, "", "").runbook_url(p.runbook_base)}
        if self.holders:
            annotations[D.HOLDERS_ANNOTATION] = HOLDERS_TEMPLATE
        if self.xid_matcher:
            annotations[D.XIDS_ANNOTATION] = xids_template(self.xid_matcher, p)
        return annotations


# Test fixtures: node gpu-node-1, scraped as target 10.0.0.1:9400 of the agent's pod, whose own
# namespace/pod labels every rule must drop.
NODE = "gpu-node-1"
_TARGET = 'instance="10.0.0.1:9400",job="kube-gpu-exporter"'


def agent(*, node: str = NODE, **extra: str) -> str:
    """The labels of a series of the agent of ``node`` (gpu-node-2's is target 10.0.0.2:9400)."""
    target = _TARGET if node == NODE else _TARGET.replace("10.0.0.1", "10.0.0.2")
    return f'node="{node}",{target},namespace="monitoring",pod="kube-gpu-exporter-7xk2p"' + "".join(
        f',{k}="{v}"' for k, v in extra.items())


def dev(i: int, *, node: str = NODE, **extra: str) -> str:
    return agent(node=node, gpu=str(i), uuid=f"GPU-{i}", **extra)


def container(i: int, namespace: str, pod: str, name: str, **extra: str) -> str:
    """The labels of a container series of GPU i: the holder's namespace and pod (the agent's
    own, the scrape target's, are overwritten: honor_labels)."""
    return (f'node="{NODE}",{_TARGET},namespace="{namespace}",pod="{pod}",container="{name}",gpu="{i}",'
            f'uuid="GPU-{i}"') + "".join(f',{k}="{v}"' for k, v in extra.items())


def nvml_up(values: str, node: str = NODE) -> dict[str, str]:
    return {_m("kube_gpu_exporter_nvml_up", agent(node=node)): values}


def alloc(i: int, namespace: str, pod: str, *, container: str = "main", kind: str = "Deployment",
          workload: str = "app", gi: str = "", shared: str = "false", resource: str = "nvidia.com/gpu") -> str:
    mig = f',gpu_instance_id="{gi}",compute_instance_id="0"' if gi else ""
    return (f'nvidia_gpu_allocation_info{{node="{NODE}",{_TARGET},gpu="{i}",uuid="GPU-{i}"{mig},'
            f'namespace="{namespace}",pod="{pod}",container="{container}",resource="{resource}",'
            f'shared="{shared}",workload_kind="{kind}",workload="{workload}"}}')


def gpu_labels(i: int, **extra: str) -> dict[str, str]:
    return {"node": NODE, "gpu": str(i), "uuid": f"GPU-{i}", **extra}


EXCLUSIVE = {alloc(0, "ml", "train-0", kind="Job", workload="train"): "1x300"}
#: The agent drops the allocations once the kubelet has been away past --attribution.grace-period.
EXCLUSIVE_UNTIL_20 = {alloc(0, "ml", "train-0", kind="Job", workload="train"): "1x19 stale"}
TWO_MIG_HOLDERS = {
    alloc(2, "ml", "eval-0", gi="1", kind="StatefulSet", workload="eval"): "1x300",
    alloc(2, "serving", "embed-0", gi="2", workload="embed"): "1x300",
}
ONE_POD_TWO_MIG = {
    alloc(2, "ml", "eval-0", gi="1", container="a", kind="StatefulSet", workload="eval"): "1x300",
    alloc(2, "ml", "eval-0", gi="2", container="b", kind="StatefulSet", workload="eval"): "1x300",
}


def _m(name: str, labels: str) -> str:
    return f"{name}{{{labels}}}"


#: The codes of each tier of definitions.XID_TIERS; "other" is every code the others do not name.
XID_TIER_CODES: Mapping[str, tuple[int, ...] | None] = {
    "reboot": D.XID_REBOOT, "reset": D.XID_RESET, "application": D.XID_APPLICATION,
    "informational": D.XID_INFORMATIONAL, "other": None,
}
#: XID tier alerts: tier -> the codes its xids annotation lists, as a matcher on ``xid``.
XID_MATCHERS: Mapping[str, str] = {
    tier: f'xid=~"{codes(tier_codes)}"' if tier_codes else f'xid!~"{codes(D.XID_KNOWN)}"'
    for tier, tier_codes in XID_TIER_CODES.items()
}


def tiers(i: int, values: Mapping[str, str], rest: str = "0x45") -> dict[str, str]:
    """nvidia_gpu_xid_events_total of GPU i, one series per tier: ``values`` by tier, ``rest`` for
    the others (the agent exports every tier at 0 from the start)."""
    return {_m("nvidia_gpu_xid_events_total", dev(i, tier=t)): values.get(t, rest) for t in D.XID_TIERS}


def per_code(i: int, code: int, before: int, after: str) -> dict[str, str]:
    """nvidia_gpu_xid_errors_total{xid=code} of GPU i: ``before`` samples before the first event
    (at 0 for the codes of XID_ZERO_CODES, absent for the others), then ``after``."""
    born = f"0x{before - 1}" if code in D.XID_ZERO_CODES else f"_x{before}"
    return {_m("nvidia_gpu_xid_errors_total", dev(i, xid=str(code))): f"{born} {after}"}


def _xid_cases(tier: str, code: int, second: int | None, other: tuple[str, int]) -> tuple[Case, ...]:
    """The first event of a tier fires, resolves after the event window; two codes at once are
    both listed; an event of another tier is neither an alert of this tier nor listed; an agent
    restart fires nothing; a GPU whose old events Prometheus first sees stays silent."""
    other_tier, other_code = other
    both = (code,) if second is None else (code, second)
    at_once = {k: v for c in both for k, v in per_code(2, c, 8, "1x40").items()}
    after_restart = "0x8" if code in D.XID_ZERO_CODES else "_x9"
    return (
        Case({**tiers(0, {tier: "0x4 1x40"}), **per_code(0, code, 5, "1x40"), **tiers(1, {}), **EXCLUSIVE},
             5, gpu_labels(0), checks=((15, False),), xids=(code,),
             name="the first event of the tier, on an exclusively held GPU; silent again after the event window"),
        Case({**tiers(2, {other_tier: "0x4 1x40", tier: f"0x7 {len(both)}x40"}), **per_code(2, other_code, 5, "1x40"),
              **at_once, **TWO_MIG_HOLDERS},
             8, gpu_labels(2), xids=both,
             name="codes of the tier at once on a GPU two pods share; another tier's earlier event is not listed"),
        Case({**tiers(0, {tier: "0x4 1x14 stale 0x8 1x10"}, rest="0x19 stale 0x19"),
              **per_code(0, code, 5, f"1x14 stale {after_restart} 1x10"),
              **tiers(1, {tier: "3x45"}), _m("nvidia_gpu_xid_errors_total", dev(1, xid=str(code))): "3x45"},
             30, gpu_labels(0), checks=((16, False), (22, False), (29, False), (30, True)), defaults=False,
             xids=(code,), name="an agent restart fires nothing, the first event after it does; "
                                "old events seen for the first time fire nothing"),
    )


def _gpu_counter_case(metric: str, labels: Mapping[str, str], faulty: str, healthy: str, active_from: int,
                      expect: Mapping[str, str], **kw: object) -> Case:
    extra = dict(labels)
    return Case({_m(metric, dev(0, **extra)): faulty, _m(metric, dev(1, **extra)): healthy}, active_from,
                expect, **kw)  # type: ignore[arg-type]


def _gauge_case(metric: str, faulty: str, healthy: str, active_from: int, expect: Mapping[str, str],
                extra: Mapping[str, str] | None = None, more: Mapping[str, str] | None = None,
                i: int = 0) -> Case:
    lbl = dict(extra or {})
    return Case({_m(metric, dev(i, **lbl)): faulty, _m(metric, dev(1 if i != 1 else 0, **lbl)): healthy,
                 **(more or {})}, active_from, expect)


def alerts(p: Params) -> list[Alert]:
    G = D.GPU_DESCRIPTION
    by_gpu = "node, gpu, uuid"
    a: list[Alert] = []

    def add(**kw: object) -> None:
        a.append(Alert(**kw))  # type: ignore[arg-type]

    # -- XIDs ----------------------------------------------------------------------------------
    def xid_alert(tier: str, cases: tuple[Case, ...], **kw: object) -> None:
        add(group="gpu-xid", for_=p.xid_for, holders=True, xid_matcher=XID_MATCHERS[tier],
            expr=xid_expr(tier, p), threshold=xid_threshold(XID_TIER_CODES[tier], p), cases=cases, **kw)

    t = D.XID_RESET_REQUIRED
    xid_alert(
        "reset", name=t.name, severity=t.severity, summary=t.summary, description=t.description,
        why="XIDs are events: the alert is active for the event window after the last one. It reads the "
            "tier's count, which the agent exports at 0 from the start: `increase()` sees the first event, "
            "an agent restart (counts back to 0) is a counter reset and fires nothing, and a Prometheus "
            "that first scrapes an agent with old events sees no increase. One alert per GPU and tier, "
            "whatever the codes: they are in the `xids` annotation. Also pushed by the agent.",
        runbook=Runbook(
            "The driver reported an error after which NVIDIA's XID catalog says the GPU must be reset: a "
            "micro-controller halt (62), GSP errors (119, 120), uncontained ECC (95), row-remap failure "
            "(64), double-bit ECC (48), NVLink error (74) and others. The codes are in the alert's `xids` "
            "annotation, the pods that held the GPU in `holders`.",
            "The work on the GPU has usually crashed or hangs; new work scheduled there may fail the same way.",
            "`kubectl debug node/<node> -it --image=ubuntu -- chroot /host dmesg -T | grep -i xid` shows the "
            "driver's message; `nvidia_gpu_xid_errors_total{uuid=\"<uuid>\"}` the history per code.",
            "Cordon and drain the node (`kubectl drain <node> --ignore-daemonsets`), reset the GPU "
            "(`nvidia-smi -r -i <gpu>`, or reboot the node), uncordon. If a reset does not bring it back, "
            "reboot; if the same code comes back within a day (GpuXidRecurring), replace the GPU (RMA)."),
        cases=_xid_cases("reset", 48, 62, ("application", 13)))

    t = D.XID_REBOOT_REQUIRED
    xid_alert(
        "reboot", name=t.name, severity=t.severity, summary=t.summary, description=t.description,
        why="As GpuXidResetRequired. 79 (the GPU fell off the bus) needs the node power-cycled; it explains "
            "the GpuLost that follows, so Alertmanager's example configuration lets it inhibit GpuLost on "
            "the same GPU (and the application-tier XIDs of the node), never the reverse. Also pushed by "
            "the agent.",
        runbook=Runbook(
            "XID 79: the GPU fell off the PCIe bus. The driver cannot talk to it any more.",
            "Every process on the GPU is dead; the GPU shows as lost right after (GpuLost, inhibited by "
            "this alert in the example Alertmanager configuration).",
            "`dmesg -T | grep -iE 'xid|fallen off'` on the node; check the BMC's event log for PCIe, power or "
            "thermal events; `nvidia_gpu_temperature_celsius{uuid=\"<uuid>\"}` before the event.",
            "Drain the node and power-cycle it (a warm reboot is often not enough). If it recurs, have the "
            "riser, power and the GPU checked by the hardware vendor."),
        cases=_xid_cases("reboot", 79, None, ("reset", 48)))

    xid_alert(
        "application", name="GpuXidApplicationError", severity="info",
        summary="A GPU reported an application-level XID error.",
        description=G + " reported an application fault (bad memory access, illegal instruction, a killed "
                        "context; the codes are in the xids annotation); the GPU itself is fine.",
        why="Information for the workload's owner, not the platform: the GPU stays usable. Kept at info so "
            "that it lands on dashboards and in the namespace owner's channel, never in the pager.",
        runbook=Runbook(
            "The driver reported an application fault: 13 (graphics engine exception, often an "
            "out-of-bounds access), 31 (memory page fault), 43 (context killed), 45 (preemptive cleanup), "
            "68 (video decoder), 94 (contained ECC error: only the affected context was killed).",
            "The process on the GPU crashed or was killed; other work on the GPU is not affected.",
            "The pods in the alert's `holders` annotation: their logs (`kubectl logs -n <namespace> <pod> "
            "--previous`); `increase(nvidia_gpu_xid_errors_total{uuid=\"<uuid>\"}[1d])` shows whether it repeats.",
            "Nothing on the node. Tell the workload's owner; repeated 94s on one GPU with other ECC alerts "
            "point at the memory: watch GpuEccUncorrectableErrors and GpuRowRemapPending."),
        cases=_xid_cases("application", 13, 43, ("reset", 62)))

    xid_alert(
        "informational", name="GpuXidInformational", severity="info",
        summary="A GPU reported an informational XID.",
        description=G + " reported an informational XID (63: a row remap was recorded; 92: high single-bit "
                        "ECC rate; the codes are in the xids annotation).",
        why="Early signs of memory wear: worth a look, not an action on their own.",
        runbook=Runbook(
            "63: the GPU recorded a row remap (it will take effect at the next reset); 92: the single-bit "
            "ECC error rate is high.",
            "None now; a pending remap needs a reset (GpuRowRemapPending).",
            "`nvidia_gpu_remapped_rows{uuid=\"<uuid>\"}`, `nvidia_gpu_ecc_errors_total{uuid=\"<uuid>\"}`.",
            "Plan a GPU reset at the next drain; replace the GPU if remaps keep coming."),
        cases=_xid_cases("informational", 63, 92, ("application", 13)))

    xid_alert(
        "other", name="GpuXidOther", severity="info",
        summary="A GPU reported an XID that the rules do not classify.",
        description=G + " reported an XID that is not in the rules' tiers (the codes are in the xids annotation).",
        why="New drivers add codes; an unknown code must be seen, and classified in "
            "exporter/model/xid.py (the agent counts it in the `other` tier until then).",
        runbook=Runbook(
            "An XID code outside the tiers of the rule set.",
            "Unknown: look it up.",
            "NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors); `dmesg -T | grep -i xid` on the node.",
            "Add the code to its tier in exporter/model/xid.py, regenerate (`make rules`)."),
        cases=_xid_cases("other", 998, 999, ("application", 13)))

    recurring = f'nvidia_gpu_xid_errors_total{{xid=~"{codes(D.XID_REPLACE_IF_RECURRING)}"}}'
    add(holders=True, name="GpuXidRecurring", severity="warning", group="gpu-xid", for_="0s",
        summary="A GPU keeps reporting the same hardware XID: replace it.",
        description=G + " reported XID {{ $labels.xid }} again within " + p.xid_recurring_window
                    + ": resets do not cure it; the GPU should be replaced.",
        expr=f"max by (node, gpu, uuid, xid) (\n  increase({recurring}[{p.xid_recurring_window}])\n"
             f") >= {p.xid_recurring_increase}",
        threshold=f"{p.xid_recurring_increase} events of one of "
                  f"{', '.join(map(str, D.XID_REPLACE_IF_RECURRING))} in {p.xid_recurring_window}",
        why="The agent exports the per-code series of these codes at 0 from the start "
            "(`XID_ZERO_CODES`), so `increase()` counts every event: 2 is the second event within the "
            "window, also across an agent restart between the two (a counter reset). A ticket, not a "
            "page: GpuXidResetRequired already paged.",
        runbook=Runbook(
            "A reset-tier XID (48 double-bit ECC, 64 row-remap failure, 74 NVLink, 95 uncontained ECC) "
            "keeps coming back on the same GPU.",
            "The GPU keeps killing the work scheduled on it.",
            f"`increase(nvidia_gpu_xid_errors_total{{uuid=\"<uuid>\"}}[{p.xid_recurring_window}])`; "
            "`nvidia_gpu_ecc_aggregate_errors_total{uuid=\"<uuid>\"}` for its lifetime history.",
            "Cordon the node, take the GPU out of service and open an RMA with the serial from "
            "`nvidia_gpu_info{uuid=\"<uuid>\"}`."),
        cases=(Case({**per_code(0, 48, 5, "1x9 2x30"), **per_code(1, 48, 5, "1x40"), **EXCLUSIVE},
                    15, gpu_labels(0, xid="48"), name="the second event within the window; one event is silent"),
               Case({**per_code(0, 64, 5, "1x9 stale 0x3 1x20"), **per_code(1, 64, 5, "1x9 stale 0x25")},
                    20, gpu_labels(0, xid="64"),
                    name="an agent restart between two events; an agent restart after one event is silent")))

    # -- Memory and the GPU itself --------------------------------------------------------------
    t = D.ECC_UNCORRECTABLE
    add(holders=True, name=t.name, severity=t.severity, group="gpu-hardware", for_=p.ecc_for, summary=t.summary,
        description=t.description,
        expr=f"sum by ({by_gpu}) (\n  increase(nvidia_gpu_ecc_errors_total{{type=\"uncorrected\"}}"
             f"[{p.event_window}])\n) > 0",
        threshold=f"any increase of the volatile uncorrected count in {p.event_window}",
        why="The volatile count is there from the GPU's first reading (at 0 after a driver load), so "
            "increase() sees the first error; a driver reload resets it to 0, which increase() reads as "
            "a reset, not as errors. The aggregate (lifetime) count is not used: it never decreases but "
            "carries old errors. Also pushed by the agent.",
        runbook=Runbook(
            "The GPU's memory returned data that ECC could not correct.",
            "The process that read it was killed or computed with corrupt data; its results are suspect.",
            "`nvidia_gpu_ecc_errors_total{uuid=\"<uuid>\"}`, `nvidia_gpu_remapped_rows{uuid=\"<uuid>\"}` "
            "(a row remap usually follows), XIDs 48/94/95 in `dmesg`.",
            "Drain the node and reset the GPU so that the remap takes effect; replace it if uncorrectable "
            "errors recur or GpuRowRemapFailure fires. Tell the workload's owner to check their results."),
        cases=(
            Case({_m("nvidia_gpu_ecc_errors_total", dev(2, type="uncorrected")): "0x4 1x40",
                  _m("nvidia_gpu_ecc_errors_total", dev(2, type="corrected")): "0x4 5x40",
                  _m("nvidia_gpu_ecc_errors_total", dev(1, type="uncorrected")): "0x45",
                  _m("nvidia_gpu_ecc_errors_total", dev(1, type="corrected")): "0+3x45",
                  **ONE_POD_TWO_MIG},
                 5, gpu_labels(2), checks=((15, False),),
                 name="the first error, on a GPU whose two MIG instances one pod holds"),
            Case({_m("nvidia_gpu_ecc_errors_total", dev(0, type="uncorrected")): "2x10 0x20"}, 0,
                 checks=((5, False), (11, False), (15, False)), defaults=False,
                 name="a driver reload resets the count: no alert"),
        ))

    t = D.GPU_LOST
    add(holders=True, name=t.name, severity=t.severity, group="gpu-hardware", for_=p.gpu_lost_for, summary=t.summary,
        description=t.description,
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_up', p)}) == 0\n"
             f"  unless on (node) max by (node) ({gauge('kube_gpu_exporter_nvml_up', p)}) == 0",
        threshold="nvidia_gpu_up == 0 while NVML as a whole is up",
        why=f"`for: {p.gpu_lost_for}` skips a hung read or two; a GPU that is really lost stays lost. The "
            "last sample is carried over missed scrapes, so a scrape that fails (the agent restarting) does "
            "not resolve it. While NVML as a whole is down (`kube_gpu_exporter_nvml_up` 0: the driver, or "
            "the agent restarting NVML) every GPU reads as down: that is one problem, "
            "KubeGpuExporterNvmlDown's, not one GpuLost per GPU. Also pushed by the agent: at once when "
            "NVML says the GPU is lost, after the same minute for any other failed read.",
        runbook=Runbook(
            "NVML calls on the GPU fail (GPU_IS_LOST, unknown error) or hang past the collection timeout.",
            "Work on the GPU is dead or stuck; the device plugin may still offer it to new pods.",
            "`kubectl logs -n <agent namespace> <agent pod>` says which NVML call failed; "
            "`nvidia-smi` on the node; `dmesg -T | grep -iE 'xid|NVRM'`; preceding XIDs in "
            "`nvidia_gpu_xid_errors_total{uuid=\"<uuid>\"}` (79 and 119/120 usually come first).",
            "Cordon and drain the node, reset the GPU (`nvidia-smi -r -i <gpu>`) or reboot; if the GPU "
            "does not come back after a power cycle, replace it."),
        cases=(
            Case({_m("nvidia_gpu_up", dev(0)): "1x4 0x40", _m("nvidia_gpu_up", dev(1)): "1x45",
                  **nvml_up("1x45"), **EXCLUSIVE},
                 5, gpu_labels(0), name="held by one pod"),
            Case({_m("nvidia_gpu_up", dev(0)): "1x4 0x10 stale stale 0x20", **nvml_up("1x15 stale stale 1x20")},
                 5, gpu_labels(0), checks=((15, True), (16, True), (17, True)),
                 name="two failed scrapes do not resolve it"),
            Case({_m("nvidia_gpu_up", dev(0)): "1x4 0x40", _m("nvidia_gpu_up", dev(1)): "1x4 0x40",
                  **nvml_up("1x4 0x40")}, 0, checks=((5, False), (6, False), (10, False), (30, False)),
                 defaults=False, name="NVML down on the node (every GPU down): KubeGpuExporterNvmlDown's job"),
            Case({_m("nvidia_gpu_up", dev(0)): "1x10 0 0 1x60", _m("nvidia_gpu_up", dev(1)): "1x10 0 1x60",
                  **nvml_up("1x72")}, 0, checks=((5, False), (6, False), (7, False), (10, False)), defaults=False,
                 interval="30s", name="a hung read or two (30 s scrapes) pages nobody"),
        ))

    add(name="GpuMissingFromNode", severity="critical", group="gpu-hardware", for_=p.gpu_missing_for,
        summary="A node has fewer GPUs than it had in the last day.",
        description="Node {{ $labels.node }} shows fewer GPUs than it had in the last "
                    + p.gpu_missing_window + ": a GPU is gone from the bus or from the driver.",
        expr="(\n  count by (node) (max by (node, uuid) (nvidia_gpu_info))\n"
             "  or max by (node) (kube_gpu_exporter_nvml_up == 1) * 0\n)\n"
             f"  < on (node) max_over_time(node:nvidia_gpu_gpus:count[{p.gpu_missing_window}])",
        threshold=f"fewer GPUs than the maximum of the last {p.gpu_missing_window}",
        why="A GPU that vanished has no series at all, so nvidia_gpu_up cannot say it is down; the "
            "count per node can. Counted per node (a replaced GPU brings the count back). A node left "
            "with no GPU at all has no series to count: while NVML is up there, its count is 0 (a node "
            "whose NVML is down is KubeGpuExporterNvmlDown's). The count now is computed in the rule, not "
            "read from its recording rule: rule groups run independently, and the recorded value may be "
            "one evaluation late.",
        runbook=Runbook(
            "NVML enumerates fewer GPUs than before: one fell off the bus, or the driver did not "
            "initialise it after a reboot.",
            "Pods that need all the node's GPUs cannot be scheduled; the device plugin advertises fewer.",
            "`count by (uuid) (max_over_time(nvidia_gpu_info{node=\"<node>\"}[1d]))` against "
            "`nvidia_gpu_info{node=\"<node>\"}` names the missing uuid; `lspci | grep -i nvidia` and "
            "`dmesg` on the node.",
            "Drain and power-cycle the node; if the GPU is still missing, open a hardware ticket. After a "
            "planned removal the alert resolves a day later, or silence it."),
        cases=(Case({_m("nvidia_gpu_info", dev(0)): "1x60", _m("nvidia_gpu_info", dev(1)): "1x30 stale",
                     **nvml_up("1x60")}, 31, {"node": NODE}, name="2 GPUs -> 1"),
               Case({_m("nvidia_gpu_info", dev(0)): "1x30 stale", **nvml_up("1x60"),
                     _m("nvidia_gpu_info", dev(0, node="gpu-node-2")): "1x30 stale",
                     **nvml_up("1x30 0x30", node="gpu-node-2")}, 31, {"node": NODE},
                    name="1 GPU -> 0 while NVML is up; a node whose NVML is down is not judged")))

    add(holders=True, name="GpuRowRemapFailure", severity="critical", group="gpu-hardware",
        for_=p.row_remap_failure_for,
        summary="A GPU failed to remap a memory row: it needs service.",
        description=G + " failed to remap a faulty memory row; it is out of spare rows and must be "
                        "replaced.",
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_remapped_rows_failure', p)}) == 1",
        threshold="nvidia_gpu_remapped_rows_failure == 1",
        why="A state, not an event: it stays 1 until the GPU is serviced.",
        runbook=Runbook(
            "The GPU had an uncorrectable memory error and no spare row was left to remap it (XID 64).",
            "Further errors at that address keep killing work; NVIDIA calls for replacement.",
            "`nvidia_gpu_remapped_rows{uuid=\"<uuid>\"}`; `nvidia-smi -q -d ROW_REMAPPER` on the node.",
            "Drain the node, take the GPU out of service and RMA it."),
        cases=(_gauge_case("nvidia_gpu_remapped_rows_failure", "0x4 1x40", "0x45", 5, gpu_labels(0)),))

    add(holders=True, name="GpuRowRemapPending", severity="warning", group="gpu-hardware", for_=p.pending_for,
        summary="A GPU has a memory row remap waiting for a reset.",
        description=G + " has a row remap pending: it takes effect at the next GPU reset.",
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_remapped_rows_pending', p)}) == 1",
        threshold="nvidia_gpu_remapped_rows_pending == 1",
        why=f"Not urgent, but the faulty row stays in use until a reset: `for: {p.pending_for}` lets a "
            "planned reset happen first.",
        runbook=Runbook(
            "A memory row was marked for remapping after an error; the remap needs a GPU reset.",
            "Until the reset the faulty row can cause more errors.",
            "`nvidia_gpu_remapped_rows{uuid=\"<uuid>\"}`; `nvidia-smi -q -d ROW_REMAPPER`.",
            "At the next convenient time drain the node and reset the GPU (or reboot)."),
        cases=(_gauge_case("nvidia_gpu_remapped_rows_pending", "0x4 1x40", "0x45", 5, gpu_labels(0)),
               Case({_m("nvidia_gpu_remapped_rows_pending", dev(0)): "1x40",
                     alloc(0, "ml", "train-0", kind="Job", workload="train"): "1x9 stale",
                     alloc(0, "ml", "train-1", kind="Job", workload="train"): "_x10 1x30"},
                    0, gpu_labels(0), checks=((9, False), (16, True)),
                    name="the sole holder replaced during for: (a Job's next pod): on time, the same labels"),
               Case({_m("nvidia_gpu_remapped_rows_pending", dev(0)): "1x40", **EXCLUSIVE_UNTIL_20},
                    0, gpu_labels(0), checks=((25, True), (35, True)),
                    name="a kubelet outage past the grace period (the allocations vanish at 20): the same alert, "
                         "holders empty")))

    add(holders=True, name="GpuRetiredPagesPending", severity="warning", group="gpu-hardware", for_=p.pending_for,
        summary="A GPU has memory pages waiting to be retired at the next reboot.",
        description=G + " has memory pages pending retirement (older GPUs' equivalent of row remapping).",
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_retired_pages_pending', p)}) == 1",
        threshold="nvidia_gpu_retired_pages_pending == 1", why="As GpuRowRemapPending, for GPUs before Ampere.",
        runbook=Runbook(
            "Pages with ECC errors are marked for retirement; the driver retires them at the next reload.",
            "The bad pages remain in use until then.",
            "`nvidia_gpu_retired_pages{uuid=\"<uuid>\"}`; `nvidia-smi -q -d PAGE_RETIREMENT`.",
            "Drain and reboot (or reload the driver) at a convenient time; replace a GPU that keeps "
            "retiring pages."),
        cases=(_gauge_case("nvidia_gpu_retired_pages_pending", "0x4 1x40", "0x45", 5, gpu_labels(0)),))

    # -- Interconnects ---------------------------------------------------------------------------
    add(holders=True, name="GpuNvlinkErrorsRising", severity="warning", group="gpu-hardware", for_=p.nvlink_for,
        summary="NVLink errors are rising on a GPU.",
        description=G + " counts more than " + str(p.nvlink_errors) + " NVLink errors per "
                    + p.nvlink_window + ".",
        expr=f"sum by ({by_gpu}) (\n  increase(nvidia_gpu_nvlink_errors_total[{p.nvlink_window}])\n"
             f") > {p.nvlink_errors}",
        threshold=f"> {p.nvlink_errors} errors (all links and types) per {p.nvlink_window}",
        why="A few CRC errors are corrected by replays and are normal; a sustained rate points at a bad "
            "link, cable or bridge.",
        runbook=Runbook(
            "A GPU's NVLink links count replay, recovery or CRC errors at a sustained rate.",
            "Collective operations (all-reduce) slow down; a failing link ends in XID 74.",
            "`sum by (link, type) (rate(nvidia_gpu_nvlink_errors_total{uuid=\"<uuid>\"}[10m]))`; "
            "`nvidia-smi nvlink -e -i <gpu>`.",
            "Reset the GPU (or the NVSwitch fabric, with fabric manager) at a drain; if the same link keeps "
            "erring, have the baseboard serviced."),
        cases=(_gpu_counter_case("nvidia_gpu_nvlink_errors_total", {"link": "3", "type": "crc_flit"},
                                 "0x4 0+10x40", "0+1x45", 11, gpu_labels(0)),))

    add(holders=True, name="GpuNvlinkLinkDown", severity="warning", group="gpu-hardware", for_=p.nvlink_down_for,
        summary="An NVLink link of a GPU is down while its other links are up.",
        description=G + " has NVLink link {{ $labels.link }} down while its other links are up.",
        expr=f"max by ({by_gpu}, link) ({gauge('nvidia_gpu_nvlink_up', p)}) == 0\n"
             f"  and on (node, uuid) max by (node, uuid) (nvidia_gpu_nvlink_up) == 1",
        threshold="nvidia_gpu_nvlink_up == 0 on one link, 1 on another",
        why="A GPU with all links down is not using NVLink (or is lost): only a partial loss is a fault.",
        runbook=Runbook(
            "One NVLink link of the GPU is inactive.",
            "Traffic through that link falls back or fails; multi-GPU jobs slow down or hang.",
            "`nvidia_gpu_nvlink_up{uuid=\"<uuid>\"}`; `nvidia-smi nvlink -s -i <gpu>`; fabric manager logs.",
            "Drain, reset the GPU or reboot the node; a link that stays down needs hardware service."),
        cases=(Case({_m("nvidia_gpu_nvlink_up", dev(0, link="0")): "1x45",
                     _m("nvidia_gpu_nvlink_up", dev(0, link="1")): "1x4 0x40",
                     _m("nvidia_gpu_nvlink_up", dev(1, link="0")): "0x45",
                     _m("nvidia_gpu_nvlink_up", dev(1, link="1")): "0x45"},
                    5, gpu_labels(0, link="1")),))

    add(holders=True, name="GpuPcieReplaysRising", severity="warning", group="gpu-hardware", for_=p.pcie_replay_for,
        summary="PCIe replays are rising on a GPU.",
        description=G + " counts more than " + str(p.pcie_replays) + " PCIe replays per "
                    + p.pcie_replay_window + ": the link retransmits.",
        expr=f"sum by ({by_gpu}) (increase(nvidia_gpu_pcie_replays_total[{p.pcie_replay_window}])) "
             f"> {p.pcie_replays}",
        threshold=f"> {p.pcie_replays} replays per {p.pcie_replay_window}",
        why="Replays are the link correcting itself; a steady stream is a marginal riser, slot or cable "
            "before it fails (XID 79).",
        runbook=Runbook(
            "The PCIe link of the GPU retransmits packets at a sustained rate.",
            "Host-device transfers slow down; the link may drop (XID 79).",
            "`rate(nvidia_gpu_pcie_replays_total{uuid=\"<uuid>\"}[10m])`; `lspci -vvv` (AER errors); "
            "`nvidia_gpu_pcie_link_width` against its maximum.",
            "Reseat or replace the riser / cable at the next maintenance; move critical work elsewhere."),
        cases=(_gpu_counter_case("nvidia_gpu_pcie_replays_total", {}, "0x4 0+3x40", "0+0.5x45", 9, gpu_labels(0)),
               Case({_m("nvidia_gpu_pcie_replays_total", dev(0)): "500x10 0x20"}, 0,
                    checks=((11, False), (15, False)), defaults=False,
                    name="a counter reset (driver reload) fires nothing")))

    busy = f"max by ({by_gpu}) (nvidia_gpu_utilization_ratio) > {p.pcie_busy_ratio}"
    add(holders=True, name="GpuPcieLinkDegraded", severity="warning", group="gpu-hardware", for_=p.pcie_degraded_for,
        summary="A busy GPU's PCIe link runs below its maximum generation or width.",
        description=G + " is busy but its PCIe link runs below its maximum generation or width.",
        expr=f"(\n  max by ({by_gpu}) (nvidia_gpu_pcie_link_generation)\n"
             f"    < max by ({by_gpu}) (nvidia_gpu_pcie_link_max_generation)\n"
             f"  or\n  max by ({by_gpu}) (nvidia_gpu_pcie_link_width)\n"
             f"    < max by ({by_gpu}) (nvidia_gpu_pcie_link_max_width)\n"
             f")\nand on (node, uuid) ({busy})",
        threshold=f"generation or width below the maximum while utilisation > {p.pcie_busy_ratio}",
        why="An idle GPU drops its link to Gen1 to save power, so only a busy one is judged.",
        runbook=Runbook(
            "The link trained at a lower generation or fewer lanes than the GPU and slot support.",
            "Host-device bandwidth is a fraction of what it should be: data loading slows down.",
            "`nvidia_gpu_pcie_link_generation`, `nvidia_gpu_pcie_link_width` and their `_max_` against each "
            "other; `lspci -vvv -s <bus id>` (LnkSta vs LnkCap).",
            "Reseat the GPU or riser at the next maintenance; check BIOS PCIe settings."),
        cases=(Case({_m("nvidia_gpu_pcie_link_generation", dev(0)): "5x4 4x40",
                     _m("nvidia_gpu_pcie_link_max_generation", dev(0)): "5x45",
                     _m("nvidia_gpu_pcie_link_width", dev(0)): "16x45",
                     _m("nvidia_gpu_pcie_link_max_width", dev(0)): "16x45",
                     _m("nvidia_gpu_utilization_ratio", dev(0)): "0.9x45",
                     _m("nvidia_gpu_pcie_link_generation", dev(1)): "1x45",
                     _m("nvidia_gpu_pcie_link_max_generation", dev(1)): "5x45",
                     _m("nvidia_gpu_pcie_link_width", dev(1)): "16x45",
                     _m("nvidia_gpu_pcie_link_max_width", dev(1)): "16x45",
                     _m("nvidia_gpu_utilization_ratio", dev(1)): "0x45"},
                    5, gpu_labels(0)),))

    # -- Thermal and power ------------------------------------------------------------------------
    def clock_event(reason: str) -> str:
        metric = 'nvidia_gpu_clock_event_active{reason="%s"}' % reason
        return f"max by ({by_gpu}) ({gauge(metric, p)}) == 1"

    add(holders=True, name="GpuHardwareThermalSlowdown", severity="warning", group="gpu-thermal",
        for_=p.hw_slowdown_for,
        summary="A GPU is slowed down by its hardware thermal protection.",
        description=G + " has its clocks cut by hardware thermal slowdown: it is too hot.",
        expr=clock_event("hw_thermal_slowdown"),
        threshold='nvidia_gpu_clock_event_active{reason="hw_thermal_slowdown"} == 1',
        why="The hardware's own protection cuts clocks hard (by half or more); it should never be active "
            "in a healthy chassis.",
        runbook=Runbook(
            "The GPU reached its hardware slowdown temperature and cut its clocks.",
            "The work on it runs at a fraction of its speed; a multi-GPU job runs at the pace of this GPU.",
            "`nvidia_gpu_temperature_celsius`, `nvidia_gpu_memory_temperature_celsius`, "
            "`nvidia_gpu_fan_speed_ratio` of the GPU; the node's inlet temperature and fans in the BMC.",
            "Check the chassis airflow or liquid cooling; drain the node if it persists."),
        cases=(_gauge_case('nvidia_gpu_clock_event_active', "0x4 1x40", "0x45", 5, gpu_labels(0),
                           {"reason": "hw_thermal_slowdown"}),))

    add(holders=True, name="GpuHardwarePowerBrake", severity="warning", group="gpu-thermal", for_=p.hw_slowdown_for,
        summary="A GPU is slowed down by the hardware power brake.",
        description=G + " has its clocks cut by the external power brake signal (the system's power "
                        "supply or BMC asked for it).",
        expr=clock_event("hw_power_brake_slowdown"),
        threshold='nvidia_gpu_clock_event_active{reason="hw_power_brake_slowdown"} == 1',
        why="Asserted by the system, not the GPU: a power supply problem that a busy node should never see.",
        runbook=Runbook(
            "The system asserted the power brake: typically a failed or overloaded power supply.",
            "All GPUs of the node usually slow down together.",
            "The BMC's power supply status and event log; the other GPUs of the node.",
            "Fix or replace the power supply; drain the node meanwhile if jobs suffer."),
        cases=(_gauge_case('nvidia_gpu_clock_event_active', "0x4 1x40", "0x45", 5, gpu_labels(0),
                           {"reason": "hw_power_brake_slowdown"}),))

    def violation(reason: str, ratio: float) -> str:
        return (f"sum by ({by_gpu}) (\n  rate(nvidia_gpu_violation_seconds_total{{reason=\"{reason}\"}}"
                f"[{p.capping_window}])\n) > {ratio}")

    add(holders=True, name="GpuThermalCapping", severity="warning", group="gpu-thermal", for_=p.thermal_capping_for,
        summary="A GPU's clocks are held down by heat most of the time.",
        description=G + " spent more than " + f"{p.thermal_capping_ratio:.0%}"
                    + " of the time thermally capped.",
        expr=violation("thermal", p.thermal_capping_ratio),
        threshold=f"thermal violation time > {p.thermal_capping_ratio:.0%} of {p.capping_window}",
        why="Read from the violation counter, not the clock-event gauge: a counter sees every second "
            "between two scrapes and survives a missed one.",
        runbook=Runbook(
            "The driver lowered the GPU's clocks to stay within its temperature target most of the time.",
            "The work on it runs slower than on its neighbours.",
            "`rate(nvidia_gpu_violation_seconds_total{uuid=\"<uuid>\", reason=\"thermal\"}[15m])`; "
            "temperatures of the GPU and its neighbours.",
            "Check cooling; compare with the node's other GPUs (one hot slot vs. a hot node)."),
        cases=(_gpu_counter_case("nvidia_gpu_violation_seconds_total", {"reason": "thermal"},
                                 "0x4 0+60x60", "0+6x65", 13, gpu_labels(0)),))

    add(holders=True, name="GpuPowerCapping", severity="info", group="gpu-thermal", for_=p.power_capping_for,
        summary="A GPU's clocks are held down by its power limit most of the time.",
        description=G + " spent more than " + f"{p.power_capping_ratio:.0%}"
                    + " of the time at its power cap.",
        expr=violation("power", p.power_capping_ratio),
        threshold=f"power violation time > {p.power_capping_ratio:.0%} of {p.capping_window}",
        why="A busy GPU often runs at its power limit; this is information for capacity planning, unless "
            "the limit was lowered (compare nvidia_gpu_power_limit_watts across GPUs).",
        runbook=Runbook(
            "The GPU draws its enforced power limit and lowers its clocks to stay within it.",
            "Throughput is bounded by power; expected under heavy load.",
            "`nvidia_gpu_power_limit_watts` against the model's default; `nvidia_gpu_power_watts`.",
            "Nothing if the limit is the default; restore it (`nvidia-smi -pl`) if someone lowered it."),
        cases=(_gpu_counter_case("nvidia_gpu_violation_seconds_total", {"reason": "power"},
                                 "0x4 0+60x70", "0+6x75", 18, gpu_labels(0)),))

    slowdown = 'max by (node, uuid) (nvidia_gpu_temperature_threshold_celsius{threshold="slowdown"})'
    add(holders=True, name="GpuTemperatureNearSlowdown", severity="warning", group="gpu-thermal",
        for_=p.temperature_for,
        summary="A GPU runs close to its slowdown temperature.",
        description=G + " is within " + f"{p.temperature_margin:g}" + " degrees of the temperature at which "
                    "it slows itself down.",
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_temperature_celsius', p)})\n"
             f"  >= on (node, uuid) group_left ()\n    ({slowdown} - {p.temperature_margin:g})",
        threshold=f"temperature >= slowdown threshold - {p.temperature_margin:g} C",
        why="The slowdown temperature differs per model (read from NVML), so no constant fits every GPU.",
        runbook=Runbook(
            "The GPU core temperature is close to its slowdown threshold.",
            "None yet; hardware slowdown is next.",
            "`nvidia_gpu_temperature_celsius` against "
            "`nvidia_gpu_temperature_threshold_celsius{threshold=\"slowdown\"}`; the node's cooling.",
            "Check airflow / coolant before the GPU throttles."),
        cases=(Case({_m("nvidia_gpu_temperature_celsius", dev(0)): "70x4 85x40",
                     _m("nvidia_gpu_temperature_threshold_celsius", dev(0, threshold="slowdown")): "87x45",
                     _m("nvidia_gpu_temperature_threshold_celsius", dev(0, threshold="shutdown")): "92x45",
                     _m("nvidia_gpu_temperature_celsius", dev(1)): "85x45",
                     _m("nvidia_gpu_temperature_threshold_celsius", dev(1, threshold="slowdown")): "95x45"},
                    5, gpu_labels(0)),))

    memory_max = 'max by (node, uuid) (nvidia_gpu_temperature_threshold_celsius{threshold="memory_max"})'
    add(holders=True, name="GpuMemoryTemperatureHigh", severity="warning", group="gpu-thermal", for_=p.temperature_for,
        summary="A GPU's HBM memory runs close to its maximum temperature.",
        description=G + " has its HBM memory within " + f"{p.temperature_margin:g}"
                    + " degrees of its maximum temperature.",
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_memory_temperature_celsius', p)})\n"
             f"  >= on (node, uuid) group_left ()\n    ({memory_max} - {p.temperature_margin:g})",
        threshold=f"memory temperature >= memory_max threshold - {p.temperature_margin:g} C",
        why="HBM heats separately from the core and errs (ECC) when hot; the limit comes from NVML. "
            "GPUs that report no memory temperature or threshold are not judged.",
        runbook=Runbook(
            "The GPU's memory temperature is close to the maximum NVML reports for it.",
            "Memory errors (ECC, row remaps) become likelier; the GPU may throttle.",
            "`nvidia_gpu_memory_temperature_celsius` against "
            "`nvidia_gpu_temperature_threshold_celsius{threshold=\"memory_max\"}`.",
            "Check cooling; drain if it persists."),
        cases=(Case({_m("nvidia_gpu_memory_temperature_celsius", dev(0)): "70x4 92x40",
                     _m("nvidia_gpu_temperature_threshold_celsius", dev(0, threshold="memory_max")): "95x45",
                     _m("nvidia_gpu_memory_temperature_celsius", dev(1)): "80x45",
                     _m("nvidia_gpu_temperature_threshold_celsius", dev(1, threshold="memory_max")): "95x45"},
                    5, gpu_labels(0)),))

    # -- Usage ------------------------------------------------------------------------------------
    holder_key = "node, namespace, pod, container, uuid"

    def idle(kind_matcher: str, ratio: float, window: str) -> str:
        return (f"(\n  max by (node, namespace, pod, container, gpu, uuid) (\n"
                f"    max_over_time(nvidia_gpu_container_utilization_ratio{{gpu_instance_id=\"\"}}[{window}])\n"
                f"  ) < {ratio}\n)\n* on ({holder_key}) group_left (workload_kind, workload)\n"
                f"  max by ({holder_key}, workload_kind, workload) (\n"
                f"    nvidia_gpu_allocation_info{{{kind_matcher}}}\n  )")

    usage_desc = ("Container {{ $labels.namespace }}/{{ $labels.pod }}/{{ $labels.container }} "
                  "({{ $labels.workload_kind }} {{ $labels.workload }}) holds GPU {{ $labels.gpu }} "
                  "({{ $labels.uuid }}) on node {{ $labels.node }}")

    def idle_cases(kind: str, workload: str, busy_kind: str, window: str) -> tuple[Case, ...]:
        """An exclusive holder idle after busy; idle holders of a time-sliced and of an MPS-shared GPU
        beside a busy one (the agent exports utilisation 0 for a holder without a process once it
        has read the device's process list; a holder with no usage series is unknown, not idle)."""
        def holder(i: int, pod: str, *, on: str = kind, **kw: str) -> str:
            return alloc(i, "lab", pod, container="jupyter", kind=on, workload=workload, **kw)

        def used(i: int, pod: str) -> str:
            return _m("nvidia_gpu_container_utilization_ratio", container(i, "lab", pod, "jupyter"))

        def labels(i: int, pod: str) -> dict[str, str]:
            return {"node": NODE, "namespace": "lab", "pod": pod, "container": "jupyter", "gpu": str(i),
                    "uuid": f"GPU-{i}", "workload_kind": kind, "workload": workload}

        sliced = {"shared": "true", "resource": "nvidia.com/gpu.shared"}
        mps = {"shared": "true", "resource": "nvidia.com/gpu"}
        return (
            Case({holder(0, "nb-0"): "1x400", holder(1, "nb-1", on=busy_kind): "1x400",
                  used(0, "nb-0"): "0.6x10 0x100 stale 0x289", used(1, "nb-1"): "0.6x10 0x390"},
                 11 + _minutes(window), labels(0, "nb-0"),
                 name="idle after busy, a failed scrape in between does not restart the for:; "
                      "the other tier's holder is silent"),
            Case({holder(2, "nb-a", **sliced): "1x400", holder(2, "nb-b", **sliced): "1x400",
                  holder(2, "nb-c", **sliced): "1x400", used(2, "nb-a"): "0x400", used(2, "nb-b"): "0.6x400"},
                 0, labels(2, "nb-a"),
                 name="an idle holder of a time-sliced GPU beside a busy one; a holder without usage is unknown"),
            Case({holder(3, "nb-a", **mps): "1x400", holder(3, "nb-b", **mps): "1x400",
                  used(3, "nb-a"): "0x400", used(3, "nb-b"): "0.3x400"},
                 0, labels(3, "nb-a"), name="an idle holder of an MPS-shared GPU beside a busy one"),
        )

    f_int = _minutes(p.idle_interactive_for)
    w_int = _minutes(p.idle_interactive_window)
    add(name="GpuAllocatedIdle", severity="info", group="gpu-usage", for_=p.idle_interactive_for,
        summary="An interactive or serving pod holds a GPU it has not used for hours.",
        description=usage_desc + " and has not used it for " + p.idle_interactive_window + " and more.",
        expr=idle(f'workload_kind!~"{p.batch_kinds}"', p.idle_ratio, p.idle_interactive_window),
        threshold=f"peak utilisation < {p.idle_ratio} over {p.idle_interactive_window}, for "
                  f"{p.idle_interactive_for} (idle {_human(w_int + f_int)} in all)",
        why="A notebook or dev pod that sits on a GPU costs as much as a busy one. Judged on the "
            "container's own utilisation, per holder: on a shared GPU (time-slicing, MPS, a shared DRA "
            "claim) a holder with no process gets utilisation 0 from the agent, and a busy neighbour "
            "does not hide it; a holder whose usage is unknown (the process list could not be read) has "
            "no series and is not judged. MIG instances report no utilisation and are not judged. The "
            "peak over a window is robust to missed scrapes. Info: a cost signal for the namespace "
            "owner, not a page.",
        runbook=Runbook(
            "A non-batch workload (Deployment, StatefulSet, bare pod, or unknown) has held a GPU with "
            "practically no utilisation for hours.",
            "The GPU is unavailable to others while it does nothing.",
            "`nvidia_gpu_container_utilization_ratio{namespace=\"<ns>\", pod=\"<pod>\"}` over a day; "
            "`namespace:nvidia_gpu_allocated_devices:sum`.",
            "Ask the owner to scale it down or release the GPU; consider an idle-culling policy for "
            "notebooks. Tune `idle_interactive_for` for your habits."),
        cases=idle_cases("Deployment", "notebook", "Job", p.idle_interactive_window))

    add(name="GpuBatchJobStuck", severity="warning", group="gpu-usage", for_=p.idle_batch_for,
        summary="A batch Job holds a GPU at zero utilisation.",
        description=usage_desc + " and has computed nothing on it for " + p.idle_batch_window
                    + ": the job is probably stuck.",
        expr=idle(f'workload_kind=~"{p.batch_kinds}"', p.idle_batch_ratio, p.idle_batch_window),
        threshold=f"peak utilisation < {p.idle_batch_ratio} over {p.idle_batch_window}, for {p.idle_batch_for}",
        why="A Job exists to compute: one at zero for an hour is usually hung (a dead NCCL peer, a "
            "deadlock, waiting on storage) and burns GPU-hours.",
        runbook=Runbook(
            "A Job's (or CronJob's) container has held a GPU at practically zero utilisation.",
            "The job makes no progress; the GPU is wasted; a distributed job may wait on this rank.",
            "`kubectl logs -n <ns> <pod>`; `py-spy dump` in the container; the other ranks' utilisation "
            "(`namespace_workload:nvidia_gpu_container_utilization_ratio:sum`).",
            "Tell the owner; kill the pod if it is hung so that the job retries."),
        cases=idle_cases("Job", "train", "Deployment", p.idle_batch_window))

    container_memory = ("max by (node, namespace, pod, container, gpu, uuid, gpu_instance_id, compute_instance_id) "
                        f"({gauge('nvidia_gpu_container_memory_used_bytes', p)})")
    totals = ("max by (node, uuid, gpu_instance_id, compute_instance_id) "
              "(nvidia_gpu_memory_total_bytes or nvidia_gpu_mig_memory_total_bytes)")
    add(name="GpuContainerMemoryNearFull", severity="warning", group="gpu-usage", for_=p.memory_full_for,
        summary="A container uses nearly all the memory of its GPU or MIG instance.",
        description="Container {{ $labels.namespace }}/{{ $labels.pod }}/{{ $labels.container }} uses more "
                    f"than {p.memory_full_ratio:.0%} of the memory of GPU {{{{ $labels.gpu }}}} "
                    "({{ $labels.uuid }}){{ if $labels.gpu_instance_id }}, MIG instance "
                    "{{ $labels.gpu_instance_id }}{{ end }} on node {{ $labels.node }}.",
        expr=f"{container_memory}\n  / on (node, uuid, gpu_instance_id, compute_instance_id) group_left ()\n"
             f"    {totals}\n> {p.memory_full_ratio}",
        threshold=f"container memory > {p.memory_full_ratio:.0%} of the device's (or MIG instance's) total",
        why="The next allocation fails with out-of-memory. MIG containers are compared with their instance.",
        runbook=Runbook(
            "A container's GPU memory is close to the device's (or MIG instance's) total.",
            "The next allocation fails with CUDA out-of-memory; frameworks that reserve memory upfront "
            "(JAX, TensorFlow) sit here by design.",
            "`nvidia_gpu_container_memory_used_bytes{pod=\"<pod>\"}` over time: a steady climb is a leak.",
            "Tell the owner (smaller batch, a larger MIG profile); for JAX/TF set "
            "`XLA_PYTHON_CLIENT_PREALLOCATE=false` / memory growth if this alert is noise for them."),
        cases=(Case({
            _m("nvidia_gpu_container_memory_used_bytes",
               container(2, "ml", "eval-0", "eval", gpu_instance_id="1", compute_instance_id="0")): "1e9x4 9.8e9x40",
            _m("nvidia_gpu_mig_memory_total_bytes", dev(2, gpu_instance_id="1", compute_instance_id="0")): "1e10x45",
            _m("nvidia_gpu_memory_total_bytes", dev(2)): "8e10x45",
            _m("nvidia_gpu_container_memory_used_bytes", container(0, "ml", "train-0", "main")): "7e10x45",
            _m("nvidia_gpu_memory_total_bytes", dev(0)): "8e10x45",
        }, 5, {"node": NODE, "namespace": "ml", "pod": "eval-0", "container": "eval", "gpu": "2", "uuid": "GPU-2",
               "gpu_instance_id": "1", "compute_instance_id": "0"}),))

    add(holders=True, name="GpuBusyWithoutPod", severity="warning", group="gpu-usage", for_=p.busy_unallocated_for,
        summary="A GPU is busy but no pod holds it.",
        description=G + " is busy but the kubelet has allocated it to no pod: something outside "
                        "Kubernetes uses it.",
        expr=f"max by ({by_gpu}) ({gauge('nvidia_gpu_utilization_ratio', p)}) > {p.busy_unallocated_ratio}\n"
             f"  unless on (node, uuid) nvidia_gpu_allocation_info\n"
             f"  and on (node) max by (node) (\n    max_over_time(kube_gpu_exporter_collector_success"
             f"{{collector=\"kubelet\"}}[10m])\n  ) == 1",
        threshold=f"utilisation > {p.busy_unallocated_ratio} with no allocation, while the kubelet answered "
                  "in the last 10m",
        why="Needs the pod-resources API: without it every GPU looks unallocated, so the rule asks that the "
            "kubelet collector succeeded recently (shorter than the for:, so that a kubelet outage cannot "
            "make it fire).",
        runbook=Runbook(
            "A GPU shows utilisation but no container holds it according to the kubelet.",
            "Someone works around the scheduler (a process on the host, a privileged pod that sees all "
            "GPUs); pods later given this GPU share it unknowingly.",
            "`nvidia-smi` on the node lists the processes; `ps -o pid,cgroup -p <pid>`; pods with "
            "`NVIDIA_VISIBLE_DEVICES=all` or `privileged: true`.",
            "Find and stop the process or fix the pod spec; ensure GPU pods request `nvidia.com/gpu`."),
        cases=(Case({_m("nvidia_gpu_utilization_ratio", dev(3)): "0x4 0.8x40",
                     _m("nvidia_gpu_utilization_ratio", dev(0)): "0.8x45",
                     alloc(0, "ml", "train-0", kind="Job", workload="train"): "1x45",
                     _m("kube_gpu_exporter_collector_success", agent(collector="kubelet")): "1x45"},
                    5, gpu_labels(3)),
               Case({_m("nvidia_gpu_utilization_ratio", dev(3)): "0.8x60",
                     _m("kube_gpu_exporter_collector_success", agent(collector="kubelet")): "1x4 0x55"}, 0,
                    checks=((10, False), (20, False), (30, False)), defaults=False,
                    name="the kubelet down: allocations unknown, no alert")))

    # -- The agent ---------------------------------------------------------------------------------
    job = f'job="{p.job}"'
    agent_rb = ("`kubectl -n <agent namespace> get pods -o wide --field-selector spec.nodeName=<node>`; "
                "`kubectl logs` of that pod")
    add(name="KubeGpuExporterDown", severity="warning", group="kube-gpu-exporter", for_=p.agent_down_for,
        summary="Prometheus cannot scrape the GPU agent of a node.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot be scraped: the node's "
                    "GPUs are not monitored.",
        expr=f"max by (node) (up{{{job}}}) == 0",
        threshold="up == 0", why="A blind node: no GPU alert can fire for it (the agent's own pushes too, if "
        "it is down rather than unreachable).",
        runbook=Runbook(
            "The scrape of the agent fails.",
            "The node's GPUs are unmonitored.",
            agent_rb + "; the target's error on Prometheus' /targets page.",
            "Fix the pod (crash loop, OOM: raise its memory limit) or the network policy between "
            "Prometheus and the node."),
        cases=(Case({f"up{{{agent()}}}": "1x4 0x40",
                     f'up{{node="gpu-node-2",instance="10.0.0.2:9400",{job}}}': "1x45"}, 5, {"node": NODE}),))

    add(name="KubeGpuExporterAbsent", severity="warning", group="kube-gpu-exporter", for_=p.agent_absent_for,
        summary="Prometheus has no GPU agent to scrape at all.",
        description=f"No target of job {p.job} exists: the DaemonSet is gone or service discovery lost it.",
        expr=f"absent(up{{{job}}})",
        threshold="no up series of the job",
        why="KubeGpuExporterDown needs a target to say it is down; this catches the missing target.",
        runbook=Runbook(
            "Prometheus discovers no agent at all.",
            "No GPU of the cluster is monitored.",
            "`kubectl get ds -A | grep gpu`; the ServiceMonitor / scrape config and its selectors.",
            "Redeploy the DaemonSet; fix the discovery selectors."),
        cases=(Case({f"up{{{agent()}}}": "1x4 stale"}, 5, {"job": p.job}),))

    add(name="KubeGpuExporterMissingOnGpuNode", severity="warning", group="kube-gpu-exporter",
        for_=p.agent_absent_for,
        summary="A node with GPUs has no GPU agent scraped.",
        description="Node {{ $labels.node }} has GPUs but no kube-gpu-exporter target: its GPUs are "
                    "not monitored.",
        expr=f"max by (node) ({p.gpu_capacity}) > 0\n  unless on (node) max by (node) (up{{{job}}})",
        threshold="GPU capacity (kube-state-metrics) > 0 and no agent target on the node",
        why="A DaemonSet that misses nodes (a taint it does not tolerate, a node selector) is silent; "
            "the nodes' GPU capacity from kube-state-metrics tells which nodes should have an agent.",
        runbook=Runbook(
            "kube-state-metrics reports GPU capacity on a node where no agent is scraped.",
            "The node's GPUs are unmonitored.",
            "`kubectl describe node <node>` (taints, labels) against the DaemonSet's tolerations and "
            "nodeSelector; `kubectl get pods -o wide` of the DaemonSet.",
            "Add the toleration or label the node; check the pod's events."),
        cases=(Case({'kube_node_status_capacity{node="gpu-node-1",resource="nvidia_com_gpu",job="ksm"}': "8x45",
                     'kube_node_status_capacity{node="gpu-node-2",resource="nvidia_com_gpu",job="ksm"}': "8x45",
                     'kube_node_status_capacity{node="cpu-node-1",resource="nvidia_com_gpu",job="ksm"}': "0x45",
                     f"up{{{agent()}}}": "1x4 stale",
                     f'up{{node="gpu-node-2",instance="10.0.0.2:9400",{job}}}': "1x45"},
                    5, {"node": NODE}),))

    def agent_gauge(metric: str, value: int, extra: str = "", by: str = "node") -> str:
        return f"max by ({by}) ({gauge(metric + extra, p)}) == {value}"

    add(name="KubeGpuExporterNvmlDown", severity="critical", group="kube-gpu-exporter", for_=p.nvml_down_for,
        summary="The GPU agent cannot use NVML.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot initialise NVML: no GPU "
                    "of the node is read.",
        expr=agent_gauge("kube_gpu_exporter_nvml_up", 0),
        threshold="kube_gpu_exporter_nvml_up == 0",
        why="A node whose driver is broken reports no GPU series at all, so no GPU alert can fire.",
        runbook=Runbook(
            "`nvmlInit` fails: the driver is not loaded, mismatched with the library, or the agent "
            "lacks the device files.",
            "The node's GPUs are unmonitored; usually the GPUs are unusable too.",
            "The agent's log (the NVML error); `nvidia-smi` on the node; `dmesg | grep NVRM`.",
            "Fix the driver (reinstall, reboot); check the agent's mounts and the container runtime's "
            "NVIDIA hook."),
        cases=(_agent_case("kube_gpu_exporter_nvml_up", {}, "1x4 0x40", 5),))

    add(name="KubeGpuExporterCollectorFailing", severity="warning", group="kube-gpu-exporter",
        for_=p.collector_failing_for,
        summary="A collector of the GPU agent keeps failing.",
        description="Collector {{ $labels.collector }} of the kube-gpu-exporter agent on node "
                    "{{ $labels.node }} keeps failing.",
        expr=agent_gauge("kube_gpu_exporter_collector_success", 0, '{collector!~"nvml|kubelet|kubernetes"}',
                         "node, collector"),
        threshold="kube_gpu_exporter_collector_success == 0 (collectors other than nvml, kubelet, "
                  "kubernetes, which have alerts of their own)",
        why="procfs failures cost per-container usage on shared GPUs; new collectors are covered by default.",
        runbook=Runbook(
            "A collector failed in every recent cycle. For `procfs` (the process cgroups that place GPU "
            "processes in containers) the error kind says why: `read`: the agent cannot read "
            "`<procfs>/1/cgroup`, the host's `/proc` is not where `--path.procfs` points; `unresolved_pid`: "
            "NVML lists GPU processes whose pids the agent's procfs does not show "
            "(`kube_gpu_exporter_unresolved_gpu_processes`): the agent runs in a pid namespace of its own "
            "and the driver translates the pids into it.",
            "Per-container usage on shared GPUs (time-slicing, MPS, shared DRA claims) is missing where "
            "processes cannot be placed: those holders have no usage series (unknown, not idle: "
            "GpuAllocatedIdle and GpuBatchJobStuck do not judge them). Whole GPUs and MIG instances held "
            "by one container are not affected.",
            "`sum by (kind) (increase(kube_gpu_exporter_collector_errors_total{node=\"<node>\", "
            "collector=\"procfs\"}[1h]))`; `kube_gpu_exporter_unresolved_gpu_processes{node=\"<node>\"}`; "
            "the agent's log (one line says when it looks like a pid namespace of its own).",
            "`read`: mount the host's `/proc` read-only at `/host/proc` and pass `--path.procfs=/host/proc` "
            "(`daemonset.yaml` does both). `unresolved_pid`: apply the opt-in `hostPID` patch, "
            "weighing its security trade-off, as [deploy.md](deploy.md#shared-gpus-and-hostpid) describes; "
            "without it, per-container usage on shared GPUs stays unknown with this driver. Another "
            "collector: its error kinds and the agent's log."),
        cases=(_agent_case("kube_gpu_exporter_collector_success", {"collector": "procfs"}, "1x4 0x40", 5,
                           expect={"collector": "procfs"}),))

    add(name="KubeGpuExporterSnapshotStale", severity="warning", group="kube-gpu-exporter",
        for_=p.snapshot_stale_for,
        summary="The GPU agent serves stale GPU readings: NVML calls hang.",
        description="NVML calls of the kube-gpu-exporter agent on node {{ $labels.node }} do not return in "
                    "time; some GPU readings are old.",
        expr=agent_gauge("kube_gpu_exporter_gpu_snapshot_stale", 1),
        threshold="kube_gpu_exporter_gpu_snapshot_stale == 1",
        why="A hanging NVML call is a driver in trouble, and hides changes on the GPU it hangs on.",
        runbook=Runbook(
            "Some NVML calls did not return within `--collector.timeout`.",
            "The affected GPU shows as down after three intervals; its readings are old.",
            "`kube_gpu_exporter_gpu_snapshot_age_seconds`; `nvidia-smi` on the node (it hangs too?); "
            "`dmesg`.",
            "Usually a GPU in trouble: see GpuLost; reset the GPU or reboot the node."),
        cases=(_agent_case("kube_gpu_exporter_gpu_snapshot_stale", {}, "0x4 1x40", 5),))

    add(name="KubeGpuExporterKubeletUnreachable", severity="warning", group="kube-gpu-exporter",
        for_=p.kubelet_for,
        summary="The GPU agent cannot reach the kubelet's pod-resources API.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot list pod resources "
                    "from the kubelet: GPUs are not attributed to pods.",
        expr=agent_gauge("kube_gpu_exporter_collector_success", 0, '{collector="kubelet"}'),
        threshold='kube_gpu_exporter_collector_success{collector="kubelet"} == 0',
        why="The agent keeps the last allocations for a grace period, so a kubelet restart is quiet; "
            "longer, the allocations are dropped: device alerts keep firing as they were (their labels "
            "name the device only) but their `holders` annotation goes empty, and the usage alerts and "
            "dashboards lose their pods and workloads.",
        runbook=Runbook(
            "Calls to the kubelet's pod-resources socket fail: `List` (allocations), or only "
            "`GetAllocatableResources` (error kind `allocatable`: the allocations are kept, the allocatable "
            "counts are the last good ones).",
            "Device alerts no longer say who holds the GPU (`holders` empty); usage alerts and dashboards "
            "lose their pods and workloads. With kind `allocatable` alone, only "
            "`nvidia_gpu_allocatable_devices` is stale.",
            "`kube_gpu_exporter_collector_errors_total{collector=\"kubelet\"}` by kind; the socket mount "
            "(`/var/lib/kubelet/pod-resources`) in the agent; `systemctl status kubelet`.",
            "Fix the mount or the kubelet."),
        cases=(_agent_case("kube_gpu_exporter_collector_success", {"collector": "kubelet"}, "1x4 0x40", 5),))

    add(name="KubeGpuExporterApiServerUnreachable", severity="warning", group="kube-gpu-exporter",
        for_=p.apiserver_for,
        summary="The GPU agent lost its watch of the API server.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot watch its pods on the "
                    "API server: workloads are unknown.",
        expr=agent_gauge("kube_gpu_exporter_collector_success", 0, '{collector="kubernetes"}'),
        threshold='kube_gpu_exporter_collector_success{collector="kubernetes"} == 0',
        why="Workload labels (and per-container usage on shared GPUs) need the API server.",
        runbook=Runbook(
            "The agent's pod watch is disconnected.",
            "Workload labels go empty after the grace period; usage on shared GPUs is not split.",
            "The agent's log (401/403: RBAC; timeouts: network); "
            "`kube_gpu_exporter_collector_errors_total{collector=\"kubernetes\"}`.",
            "Fix RBAC (`get/list/watch pods`, owners) or the network path to the API server."),
        cases=(_agent_case("kube_gpu_exporter_collector_success", {"collector": "kubernetes"}, "1x4 0x40", 5),))

    add(name="KubeGpuExporterUnknownDeviceIds", severity="warning", group="kube-gpu-exporter",
        for_=p.unknown_ids_for,
        summary="The kubelet reports GPU device ids the agent cannot match.",
        description="The kubelet on node {{ $labels.node }} lists device ids that match no GPU or MIG device "
                    "the agent sees: their pods are not attributed.",
        expr='sum by (node) (\n  increase(kube_gpu_exporter_collector_errors_total{collector="kubelet", '
             'kind="unknown_device_id"}[10m])\n) > 0',
        threshold="any unknown device id in 10m",
        why="A device plugin naming scheme the agent does not know, or a GPU the driver lost while the "
            "plugin still allocates it.",
        runbook=Runbook(
            "Device ids in the kubelet's answer match no GPU or MIG instance NVML reports.",
            "The pods holding those devices are missing from `nvidia_gpu_allocation_info`.",
            "The agent's log names the id; compare with `nvidia-smi -L` on the node.",
            "A lost GPU: see GpuMissingFromNode. An unknown id form: report it with the id."),
        cases=(_agent_case("kube_gpu_exporter_collector_errors_total",
                           {"collector": "kubelet", "kind": "unknown_device_id"}, "0x4 1+1x40", 5),))

    add(name="KubeGpuExporterAlertmanagerNotificationsFailing", severity="warning", group="kube-gpu-exporter",
        for_=p.notifications_for,
        summary="The GPU agent fails to push alerts to Alertmanager.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} fails to deliver or drops "
                    "alerts for Alertmanager {{ $labels.alertmanager }}.",
        expr='sum by (node, alertmanager) (\n  increase(kube_gpu_exporter_alertmanager_notifications_total'
             '{result=~"failed|dropped"}[10m])\n) > 0',
        threshold="any failed or dropped notification in 10m",
        why="The push path is the fast path for critical GPU events; Prometheus' rules still cover it.",
        runbook=Runbook(
            "POSTs to Alertmanager's /api/v2/alerts fail, or the agent's queue overflowed.",
            "Critical GPU events reach Alertmanager only through Prometheus' rules (slower).",
            "The agent's log (the HTTP status or error); `kube_gpu_exporter_alertmanager_queue_length`.",
            "Fix the URL, credentials (files) or CA; check network policies towards Alertmanager."),
        cases=(_agent_case("kube_gpu_exporter_alertmanager_notifications_total",
                           {"alertmanager": "http://am:9093", "result": "failed"}, "0x4 1+1x40", 5,
                           expect={"alertmanager": "http://am:9093"}),))
    return a


def _agent_case(metric: str, labels: Mapping[str, str], faulty: str, active_from: int,
                expect: Mapping[str, str] | None = None) -> Case:
    """The agent of gpu-node-1 turns faulty; gpu-node-2's stays healthy (its first value)."""
    extra = dict(labels)
    healthy = faulty.split()[0].split("x")[0].split("+")[0]
    expected = {"node": NODE, **(expect or {})}
    return Case({_m(metric, agent(**extra)): faulty,
                 f'{metric}{{node="gpu-node-2",instance="10.0.0.2:9400",job="kube-gpu-exporter"'
                 + "".join(f',{k}="{v}"' for k, v in extra.items()) + f"}}": f"{healthy}x45"},
                active_from, expected)


def _minutes(duration: str) -> int:
    units = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}
    value = int(duration[:-1]) * units[duration[-1]]
    return int(value)


def _human(minutes: int) -> str:
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"
