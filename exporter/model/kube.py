"""The Kubernetes side of a cycle: what the kubelet allocated to which container, what the API
server says about pods and DRA devices, and which container runs each GPU process (procfs).

kubelet -> ``PodResources``; API server -> ``PodMeta`` by pod uid and ``SliceDevices``;
procfs -> ``ProcessOwners``. Immutable, like the GPU side (``model/gpu.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

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
class SliceDevices:
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


@dataclass(frozen=True, slots=True)
class ProcessOwners:
    """What procfs says about the pids of the GPU processes NVML listed in one cycle.

    A pid is *placed* when procfs shows it: in a container, or on the host. The others are
    ``missing`` from procfs or their cgroup file is ``unreadable``: nothing can tell whose they
    are. ``lists_complete`` says whether NVML's process lists can be taken to name every process
    on a GPU, so that a holder without a process runs nothing (see ``Procfs.lists_complete``).
    """

    containers: Mapping[int, ContainerRef] = field(default_factory=dict)
    host: frozenset[int] = frozenset()
    missing: frozenset[int] = frozenset()
    unreadable: Mapping[int, str] = field(default_factory=dict)  # pid -> why
    lists_complete: bool = False

    def placed(self, pid: int) -> bool:
        return pid in self.containers or pid in self.host
