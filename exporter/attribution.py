"""Which container holds each device, and how much of it each container uses.

Inputs, all read earlier in the cycle: the GPU snapshot, the kubelet's ``PodResources``, pod
metadata from the API server (may be empty), and the container of each GPU process (from
cgroups). Output: an ``Attribution`` the renderer reads. Pure functions, no I/O.

Device ids come in the forms the device plugins emit:

===============================  ==========================================
``GPU-<uuid>``                   a whole GPU
``MIG-<uuid>``                   a MIG instance
``MIG-GPU-<uuid>/<gi>/<ci>``     a MIG instance, drivers before R470
``<any of these>::<n>``          replica n of a time-sliced or MPS device
``0``                            GPU by NVML index (``deviceIDStrategy=index``)
``nvidia0``, ``nvidia0/vgpu3``   GPU by /dev/nvidia minor number (GKE; vgpu = shared)
===============================  ==========================================
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import catalog
from .catalog import MetricSpec
from .snapshot import ContainerRef, GpuProcess, GpuSnapshot, PodMeta, PodResources, Sample

_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)$")
_INDEX = re.compile(r"^\d+$")
_MINOR = re.compile(r"^nvidia(\d+)(?:/vgpu\d+)?$")
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True, slots=True)
class Holder:
    """A container that holds a device."""

    namespace: str
    pod: str
    container: str
    resource: str
    shared: bool
    workload_kind: str
    workload: str
    pod_labels: tuple[tuple[str, str], ...] = ()  # (sanitised label name, value)


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    namespace: str
    pod: str
    container: str
    memory_used_bytes: float | None
    utilization_ratio: float | None


@dataclass(frozen=True, slots=True)
class Attribution:
    # device uuid (GPU-... or MIG-...) -> containers holding it
    holders: Mapping[str, tuple[Holder, ...]] = field(default_factory=dict)
    # device uuid -> per-container usage on that device
    usage: Mapping[str, tuple[ContainerUsage, ...]] = field(default_factory=dict)
    allocatable: Mapping[str, int] = field(default_factory=dict)
    allocated: Mapping[str, int] = field(default_factory=dict)
    unknown_ids: tuple[str, ...] = ()  # device ids that matched no device this cycle


@dataclass(frozen=True, slots=True)
class _Ids:
    """Lookup tables from every id form to a device uuid."""

    by_key: Mapping[tuple[str, object], str]  # (id kind, key) -> device uuid

    @classmethod
    def of(cls, snapshot: GpuSnapshot) -> "_Ids":
        by_key: dict[tuple[str, object], str] = {}
        for gpu in snapshot.gpus:
            if not gpu.uuid:
                continue
            by_key["uuid", gpu.uuid] = gpu.uuid
            by_key["index", gpu.index] = gpu.uuid
            minor = gpu.index if gpu.minor_number is None else gpu.minor_number
            by_key["minor", minor] = gpu.uuid
            for mig in gpu.mig_devices:
                by_key["uuid", mig.uuid] = mig.uuid
                by_key["legacy_mig", (gpu.uuid, mig.gpu_instance_id, mig.compute_instance_id)] = mig.uuid
        return cls(by_key)


def parse_device_id(device_id: str) -> tuple[str, object, bool] | None:
    """Split a device plugin id into (id kind, key, is shared); None for a form we do not know.

    Kinds: ``uuid`` (key: the GPU-/MIG- uuid), ``legacy_mig`` (key: parent uuid, gi, ci),
    ``index`` (NVML index), ``minor`` (/dev/nvidia minor number).
    """
    base, sep, replica = device_id.partition("::")
    shared = bool(sep)
    if shared and not replica.isdigit():
        return None
    if (legacy := _LEGACY_MIG.match(base)) is not None:
        return "legacy_mig", (legacy[1], int(legacy[2]), int(legacy[3])), shared
    if base.startswith(("GPU-", "MIG-")) and len(base) > 4:
        return "uuid", base, shared
    if _INDEX.match(base):
        return "index", int(base), shared
    if (minor := _MINOR.match(base)) is not None:
        return "minor", int(minor[1]), shared or "/vgpu" in base
    return None


def resolve(device_id: str, ids: _Ids) -> tuple[str, bool] | None:
    parsed = parse_device_id(device_id)
    if parsed is None:
        return None
    kind, key, shared = parsed
    uuid = ids.by_key.get((kind, key))
    return (uuid, shared) if uuid else None


def sanitize_label_name(name: str) -> str:
    """``app.kubernetes.io/name`` -> ``label_app_kubernetes_io_name`` (kube-state-metrics style)."""
    return "label_" + _LABEL_CHARS.sub("_", name)


def attribute(
    snapshot: GpuSnapshot,
    resources: PodResources | None,
    pods: Mapping[str, PodMeta],
    owners: Mapping[int, ContainerRef],
    pod_labels: Iterable[str] = (),
) -> Attribution:
    """Join devices, allocations, pod metadata and process owners."""
    if resources is None and not owners:
        return Attribution()
    ids = _Ids.of(snapshot)
    pods_by_name = {(p.namespace, p.name): p for p in pods.values()}
    wanted_labels = tuple(pod_labels)

    holders: dict[str, list[Holder]] = defaultdict(list)
    allocated: dict[str, set[str]] = defaultdict(set)
    unknown: list[str] = []
    replicated: set[str] = set()
    for row in resources.containers if resources else ():
        meta = pods_by_name.get((row.namespace, row.pod))
        if meta is not None and meta.finished:
            continue  # some kubelets keep listing completed pods with their devices
        for device_id in row.device_ids:
            allocated[row.resource].add(device_id)
            resolved = resolve(device_id, ids)
            if resolved is None:
                unknown.append(device_id)
                continue
            uuid, is_replica = resolved
            if is_replica:
                replicated.add(uuid)
            holder = Holder(
                namespace=row.namespace,
                pod=row.pod,
                container=row.container,
                resource=row.resource,
                shared=False,
                workload_kind=meta.workload_kind if meta else "",
                workload=meta.workload if meta else "",
                pod_labels=tuple(
                    (sanitize_label_name(k), meta.labels.get(k, "") if meta else "") for k in wanted_labels
                ),
            )
            if holder not in holders[uuid]:  # two replicas of one GPU in one container count once
                holders[uuid].append(holder)

    final: dict[str, tuple[Holder, ...]] = {}
    for uuid, found in holders.items():
        shared = uuid in replicated or len({(h.namespace, h.pod, h.container) for h in found}) > 1
        final[uuid] = tuple(
            Holder(h.namespace, h.pod, h.container, h.resource, shared, h.workload_kind, h.workload, h.pod_labels)
            for h in found
        )

    return Attribution(
        holders=final,
        usage=_usage(snapshot, final, pods, owners),
        allocatable={name: len(devices) for name, devices in (resources.allocatable if resources else {}).items()},
        allocated={name: len(devices) for name, devices in allocated.items()},
        unknown_ids=tuple(unknown),
    )


def _usage(
    snapshot: GpuSnapshot,
    holders: Mapping[str, tuple[Holder, ...]],
    pods: Mapping[str, PodMeta],
    owners: Mapping[int, ContainerRef],
) -> dict[str, tuple[ContainerUsage, ...]]:
    """Usage per (device, container), for every held device.

    A device held by one container alone (an exclusive GPU, a MIG instance) is used by that
    container: its usage is the device's own reading, no process accounting needed. A shared
    device is split by process: each process is placed by its cgroup (pod uid and container id,
    named through the API server's pod metadata) and its memory and SM share summed per container.
    """
    result: dict[str, tuple[ContainerUsage, ...]] = {}
    for gpu in snapshot.gpus:
        devices = [(gpu.uuid, gpu.samples, gpu.processes, catalog.MEMORY_USED, catalog.UTILIZATION)] + [
            (m.uuid, m.samples, m.processes, catalog.MIG_MEMORY_USED, None) for m in gpu.mig_devices
        ]
        for uuid, samples, processes, memory_metric, utilization_metric in devices:
            device_holders = holders.get(uuid, ())
            if not device_holders:
                continue
            if (sole := _sole_holder(device_holders)) is not None:
                usage = ContainerUsage(sole.namespace, sole.pod, sole.container,
                                       _reading(samples, memory_metric), _reading(samples, utilization_metric))
                if usage.memory_used_bytes is not None or usage.utilization_ratio is not None:
                    result[uuid] = (usage,)
            elif split := _split_by_container(processes, device_holders, pods, owners):
                result[uuid] = split
    return result


def _sole_holder(device_holders: tuple[Holder, ...]) -> Holder | None:
    """The container holding a device alone: exactly one holder, and not through a replica (a
    time-sliced GPU with one replica taken may have a second holder next cycle)."""
    return device_holders[0] if len(device_holders) == 1 and not device_holders[0].shared else None


def _reading(samples: Iterable[Sample], metric: MetricSpec | None) -> float | None:
    return next((s.value for s in samples if s.metric is metric and not s.labels), None)


def _split_by_container(
    processes: Iterable[GpuProcess],
    device_holders: tuple[Holder, ...],
    pods: Mapping[str, PodMeta],
    owners: Mapping[int, ContainerRef],
) -> tuple[ContainerUsage, ...]:
    sums: dict[tuple[str, str, str], list[float | None]] = {}
    for process in processes:
        ref = owners.get(process.pid)
        if ref is None:
            continue  # a host process, or one that exited
        key = _container_key(ref, pods, device_holders)
        if key is None:
            continue
        memory, utilization = sums.setdefault(key, [None, None])
        if process.used_memory_bytes is not None:
            memory = (memory or 0) + process.used_memory_bytes
        if process.utilization_ratio is not None:
            utilization = (utilization or 0.0) + process.utilization_ratio
        sums[key] = [memory, utilization]
    return tuple(
        ContainerUsage(ns, pod, container, None if mem is None else int(mem), util)
        for (ns, pod, container), (mem, util) in sorted(sums.items())
    )


def _container_key(
    ref: ContainerRef, pods: Mapping[str, PodMeta], device_holders: tuple[Holder, ...]
) -> tuple[str, str, str] | None:
    meta = pods.get(ref.pod_uid)
    if meta is not None:
        name = meta.container_ids.get(ref.container_id)
        if name is not None:
            return meta.namespace, meta.name, name
    containers = {(h.namespace, h.pod, h.container) for h in device_holders}
    if len(containers) == 1:
        return next(iter(containers))
    return None
