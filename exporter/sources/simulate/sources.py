"""The simulated node's Kubernetes side, behind the same interfaces as the real sources.

``SimulatedCluster`` is what the kubelet's pod-resources API, the API server and
``/proc/<pid>/cgroup`` would say about a scenario's pods. The agent reads pod resources from a
kubelet client, pod metadata from a pod watcher and process owners from procfs; under
``--simulate`` the adapters below serve the cluster's answers instead, so that simulated pods
flow through the real attribution code. ``--no-kubelet.enabled`` and ``--kubernetes.enabled``
choose which of them run, exactly as on a real node.

Containers holding devices through a DRA claim are listed as the kubelet lists
``dynamic_resources``; the simulated ``gpu.nvidia.com`` driver publishes one ResourceSlice per
node (pool = node name) with every GPU and MIG instance and its ``uuid``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

from ...model.kube import (
    ClaimDevice, ContainerDevices, ContainerRef, PodMeta, PodResources, ProcessOwners, SliceDevices,
)
from ...model.vocabulary import GPU_RESOURCE, NVIDIA_DRA_DRIVER
from .scenario import DeviceRef, Scenario

__all__ = ["SimulatedCluster", "SimulatedDeviceSlices", "SimulatedPodMetadata", "SimulatedPodResources",
           "process_owners"]


class SimulatedCluster:
    """The kubelet, API server and procfs view of a scenario's pods (static over time)."""

    def __init__(self, scenario: Scenario) -> None:
        self.node_name = scenario.node.name
        containers: list[ContainerDevices] = []
        claim_devices: list[ClaimDevice] = []
        owners: dict[int, ContainerRef] = {}
        meta: dict[str, PodMeta] = {}
        pool = scenario.node.name
        for pod in scenario.pods:
            for c in pod.containers:
                if c.claim:
                    claim_devices.extend(
                        ClaimDevice(pod.namespace, pod.name, c.name, pod.namespace, c.claim, NVIDIA_DRA_DRIVER, pool,
                                    d.dra_name, (f"k8s.{NVIDIA_DRA_DRIVER}/device={d.dra_name}",))
                        for d in c.devices)
                else:
                    containers.append(ContainerDevices(pod.namespace, pod.name, c.name, c.resource,
                                                       tuple(d.device_id for d in c.devices)))
                for p in c.processes:
                    owners[p.pid] = ContainerRef(pod.uid, c.container_id)
            meta[pod.uid] = PodMeta(pod.namespace, pod.name, pod.uid, pod.workload_kind, pod.workload,
                                    dict(pod.labels), {c.container_id: c.name for c in pod.containers},
                                    phase="Running")
        # The DRA driver publishes the GPUs some claim holds; the device plugin advertises the others.
        dra_gpus = {d.gpu for pod in scenario.pods for c in pod.containers if c.claim for d in c.devices}
        allocatable: dict[str, list[str]] = {}
        for g in scenario.gpus:
            if g.index in dra_gpus:
                continue
            if g.mig:
                for m in g.mig:
                    allocatable.setdefault(m.resource, []).append(m.uuid)
            elif g.sharing is not None:
                allocatable.setdefault(g.sharing.resource, []).extend(
                    f"{g.uuid}::{r}" for r in range(g.sharing.replicas))
            else:
                allocatable.setdefault(GPU_RESOURCE, []).append(g.uuid)
        self._resources = PodResources(tuple(containers), {k: tuple(v) for k, v in allocatable.items()},
                                       tuple(claim_devices))
        dra = [g for g in scenario.gpus if g.index in dra_gpus]
        published = [DeviceRef(g.index, device_id=g.uuid) for g in dra if not g.mig] + [
            DeviceRef(g.index, mig=m, device_id=m.uuid) for g in dra for m in g.mig]
        self._devices = SliceDevices({(NVIDIA_DRA_DRIVER, pool, d.dra_name): d.device_id for d in published},
                                           frozenset({(NVIDIA_DRA_DRIVER, pool)}))
        self._meta = meta
        self._owners = owners

    def pod_resources(self) -> PodResources:
        """What the kubelet's pod-resources List + GetAllocatableResources would answer."""
        return self._resources

    def slice_devices(self) -> SliceDevices:
        """What the simulated DRA driver's ResourceSlice publishes."""
        return self._devices

    def pod_meta(self) -> dict[str, PodMeta]:
        """Pods on the node by uid, as the API server watch would describe them."""
        return dict(self._meta)

    def process_owner(self, pid: int) -> ContainerRef | None:
        """Container of a simulated process (what ``/proc/<pid>/cgroup`` would name); None if unknown."""
        return self._owners.get(pid)


class SimulatedPodResources:
    """What the kubelet's pod-resources API would answer for the scenario; it never fails."""

    error_kinds: tuple[str, ...] = ()

    def __init__(self, cluster: SimulatedCluster, dra_drivers: tuple[str, ...] = (NVIDIA_DRA_DRIVER,)) -> None:
        self._cluster = cluster
        self._dra_drivers = frozenset(dra_drivers)

    async def list_resources(self) -> PodResources:
        # claims of drivers not asked for are left out, as the kubelet client leaves them out
        resources = self._cluster.pod_resources()
        claims = tuple(d for d in resources.claim_devices if d.driver in self._dra_drivers)
        return resources if claims == resources.claim_devices else replace(resources, claim_devices=claims)

    async def close(self) -> None:
        return None


class SimulatedPodMetadata:
    """What the API server's pod watch would say about the scenario's pods: always connected."""

    connected = True

    def __init__(self, cluster: SimulatedCluster) -> None:
        self._cluster = cluster

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def wait_synced(self, timeout: float) -> bool:
        return True

    def pods(self) -> Mapping[str, PodMeta]:
        return self._cluster.pod_meta()

    def error_counts(self) -> dict[str, int]:
        return {}


class SimulatedDeviceSlices(SimulatedPodMetadata):
    """What the API server's ResourceSlice watch would say: the simulated driver's one slice."""

    def devices(self) -> SliceDevices:
        return self._cluster.slice_devices()


def process_owners(cluster: SimulatedCluster) -> Callable[[Sequence[int]], ProcessOwners]:
    """pids -> containers, as ``/proc/<pid>/cgroup`` would name them on the simulated node: the
    procfs of an agent that shares the host's pid namespace, where a pid of no pod is a host
    process."""

    def owners(pids: Sequence[int]) -> ProcessOwners:
        containers = {pid: ref for pid in pids if (ref := cluster.process_owner(pid)) is not None}
        return ProcessOwners(containers, host=frozenset(pids) - set(containers), lists_complete=True)

    return owners
