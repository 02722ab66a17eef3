"""The recording rules: per-namespace and per-workload usage, per-node GPU counts and health.

Named after kubernetes-mixin's ``level:metric:operations``; the dashboards read them
(dashboards/generate.py) and GpuMissingFromNode reads ``node:nvidia_gpu_gpus:count``, so their
names stay stable. ``RECORDING_DOCS`` is their line in docs/alerts.md.

What they cost a Prometheus is what they select, per node (docs/scaling.md): so the allocations
(``nvidia_gpu_allocation_info``, a series per holder and device with a dozen labels and more) are
read once per evaluation, into a slim share per holder that the others read; the per-namespace
rules sum the per-workload ones (a few series per workload of the fleet, not per node); and a
GPU's recent ECC and XID events are the firing alerts on it, not its counters read again.
"""

from __future__ import annotations

from typing import Mapping

from alerts.params import Params
from alerts.promql import one_of
from exporter.push import definitions

#: The labels of one allocatable device: a GPU, or one MIG instance of it.
_DEVICE = "node, uuid, gpu_instance_id, compute_instance_id"
#: The labels of one container on one device.
_CONTAINER_ON_DEVICE = "node, namespace, pod, container, uuid, gpu_instance_id, compute_instance_id"
#: Who holds a device: the container and its workload.
_HOLDING = f"{_CONTAINER_ON_DEVICE}, workload_kind, workload"
#: Each container's share of each device it holds (1/n of a device n containers share): the
#: allocations, read once per evaluation, with only the labels the other rules need.
SHARE = "node_device_holder:nvidia_gpu_allocated_devices:share"
_WORKLOAD = "namespace, workload_kind, workload"
#: The GPUs in use, 1 each (present only for those): read by the two counts below.
IN_USE = "node_uuid:nvidia_gpu_in_use:count"


def _per_workload(metric: str) -> str:
    """``metric`` of each container summed per workload (its labels from the holders' shares)."""
    return (f"sum by ({_WORKLOAD}) (\n  {metric}\n"
            f"  * on ({_CONTAINER_ON_DEVICE}) group_left (workload_kind, workload)\n"
            f"    ({SHARE} > bool 0)\n)")


def _per_namespace(per_workload: str) -> str:
    return f"sum by (namespace) ({per_workload})"


def xid_recurring_counters() -> str:
    """The XID counters of the codes GpuXidRecurring judges."""
    return f'nvidia_gpu_xid_errors_total{{xid=~"{one_of(definitions.XID_REPLACE_IF_RECURRING)}"}}'


def xid_recent(p: Params) -> str:
    """The recording of the codes GpuXidRecurring judges, per GPU and code, that had an event in
    the event window: a series only while one did, so that a day of it costs what the events
    cost, not what the fleet's GPUs cost."""
    return f"node_gpu_xid:nvidia_gpu_xid_errors:increase{p.event_window}"


#: The alerts of a GPU's events (an uncorrectable ECC error, a reset- or reboot-tier XID): while one
#: fires, the GPU counts as unhealthy.
EVENT_ALERTS = (definitions.ECC_UNCORRECTABLE.name, definitions.XID_RESET_REQUIRED.name,
                definitions.XID_REBOOT_REQUIRED.name)


