"""The NVML rows: the library, and per GPU its identity, each query group the agent reads, MIG,
XID event registration and a GPM sample.

The GPUs are read as the agent reads them: ``GpuSource`` over the backend the configuration makes
(``NvmlBackend.configured``, or the scenario's under ``--simulate``), each call in a daemon thread
with the deadline of ``--collector.timeout``, so a hung NVML call costs its row and one thread,
never the command. Each GPU that answered is read a second time ``GAP_SECONDS`` later: GPM turns
two samples into rates, and only the second read shows whether sampling works. The backend's
``observer`` records every optional read that did not answer, with the query group it ran in
(``cost.current_group``); the rows report them per group.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import pynvml

from .. import catalog
from ..config import Config
from ..model.gpu import Gpu, GpuSnapshot
from ..model.vocabulary import ENABLED
from ..sources.backend import GpuBackend
from ..sources.base import run_in_daemon_thread
from ..sources.gpus import GpuSource
from ..sources.nvml.calls import ERROR_KIND_OF
from ..sources.nvml.cost import GROUPS, current_group
from .report import DEGRADED, FAILED, OK, SKIPPED, Check

#: Seconds between a GPU's two reads: GPM needs its samples more than 100 ms apart (nvml.h).
GAP_SECONDS = 0.5
#: Seconds the XID event thread gets to register the GPUs it was given (it looks every 100 ms).
XID_WAIT_SECONDS = 2.0
#: Seconds ``stop`` of the backend may take before the command goes on without it.
STOP_SECONDS = 2.0
#: Where the driver says whether profiling counters are for administrators only.
DRIVER_PARAMS = "/proc/driver/nvidia/params"

#: The NVML answers as the rows name them.
NOT_SUPPORTED, NO_PERMISSION, ERROR = "not_supported", "no_permission", "error"
_OUTCOME_RANK = {"ok": 0, NOT_SUPPORTED: 1, NO_PERMISSION: 2, ERROR: 3}
#: Reads of the MIG and profiling rows (by name): not counted again in the queries row.
_MIG_READS = ("mig",)
_GPM_READS = ("gpm",)
_PROFILING_METRICS = ((catalog.SM_ACTIVE, "SM active"), (catalog.TENSOR_ACTIVE, "tensor active"),
                      (catalog.DRAM_ACTIVE, "DRAM active"), (catalog.GRAPHICS_ACTIVE, "graphics active"))


@dataclass(frozen=True, slots=True)
class Call:
    """An optional NVML read that did not answer."""

    group: str
    what: str
    outcome: str  # NOT_SUPPORTED, NO_PERMISSION or ERROR
    answer: str  # NVML's name for it ("no_permission", "unknown"), "" for not supported
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"group": self.group, "what": self.what, "outcome": self.outcome, "answer": self.answer,
                "detail": self.detail}


class CallLog:
    """``NvmlCalls``' observer: the reads that did not answer, by GPU, with their query group.
    Thread-safe (GPUs are read in parallel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, dict[tuple[str, str], Call]] = {}

    def __call__(self, index: int, what: str, code: int | None, detail: str) -> None:
        if code is None:
            outcome, answer = NOT_SUPPORTED, ""
        else:
            answer = ERROR_KIND_OF.get(code, "unknown")
            outcome = NO_PERMISSION if code == pynvml.NVML_ERROR_NO_PERMISSION else ERROR
        call = Call(current_group() or "other", what, outcome, answer, detail)
        with self._lock:
            self._calls.setdefault(index, {})[(call.group, what)] = call

    def of(self, index: int) -> list[Call]:
        with self._lock:
            return list(self._calls.get(index, {}).values())


async def _settled(future: asyncio.Future[Any], timeout: float) -> bool:
    """Whether ``future`` is done within ``timeout`` seconds (it keeps running if not)."""
    await asyncio.wait([future], timeout=timeout)
    return future.done()


