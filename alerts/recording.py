"""The recording rules: per-namespace and per-workload usage, per-node GPU counts and health.

Named after kubernetes-mixin's ``level:metric:operations``; the dashboards read them
(dashboards/generate.py) and GpuMissingFromNode reads ``node:nvidia_gpu_gpus:count``, so their
names stay stable. ``RECORDING_DOCS`` is their line in docs/alerts.md.
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


def _per_workload(metric: str) -> str:
    """``metric`` of each container summed per workload (its labels from nvidia_gpu_allocation_info)."""
    return (f"sum by (namespace, workload_kind, workload) (\n  {metric}\n"
            f"  * on ({_CONTAINER_ON_DEVICE}) group_left (workload_kind, workload)\n"
            f"    max by ({_CONTAINER_ON_DEVICE}, workload_kind, workload) (nvidia_gpu_allocation_info)\n)")


def _power_split(by: str) -> str:
    """Each board's power split evenly between the containers holding it or its MIG instances."""
    return (f"sum by ({by}) (\n  max by (node, uuid) (nvidia_gpu_power_watts)\n"
            f"  * on (node, uuid) group_right ()\n"
            f"    (\n      count by (node, uuid, {by}) (nvidia_gpu_allocation_info)\n"
            f"      / on (node, uuid) group_left ()\n        count by (node, uuid) (nvidia_gpu_allocation_info)\n"
            f"    )\n)")


def xid_recent(p: Params) -> str:
    """The recording of the codes GpuXidRecurring judges, per GPU and code, that had an event in
    the event window: a series only while one did, so that a day of it costs what the events
    cost, not what the fleet's GPUs cost."""
    return f"node_gpu_xid:nvidia_gpu_xid_errors:increase{p.event_window}"


def grew_since(counter: str, window: str) -> str:
    """The counter is higher than ``window`` ago, or its series is newer and above 0: two instant
    lookups instead of every sample of the window (``increase()``); a counter reset within the
    window (an agent restart) hides the events before it."""
    return f"({counter} > {counter} offset {window} or {counter} > 0 unless {counter} offset {window})"


def recording_rules(p: Params) -> list[tuple[str, str]]:
    """(record, expr), in evaluation order (later rules read earlier ones)."""
    # Each allocation as its share of the device: 1/n of a device that n containers share.
    devices = (f"nvidia_gpu_allocation_info\n  / on ({_DEVICE}) group_left ()\n"
               f"    count by ({_DEVICE}) (nvidia_gpu_allocation_info)")
    in_use = (f"max by (node, uuid) (nvidia_gpu_utilization_ratio) > {p.in_use_ratio}\n"
              "or (max by (node, uuid) (nvidia_gpu_processes) > 0\n"
              "    unless on (node, uuid) nvidia_gpu_utilization_ratio)")
    unhealthy = " or ".join([
        "max by (node, gpu, uuid) (nvidia_gpu_up) == 0",
        "max by (node, gpu, uuid) (nvidia_gpu_remapped_rows_failure) == 1",
        "max by (node, gpu, uuid) (nvidia_gpu_remapped_rows_pending) == 1",
        "max by (node, gpu, uuid) (nvidia_gpu_retired_pages_pending) == 1",
        "max by (node, gpu, uuid) " + grew_since('nvidia_gpu_ecc_errors_total{type="uncorrected"}', "1h"),
        "max by (node, gpu, uuid) " + grew_since('nvidia_gpu_xid_events_total{tier=~"reset|reboot"}', "1h"),
    ])
    recurring = f'nvidia_gpu_xid_errors_total{{xid=~"{one_of(definitions.XID_REPLACE_IF_RECURRING)}"}}'

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
        (xid_recent(p), f"max by (node, gpu, uuid, xid) (increase({recurring}[{p.event_window}])) > 0"),
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
    xid_recent(Params()):
        "Per GPU and code of `XID_REPLACE_IF_RECURRING`, the events in the event window; present only then. "
        "GpuXidRecurring reads a day of it, which costs what the events cost.",
}
