"""One collection cycle: what the sources observed (the input of attribution) and the agent's view
of itself (an input of the renderers, beside the snapshot and the attribution).

Each source fills the field of ``Observations`` that its ``provides`` names (``sources/base.py``);
a field keeps its default when its source is off or has nothing usable this cycle (failed past its
grace period). A new source adds its field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .gpu import GpuSnapshot, Sample
from .kube import PodMeta, PodResources, ProcessOwners, SliceDevices


@dataclass(frozen=True, slots=True)
class Observations:
    gpus: GpuSnapshot  # NVML or the simulated backend (sources/gpus.py)
    pod_resources: PodResources | None = None  # the kubelet's allocations
    pods: Mapping[str, PodMeta] = field(default_factory=dict)  # the API server's pods, by uid
    slices: SliceDevices | None = None  # the DRA devices the API server's ResourceSlices name
    process_owners: ProcessOwners = field(default_factory=ProcessOwners)  # procfs: the GPU processes' containers


@dataclass(frozen=True, slots=True)
class CollectorStatus:
    """How a source's read went this cycle."""

    title: str  # what a person calls the source (the status page lists it by this)
    success: bool
    duration_seconds: float | None = None  # None: the source works in the background (a watch)
    last_success_timestamp: float | None = None  # unix time; None: never succeeded


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """The agent's view of itself for this cycle."""

    simulated: bool
    nvml_up: bool
    collectors: Mapping[str, CollectorStatus] = field(default_factory=dict)  # by source name, in the agent's order
    switched_off: Mapping[str, str] = field(default_factory=dict)  # name -> title of the sources the config turns off
    errors: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (collector, kind) -> count
    cycle_timestamp: float = 0.0
    cycle_duration_seconds: float = 0.0
    gpu_snapshot_age_seconds: float = 0.0
    gpu_snapshot_stale: bool = False
    nvml_query_seconds: Mapping[str, float] = field(default_factory=dict)  # by query group, summed over GPUs
    # The self-metrics of the sources and components (procfs' unresolved processes, the HTTP guard's
    # rejections, the Alertmanager notifier's counts), read on the loop after the cycle's reads.
    self_metrics: tuple[Sample, ...] = ()