def library_path(maps: str = "/proc/self/maps") -> str:
    """The file of libnvidia-ml this process loaded, from its memory map ("" if none)."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                path = fields[5].strip() if len(fields) == 6 else ""
                if "libnvidia-ml" in os.path.basename(path):
                    return path
    except OSError:
        pass
    return ""


def profiling_admin_only(params: str = DRIVER_PARAMS) -> str | None:
    """``RmProfilingAdminOnly`` of the loaded driver ("1": profiling for administrators only), or
    None where the container cannot read the driver's parameters."""
    try:
        with open(params, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "RmProfilingAdminOnly":
                    return value.strip()
    except OSError:
        pass
    return None


# -- NVML as a whole ---------------------------------------------------------------------------

_RUNTIME_FIX = ("run the pod with the NVIDIA runtime: runtimeClassName: nvidia (or nvidia as containerd's default "
                "runtime), NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=utility as in daemonset.yaml; "
                "GKE-managed drivers: deploy/gke-managed-drivers.patch.json "
                "(docs/deploy.md#the-nvidia-runtime-cdi-or-not)")
_HUNG_FIX = ("look at the node: `dmesg | grep -iE 'NVRM|Xid'` and `nvidia-smi`; a GPU that fell off the bus or a stuck "
             "reset needs a GPU reset (`nvidia-smi -r`) or a reboot")


def _start_failure(exc: BaseException) -> tuple[str, str]:
    """(cause, fix) for a backend that does not start, from NVML's answer."""
    nvml_error = exc.__cause__ if isinstance(exc.__cause__, pynvml.NVMLError) else None
    code = getattr(nvml_error, "value", None)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND or (nvml_error is None and "cannot be loaded" in str(exc)):
        return ("libnvidia-ml.so.1 is not in the container: the NVIDIA container runtime did not inject the "
                "driver's libraries", _RUNTIME_FIX)
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return ("the NVIDIA kernel driver is not loaded on the node, or /dev/nvidiactl is not in the container",
                "on the node: `lsmod | grep nvidia` and `nvidia-smi` (the GPU Operator's driver pod, if it installs "
                "the driver, may still be starting); in the container: `ls -l /dev/nvidia*`; " + _RUNTIME_FIX)
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return ("the container may not open /dev/nvidiactl or /dev/nvidia<N> (its device cgroup, or the devices' "
                "modes)", "let the NVIDIA runtime add the devices: " + _RUNTIME_FIX)
    return (f"NVML does not start: {exc}", "look at the driver's messages on the node (`dmesg | grep -i nvrm`) "
            "and whether `nvidia-smi` works there")


def _library_check(backend: GpuBackend, snapshot: GpuSnapshot, scenario: str) -> Check:
    simulated = backend.simulated
    gpus = snapshot.gpus
    if simulated:
        info = gpus[0].info if gpus else {}
        system = {"driver_version": info.get("driver_version", ""), "cuda_version": info.get("cuda_version", "")}
        where = f"scenario {scenario or 'built-in'}"
    else:
        system = dict(getattr(backend, "system", {}))
        path = library_path()
        where = f"libnvidia-ml at {path}" if path else "libnvidia-ml.so.1"
    versions = ", ".join(f"{label} {system[key]}" for key, label in (
        ("driver_version", "driver"), ("nvml_version", "NVML"), ("cuda_version", "CUDA")) if system.get(key))
    seen = f"{where}: {versions or 'versions unknown'}; {len(gpus)} GPU{'s' if len(gpus) != 1 else ''}"
    details = {"library": "" if simulated else library_path(), **system, "gpus": len(gpus)}
    if not gpus:
        return Check("nvml", "NVML", FAILED, seen,
                     "NVML answers but lists no GPU: the container was given none",
                     "NVIDIA_VISIBLE_DEVICES=all in the pod's env and the NVIDIA runtime (daemonset.yaml); with "
                     "CDI, the node's spec needs its `all` device (docs/deploy.md#the-nvidia-runtime-cdi-or-not)",
                     simulated=simulated, details=details)
    return Check("nvml", "NVML", OK, seen, simulated=simulated, details=details)


# -- per GPU -----------------------------------------------------------------------------------


def _gpu_check(gpu: Gpu, timeout: float, simulated: bool) -> Check:
    info = gpu.info
    name = f"gpu {gpu.index}"
    facts = [info.get("model") or "model unknown", gpu.uuid or "uuid unknown"]
    if info.get("pci_bus_id"):
        facts.append(f"bus {info['pci_bus_id']}")
    if info.get("persistence_mode"):
        facts.append(f"persistence mode {'on' if info['persistence_mode'] == ENABLED else 'off'}")
    if info.get("compute_mode"):
        facts.append(f"compute mode {info['compute_mode']}")
    details = {"index": gpu.index, "uuid": gpu.uuid, "up": gpu.up, "error": gpu.error or "",
               "error_kind": gpu.error_kind or "", "info": dict(info)}
    seen = ", ".join(facts)
    if gpu.up:
        return Check(f"gpu.{gpu.index}", name, OK, seen, simulated=simulated, details=details)
    if gpu.error_kind == "gpu_is_lost":
        cause = f"NVML reports the GPU lost (GPU_IS_LOST: {gpu.error}): it fell off the bus or needs a reset"
        fix = ("drain the node; look for Xid 79 or 48 in `dmesg`; a GPU reset (`nvidia-smi -r -i "
               f"{gpu.index}`) or a reboot; if it recurs, the hardware (RMA)")
    elif gpu.error_kind == "timeout":
        cause = (f"its NVML reads did not return within {timeout:g}s (--collector.timeout): a driver call hangs on "
                 "this GPU, or NVML answers slower than the timeout (persistence mode off: a first look-up takes "
                 "seconds)")
        fix = (f"on the node: `nvidia-smi -q -i {gpu.index}` and `dmesg | grep -iE 'NVRM|Xid'`; enable persistence "
               "mode (nvidia-persistenced); raise --collector.timeout only if the GPU answers slowly but answers")
    else:
        cause = f"NVML cannot read it: {gpu.error}"
        fix = f"on the node: `nvidia-smi -q -i {gpu.index}` and the driver's messages (`dmesg | grep -i nvrm`)"
    return Check(f"gpu.{gpu.index}", name, FAILED, f"{seen}; down", cause, fix, simulated=simulated,
                 details=details)


def _group_outcome(calls: Iterable[Call]) -> str:
    return max((c.outcome for c in calls), key=_OUTCOME_RANK.__getitem__, default="ok")


def _calls_text(calls: Iterable[Call]) -> str:
    return ", ".join(f"{c.what} ({c.group})" for c in sorted(calls, key=lambda c: (c.group, c.what)))


def _queries_check(gpu: Gpu, calls: list[Call], simulated: bool) -> Check:
    id_, title = f"gpu.{gpu.index}.queries", f"gpu {gpu.index} queries"
    if not gpu.up:
        return Check(id_, title, SKIPPED, "not read: the GPU is down (see its row)", simulated=simulated)
    if simulated:
        return Check(id_, title, OK, "the scenario answers every group, no NVML call", simulated=True)
    seconds = dict(gpu.nvml_seconds)
    groups = [{"name": g, "seconds": round(seconds.get(g, 0.0), 6),
               "outcome": _group_outcome(c for c in calls if c.group == g),
               "calls": [c.as_dict() for c in calls if c.group == g]} for g in GROUPS]
    own = [c for c in calls if not c.what.startswith(_MIG_READS + _GPM_READS)]
    total = sum(seconds.values())
    slowest = sorted(seconds.items(), key=lambda kv: kv[1], reverse=True)[:3]
    seen = (f"{len(GROUPS)} groups in {total * 1000:.1f} ms (slowest: "
            + ", ".join(f"{g} {s * 1000:.1f} ms" for g, s in slowest) + ")")
    by_outcome = {o: [c for c in own if c.outcome == o] for o in (NOT_SUPPORTED, NO_PERMISSION, ERROR)}
    if by_outcome[NOT_SUPPORTED]:
        seen += "; not supported: " + ", ".join(sorted({c.what for c in by_outcome[NOT_SUPPORTED]}))
    details = {"groups": groups}
    refused, errors = by_outcome[NO_PERMISSION], by_outcome[ERROR]
    if not (refused or errors):
        return Check(id_, title, OK, seen, details=details)
    parts, causes = [], []
    if refused:
        parts.append("no permission: " + _calls_text(refused))
        causes.append("NVML refuses these reads to the agent (NO_PERMISSION): they need root or CAP_SYS_ADMIN, "
                      "which the DaemonSet's container does not have")
    if errors:
        parts.append("error: " + ", ".join(f"{c.what} ({c.group}): {c.detail}" for c in errors))
        causes.append("NVML answered these reads with an error")
    fix = ("their series are left out, the rest is served; to see whether a read needs a privilege, run "
           "`kube-gpu-exporter check` as root on the node and compare (docs/validation.md)")
    if errors:
        fix += f"; for errors, the driver's messages (`dmesg | grep -i nvrm`) and `nvidia-smi -q -i {gpu.index}`"
    return Check(id_, title, DEGRADED, seen + "; " + "; ".join(parts), "; ".join(causes), fix, details=details)


def _mig_check(gpu: Gpu, calls: list[Call], simulated: bool) -> Check:
    id_, title = f"gpu.{gpu.index}.mig", f"gpu {gpu.index} MIG"
    if not gpu.up:
        return Check(id_, title, SKIPPED, "not read: the GPU is down", simulated=simulated)
    mode = gpu.info.get("mig_mode", "")
    instances = [{"uuid": m.uuid, "profile": m.profile, "gpu_instance_id": m.gpu_instance_id,
                  "compute_instance_id": m.compute_instance_id} for m in gpu.mig_devices]
    details = {"mode": mode, "instances": instances}
    mig_calls = [c for c in calls if c.what.startswith(_MIG_READS) and c.outcome != NOT_SUPPORTED]
    if not mode:
        return Check(id_, title, SKIPPED, "MIG not supported by this GPU", simulated=simulated, details=details)
    if mode != ENABLED:
        return Check(id_, title, OK, "MIG disabled", simulated=simulated, details=details)
    listed = ", ".join(f"{m.profile} (GI {m.gpu_instance_id}, CI {m.compute_instance_id})" for m in gpu.mig_devices)
    seen = f"MIG enabled, {len(instances)} instance{'s' if len(instances) != 1 else ''}"
    seen += f": {listed}" if listed else ""
    caps_fix = ("if `nvidia-smi mig -lgi` on the node lists instances, the container lacks the MIG monitor "
                "capability (/dev/nvidia-caps): set NVIDIA_MIG_MONITOR_DEVICES=all in the pod's env, as dcgm-exporter "
                "does (docs/validation.md: still to be confirmed on hardware)")
    if mig_calls:
        return Check(id_, title, DEGRADED, f"{seen}; refused: {_calls_text(mig_calls)}",
                     "NVML refused MIG reads: " + "; ".join(f"{c.what}: {c.detail}" for c in mig_calls),
                     caps_fix, simulated=simulated, details={**details, "calls": [c.as_dict() for c in mig_calls]})
    if not instances:
        return Check(id_, title, DEGRADED, seen,
                     "MIG mode is on but NVML shows no instance: none created yet, or the container cannot see them",
                     "create instances (`nvidia-smi mig -cgi ... -C`, or the GPU Operator's mig-manager); " + caps_fix,
                     simulated=simulated, details=details)
    return Check(id_, title, OK, seen, simulated=simulated, details=details)


def _xid_check(gpu: Gpu, registration: tuple[str, str] | None, simulated: bool) -> Check:
    id_, title = f"gpu.{gpu.index}.xid", f"gpu {gpu.index} XID events"
    if simulated:
        return Check(id_, title, OK, "the scenario's XID events", simulated=True)
    if not gpu.uuid or registration is None:
        return Check(id_, title, SKIPPED, "not registered: the GPU was never identified")
    state, why = registration
    details = {"registration": state, "detail": why}
    if state == "watched":
        return Check(id_, title, OK, "registered for XID events (critical errors)", details=details)
    if state == "not_supported":
        return Check(id_, title, DEGRADED, f"NVML does not deliver XID events for this GPU ({why})",
                     "XID events are not supported here: a virtual GPU or an old driver",
                     "its XIDs are not counted and not pushed; read them from the node's kernel log "
                     "(`dmesg | grep Xid`) or its log pipeline instead", details=details)
    if state == "pending":
        return Check(id_, title, DEGRADED, f"not registered within {XID_WAIT_SECONDS:g}s",
                     "the XID event thread did not get to the GPU: a driver call in it blocks",
                     "the agent retries at each read of the GPU; if it persists, look at the driver's messages on "
                     "the node (`dmesg | grep -i nvrm`)", details=details)
    return Check(id_, title, DEGRADED, f"XID events not watched: {why or state}",
                 "NVML refused to register the GPU for XID events",
                 "the agent retries at each read of the GPU; until it succeeds this GPU's XIDs are not counted; "
                 "look at the driver's messages on the node (`dmesg | grep -i nvrm`)", details=details)


def _profiling_check(gpu: Gpu, second: Gpu | BaseException | None, calls: list[Call], config: Config,
                     simulated: bool) -> Check:
    id_, title = f"gpu.{gpu.index}.profiling", f"gpu {gpu.index} profiling"
    if "profiling" not in config.collectors:
        return Check(id_, title, SKIPPED, "off: --collector.profiling not set", simulated=simulated)
    if not gpu.up:
        return Check(id_, title, SKIPPED, "not read: the GPU is down", simulated=simulated)
    gpm = [c for c in calls if c.what.startswith(_GPM_READS)]
    if any(c.what == "gpm" and c.outcome == NOT_SUPPORTED for c in gpm):
        return Check(id_, title, SKIPPED, "GPM not supported: it needs a Hopper or newer GPU and a driver that "
                     "serves it", simulated=simulated, details={"calls": [c.as_dict() for c in gpm]})
    if not isinstance(second, Gpu):
        why = "the second read did not return in time" if second is None else f"the second read failed: {second}"
        return Check(id_, title, DEGRADED, f"no GPM sample: {why}", "a GPM rate needs two reads of the GPU",
                     "see the GPU's row; the agent samples again at every cycle", simulated=simulated)
    values = [(label, second.readings.get(metric)) for metric, label in _PROFILING_METRICS]
    got = [(label, v) for label, v in values if v is not None]
    instances = sum(1 for m in second.mig_devices if any(s.metric == catalog.SM_ACTIVE for s in m.samples))
    details = {"metrics": {label: v for label, v in got}, "mig_instances_sampled": instances,
               "calls": [c.as_dict() for c in gpm]}
    failing = [c for c in gpm if c.outcome != NOT_SUPPORTED]
    if got and not failing:
        seen = "GPM sample: " + ", ".join(f"{label} {v:.0%}" for label, v in got)
        if instances:
            seen += f"; {instances} MIG GPU instance{'s' if instances != 1 else ''} sampled"
        return Check(id_, title, OK, seen, simulated=simulated,
                     details=details)
    refused = [c for c in failing if c.outcome == NO_PERMISSION]
    if refused:
        admin_only = profiling_admin_only()
        details = {**details, "RmProfilingAdminOnly": admin_only}
        setting = {"1": " (RmProfilingAdminOnly: 1 in /proc/driver/nvidia/params)",
                   "0": " (yet RmProfilingAdminOnly is 0: another restriction)"}.get(admin_only or "", "")
        return Check(id_, title, DEGRADED, f"GPM supported; sampling refused: {_calls_text(refused)}",
                     "NVML refuses GPM samples to the agent: most likely the driver keeps profiling counters for "
                     "administrators (NVreg_RestrictProfilingToAdminUsers)" + setting + " and the agent runs "
                     "without CAP_SYS_ADMIN", "load the driver with NVreg_RestrictProfilingToAdminUsers=0 on the node "
                     "(a modprobe option; with the GPU Operator, its driver's kernel module configuration), or leave "
                     "profiling off (--no-collector.profiling); CAP_SYS_ADMIN would also do, but gives the agent far "
                     "more than this", simulated=simulated, details=details)
    if failing:
        return Check(id_, title, DEGRADED, f"GPM supported; sampling failed: {_calls_text(failing)}",
                     "NVML answered GPM calls with an error: " + "; ".join(c.detail for c in failing),
                     "the profiling series are left out meanwhile; look at the driver's messages on the node "
                     "(`dmesg | grep -i nvrm`)", simulated=simulated, details=details)
    if simulated:
        return Check(id_, title, SKIPPED, "simulated GPU without profiling metrics", simulated=True)
    return Check(id_, title, DEGRADED, "GPM supported, but the second sample gave no metric",
                 "NVML returned no GPM value for this GPU", "run the check again under load; if it stays empty, "
                 "compare with `kube-gpu-exporter check` as root on the node", details=details)


# -- the section -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NvmlResult:
    checks: list[Check]
    snapshot: GpuSnapshot | None  # the first read, for the process and kubelet rows


async def check_nvml(config: Config, backend: GpuBackend, calls: CallLog | None = None) -> NvmlResult:
    """Start the backend, read every GPU twice and report. ``calls`` is the backend's observer."""
    calls = calls or CallLog()
    timeout = config.collector_timeout
    simulated = backend.simulated
    start = run_in_daemon_thread(backend.start, name="check-nvml-init")
    if not await _settled(start, timeout):
        return NvmlResult([Check("nvml", "NVML", FAILED, f"nvmlInit did not return within {timeout:g}s",
                                 "the driver is in trouble: every NVML call blocks", _HUNG_FIX)], None)
    if (error := start.exception()) is not None:
        cause, fix = _start_failure(error)
        return NvmlResult([Check("nvml", "NVML", FAILED, f"cannot start: {error}", cause, fix)], None)
    try:
        source = GpuSource.configured(backend, config)
        first = await source.snapshot()
        if not source.state.up:
            return NvmlResult([Check("nvml", "NVML", FAILED, f"started, then: {source.state.error}",
                                     "NVML started but does not answer for its GPUs", _HUNG_FIX)], None)
        second = await _read_again(backend, [g.index for g in first.gpus if g.up], timeout)
        registrations = await _xid_registrations(backend, first)
        checks = [_library_check(backend, first, config.scenario or "")]
        for gpu in first.gpus:
            own = calls.of(gpu.index)
            checks += [_gpu_check(gpu, timeout, simulated), _queries_check(gpu, own, simulated),
                       _mig_check(gpu, own, simulated), _xid_check(gpu, registrations.get(gpu.uuid), simulated),
                       _profiling_check(gpu, second.get(gpu.index), own, config, simulated)]
        return NvmlResult(checks, first)
    finally:
        await _settled(run_in_daemon_thread(backend.stop, name="check-nvml-stop"), STOP_SECONDS)


async def _read_again(backend: GpuBackend, indexes: list[int], timeout: float) -> dict[int, Gpu | BaseException]:
    """A second read of each GPU, ``GAP_SECONDS`` after the first, within ``timeout``; a GPU whose
    read does not return is left out."""
    if not indexes:
        return {}
    await asyncio.sleep(GAP_SECONDS)
    reads = {i: run_in_daemon_thread(backend.read_gpu, i, name=f"check-nvml-gpu{i}") for i in indexes}
    await asyncio.wait(list(reads.values()), timeout=timeout)
    return {i: (f.exception() or f.result()) for i, f in reads.items() if f.done()}


async def _xid_registrations(backend: GpuBackend, snapshot: GpuSnapshot) -> dict[str, tuple[str, str]]:
    """Each identified GPU's XID registration, once the event thread had its chance."""
    registration = getattr(backend, "xid_registration", None)
    if registration is None:
        return {}
    uuids = [g.uuid for g in snapshot.gpus if g.uuid]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + XID_WAIT_SECONDS
    while True:
        states = {uuid: registration(uuid) for uuid in uuids}
        if loop.time() >= deadline or all(state != "pending" for state, _ in states.values()):
            return states
        await asyncio.sleep(0.05)
