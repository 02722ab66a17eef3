"""The compute processes of a GPU or MIG instance, as NVML lists them.

NVML has two lists per handle: the plain one (which shows an MPS server, not its clients) and
the MPS one (the clients). On a MIG GPU the parent's lists hold every instance's processes,
tagged with their gpuInstanceId/computeInstanceId, while a MIG handle's own list may be empty
or refused (an unprivileged caller): both are merged by pid. Per-process SM utilisation exists
only outside MIG mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import pynvml

from ...model.gpu import GpuProcess
from ...model.vocabulary import NOT_MIG, RATIO_PER_PERCENT
from .calls import ABSENT, NvmlCalls
from .units import scaled

Instance = tuple[int, int]  # (gpuInstanceId, computeInstanceId); (NOT_MIG, NOT_MIG) on the full GPU

#: Answers of nvmlDeviceGetProcessUtilization that mean "no process used the SMs since then":
#: NOT_FOUND per nvml.h, SUCCESS where a sizing call finds nothing (pynvml raises NVMLError(0)).
_NO_UTIL_SAMPLES = frozenset({pynvml.NVML_SUCCESS, pynvml.NVML_ERROR_NOT_FOUND})


def listed_processes(
    calls: NvmlCalls, index: int, what: str, handle: Any
) -> tuple[list[tuple[Instance, GpuProcess]], bool]:
    """(instance, process) for the compute processes of a GPU or MIG handle: the plain list,
    then the MPS list (NOT_SUPPORTED / FUNCTION_NOT_FOUND there means no MPS); and whether both
    were read, so that an empty list means that nothing runs (a failed or refused plain list,
    or a failed MPS list, says nothing about what runs).

    The ``_v3`` names on purpose: pynvml's unversioned wrappers turn FUNCTION_NOT_FOUND (an
    older driver) into ``NVMLLibraryMismatchError``, which is no ``NVMLError``. Both size the
    list first (NVML answers INSUFFICIENT_SIZE when there are processes)."""
    plain = calls.optional(index, what, pynvml.nvmlDeviceGetComputeRunningProcesses_v3, handle)
    try:
        mps = pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(handle)
    except pynvml.NVMLError as e:
        calls.failed(index, f"{what}_mps", e)
        mps = [] if e.value in ABSENT else None
    listed = [(_instance_of(p), _process_of(p)) for p in [*(plain or ()), *(mps or ())]]
    return listed, plain is not None and mps is not None


def _instance_of(p: Any) -> Instance:
    gi = getattr(p, "gpuInstanceId", None)
    ci = getattr(p, "computeInstanceId", None)
    return (NOT_MIG if gi is None else int(gi), NOT_MIG if ci is None else int(ci))


def _process_of(p: Any) -> GpuProcess:
    mem = p.usedGpuMemory  # None: NVML_VALUE_NOT_AVAILABLE (pynvml's translation)
    return GpuProcess(pid=int(p.pid), used_memory_bytes=None if mem is None else int(mem))


def on_full_gpu(listed: Iterable[tuple[Instance, GpuProcess]]) -> tuple[GpuProcess, ...]:
    """The processes of a MIG GPU's list that run on the full GPU, not inside an instance."""
    return merge_processes(p for (gi, _), p in listed if gi == NOT_MIG)


def split_by_instance(listed: Iterable[tuple[Instance, GpuProcess]]) -> dict[Instance, list[GpuProcess]]:
    """The MIG processes of a parent GPU's list, by instance."""
    out: dict[Instance, list[GpuProcess]] = {}
    for instance, proc in listed:
        if instance[0] != NOT_MIG:
            out.setdefault(instance, []).append(proc)
    return out


def merge_processes(*lists: Iterable[GpuProcess]) -> tuple[GpuProcess, ...]:
    """One entry per pid, in order of first appearance; a later list fills in what an earlier
    one lacks (memory NVML could not tell), it never overrides a known value."""
    merged: dict[int, GpuProcess] = {}
    for procs in lists:
        for p in procs:
            seen = merged.get(p.pid)
            if seen is None:
                merged[p.pid] = p
            elif seen.used_memory_bytes is None and p.used_memory_bytes is not None:
                merged[p.pid] = dataclasses.replace(seen, used_memory_bytes=p.used_memory_bytes)
    return tuple(merged.values())


def with_utilization(
    calls: NvmlCalls, index: int, handle: Any, procs: tuple[GpuProcess, ...], since: int
) -> tuple[tuple[GpuProcess, ...], int]:
    """``procs`` with their SM utilisation since the NVML timestamp ``since``, and the timestamp
    the next read starts from.

    NVML returns samples only for processes with non-zero utilisation since ``since``: a process
    without one did not use the SMs (0.0). When NVML cannot tell at all, utilisation is unknown
    (None), not 0."""
    if not procs:
        return (), since
    try:
        samples = pynvml.nvmlDeviceGetProcessUtilization(handle, since)
    except pynvml.NVMLError as e:
        if e.value in _NO_UTIL_SAMPLES:
            samples = []
        else:
            calls.failed(index, "process_utilization", e)
            return procs, since
    latest: dict[int, Any] = {}
    for s in samples:
        if s.pid not in latest or s.timeStamp > latest[s.pid].timeStamp:
            latest[s.pid] = s
    util = {pid: scaled(min(s.smUtil, 100), RATIO_PER_PERCENT) for pid, s in latest.items()}
    newest = max([since, *(s.timeStamp for s in latest.values())])
    return tuple(dataclasses.replace(p, utilization_ratio=util.get(p.pid, 0.0)) for p in procs), newest
