"""Which container holds each device, and how much of it each container uses.

Inputs, all read earlier in the cycle: the GPU snapshot, the kubelet's ``PodResources``, pod
metadata from the API server (may be empty), and what procfs says about each GPU process
(``cgroups.ProcessOwners``). Output: an ``Attribution`` the renderer reads. Pure functions, no I/O.

Device ids come in the forms the device plugins emit:

===============================  ==========================================
``GPU-<uuid>``                   a whole GPU
``MIG-<uuid>``                   a MIG instance
``MIG-GPU-<uuid>/<gi>/<ci>``     a MIG instance, drivers before R470
``<any of these>::<n>``          replica n of a time-sliced or MPS device
``0``                            GPU by NVML index (``deviceIDStrategy=index``)
``nvidia0``, ``nvidia0/vgpu3``   GPU by /dev/nvidia minor number (GKE; vgpu = shared)
===============================  ==========================================

Devices of DRA ResourceClaims are named ``(driver, pool, device)`` instead; the driver publishes
each one in a ResourceSlice with its ``uuid`` attribute (NVIDIA's driver: ``gpu-<minor>`` for a
GPU, ``gpu-<minor>-mig-<profile id>-<start>-<size>`` for a MIG instance), see
:func:`resolve_claim_device`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Mapping

from . import catalog
from .model.gpu import GpuProcess, GpuSnapshot
from .model.kube import ClaimDevice, ContainerRef, PodMeta, PodResources, ProcessOwners, SliceDevices
from .model.vocabulary import NVIDIA_DRA_DRIVER

_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)$")
_INDEX = re.compile(r"^\d+$")
_MINOR = re.compile(r"^nvidia(\d+)(?:/vgpu\d+)?$")
_NVIDIA_DRA_GPU = re.compile(r"^gpu-(\d+)$")  # k8s-dra-driver-gpu's name of a whole GPU: gpu-<minor>
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True, slots=True)
class Holder:
    """A container that holds a device, through a device plugin (``resource``) or a DRA claim
    (``resource`` is then the driver name, and the claim fields are set)."""

    namespace: str
    pod: str
    container: str
    resource: str
    shared: bool
    workload_kind: str
    workload: str
    pod_labels: tuple[tuple[str, str], ...] = ()  # (sanitised label name, value)
    pod_uid: str = ""  # from the API server; "" without it (the dcgm-exporter compatible output's pod_uid)
    claim_namespace: str = ""
    claim_name: str = ""
    driver: str = ""
    pool: str = ""
    device: str = ""


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
    # DRA claim devices no ResourceSlice (nor the local fallback) could name this cycle
    unresolved: tuple[ClaimDevice, ...] = ()


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


ClaimResolution = Literal["resolved", "unknown", "unresolved"]


def resolve_claim_device(
    device: ClaimDevice, ids: _Ids, slices: SliceDevices | None
) -> tuple[str | None, ClaimResolution]:
    """The uuid of the GPU or MIG instance a DRA claim device is, and how sure that is.

    * ``resolved``: a ResourceSlice names its uuid, and that device is on this node; or, with no
      slice of its pool known, NVIDIA's name ``gpu-<minor>`` names a GPU by minor number (the
      one thing knowable without the API server: the CDI device names embed the same name).
    * ``unknown``: it matches nothing, like an unknown device plugin id: its slice names a uuid
      that is not on this node, or its pool is published but lists no such device.
    * ``unresolved``: nothing here can tell which device it is (no slice of its pool, a device
      without a ``uuid`` attribute, a MIG instance without the API server).
    """
    if slices is not None:
        key = (device.driver, device.pool, device.device)
        uuid = slices.uuids.get(key)
        if uuid:
            found = ids.by_key.get(("uuid", uuid))
            return (found, "resolved") if found else (None, "unknown")
        if uuid is None and (device.driver, device.pool) in slices.pools:
            return None, "unknown"
    if device.driver == NVIDIA_DRA_DRIVER and (minor := _NVIDIA_DRA_GPU.match(device.device)) is not None:
        found = ids.by_key.get(("minor", int(minor[1])))
        return (found, "resolved") if found else (None, "unknown")
    return None, "unresolved"


def sanitize_label_name(name: str) -> str:
    """``app.kubernetes.io/name`` -> ``label_app_kubernetes_io_name`` (kube-state-metrics style)."""
    return "label_" + _LABEL_CHARS.sub("_", name)


def attribute(
    snapshot: GpuSnapshot,
    resources: PodResources | None,
    pods: Mapping[str, PodMeta],
    owners: ProcessOwners,
    pod_labels: Iterable[str] = (),
    slices: SliceDevices | None = None,
) -> Attribution:
    """Join devices, allocations (device plugin ids and DRA claim devices, the latter named
    through ``slices``), pod metadata and process owners."""
    if resources is None and not owners.containers:
        return Attribution()
    ids = _Ids.of(snapshot)
    pods_by_name = {(p.namespace, p.name): p for p in pods.values()}
    wanted_labels = tuple(pod_labels)

    def holder(namespace: str, pod: str, container: str, resource: str, **claim: str) -> Holder | None:
        """The holder, or None for a finished pod (some kubelets keep listing completed pods
        with their devices)."""
        meta = pods_by_name.get((namespace, pod))
        if meta is not None and meta.finished:
            return None
        return Holder(
            namespace=namespace, pod=pod, container=container, resource=resource, shared=False,
            workload_kind=meta.workload_kind if meta else "",
            workload=meta.workload if meta else "",
            pod_uid=meta.uid if meta else "",
            pod_labels=tuple(
                (sanitize_label_name(k), meta.labels.get(k, "") if meta else "") for k in wanted_labels
            ),
            **claim,
        )

    holders: dict[str, list[Holder]] = defaultdict(list)
    allocated: dict[str, set[str]] = defaultdict(set)
    unknown: list[str] = []
    unresolved: list[ClaimDevice] = []
    replicated: set[str] = set()
    for row in resources.containers if resources else ():
        if (h := holder(row.namespace, row.pod, row.container, row.resource)) is None:
            continue
        for device_id in row.device_ids:
            allocated[row.resource].add(device_id)
            resolved = resolve(device_id, ids)
            if resolved is None:
                unknown.append(device_id)
                continue
            uuid, is_replica = resolved
            if is_replica:
                replicated.add(uuid)
            if h not in holders[uuid]:  # two replicas of one GPU in one container count once
                holders[uuid].append(h)
    for dev in resources.claim_devices if resources else ():
        h = holder(dev.namespace, dev.pod, dev.container, dev.driver, claim_namespace=dev.claim_namespace,
                   claim_name=dev.claim_name, driver=dev.driver, pool=dev.pool, device=dev.device)
        if h is None:
            continue
        allocated[dev.driver].add(f"{dev.pool}/{dev.device}")
        uuid, resolution = resolve_claim_device(dev, ids, slices)
        if resolution == "unresolved":
            unresolved.append(dev)
        elif uuid is None:
            unknown.append(f"{dev.driver}/{dev.pool}/{dev.device}")
        elif h not in holders[uuid]:
            holders[uuid].append(h)

    final: dict[str, tuple[Holder, ...]] = {}
    for uuid, found in holders.items():
        shared = uuid in replicated or len({(h.namespace, h.pod, h.container) for h in found}) > 1
        final[uuid] = tuple(replace(h, shared=shared) for h in found)

    return Attribution(
        holders=final,
        usage=_usage(snapshot, final, pods, owners),
        allocatable=_allocatable(resources, slices, ids),
        allocated={name: len(devices) for name, devices in allocated.items()},
        unknown_ids=tuple(unknown),
        unresolved=tuple(unresolved),
    )


def _allocatable(resources: PodResources | None, slices: SliceDevices | None, ids: _Ids) -> dict[str, int]:
    """Devices per resource name the kubelet can allocate, and per DRA driver the published
    devices that are on this node (the driver publishes a MIG-enabled GPU's instances, not the GPU)."""
    allocatable = {name: len(devices) for name, devices in (resources.allocatable if resources else {}).items()}
    for (driver, _, _), uuid in (slices.uuids.items() if slices else ()):
        if uuid and ("uuid", uuid) in ids.by_key:
            allocatable[driver] = allocatable.get(driver, 0) + 1
    return allocatable


def _usage(
    snapshot: GpuSnapshot,
    holders: Mapping[str, tuple[Holder, ...]],
    pods: Mapping[str, PodMeta],
    owners: ProcessOwners,
) -> dict[str, tuple[ContainerUsage, ...]]:
    """Usage per (device, container), for every held device.

    A device held by one container alone (an exclusive GPU, a MIG instance) is used by that
    container: its usage is the device's own reading, no process accounting needed. A shared
    device is split by process: each process is placed by its cgroup (pod uid and container id,
    named through the API server's pod metadata) and its memory and SM share summed per container.
    A holder of a shared device without a process uses none of it (0) only when that is known:
    the device was read this cycle, its process list too, the lists can be trusted to name every
    process (``ProcessOwners.lists_complete``) and each process was placed. Otherwise such a
    holder has no usage: unknown is not idle.
    """
    result: dict[str, tuple[ContainerUsage, ...]] = {}
    for gpu in snapshot.gpus:
        devices = [(gpu.uuid, gpu.processes, gpu.processes_read, gpu.readings.get(catalog.MEMORY_USED),
                    gpu.readings.get(catalog.UTILIZATION))] + [
            (m.uuid, m.processes, m.processes_read, m.readings.get(catalog.MIG_MEMORY_USED), None)
            for m in gpu.mig_devices
        ]
        for uuid, processes, read, memory_used, utilization in devices:
            device_holders = holders.get(uuid, ())
            if not device_holders:
                continue
            if (sole := _sole_holder(device_holders)) is not None:
                usage = ContainerUsage(sole.namespace, sole.pod, sole.container, memory_used, utilization)
                if usage.memory_used_bytes is not None or usage.utilization_ratio is not None:
                    result[uuid] = (usage,)
            elif split := _split_by_container(processes, device_holders, pods, owners,
                                              listed=gpu.up and read and owners.lists_complete):
                result[uuid] = split
    return result


def _sole_holder(device_holders: tuple[Holder, ...]) -> Holder | None:
    """The container holding a device alone: exactly one holder, and not through a replica (a
    time-sliced GPU with one replica taken may have a second holder next cycle)."""
    return device_holders[0] if len(device_holders) == 1 and not device_holders[0].shared else None


def _split_by_container(
    processes: Iterable[GpuProcess],
    device_holders: tuple[Holder, ...],
    pods: Mapping[str, PodMeta],
    owners: ProcessOwners,
    *,
    listed: bool,
) -> tuple[ContainerUsage, ...]:
    """The processes' usage summed per container; with ``listed`` (every process of the device
    is known to be in ``processes``) and every process placed, each holder without a process
    at 0."""
    sums: dict[tuple[str, str, str], list[float | None]] = {}
    placed = True
    for process in processes:
        ref = owners.containers.get(process.pid)
        if ref is None:
            # A host process holds no device; a pid procfs does not show could be anyone's.
            placed = placed and process.pid in owners.host
            continue
        key = _container_key(ref, pods, device_holders)
        if key is None:
            placed = False  # a container no one can name: it may be one of the holders
            continue
        memory, utilization = sums.setdefault(key, [None, None])
        if process.used_memory_bytes is not None:
            memory = (memory or 0) + process.used_memory_bytes
        if process.utilization_ratio is not None:
            utilization = (utilization or 0.0) + process.utilization_ratio
        sums[key] = [memory, utilization]
    if listed and placed:
        for h in device_holders:
            sums.setdefault((h.namespace, h.pod, h.container), [0, 0.0])
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
