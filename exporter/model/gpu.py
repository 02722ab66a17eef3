"""The data model that flows through a collection cycle.

source (NVML or simulated) -> ``Gpu`` readings -> ``GpuSnapshot``; kubelet -> ``PodResources``;
API server -> ``PodMeta``; procfs -> ``ContainerRef`` per pid. Attribution joins them, the
renderer turns the result into bytes. Everything here is immutable: a snapshot handed to the
renderer is never changed behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..catalog import MetricSpec


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
