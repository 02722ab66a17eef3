"""The GPU side of a cycle: what was read from each GPU and MIG instance, and the snapshot of them.

A GPU source (NVML or simulated) produces ``Gpu`` readings, the GPU source of the agent
(``sources/gpus.py``) gathers them into a ``GpuSnapshot``. Attribution, the renderers and the push
path read them. Everything here is immutable: a snapshot handed to the renderer is never changed
behind its back.

Sources write a reading as a ``Sample`` of a catalog metric; readers ask a device's ``readings``
for a value by metric and label names (``Readings``), never by scanning samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..catalog import MetricSpec


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a metric of the catalog, as a source writes it; ``labels`` are values for
    ``metric.labels``, in that order."""

    metric: MetricSpec
    value: float
    labels: tuple[str, ...] = ()


class Readings:
    """A device's samples indexed by metric and label values, built once per GPU or MIG device::

        gpu.readings.get(catalog.MEMORY_USED)                      # a float, None when not read
        gpu.readings.get(catalog.ECC_ERRORS, type="uncorrected")   # each of the metric's labels, by name
        gpu.readings.by(catalog.CLOCK_EVENT, "reason")             # {"gpu_idle": 1.0, ...}

    A label name the metric does not have, or one left out, raises ``ValueError``: a typo fails
    loudly instead of reading as a value that was never read.
    """

    __slots__ = ("_values",)

    def __init__(self, samples: Iterable[Sample]) -> None:
        values: dict[MetricSpec, dict[tuple[str, ...], float]] = {}
        for s in samples:
            values.setdefault(s.metric, {})[s.labels] = s.value
        self._values = values

    def get(self, metric: MetricSpec, **labels: str) -> float | None:
        """The value of ``metric`` with these label values (every label of its own, by name)."""
        if labels.keys() != set(metric.labels):
            raise ValueError(f"{metric.name} is read with the labels {list(metric.labels)}, got {sorted(labels)}")
        return self._values.get(metric, {}).get(tuple(labels[name] for name in metric.labels))

    def by(self, metric: MetricSpec, label: str) -> dict[str, float]:
        """The values of a metric with one label of its own, by that label's value (in the order read)."""
        if metric.labels != (label,):
            raise ValueError(f"{metric.name} has the labels {list(metric.labels)}, not just {label!r}")
        return {key[0]: value for key, value in self._values.get(metric, {}).items()}


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process on a GPU or MIG instance, as NVML reports it."""

    pid: int
    used_memory_bytes: int | None = None
    # SM utilisation of this process in NVML's newest sample of it since the previous read (0..1):
    # one sample, not an average over the cycle; 0 when NVML has none (it did not use the SMs);
    # None when NVML cannot tell (exporter/sources/nvml/processes.py: with_utilization).
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
    readings: Readings = field(init=False, repr=False, compare=False)  # ``samples`` by metric and labels

    def __post_init__(self) -> None:
        object.__setattr__(self, "readings", Readings(self.samples))


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
    # NVML seconds this reading took by query group (sources/nvml/cost.py); empty for simulated GPUs
    nvml_seconds: Mapping[str, float] = field(default_factory=dict)
    readings: Readings = field(init=False, repr=False, compare=False)  # ``samples`` by metric and labels

    def __post_init__(self) -> None:
        object.__setattr__(self, "readings", Readings(self.samples))

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
