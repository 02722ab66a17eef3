"""The MIG devices of a MIG-enabled GPU, read by its reader: each instance's identity, profile,
memory and processes, and which compute instance carries its GPU instance's own readings.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pynvml

from ... import catalog
from ...model.gpu import GpuProcess, MigDevice, Sample
from .processes import Instance, listed_processes, merge_processes
from .units import text

if TYPE_CHECKING:
    from .reader import GpuReader

#: What a MIG slot without a device answers.
_NO_MIG_DEVICE = frozenset({pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT})
_MIG_NAME = re.compile(r"\bMIG\s+(\S+)\s*$")


def read_mig_devices(
    reader: GpuReader, parent_name: str, by_instance: dict[Instance, list[GpuProcess]], parent_read: bool
) -> tuple[MigDevice, ...]:
    count = reader.opt("mig", pynvml.nvmlDeviceGetMaxMigDeviceCount, reader.h)
    devices = []
    for i in range(count or 0):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(reader.h, i)
        except pynvml.NVMLError as e:
            if e.value not in _NO_MIG_DEVICE:
                reader.calls.failed(reader.index, "mig", e)
            continue
        device = _mig_device(reader, mig, parent_name, by_instance, parent_read)
        if device is not None:
            devices.append(device)
    return tuple(devices)


def _mig_device(
    reader: GpuReader, mig: Any, parent_name: str, by_instance: dict[Instance, list[GpuProcess]], parent_read: bool
) -> MigDevice | None:
    """One MIG device. Its processes are its own list merged with the parent's entries for
    it; either list, read, names them all (the parent's holds every instance's)."""
    uuid = reader.opt("mig_uuid", pynvml.nvmlDeviceGetUUID, mig)
    gi = reader.opt("mig_gpu_instance_id", pynvml.nvmlDeviceGetGpuInstanceId, mig)
    ci = reader.opt("mig_compute_instance_id", pynvml.nvmlDeviceGetComputeInstanceId, mig)
    if uuid is None or gi is None or ci is None:
        return None
    name = reader.opt("mig_name", pynvml.nvmlDeviceGetName, mig)
    samples: list[Sample] = []
    mem = reader.memory(mig, what="mig_memory")
    if mem is not None:
        total, used, free, _reserved = mem
        samples += [Sample(catalog.MIG_MEMORY_TOTAL, float(total)), Sample(catalog.MIG_MEMORY_USED, float(used)),
                    Sample(catalog.MIG_MEMORY_FREE, float(free))]
    own, own_read = listed_processes(reader.calls, reader.index, "mig_processes", mig)
    procs = merge_processes((p for _, p in own), by_instance.get((int(gi), int(ci)), ()))
    samples.append(Sample(catalog.MIG_PROCESSES, float(len(procs))))
    return MigDevice(uuid=text(uuid), gpu_instance_id=int(gi), compute_instance_id=int(ci),
                     profile=mig_profile(text(name) if name is not None else "", parent_name),
                     samples=tuple(samples), processes=procs, processes_read=own_read or parent_read)


def gpu_instances_first(migs: tuple[MigDevice, ...]) -> set[str]:
    """The uuid of the first compute instance (lowest id) of each GPU instance: the one that
    carries the GPU instance's own readings (GPM), which the renderer labels without
    ``compute_instance_id``."""
    first: dict[int, str] = {}
    for m in sorted(migs, key=lambda m: (m.gpu_instance_id, m.compute_instance_id)):
        first.setdefault(m.gpu_instance_id, m.uuid)
    return set(first.values())


def mig_profile(mig_name: str, parent_name: str = "") -> str:
    """The MIG profile ("1g.10gb") from NVML's MIG device name ("NVIDIA H100 80GB HBM3 MIG 1g.10gb").

    Real NVML and the test fake both serve the name, while GPU-instance profile queries need
    more privileges and more calls.
    """
    match = _MIG_NAME.search(mig_name)
    if match:
        return match.group(1)
    if parent_name and mig_name.startswith(parent_name):
        return mig_name[len(parent_name):].strip()
    return mig_name