def recording_rules(p: Params) -> list[tuple[str, str]]:
    """(record, expr), in evaluation order (later rules read earlier ones, in the same evaluation)."""
    in_use = (f"max by (node, uuid) (nvidia_gpu_utilization_ratio) > {p.in_use_ratio}\n"
              "or (max by (node, uuid) (nvidia_gpu_processes) > 0\n"
              "    unless on (node, uuid) nvidia_gpu_utilization_ratio)")
    events = f'ALERTS{{alertstate="firing", alertname=~"{"|".join(EVENT_ALERTS)}"}}'
    unhealthy = "\n    or ".join([
        "max by (node, uuid) (nvidia_gpu_remapped_rows_failure) == 1",
        "max by (node, uuid) (nvidia_gpu_remapped_rows_pending) == 1",
        "max by (node, uuid) (nvidia_gpu_retired_pages_pending) == 1",
        f"max by (node, uuid) ({events})",
    ])
    recurring = xid_recurring_counters()
    per_workload = {
        "allocated_devices": "namespace_workload:nvidia_gpu_allocated_devices:sum",
        "utilization": "namespace_workload:nvidia_gpu_container_utilization_ratio:sum",
        "memory": "namespace_workload:nvidia_gpu_container_memory_used_bytes:sum",
        "power": "namespace_workload:nvidia_gpu_power_watts:sum",
    }
    return [
        (SHARE, f"max by ({_HOLDING}) (nvidia_gpu_allocation_info)\n  / on ({_DEVICE}) group_left ()\n"
                f"    count by ({_DEVICE}) (nvidia_gpu_allocation_info)"),
        (per_workload["allocated_devices"], f"sum by ({_WORKLOAD}) ({SHARE})"),
        ("namespace:nvidia_gpu_allocated_devices:sum", _per_namespace(per_workload["allocated_devices"])),
        (per_workload["utilization"], _per_workload("nvidia_gpu_container_utilization_ratio")),
        ("namespace:nvidia_gpu_container_utilization_ratio:sum", _per_namespace(per_workload["utilization"])),
        (per_workload["memory"], _per_workload("nvidia_gpu_container_memory_used_bytes")),
        ("namespace:nvidia_gpu_container_memory_used_bytes:sum", _per_namespace(per_workload["memory"])),
        # Each board's power split evenly between the containers holding it or its MIG instances.
        (per_workload["power"],
         f"sum by ({_WORKLOAD}) (\n  max by (node, uuid) (nvidia_gpu_power_watts)\n"
         f"  * on (node, uuid) group_right ()\n"
         f"    (\n      count by (node, uuid, {_WORKLOAD}) ({SHARE})\n"
         f"      / on (node, uuid) group_left ()\n        count by (node, uuid) ({SHARE})\n    )\n)"),
        ("namespace:nvidia_gpu_power_watts:sum", _per_namespace(per_workload["power"])),
        ("node:nvidia_gpu_gpus:count", "count by (node) (max by (node, uuid) (nvidia_gpu_info))"),
        ("node:nvidia_gpu_gpus_allocated:count", f"count by (node) (max by (node, uuid) ({SHARE}))"),
        (IN_USE, f"count by (node, uuid) (\n  {in_use}\n)"),
        ("node:nvidia_gpu_gpus_in_use:count", f"count by (node) ({IN_USE})"),
        ("node:nvidia_gpu_gpus_idle_allocated:count",
         f"count by (node) (\n  max by (node, uuid) ({SHARE})\n  unless on (node, uuid) {IN_USE}\n)"),
        ("node_gpu:nvidia_gpu_healthy:bool",
         f"max by (node, gpu, uuid) (nvidia_gpu_up)\n  unless on (node, uuid) (\n    {unhealthy}\n  )\n"
         "or on (node, gpu, uuid) max by (node, gpu, uuid) (nvidia_gpu_up) * 0"),
        ("node:nvidia_gpu_gpus_healthy:sum", "sum by (node) (node_gpu:nvidia_gpu_healthy:bool)"),
        (xid_recent(p), f"max by (node, gpu, uuid, xid) (increase({recurring}[{p.event_window}])) > 0"),
    ]


RECORDING_DOCS: Mapping[str, str] = {
    SHARE: "Per container and device it holds (with its workload): its share of the device, 1/n of a device n "
           "containers share. The allocations read once; the rules below read this.",
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
    IN_USE: "Per GPU in use, 1 (absent when not in use): busy above `in_use_ratio`, or running processes where "
            "NVML has no utilisation (MIG).",
    "node:nvidia_gpu_gpus_in_use:count":
        "GPUs busy above `in_use_ratio`, or (MIG GPUs, which report no utilisation) running processes.",
    "node:nvidia_gpu_gpus_idle_allocated:count": "GPUs held by a pod but not in use.",
    "node_gpu:nvidia_gpu_healthy:bool":
        "Per GPU: 1 healthy, 0 when it is down, has a failed or pending row remap or a pending page "
        "retirement, or while one of " + ", ".join(EVENT_ALERTS) + " fires on it (an uncorrectable ECC error "
        "or a reset/reboot-tier XID in the event window).",
    "node:nvidia_gpu_gpus_healthy:sum": "Healthy GPUs per node; compare with `node:nvidia_gpu_gpus:count`.",
    xid_recent(Params()):
        "Per GPU and code of `XID_REPLACE_IF_RECURRING`, the events in the event window; present only then. "
        "GpuXidRecurring reads a day of it, which costs what the events cost.",
}
