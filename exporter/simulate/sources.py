"""The simulated node's Kubernetes side, behind the same interfaces as the real sources.

``SimulatedCluster`` is what the kubelet's pod-resources API, the API server and
``/proc/<pid>/cgroup`` would say about a scenario's pods. The agent reads pod resources from a
kubelet client, pod metadata from a pod watcher and process owners from procfs; under
``--simulate`` the adapters below serve the cluster's answers instead, so that simulated pods
flow through the real attribution code. ``--no-kubelet.enabled`` and ``--kubernetes.enabled``
choose which of them run, exactly as on a real node.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..snapshot import ContainerDevices, ContainerRef, PodMeta, PodResources
from ..vocabulary import GPU_RESOURCE
from .scenario import Scenario

__all__ = ["SimulatedCluster", "SimulatedPodMetadata", "SimulatedPodResources", "process_owners"]


class SimulatedCluster:
    """The kubelet, API server and procfs view of a scenario's pods (static over time)."""

    def __init__(self, scenario: Scenario) -> None:
        self.node_name = scenario.node.name
        containers: list[ContainerDevices] = []
        owners: dict[int, ContainerRef] = {}
        meta: dict[str, PodMeta] = {}
        for pod in scenario.pods:
            for c in pod.containers:
                containers.append(ContainerDevices(pod.namespace, pod.name, c.name, c.resource,
                                                   tuple(d.device_id for d in c.devices)))
                for p in c.processes:
                    owners[p.pid] = ContainerRef(pod.uid, c.container_id)
            meta[pod.uid] = PodMeta(pod.namespace, pod.name, pod.uid, pod.workload_kind, pod.workload,
                                    dict(pod.labels), {c.container_id: c.name for c in pod.containers},
                                    phase="Running")
        allocatable: dict[str, list[str]] = {}
        for g in scenario.gpus:
            if g.mig:
                for m in g.mig:
                    allocatable.setdefault(m.resource, []).append(m.uuid)
            elif g.sharing is not None:
                allocatable.setdefault(g.sharing.resource, []).extend(
                    f"{g.uuid}::{r}" for r in range(g.sharing.replicas))
            else:
                allocatable.setdefault(GPU_RESOURCE, []).append(g.uuid)
        self._resources = PodResources(tuple(containers), {k: tuple(v) for k, v in allocatable.items()})
        self._meta = meta
        self._owners = owners

    def pod_resources(self) -> PodResources:
        """What the kubelet's pod-resources List + GetAllocatableResources would answer."""
        return self._resources

    def pod_meta(self) -> dict[str, PodMeta]:
        """Pods on the node by uid, as the API server watch would describe them."""
        return dict(self._meta)

    def process_owner(self, pid: int) -> ContainerRef | None:
        """Container of a simulated process (what ``/proc/<pid>/cgroup`` would name); None if unknown."""
        return self._owners.get(pid)


class SimulatedPodResources:
    """What the kubelet's pod-resources API would answer for the scenario; it never fails."""

    ERROR_KINDS: tuple[str, ...] = ()

    def __init__(self, cluster: SimulatedCluster) -> None:
        self._cluster = cluster

    async def list_resources(self) -> PodResources:
        return self._cluster.pod_resources()

    async def close(self) -> None:
        return None


class SimulatedPodMetadata:
    """What the API server's pod watch would say about the scenario's pods: always connected."""

    connected = True

    def __init__(self, cluster: SimulatedCluster) -> None:
        self._cluster = cluster

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def wait_synced(self, timeout: float) -> bool:
        return True

    def pods(self) -> Mapping[str, PodMeta]:
        return self._cluster.pod_meta()

    def error_counts(self) -> dict[str, int]:
        return {}


def process_owners(cluster: SimulatedCluster) -> Callable[[list[int]], dict[int, ContainerRef]]:
    """pids -> containers, as ``/proc/<pid>/cgroup`` would name them on the simulated node."""

    def owners(pids: list[int]) -> dict[int, ContainerRef]:
        return {pid: ref for pid in pids if (ref := cluster.process_owner(pid)) is not None}

    return owners
