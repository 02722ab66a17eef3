"""What a scenario is: one simulated node, as frozen dataclasses, and the defaults of GPU models.

A scenario is a YAML document describing one node: its GPUs (model, memory, MIG layout,
sharing), the pods holding them, the processes those pods run, how busy each GPU is over time
and a schedule of faults. ``docs/scenarios.md`` describes every key, ``scenario.schema.json`` their
shape; ``parse.py`` turns a file into these objects, having checked every value, so that nothing
here needs to check again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ...model.vocabulary import BYTES_PER_KIB, MIG_RESOURCE_PREFIX

__all__ = [
    "Scenario", "NodeSpec", "GpuSpec", "MigSpec", "SharingSpec", "LoadSpec", "PodSpec", "ContainerSpec",
    "DeviceRef", "ProcessSpec", "FaultSpec", "ModelDefaults", "model_defaults", "MiB",
]

MiB = BYTES_PER_KIB ** 2


# -- GPU models -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    """What a GPU model reads like when the scenario does not say: its capacities and what it supports."""

    memory: int
    power_limit: float
    idle_power: float
    nvlink_links: int
    sm_clock_max_mhz: int
    sm_clock_idle_mhz: int
    mem_clock_mhz: int
    video_clock_max_mhz: int
    pcie_generation: int
    pcie_width: int
    vbios_version: str
    fan: bool  # fan speed readable (PCIe boards); SXM/HBM modules report NOT_SUPPORTED
    memory_temperature: bool  # HBM temperature readable
    slowdown_c: int = 87
    shutdown_c: int = 92
    gpu_max_c: int = 87
    memory_max_c: int = 95

    @property
    def thresholds_c(self) -> dict[str, int]:
        """Temperature thresholds by their ``threshold`` label (``vocabulary.TEMPERATURE_THRESHOLDS``)."""
        return {"slowdown": self.slowdown_c, "shutdown": self.shutdown_c,
                "memory_max": self.memory_max_c, "gpu_max": self.gpu_max_c}


_MODELS: dict[str, ModelDefaults] = {
    "NVIDIA H100 80GB HBM3": ModelDefaults(81559 * MiB, 700, 72, 18, 1980, 345, 2619, 1545, 5, 16,
                                           "96.00.89.00.01", False, True),
    "NVIDIA H200": ModelDefaults(143771 * MiB, 700, 75, 18, 1980, 345, 3201, 1545, 5, 16,
                                 "96.00.A5.00.01", False, True),
    "NVIDIA H100 PCIe": ModelDefaults(81559 * MiB, 350, 48, 0, 1755, 345, 1593, 1455, 5, 16,
                                      "96.00.30.00.01", True, True),
    "NVIDIA A100-SXM4-80GB": ModelDefaults(81920 * MiB, 400, 60, 12, 1410, 210, 1593, 1290, 4, 16,
                                           "92.00.45.00.03", False, True, 88, 92, 88, 95),
    "NVIDIA A100-SXM4-40GB": ModelDefaults(40960 * MiB, 400, 55, 12, 1410, 210, 1215, 1290, 4, 16,
                                           "92.00.19.00.01", False, True, 88, 92, 88, 95),
    "NVIDIA L40S": ModelDefaults(46068 * MiB, 350, 35, 0, 2520, 210, 9001, 1965, 4, 16,
                                 "95.02.66.00.02", True, False, 88, 93, 88, 95),
}
_GENERIC = ModelDefaults(81920 * MiB, 700, 70, 0, 1980, 345, 2619, 1545, 5, 16, "96.00.00.00.01", True, False)


def model_defaults(model: str) -> ModelDefaults:
    """Defaults of a known model; H100-like ones for any other name."""
    return _MODELS.get(model, _GENERIC)


# -- The scenario -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    driver_version: str
    cuda_version: str


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Busy-ness of a GPU over time, 0..1 (see ``docs/scenarios.md``; the defaults are the schema's)."""

    pattern: str
    level: float
    min: float
    max: float
    period: float
    phase: float
    duty: float
    noise: float


