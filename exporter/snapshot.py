"""The data model that flows through a collection cycle.

source (NVML or simulated) -> ``Gpu`` readings -> ``GpuSnapshot``; kubelet -> ``PodResources``;
API server -> ``PodMeta``; procfs -> ``ContainerRef`` per pid. Attribution joins them, the
renderer turns the result into bytes. Everything here is immutable: a snapshot handed to the
renderer is never changed behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .catalog import MetricSpec


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a metric of the catalog; ``labels`` are values for ``metric.labels``, in order."""

    metric: MetricSpec
    value: float
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process on a GPU or MIG instance, as NVML reports it."""

    pid: int
    used_memory_bytes: int | None = None
    # SM utilisation of this process over the last cycle (0..1); None when NVML has no sample.
    utilization_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class MigDevice:
    """A MIG instance (GPU instance + compute instance) of a parent GPU."""

    uuid: str  # MIG-...
    gpu_instance_id: int
    compute_instance_id: int
    profile: str  # e.g. "1g.10gb"
    # Its readings; those of its GPU instance as a whole (profiling) only on the GPU instance's
    # first compute instance, rendered without compute_instance_id.
    samples: tuple[Sample, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    # The instance's process list was read this cycle: an empty ``processes`` means nothing runs.
    processes_read: bool = False


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """What names a GPU: read first, before any reading, and kept while the GPU is down, so that
    a GPU lost at its first read still has its uuid (for its XIDs, its holders, its alerts)."""

    index: int
    uuid: str
    minor_number: int | None = None
    info: Mapping[str, str] = field(default_factory=dict)  # values for catalog.GPU_INFO labels


@dataclass(frozen=True, slots=True)
class Gpu:
    """Everything read from one physical GPU in one cycle.

    ``up`` is False when the GPU (or a required read on it) failed; ``samples`` then holds only
    what could still be read (often nothing) and ``error`` says why.
    """

    index: int
    uuid: str
    up: bool = True
    # /dev/nvidia<minor>: what GKE's device plugin calls "nvidia<minor>"; may differ from index.
    minor_number: int | None = None
    info: Mapping[str, str] = field(default_factory=dict)  # values for catalog.GPU_INFO labels
    samples: tuple[Sample, ...] = ()
    mig_devices: tuple[MigDevice, ...] = ()
    processes: tuple[GpuProcess, ...] = ()  # processes on the full GPU (not inside a MIG instance)
    # The GPU's process list was read this cycle: an empty ``processes`` means nothing runs on it.
    processes_read: bool = False
    error: str | None = None
    # Why it is down, as counted in kube_gpu_exporter_collector_errors_total{collector="nvml",kind}:
    # "gpu_is_lost" (NVML says so: GpuLost is pushed at once), "timeout" (a read hangs), "init" or
    # "restart" (NVML as a whole is down), ...; None while up.
    error_kind: str | None = None
    # NVML seconds this reading took by query group (nvml/cost.py); empty for simulated GPUs
    nvml_seconds: Mapping[str, float] = field(default_factory=dict)


    @property
    def identity(self) -> GpuIdentity:
        return GpuIdentity(self.index, self.uuid, self.minor_number, self.info)


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    gpus: tuple[Gpu, ...]
    taken: float  # time.monotonic() when the oldest reading in it was taken
    stale: bool = False  # some readings come from an earlier cycle (a call hung)
    # XID events since the agent started by (GPU uuid, XID code); kept apart from the GPUs'
    # readings because they must stay visible while a GPU is down.
    xids: Mapping[tuple[str, int], int] = field(default_factory=dict)
    # Unix time at which each (GPU uuid, XID code) count last grew, as seen by the agent: alerts and
    # the status page treat an XID as an event for a window after it.
    xid_last_event: Mapping[tuple[str, int], float] = field(default_factory=dict)
    # False while NVML as a whole is down (not started, restarting, its device count hangs): then
    # every GPU reads as down, and that is no GPU's fault (KubeGpuExporterNvmlDown, not GpuLost).
    nvml_up: bool = True


# -- Kubernetes side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerDevices:
    """Devices of one resource name allocated to one container (a row of the kubelet's List)."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClaimDevice:
    """One device of a DRA ResourceClaim allocated to one container (``dynamic_resources`` of the
    kubelet's List). ``(driver, pool, device)`` names it in the driver's ResourceSlices."""

    namespace: str
    pod: str
    container: str
    claim_namespace: str
    claim_name: str
    driver: str
    pool: str
    device: str
    cdi_devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PodResources:
    """The kubelet's answer for this node."""

    containers: tuple[ContainerDevices, ...]
    # resource name -> device ids the kubelet can allocate (GetAllocatableResources)
    allocatable: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # DRA devices of the wanted drivers, one row per (container, claim, device)
    claim_devices: tuple[ClaimDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishedDevices:
    """The DRA devices this node's drivers publish in ResourceSlices: ``(driver, pool, device)``
    -> the device's ``uuid`` attribute (``""`` when it has none, e.g. a MIG instance not created
    yet). ``pools`` are the ``(driver, pool)`` pairs seen, complete or not: a device missing from
    a known pool matches nothing."""

    uuids: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    pools: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class PodMeta:
    """What the API server tells about a pod on this node."""

    namespace: str
    name: str
    uid: str
    workload_kind: str  # Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, Pod, ...
    workload: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # container id without the runtime prefix ("containerd://") -> container name
    container_ids: Mapping[str, str] = field(default_factory=dict)
    phase: str = ""  # Pending, Running, Succeeded, Failed; "" when unknown

    @property
    def finished(self) -> bool:
        """A pod whose containers all ended: the kubelet may still list it, but it holds nothing."""
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """Which container a process belongs to, read from its cgroup path."""

    pod_uid: str
    container_id: str
