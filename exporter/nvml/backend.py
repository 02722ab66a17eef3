"""The NVML backend: reads real GPUs through ``pynvml``.

Error policy, per read:

* required reads (handle by index, UUID, name): any error raises from ``read_gpu``; the caller
  reports the GPU with ``up=0``.
* NOT_SUPPORTED / FUNCTION_NOT_FOUND on any other read: the GPU has no such metric (or the
  driver is too old for the call). The series is omitted, logged once at debug.
* GPU_IS_LOST anywhere: raises, and the cached handle is dropped so that a GPU that comes back
  (after a reset) is looked up afresh.
* any other error on an optional read: the series is omitted, logged once at warning and
  counted in ``errors_by_kind()``; the GPU stays up, since the rest of its readings are good.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import Any, Callable, Iterable, Iterator

import pynvml

from .. import catalog
from ..backend import BackendUnavailable
from ..catalog import MetricSpec
from ..snapshot import Gpu, GpuProcess, MigDevice, Sample
from . import fields
from .xid import XidWatcher

#: nvmlReturn_t -> "gpu_is_lost", "unknown", ... (the NVML_ERROR_* name, lower case).
ERROR_KINDS: dict[int, str] = {
    value: name[len("NVML_ERROR_"):].lower()
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}
_ABSENT = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
_END_OF_LINKS = _ABSENT | {pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_NOT_FOUND}
_MIG_NAME = re.compile(r"\bMIG\s+(\S+)\s*$")

_COMPUTE_MODES = {
    pynvml.NVML_COMPUTEMODE_DEFAULT: "default",
    pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS: "exclusive_process",
    pynvml.NVML_COMPUTEMODE_PROHIBITED: "prohibited",
    pynvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD: "exclusive_thread",
}
_THRESHOLDS = (
    ("slowdown", pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
    ("shutdown", pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
    ("memory_max", pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX),
    ("gpu_max", pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX),
)
_CLOCKS = (
    ("graphics", pynvml.NVML_CLOCK_GRAPHICS),
    ("sm", pynvml.NVML_CLOCK_SM),
    ("memory", pynvml.NVML_CLOCK_MEM),
    ("video", pynvml.NVML_CLOCK_VIDEO),
)
_CLOCK_EVENT_REASONS = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)
_VIOLATIONS = (
    ("power", pynvml.NVML_PERF_POLICY_POWER),
    ("thermal", pynvml.NVML_PERF_POLICY_THERMAL),
    ("sync_boost", pynvml.NVML_PERF_POLICY_SYNC_BOOST),
    ("board_limit", pynvml.NVML_PERF_POLICY_BOARD_LIMIT),
    ("low_utilization", pynvml.NVML_PERF_POLICY_LOW_UTILIZATION),
    ("reliability", pynvml.NVML_PERF_POLICY_RELIABILITY),
    ("total_app_clocks", pynvml.NVML_PERF_POLICY_TOTAL_APP_CLOCKS),
    ("total_base_clocks", pynvml.NVML_PERF_POLICY_TOTAL_BASE_CLOCKS),
)
_NVLINK_ERRORS = (
    ("replay", pynvml.NVML_NVLINK_ERROR_DL_REPLAY),
    ("recovery", pynvml.NVML_NVLINK_ERROR_DL_RECOVERY),
    ("crc_flit", pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT),
    ("crc_data", pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA),
)
_PCIE_KB = 1024.0  # NVML's PCIe throughput "KB/s" are KiB/s
_MHZ = 1e6
_NOT_MIG = 0xFFFFFFFF  # gpuInstanceId of a process on the full GPU
#: Answers of nvmlDeviceGetProcessUtilization that mean "no process used the SMs since then":
#: NOT_FOUND per nvml.h, SUCCESS where a sizing call finds nothing (pynvml raises NVMLError(0)).
_NO_UTIL_SAMPLES = frozenset({pynvml.NVML_SUCCESS, pynvml.NVML_ERROR_NOT_FOUND})


class GpuReadError(RuntimeError):
    """A required read of a GPU failed; ``kind`` is the NVML error name (e.g. gpu_is_lost)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def error_kind(err: pynvml.NVMLError) -> str:
    return ERROR_KINDS.get(getattr(err, "value", None), "unknown")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """``GpuBackend`` over NVML. Thread-safe: ``read_gpu`` may run for several GPUs at once."""

    simulated = False

    def __init__(self, *, xid_event_timeout_ms: int = 1000, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("exporter.nvml")
        self._xid_timeout_ms = xid_event_timeout_ms
        self._lock = threading.Lock()
        self._life = threading.Lock()  # serialises start() and stop(): one nvmlInit, one XID thread
        self._started = False
        self._handles: dict[int, Any] = {}
        self._logged: set[tuple[int, str]] = set()
        self._errors: dict[str, int] = {}
        self._util_since: dict[int, int] = {}  # gpu index -> last process-utilisation timestamp (us)
        self._system: dict[str, str] = {}
        self._xid: XidWatcher | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """``nvmlInit`` and start XID watching. Raises ``BackendUnavailable``; may be retried.

        Fast: GPU handles (seconds each without persistence mode) are looked up by the XID thread
        and by ``read_gpu``, not here. Concurrent calls initialise once.
        """
        with self._life:
            if self._started:
                return
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as e:
                raise BackendUnavailable(f"NVML init failed: {e} ({error_kind(e)})") from e
            except OSError as e:  # the loader itself failed in an unexpected way
                raise BackendUnavailable(f"NVML library cannot be loaded: {e}") from e
            self._started = True
            with self._lock:
                self._handles.clear()
            self._system = self._read_system()
            self._start_xid()

    def stop(self) -> None:
        """Stop the XID thread (within about one event timeout) and ``nvmlShutdown``. Idempotent."""
        with self._life:
            if self._xid is not None:
                self._xid.stop()
            if not self._started:
                return
            self._started = False
            with self._lock:
                self._handles.clear()
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as e:
                self._log.debug("nvmlShutdown: %s", e)

    def device_count(self) -> int:
        return int(pynvml.nvmlDeviceGetCount())

    def errors_by_kind(self) -> dict[str, int]:
        """NVML errors other than NOT_SUPPORTED since start, by kind ("gpu_is_lost", "unknown",
        the NVML_ERROR_* name in lower case): for ``kube_gpu_exporter_collector_errors_total``."""
        with self._lock:
            return dict(self._errors)

    def xid_counts(self) -> dict[tuple[str, int], int]:
        """(GPU uuid, XID code) -> events seen since the first start; served apart from
        ``read_gpu`` so that they stay readable while a GPU is lost (see ``GpuBackend``)."""
        xid = self._xid
        return xid.counts() if xid is not None else {}

    # -- reading a GPU -------------------------------------------------------------------------
    def read_gpu(self, index: int) -> Gpu:
        handle = self._required(index, "handle", self._handle, index)
        try:
            return _GpuReader(self, index, handle).read()
        except pynvml.NVMLError as e:  # GPU_IS_LOST on an optional read
            self._drop_handle(index)
            self._count(error_kind(e))
            raise GpuReadError(f"GPU {index}: {e}", error_kind(e)) from e

    # -- helpers used by _GpuReader ------------------------------------------------------------
    def _handle(self, index: int) -> Any:
        with self._lock:
            handle = self._handles.get(index)
        if handle is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            with self._lock:
                self._handles[index] = handle
        return handle

    def _drop_handle(self, index: int) -> None:
        with self._lock:
            self._handles.pop(index, None)
            self._util_since.pop(index, None)

    def _required(self, index: int, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            kind = error_kind(e)
            self._count(kind)
            if e.value == pynvml.NVML_ERROR_GPU_IS_LOST or what == "handle":
                self._drop_handle(index)
            raise GpuReadError(f"GPU {index}: {what}: {e}", kind) from e

    def _optional(self, index: int, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None when the GPU cannot serve it (see the module's error policy)."""
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            self._optional_failed(index, what, e)
            return None

    def _optional_failed(self, index: int, what: str, err: pynvml.NVMLError) -> None:
        if err.value == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise err
        if err.value in _ABSENT:
            if self._first(index, what):
                self._log.debug("GPU %d: %s not supported (%s)", index, what, err)
            return
        self._count(error_kind(err))
        if self._first(index, what):
            self._log.warning("GPU %d: reading %s failed: %s; series omitted", index, what, err)

    def _first(self, index: int, what: str) -> bool:
        with self._lock:
            if (index, what) in self._logged:
                return False
            self._logged.add((index, what))
            return True

    def _count(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def _util_timestamp(self, index: int, new: int | None = None) -> int:
        with self._lock:
            if new is not None:
                self._util_since[index] = max(new, self._util_since.get(index, 0))
            return self._util_since.get(index, 0)

    # -- start-up ------------------------------------------------------------------------------
    def _read_system(self) -> dict[str, str]:
        system = {"driver_version": "", "cuda_version": ""}
        try:
            system["driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as e:
            self._log.warning("driver version unknown: %s", e)
        try:
            v = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
            system["cuda_version"] = f"{v // 1000}.{v % 1000 // 10}"
        except pynvml.NVMLError as e:
            self._log.debug("CUDA version unknown: %s", e)
        return system

    def _start_xid(self) -> None:
        if self._xid is None:  # kept across restarts: XID counts stay cumulative
            self._xid = XidWatcher(timeout_ms=self._xid_timeout_ms, logger=self._log)
        try:
            self._xid.start(self._xid_gpus)
        except pynvml.NVMLError as e:
            self._log.warning("XID events unavailable: %s", e)

    def _xid_gpus(self) -> Iterator[tuple[str, Any]]:
        """(uuid, handle) of every GPU that can be looked up; runs in the XID thread."""
        try:
            count = self.device_count()
        except pynvml.NVMLError as e:
            self._log.warning("cannot count GPUs for XID events: %s", e)
            return
        for i in range(count):
            try:
                handle = self._handle(i)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError as e:
                self._drop_handle(i)
                self._log.warning("GPU %d: XID events not watched: %s", i, e)
                continue
            yield uuid, handle


class _GpuReader:
    """One read of one GPU: collects samples; every optional read goes through the backend."""

    def __init__(self, backend: NvmlBackend, index: int, handle: Any) -> None:
        self.b = backend
        self.index = index
        self.h = handle
        self.samples: list[Sample] = []

    def opt(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self.b._optional(self.index, what, fn, *args)

    def add(self, metric: MetricSpec, value: float | None, labels: tuple[str, ...] = ()) -> None:
        if value is not None:
            self.samples.append(Sample(metric, float(value), labels))

    def read(self) -> Gpu:
        uuid = _text(self.b._required(self.index, "uuid", pynvml.nvmlDeviceGetUUID, self.h))
        name = _text(self.b._required(self.index, "name", pynvml.nvmlDeviceGetName, self.h))
        info, mig_enabled = self._info(name)
        self._utilization()
        self._memory()
        self._thermals()
        self._power()
        self._clocks()
        self._pcie()
        self._remapped_rows()
        self._nvlink()
        self._field_batch()
        # XID counters are not read here: the collector adds them (GpuBackend.xid_counts).
        minor = self.opt("minor_number", pynvml.nvmlDeviceGetMinorNumber, self.h)
        migs, processes = self._devices_and_processes(name, mig_enabled)
        self.add(catalog.PROCESSES, len(processes) + sum(len(m.processes) for m in migs))
        return Gpu(index=self.index, uuid=uuid, up=True, minor_number=None if minor is None else int(minor),
                   info=info, samples=tuple(self.samples), mig_devices=migs, processes=processes)

    # -- identity ------------------------------------------------------------------------------
    def _info(self, name: str) -> tuple[dict[str, str], bool]:
        pci = self.opt("pci", pynvml.nvmlDeviceGetPciInfo, self.h)
        serial = self.opt("serial", pynvml.nvmlDeviceGetSerial, self.h)
        vbios = self.opt("vbios", pynvml.nvmlDeviceGetVbiosVersion, self.h)
        mig = self.opt("mig_mode", pynvml.nvmlDeviceGetMigMode, self.h)
        persistence = self.opt("persistence_mode", pynvml.nvmlDeviceGetPersistenceMode, self.h)
        compute = self.opt("compute_mode", pynvml.nvmlDeviceGetComputeMode, self.h)
        mig_enabled = mig is not None and mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        info = {
            "model": name,
            "pci_bus_id": _text(pci.busId) if pci is not None else "",
            "serial": _text(serial) if serial is not None else "",
            "vbios_version": _text(vbios) if vbios is not None else "",
            "driver_version": self.b._system.get("driver_version", ""),
            "cuda_version": self.b._system.get("cuda_version", ""),
            "mig_mode": "" if mig is None else ("enabled" if mig_enabled else "disabled"),
            "persistence_mode": "" if persistence is None else (
                "enabled" if persistence == pynvml.NVML_FEATURE_ENABLED else "disabled"),
            "compute_mode": "" if compute is None else _COMPUTE_MODES.get(compute, str(compute)),
        }
        return info, mig_enabled

    # -- activity and memory -----------------------------------------------------------------
    def _utilization(self) -> None:
        u = self.opt("utilization", pynvml.nvmlDeviceGetUtilizationRates, self.h)
        if u is not None:
            self.add(catalog.UTILIZATION, u.gpu / 100.0)
            self.add(catalog.MEMORY_UTILIZATION, u.memory / 100.0)
        enc = self.opt("encoder", pynvml.nvmlDeviceGetEncoderUtilization, self.h)
        if enc is not None:
            self.add(catalog.ENCODER_UTILIZATION, enc[0] / 100.0)
        dec = self.opt("decoder", pynvml.nvmlDeviceGetDecoderUtilization, self.h)
        if dec is not None:
            self.add(catalog.DECODER_UTILIZATION, dec[0] / 100.0)

    def _memory(self) -> None:
        mem = read_memory(self.b, self.index, self.h)
        if mem is None:
            return
        total, used, free, reserved = mem
        self.add(catalog.MEMORY_TOTAL, total)
        self.add(catalog.MEMORY_USED, used)
        self.add(catalog.MEMORY_FREE, free)
        self.add(catalog.MEMORY_RESERVED, reserved)

    # -- thermals, power, clocks ----------------------------------------------------------------
    def _thermals(self) -> None:
        self.add(catalog.TEMPERATURE,
                 self.opt("temperature", pynvml.nvmlDeviceGetTemperature, self.h, pynvml.NVML_TEMPERATURE_GPU))
        for label, threshold in _THRESHOLDS:
            value = self.opt(f"temp_threshold_{label}", pynvml.nvmlDeviceGetTemperatureThreshold, self.h, threshold)
            self.add(catalog.TEMPERATURE_THRESHOLD, value, (label,))

    def _power(self) -> None:
        mw = self.opt("power", pynvml.nvmlDeviceGetPowerUsage, self.h)
        self.add(catalog.POWER, None if mw is None else mw / 1000.0)
        limit = self.opt("power_limit", pynvml.nvmlDeviceGetEnforcedPowerLimit, self.h)
        self.add(catalog.POWER_LIMIT, None if limit is None else limit / 1000.0)
        fan = self.opt("fan", pynvml.nvmlDeviceGetFanSpeed, self.h)
        self.add(catalog.FAN_SPEED, None if fan is None else fan / 100.0)

    def _clocks(self) -> None:
        for label, clock in _CLOCKS:
            cur = self.opt(f"clock_{label}", pynvml.nvmlDeviceGetClockInfo, self.h, clock)
            self.add(catalog.CLOCK, None if cur is None else cur * _MHZ, (label,))
            top = self.opt(f"max_clock_{label}", pynvml.nvmlDeviceGetMaxClockInfo, self.h, clock)
            self.add(catalog.CLOCK_MAX, None if top is None else top * _MHZ, (label,))
        pstate = self.opt("pstate", pynvml.nvmlDeviceGetPerformanceState, self.h)
        self.add(catalog.PERFORMANCE_STATE, None if pstate == pynvml.NVML_PSTATE_UNKNOWN else pstate)
        self._clock_events()
        for label, policy in _VIOLATIONS:
            v = self.opt(f"violation_{label}", pynvml.nvmlDeviceGetViolationStatus, self.h, policy)
            self.add(catalog.VIOLATION_TIME, None if v is None else v.violationTime / 1e9, (label,))

    def _clock_events(self) -> None:
        """Clock event reasons; drivers before r535 only have the "throttle reasons" name."""
        try:
            reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(self.h)
        except pynvml.NVMLError_FunctionNotFound:
            reasons = self.opt("clock_events", pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, self.h)
        except pynvml.NVMLError as e:
            self.b._optional_failed(self.index, "clock_events", e)
            reasons = None
        if reasons is None:
            return
        for label, bit in _CLOCK_EVENT_REASONS:
            self.add(catalog.CLOCK_EVENT, 1.0 if reasons & bit else 0.0, (label,))

    # -- PCIe, memory health, NVLink ------------------------------------------------------------
    def _pcie(self) -> None:
        self.add(catalog.PCIE_LINK_GENERATION, self.opt("pcie_gen", pynvml.nvmlDeviceGetCurrPcieLinkGeneration, self.h))
        self.add(catalog.PCIE_LINK_MAX_GENERATION,
                 self.opt("pcie_max_gen", pynvml.nvmlDeviceGetMaxPcieLinkGeneration, self.h))
        self.add(catalog.PCIE_LINK_WIDTH, self.opt("pcie_width", pynvml.nvmlDeviceGetCurrPcieLinkWidth, self.h))
        self.add(catalog.PCIE_LINK_MAX_WIDTH, self.opt("pcie_max_width", pynvml.nvmlDeviceGetMaxPcieLinkWidth, self.h))
        for label, counter in (("rx", pynvml.NVML_PCIE_UTIL_RX_BYTES), ("tx", pynvml.NVML_PCIE_UTIL_TX_BYTES)):
            kbs = self.opt(f"pcie_throughput_{label}", pynvml.nvmlDeviceGetPcieThroughput, self.h, counter)
            self.add(catalog.PCIE_THROUGHPUT, None if kbs is None else kbs * _PCIE_KB, (label,))

    def _remapped_rows(self) -> None:
        rows = self.opt("remapped_rows", pynvml.nvmlDeviceGetRemappedRows, self.h)
        if rows is None:
            return
        correctable, uncorrectable, pending, failure = rows
        self.add(catalog.REMAPPED_ROWS, correctable, ("correctable",))
        self.add(catalog.REMAPPED_ROWS, uncorrectable, ("uncorrectable",))
        self.add(catalog.REMAPPED_ROWS_PENDING, 1.0 if pending else 0.0)
        self.add(catalog.REMAPPED_ROWS_FAILURE, 1.0 if failure else 0.0)

    def _nvlink(self) -> None:
        """Per link: up, error counters. Links are numbered densely; the first link NVML
        refuses (NOT_SUPPORTED, INVALID_ARGUMENT) ends the list."""
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                active = pynvml.nvmlDeviceGetNvLinkState(self.h, link)
            except pynvml.NVMLError as e:
                if e.value in _END_OF_LINKS:
                    if link == 0 and self.b._first(self.index, "nvlink"):
                        self.b._log.debug("GPU %d: no NVLink (%s)", self.index, e)
                else:
                    self.b._optional_failed(self.index, "nvlink", e)
                return
            labels = (str(link),)
            self.add(catalog.NVLINK_UP, 1.0 if active == pynvml.NVML_FEATURE_ENABLED else 0.0, labels)
            for label, counter in _NVLINK_ERRORS:
                n = self.opt(f"nvlink_errors_{label}", pynvml.nvmlDeviceGetNvLinkErrorCounter, self.h, link, counter)
                self.add(catalog.NVLINK_ERRORS, n, (str(link), label))

    def _field_batch(self) -> None:
        """One ``nvmlDeviceGetFieldValues`` for every field metric; per-field errors omit one series."""
        specs = fields.GPU_FIELDS
        try:
            values = pynvml.nvmlDeviceGetFieldValues(self.h, fields.field_ids(specs))
        except pynvml.NVMLError as e:
            self.b._optional_failed(self.index, "field_values", e)
            if e.value in _ABSENT:
                self._field_fallbacks(specs)
            return
        for spec, value in zip(specs, values):
            if value.nvmlReturn != pynvml.NVML_SUCCESS:
                self.b._optional_failed(self.index, spec.key, pynvml.NVMLError(value.nvmlReturn))
                continue
            self.add(spec.metric, fields.field_value(value) * spec.scale, spec.labels)

    def _field_fallbacks(self, specs: tuple[fields.FieldSpec, ...]) -> None:
        for spec in specs:
            if spec.fallback is not None:
                raw = self.opt(spec.key, spec.fallback, self.h)
                self.add(spec.metric, None if raw is None else float(raw) * spec.scale, spec.labels)

    # -- MIG and processes -----------------------------------------------------------------------
    def _devices_and_processes(
        self, name: str, mig_enabled: bool
    ) -> tuple[tuple[MigDevice, ...], tuple[GpuProcess, ...]]:
        """MIG devices (with their processes) and the processes on the full GPU.

        On a MIG GPU the parent's list holds every instance's processes, tagged with
        gpuInstanceId/computeInstanceId: they go to their MigDevice (merged with the MIG
        handle's own list, which may be empty or refused), and only gi 0xFFFFFFFF stays with
        the full GPU. NVML has no per-process utilisation in MIG mode, so none is asked for.
        """
        listed = self._listed_processes("processes", self.h)
        if not mig_enabled:
            return (), self._with_utilization(merge_processes(p for _, p in listed))
        by_instance = split_by_instance(listed)
        migs = self._mig_devices(name, by_instance)
        return migs, merge_processes(p for (gi, _), p in listed if gi == _NOT_MIG)

    def _mig_devices(
        self, parent_name: str, by_instance: dict[tuple[int, int], list[GpuProcess]]
    ) -> tuple[MigDevice, ...]:
        count = self.opt("mig", pynvml.nvmlDeviceGetMaxMigDeviceCount, self.h)
        devices = []
        for i in range(count or 0):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(self.h, i)
            except pynvml.NVMLError as e:
                if e.value not in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT):
                    self.b._optional_failed(self.index, "mig", e)
                continue
            device = self._mig_device(mig, parent_name, by_instance)
            if device is not None:
                devices.append(device)
        return tuple(devices)

    def _mig_device(
        self, mig: Any, parent_name: str, by_instance: dict[tuple[int, int], list[GpuProcess]]
    ) -> MigDevice | None:
        uuid = self.opt("mig_uuid", pynvml.nvmlDeviceGetUUID, mig)
        gi = self.opt("mig_gpu_instance_id", pynvml.nvmlDeviceGetGpuInstanceId, mig)
        ci = self.opt("mig_compute_instance_id", pynvml.nvmlDeviceGetComputeInstanceId, mig)
        if uuid is None or gi is None or ci is None:
            return None
        name = self.opt("mig_name", pynvml.nvmlDeviceGetName, mig)
        samples: list[Sample] = []
        mem = read_memory(self.b, self.index, mig, what="mig_memory")
        if mem is not None:
            total, used, free, _reserved = mem
            samples += [Sample(catalog.MIG_MEMORY_TOTAL, float(total)), Sample(catalog.MIG_MEMORY_USED, float(used)),
                        Sample(catalog.MIG_MEMORY_FREE, float(free))]
        own = (p for _, p in self._listed_processes("mig_processes", mig))
        procs = merge_processes(own, by_instance.get((int(gi), int(ci)), ()))
        samples.append(Sample(catalog.MIG_PROCESSES, float(len(procs))))
        return MigDevice(uuid=_text(uuid), gpu_instance_id=int(gi), compute_instance_id=int(ci),
                         profile=mig_profile(_text(name) if name is not None else "", parent_name),
                         samples=tuple(samples), processes=procs)

    def _listed_processes(self, what: str, handle: Any) -> list[tuple[tuple[int, int], GpuProcess]]:
        """((gpuInstanceId, computeInstanceId), process) for the compute processes of a GPU or
        MIG handle: the plain list, then the MPS list. MPS clients show only in the latter (the
        plain list has the MPS server); NOT_SUPPORTED / FUNCTION_NOT_FOUND there means no MPS.

        The ``_v3`` names on purpose: pynvml's unversioned wrappers turn FUNCTION_NOT_FOUND
        (an older driver) into ``NVMLLibraryMismatchError``, which is no ``NVMLError``."""
        plain = self.opt(what, pynvml.nvmlDeviceGetComputeRunningProcesses_v3, handle) or []
        mps = self.opt(f"{what}_mps", pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3, handle) or []
        return [(_instance_of(p), _process_of(p)) for p in [*plain, *mps]]

    def _with_utilization(self, procs: tuple[GpuProcess, ...]) -> tuple[GpuProcess, ...]:
        if not procs:
            return ()
        util = self._process_utilization()
        if util is None:
            return procs
        # No sample: the process did not use the SMs since the last read (nvml.h), so 0.0.
        return tuple(dataclasses.replace(p, utilization_ratio=util.get(p.pid, 0.0)) for p in procs)

    def _process_utilization(self) -> dict[int, float] | None:
        """SM utilisation by pid since the previous read; None when NVML cannot tell.

        NVML returns samples only for processes with non-zero utilisation since
        ``lastSeenTimeStamp``, which is kept per GPU so that each read covers the time since
        the previous one.
        """
        since = self.b._util_timestamp(self.index)
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(self.h, since)
        except pynvml.NVMLError as e:
            if e.value in _NO_UTIL_SAMPLES:
                return {}
            self.b._optional_failed(self.index, "process_utilization", e)
            return None
        latest: dict[int, Any] = {}
        for s in samples:
            if s.pid not in latest or s.timeStamp > latest[s.pid].timeStamp:
                latest[s.pid] = s
        if latest:
            self.b._util_timestamp(self.index, max(s.timeStamp for s in latest.values()))
        return {pid: min(s.smUtil, 100) / 100.0 for pid, s in latest.items()}


def _instance_of(p: Any) -> tuple[int, int]:
    gi = getattr(p, "gpuInstanceId", _NOT_MIG)
    ci = getattr(p, "computeInstanceId", _NOT_MIG)
    return (_NOT_MIG if gi is None else int(gi), _NOT_MIG if ci is None else int(ci))


def _process_of(p: Any) -> GpuProcess:
    mem = p.usedGpuMemory
    return GpuProcess(pid=int(p.pid), used_memory_bytes=None if mem is None else int(mem))


def split_by_instance(
    listed: Iterable[tuple[tuple[int, int], GpuProcess]]
) -> dict[tuple[int, int], list[GpuProcess]]:
    """The MIG processes of a parent GPU's list, by (gpuInstanceId, computeInstanceId)."""
    out: dict[tuple[int, int], list[GpuProcess]] = {}
    for instance, proc in listed:
        if instance[0] != _NOT_MIG:
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


def read_memory(
    backend: NvmlBackend, index: int, handle: Any, what: str = "memory"
) -> tuple[int, int, int, int | None] | None:
    """(total, used, free, reserved) bytes via the v2 API (``used`` excludes reserved memory);
    the v1 API on drivers without v2, where reserved is unknown (None: omitted, not 0) and
    counted in used."""
    try:
        m = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        return int(m.total), int(m.used), int(m.free), int(m.reserved)
    except pynvml.NVMLError as e:
        if e.value not in _ABSENT and e.value != pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
            backend._optional_failed(index, what, e)
            return None
    m = backend._optional(index, what, pynvml.nvmlDeviceGetMemoryInfo, handle)
    if m is None:
        return None
    return int(m.total), int(m.used), int(m.free), None


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