@dataclass(frozen=True, slots=True)
class MigSpec:
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    memory: int
    uuid: str  # MIG-...
    load: LoadSpec | None = None  # how busy its GPU instance is where it runs processes; None: as the GPU

    @property
    def slices(self) -> int:
        return int(self.profile.split("g.", 1)[0])

    @property
    def resource(self) -> str:
        """The resource the device plugin advertises this instance under (MIG strategy ``mixed``)."""
        return MIG_RESOURCE_PREFIX + self.profile


@dataclass(frozen=True, slots=True)
class SharingSpec:
    strategy: str  # time-slicing, mps
    replicas: int
    resource: str


@dataclass(frozen=True, slots=True)
class GpuSpec:
    index: int
    model: str
    uuid: str  # GPU-...
    pci_bus_id: str
    serial: str
    vbios_version: str
    memory: int
    power_limit: float
    nvlink_links: int
    compute_mode: str  # vocabulary.COMPUTE_MODES
    persistence_mode: bool
    load: LoadSpec
    mig: tuple[MigSpec, ...] = ()
    sharing: SharingSpec | None = None
    defaults: ModelDefaults = _GENERIC

    @property
    def mig_enabled(self) -> bool:
        return bool(self.mig)


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """One device a container holds: a full GPU, a replica of a shared GPU, or a MIG instance."""

    gpu: int
    mig: MigSpec | None = None
    replica: int | None = None
    device_id: str = ""  # as the NVIDIA device plugin names it: GPU-<uuid>, GPU-<uuid>::<n>, MIG-<uuid>

    @property
    def dra_name(self) -> str:
        """The device's name in the simulated DRA driver's ResourceSlice: ``gpu-<minor>`` as
        NVIDIA's driver names a GPU, ``gpu-<minor>-mig-<gi>-<ci>`` for a MIG instance."""
        if self.mig is None:
            return f"gpu-{self.gpu}"
        return f"gpu-{self.gpu}-mig-{self.mig.gpu_instance_id}-{self.mig.compute_instance_id}"


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    pid: int
    memory: int
    utilization: float  # share of the GPU's utilisation (0..1)
    device: int  # index into the container's devices


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    container_id: str
    resource: str  # the DRA driver when the devices come through a claim
    devices: tuple[DeviceRef, ...]
    processes: tuple[ProcessSpec, ...] = ()
    claim: str | None = None  # a DRA ResourceClaim (in the pod's namespace) holds the devices


@dataclass(frozen=True, slots=True)
class PodSpec:
    namespace: str
    name: str
    uid: str
    workload_kind: str
    workload: str
    labels: Mapping[str, str] = field(default_factory=dict)
    containers: tuple[ContainerSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str  # the schema's event kinds: xid, ecc, thermal, ...
    gpu: int
    at: float
    duration: float | None = None
    code: int = 0  # xid
    count: int = 1  # xid, pcie_replay, nvlink_errors
    corrected: int = 0  # ecc, row_remap (correctable rows)
    uncorrected: int = 0  # ecc, row_remap (uncorrectable rows)
    temperature_rise: float = 20.0  # thermal
    limit_watts: float | None = None  # power_cap
    pending: bool = False  # row_remap
    failure: bool = False  # row_remap
    link: int | None = None  # nvlink_errors, nvlink_down (None: every link for nvlink_down)
    error_type: str = "crc_flit"  # nvlink_errors: vocabulary.NVLINK_ERROR_TYPES


@dataclass(frozen=True, slots=True)
class Scenario:
    node: NodeSpec
    gpus: tuple[GpuSpec, ...]
    pods: tuple[PodSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    repeat_every: float | None = None  # the fault schedule repeats with this period (seconds)
    seed: int = 0
    source: str = "<scenario>"
