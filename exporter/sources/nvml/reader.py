"""One read of one GPU: its identity, its readings, its MIG instances and processes.

Every optional read goes through the backend's ``NvmlCalls`` (see ``calls.py``); what the
backend keeps about a GPU between reads lives in its ``GpuState`` until the handle is dropped.

Three cadences, because real NVML queries differ in cost by a factor of 1000 (``cost.py``):

* static facts (maximum clocks, thresholds, PCIe maximum link, power-limit range, default
  application clocks) are read once per handle: when the GPU is first read or comes back;
* slow counters (violation times, the energy field, fields that prove slow on this GPU) once
  per ``slow_interval``, served from their last reading in between;
* everything else on every read.

A collector group that is off (``--no-collector.<group>``, ``Cadence.collectors``) is not read
where that saves calls; what another consumer needs is read anyway (memory and utilisation for
the containers' usage, the process lists for attribution) and dropped by the renderer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Any, Callable, Mapping

import pynvml

from ... import catalog
from ...catalog import MetricSpec
from ...model import vocabulary
from ...model.gpu import Gpu, GpuIdentity, GpuProcess, MigDevice, Sample
from ...model.vocabulary import (
    DISABLED, ENABLED, HERTZ_PER_MEGAHERTZ, RATIO_PER_PERCENT, SECONDS_PER_NANOSECOND, WATTS_PER_MILLIWATT,
)
from . import fields, gpm, mig, processes
from .cost import QueryTimer
from .calls import ABSENT, NvmlCalls
from .units import scaled, text

# The NVML number behind each vocabulary name, where NVML asks for one.
_CLOCK_TYPES = dict(zip(vocabulary.CLOCK_DOMAINS, (
    pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM, pynvml.NVML_CLOCK_VIDEO), strict=True))
_APP_CLOCK_TYPES = {d: _CLOCK_TYPES[d] for d in vocabulary.APPLICATION_CLOCK_DOMAINS}
_THRESHOLDS = dict(zip(vocabulary.TEMPERATURE_THRESHOLDS, (
    pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN, pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
    pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX, pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX), strict=True))
_POLICIES = dict(zip(vocabulary.VIOLATION_POLICIES, (
    pynvml.NVML_PERF_POLICY_POWER, pynvml.NVML_PERF_POLICY_THERMAL, pynvml.NVML_PERF_POLICY_SYNC_BOOST,
    pynvml.NVML_PERF_POLICY_BOARD_LIMIT, pynvml.NVML_PERF_POLICY_LOW_UTILIZATION,
    pynvml.NVML_PERF_POLICY_RELIABILITY, pynvml.NVML_PERF_POLICY_TOTAL_APP_CLOCKS,
    pynvml.NVML_PERF_POLICY_TOTAL_BASE_CLOCKS), strict=True))
_NVLINK_COUNTERS = dict(zip(vocabulary.NVLINK_ERROR_TYPES, (
    pynvml.NVML_NVLINK_ERROR_DL_REPLAY, pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
    pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT, pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA), strict=True))
_CORRECTABLE, _UNCORRECTABLE = vocabulary.REMAPPED_ROW_TYPES

#: What a link that does not exist answers: links are numbered sparsely on some boards.
_NO_LINK = ABSENT | {pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_NOT_FOUND}


@dataclass
class GpuState:
    """What the backend keeps about one GPU between reads, dropped with its handle."""

    handle: Any
    identity: GpuIdentity | None = None  # read once: identify(), or the first read
    nvlink_links: tuple[int, ...] | None = None  # links that exist; None until probed
    # Error types whose total over links the field batch does not serve on this GPU, summed from the
    # per-link counters instead; None until the first read with links has decided.
    nvlink_summed: tuple[str, ...] | None = None
    util_since: int = 0  # NVML timestamp (us) of the newest process utilisation sample seen
    static: tuple[Sample, ...] | None = None  # facts that cannot change while the driver is loaded
    slow: tuple[Sample, ...] = ()  # the last reading of the slow counters, served in between
    slow_read_at: float | None = None  # monotonic time of that reading; None: never read
    slow_fields: frozenset[int] = frozenset()  # field ids that proved slow on this GPU (for now)
    field_times: fields.FieldTimes = field(default_factory=fields.FieldTimes)  # what proves it
    gpm: gpm.GpmSampler | None = None  # None: profiling off or unsupported; decided once
    gpm_checked: bool = False
    identify_seconds: float = 0.0  # NVML time of identify(), reported with the next read

    def close(self) -> None:
        """Free what NVML allocated for this GPU (GPM buffers)."""
        if self.gpm is not None:
            self.gpm.close()


@dataclass(frozen=True, slots=True)
class Cadence:
    """When the slow counters are due, and which collector groups are read at all (default: every one)."""

    slow_interval: float = 30.0
    collectors: AbstractSet[str] = catalog.all_collectors()
    monotonic: Callable[[], float] = time.monotonic


class GpuReader:
    """Reads one GPU once; collects samples as it goes."""

    def __init__(self, calls: NvmlCalls, index: int, state: GpuState, cadence: Cadence = Cadence()) -> None:
        self.calls = calls
        self.index = index
        self.state = state
        self.cadence = cadence
        self.h = state.handle
        self.samples: list[Sample] = []
        self.timer = QueryTimer()

    def on(self, group: str) -> bool:
        """Whether the collector group ``group`` is read."""
        return group in self.cadence.collectors

    def opt(self, what: str, fn: Any, *args: Any) -> Any:
        return self.calls.optional(self.index, what, fn, *args)

    def add(self, metric: MetricSpec, value: float | None, labels: tuple[str, ...] = (), factor: float = 1) -> None:
        """A sample of ``value`` (raw NVML number) times the vocabulary ``factor``; None: none."""
        if value is not None:
            self.samples.append(Sample(metric, scaled(float(value), factor), labels))

    def memory(self, handle: Any, what: str = "memory") -> tuple[int, int, int, int | None] | None:
        """(total, used, free, reserved) bytes of this GPU or of one of its MIG devices (``read_memory``)."""
        return read_memory(self.calls, self.index, handle, what)

    def _collect(self, read: Callable[[], None]) -> tuple[Sample, ...]:
        """The samples ``read`` adds, apart from this read's others (to keep them in the state)."""
        outer, self.samples = self.samples, []
        try:
            read()
            return tuple(self.samples)
        finally:
            self.samples = outer

    # -- identity ------------------------------------------------------------------------------
    def identify(self, system: Mapping[str, str]) -> GpuIdentity:
        """UUID (required), minor number and the facts of ``nvidia_gpu_info``; kept in the state."""
        with self.timer.group("identity"):
            identity = self._identify(system)
        self.state.identify_seconds = self.timer.seconds["identity"]
        return identity

    def _identify(self, system: Mapping[str, str]) -> GpuIdentity:
        uuid = text(self.calls.required(self.index, "uuid", pynvml.nvmlDeviceGetUUID, self.h))
        minor = self.opt("minor_number", pynvml.nvmlDeviceGetMinorNumber, self.h)
        name = self.opt("name", pynvml.nvmlDeviceGetName, self.h)
        pci = self.opt("pci", pynvml.nvmlDeviceGetPciInfo, self.h)
        serial = self.opt("serial", pynvml.nvmlDeviceGetSerial, self.h)
        vbios = self.opt("vbios", pynvml.nvmlDeviceGetVbiosVersion, self.h)
        arch = self.opt("architecture", pynvml.nvmlDeviceGetArchitecture, self.h)
        capability = self.opt("compute_capability", pynvml.nvmlDeviceGetCudaComputeCapability, self.h)
        part = self.opt("board_part_number", pynvml.nvmlDeviceGetBoardPartNumber, self.h)
        info = {
            "model": "" if name is None else text(name),
            "pci_bus_id": "" if pci is None else text(pci.busId),
            "serial": "" if serial is None else text(serial),
            "vbios_version": "" if vbios is None else text(vbios),
            "driver_version": system.get("driver_version", ""),
            "cuda_version": system.get("cuda_version", ""),
            **self._modes(),
            "architecture": "" if arch is None else vocabulary.ARCHITECTURES.get(int(arch), str(arch)),
            "compute_capability": "" if capability is None else f"{capability[0]}.{capability[1]}",
            "board_part_number": "" if part is None else text(part),
        }
        identity = GpuIdentity(self.index, uuid, None if minor is None else int(minor), info)
        self.state.identity = identity
        return identity

    def _modes(self) -> dict[str, str]:
        """The facts of ``nvidia_gpu_info`` that an operator can change at run time."""
        mig = self.opt("mig_mode", pynvml.nvmlDeviceGetMigMode, self.h)
        persistence = self.opt("persistence_mode", pynvml.nvmlDeviceGetPersistenceMode, self.h)
        compute = self.opt("compute_mode", pynvml.nvmlDeviceGetComputeMode, self.h)
        return {
            "mig_mode": "" if mig is None else _enabled(mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE),
            "persistence_mode": "" if persistence is None else _enabled(persistence == pynvml.NVML_FEATURE_ENABLED),
            "compute_mode": "" if compute is None else (
                vocabulary.COMPUTE_MODES[compute] if 0 <= compute < len(vocabulary.COMPUTE_MODES) else str(compute)),
        }

    # -- the whole reading ---------------------------------------------------------------------
    def read(self, system: Mapping[str, str]) -> Gpu:
        identity = self.state.identity or self.identify(system)
        self.timer.seconds["identity"], self.state.identify_seconds = self.state.identify_seconds, 0.0
        group = self.timer.group
        with group("modes"):
            modes = self._modes()  # read every time: they change, and MIG mode decides what to read
        mig_enabled = modes["mig_mode"] == ENABLED
        self.samples.extend(self._static_facts())
        with group("activity"):
            self._utilization()
            self._memory()
        with group("thermal_power"):
            if self.on("thermal"):
                self._thermals()
            if self.on("power"):
                self._power()
        with group("clocks"):
            self._clocks()
        with group("pcie"):
            if self.on("pcie"):
                self._pcie()
        with group("memory_errors"):
            self._remapped_rows()
        with group("nvlink"):
            if self.on("nvlink") or self.on("nvlink.links"):
                self._nvlink()
        with group("fields"):
            answered = fields.read_fast(self, fields.split(self._fields(), self.state.slow_fields)[0])
        with group("nvlink"):
            self._nvlink_summed(decide=answered)
        self.samples.extend(self._slow_counters())
        # XID counters are not read here: the collector adds them (GpuBackend.xid_counts).
        with group("processes"):  # read whatever the groups: attribution needs them
            migs, procs, procs_read = self._devices_and_processes(identity.info.get("model", ""), mig_enabled)
        self.add(catalog.PROCESSES, len(procs) + sum(len(m.processes) for m in migs))
        if self.on("profiling"):
            with group("profiling"):
                migs = self._profiling(migs)
        return Gpu(index=self.index, uuid=identity.uuid, up=True, minor_number=identity.minor_number,
                   info={**identity.info, **modes}, samples=tuple(self.samples), mig_devices=migs,
                   processes=procs, processes_read=procs_read, nvml_seconds=dict(self.timer.seconds))

    # -- static facts and slow counters ------------------------------------------------------
    def _static_facts(self) -> tuple[Sample, ...]:
        """The static facts: read on the first read of a handle, then served from the state. A
        read with errors (other than NOT_SUPPORTED) is not kept: the next read tries again."""
        if self.state.static is not None:
            return self.state.static
        errors = sum(self.calls.counts().values())
        with self.timer.group("static"):
            static = self._collect(self._static)
        if sum(self.calls.counts().values()) == errors:
            self.state.static = static
        return static

    def _fields(self) -> fields.Batch:
        """The fields of the groups read, NVLink's only where the GPU has links."""
        return fields.of_groups(fields.GPU_FIELDS, self.cadence.collectors, nvlink=bool(self.state.nvlink_links))

    def _slow_counters(self) -> tuple[Sample, ...]:
        """The slow counters: read when ``slow_interval`` has passed since their last reading,
        served from that reading in between."""
        now = self.cadence.monotonic()
        last = self.state.slow_read_at
        if last is None or now - last >= self.cadence.slow_interval:
            slow = fields.split(self._fields(), self.state.slow_fields)[1]  # with any field just found slow
            with self.timer.group("slow"):
                self.state.slow = self._collect(lambda: self._slow(slow))
            self.state.slow_read_at = now
        return self.state.slow

    def _static(self) -> None:
        """What cannot change while the driver is loaded: read once per handle."""
        if self.on("thermal"):
            for label, threshold in _THRESHOLDS.items():
                value = self.opt(f"temp_threshold_{label}", pynvml.nvmlDeviceGetTemperatureThreshold, self.h, threshold)
                self.add(catalog.TEMPERATURE_THRESHOLD, value, (label,))
        if self.on("pcie"):
            self.add(catalog.PCIE_LINK_MAX_GENERATION,
                     self.opt("pcie_max_gen", pynvml.nvmlDeviceGetMaxPcieLinkGeneration, self.h))
            self.add(catalog.PCIE_LINK_MAX_WIDTH,
                     self.opt("pcie_max_width", pynvml.nvmlDeviceGetMaxPcieLinkWidth, self.h))
        if not self.on("limits"):
            return
        for label, clock in _CLOCK_TYPES.items():  # 2.5 ms each on an H200
            self.add(catalog.CLOCK_MAX, self.opt(f"max_clock_{label}", pynvml.nvmlDeviceGetMaxClockInfo, self.h, clock),
                     (label,), HERTZ_PER_MEGAHERTZ)
        for label, clock in _APP_CLOCK_TYPES.items():
            default = self.opt(f"default_app_clock_{label}", pynvml.nvmlDeviceGetDefaultApplicationsClock,
                               self.h, clock)
            self.add(catalog.APPLICATION_CLOCK_DEFAULT, default, (label,), HERTZ_PER_MEGAHERTZ)
        limits = self.opt("power_limit_range", pynvml.nvmlDeviceGetPowerManagementLimitConstraints, self.h)
        if limits is not None:
            self.add(catalog.POWER_LIMIT_MIN, limits[0], factor=WATTS_PER_MILLIWATT)
            self.add(catalog.POWER_LIMIT_MAX, limits[1], factor=WATTS_PER_MILLIWATT)
        self.add(catalog.POWER_LIMIT_DEFAULT,
                 self.opt("power_limit_default", pynvml.nvmlDeviceGetPowerManagementDefaultLimit, self.h),
                 factor=WATTS_PER_MILLIWATT)

    def _slow(self, slow_fields: tuple[fields.FieldSpec, ...]) -> None:
        """Counters that cost a millisecond or more each on real drivers."""
        if self.on("throttle"):
            for label, policy in _POLICIES.items():  # 0.85 ms per reason on an H200
                v = self.opt(f"violation_{label}", pynvml.nvmlDeviceGetViolationStatus, self.h, policy)
                self.add(catalog.VIOLATION_TIME, None if v is None else v.violationTime, (label,),
                         SECONDS_PER_NANOSECOND)
        if slow_fields:
            fields.read_slow(self, slow_fields)

    # -- activity and memory -----------------------------------------------------------------
    def _utilization(self) -> None:
        """NOT_SUPPORTED on a MIG-enabled GPU (nvml.h): its instances have no such reading. Read
        whatever the groups: a container holding the GPU alone has the GPU's utilisation."""
        u = self.opt("utilization", pynvml.nvmlDeviceGetUtilizationRates, self.h)
        if u is not None:
            self.add(catalog.UTILIZATION, u.gpu, factor=RATIO_PER_PERCENT)
            self.add(catalog.MEMORY_UTILIZATION, u.memory, factor=RATIO_PER_PERCENT)
        if not self.on("utilization"):
            return
        for what, fn, metric in (("encoder", pynvml.nvmlDeviceGetEncoderUtilization, catalog.ENCODER_UTILIZATION),
                                 ("decoder", pynvml.nvmlDeviceGetDecoderUtilization, catalog.DECODER_UTILIZATION)):
            codec = self.opt(what, fn, self.h)  # (percent, sampling period in us)
            self.add(metric, None if codec is None else codec[0], factor=RATIO_PER_PERCENT)

    def _memory(self) -> None:
        """Read whatever the groups: a container holding the GPU alone uses the GPU's memory."""
        mem = self.memory(self.h)
        if mem is None:
            return
        total, used, free, reserved = mem
        self.add(catalog.MEMORY_TOTAL, total)
        self.add(catalog.MEMORY_USED, used)
        self.add(catalog.MEMORY_FREE, free)
        self.add(catalog.MEMORY_RESERVED, reserved)
        if not self.on("memory"):
            return
        bar1 = self.opt("bar1", pynvml.nvmlDeviceGetBAR1MemoryInfo, self.h)
        if bar1 is not None:
            self.add(catalog.BAR1_TOTAL, bar1.bar1Total)
            self.add(catalog.BAR1_USED, bar1.bar1Used)

    # -- thermals, power, clocks ----------------------------------------------------------------
    def _thermals(self) -> None:
        self.add(catalog.TEMPERATURE,
                 self.opt("temperature", pynvml.nvmlDeviceGetTemperature, self.h, pynvml.NVML_TEMPERATURE_GPU))
        self.add(catalog.FAN_SPEED, self.opt("fan", pynvml.nvmlDeviceGetFanSpeed, self.h), factor=RATIO_PER_PERCENT)

    def _power(self) -> None:
        self.add(catalog.POWER, self.opt("power", pynvml.nvmlDeviceGetPowerUsage, self.h), factor=WATTS_PER_MILLIWATT)
        self.add(catalog.POWER_LIMIT, self.opt("power_limit", pynvml.nvmlDeviceGetEnforcedPowerLimit, self.h),
                 factor=WATTS_PER_MILLIWATT)

    def _clocks(self) -> None:
        if self.on("clocks"):
            for label, clock in _CLOCK_TYPES.items():
                self.add(catalog.CLOCK, self.opt(f"clock_{label}", pynvml.nvmlDeviceGetClockInfo, self.h, clock),
                         (label,), HERTZ_PER_MEGAHERTZ)
            pstate = self.opt("pstate", pynvml.nvmlDeviceGetPerformanceState, self.h)
            self.add(catalog.PERFORMANCE_STATE, None if pstate == pynvml.NVML_PSTATE_UNKNOWN else pstate)
        if self.on("limits"):
            for label, clock in _APP_CLOCK_TYPES.items():  # an operator may set them at run time (nvidia-smi -ac)
                self.add(catalog.APPLICATION_CLOCK,
                         self.opt(f"app_clock_{label}", pynvml.nvmlDeviceGetApplicationsClock, self.h, clock),
                         (label,), HERTZ_PER_MEGAHERTZ)
        if self.on("throttle"):
            self._clock_events()

    def _clock_events(self) -> None:
        """Clock event reasons; drivers before r535 only have the "throttle reasons" name."""
        try:
            reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(self.h)
        except pynvml.NVMLError_FunctionNotFound:
            reasons = self.opt("clock_events", pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, self.h)
        except pynvml.NVMLError as e:
            self.calls.failed(self.index, "clock_events", e)
            reasons = None
        if reasons is None:
            return
        for label, bit in vocabulary.CLOCK_EVENT_REASONS:
            self.add(catalog.CLOCK_EVENT, 1.0 if reasons & bit else 0.0, (label,))

    # -- PCIe, memory health, NVLink ------------------------------------------------------------
    def _pcie(self) -> None:
        """The current link (its maximum is static); its traffic comes as byte counters in the
        field batch, not from the 20 ms sample of ``nvmlDeviceGetPcieThroughput``."""
        self.add(catalog.PCIE_LINK_GENERATION, self.opt("pcie_gen", pynvml.nvmlDeviceGetCurrPcieLinkGeneration, self.h))
        self.add(catalog.PCIE_LINK_WIDTH, self.opt("pcie_width", pynvml.nvmlDeviceGetCurrPcieLinkWidth, self.h))

    def _remapped_rows(self) -> None:
        rows = self.opt("remapped_rows", pynvml.nvmlDeviceGetRemappedRows, self.h)
        if rows is None:
            return
        correctable, uncorrectable, pending, failure = rows
        self.add(catalog.REMAPPED_ROWS, correctable, (_CORRECTABLE,))
        self.add(catalog.REMAPPED_ROWS, uncorrectable, (_UNCORRECTABLE,))
        self.add(catalog.REMAPPED_ROWS_PENDING, 1.0 if pending else 0.0)
        self.add(catalog.REMAPPED_ROWS_FAILURE, 1.0 if failure else 0.0)

    def _nvlink(self) -> None:
        """The links' states: per GPU, how many are up of how many there are; per link (group
        ``nvlink.links``) each one's state and error counters. The GPU's error totals come from
        the field batch (``fields.py``), one field per type for every link at once.

        Link numbers are not dense (a board may have links 0, 1, 4, 5): the first read probes
        every possible link and keeps those that exist in the GPU's state, so that later reads
        ask only for those; a GPU without any keeps none and costs no call at all.
        """
        known = self.state.nvlink_links
        present: list[int] = []
        states: list[bool] = []  # of the links whose state was read
        per_link = self.on("nvlink.links")
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS) if known is None else known:
            try:
                active = pynvml.nvmlDeviceGetNvLinkState(self.h, link) == pynvml.NVML_FEATURE_ENABLED
            except pynvml.NVMLError as e:
                if e.value not in _NO_LINK:
                    self.calls.failed(self.index, "nvlink", e)
                    present.append(link)  # it exists; the error may pass
                continue
            present.append(link)
            states.append(active)
            if per_link:
                self.add(catalog.NVLINK_LINK_UP, 1.0 if active else 0.0, (str(link),))
                for label, counter in _NVLINK_COUNTERS.items():
                    n = self.opt(f"nvlink_errors_{label}", pynvml.nvmlDeviceGetNvLinkErrorCounter, self.h, link,
                                 counter)
                    self.add(catalog.NVLINK_LINK_ERRORS, n, (str(link), label))
        if known is None:
            self.state.nvlink_links = tuple(present)
            if not present:
                self.calls.absent(self.index, "nvlink", "no link answered")
        if self.on("nvlink") and present and len(states) == len(present):  # a link unread: no false "down"
            self.add(catalog.NVLINK_LINKS_UP, sum(states))
            self.add(catalog.NVLINK_LINKS, len(present))

    def _nvlink_summed(self, decide: bool) -> None:
        """The GPU's error totals that the field batch does not serve (a driver without the
        total fields), summed over its links' own counters: decided on the first read with
        links whose batch answered (``decide``), so that a GPU without any error counter is not
        asked again on every read. A sum with a link missing is no sample (it would read as a
        counter reset)."""
        links = self.state.nvlink_links
        if not links or not self.on("nvlink"):
            return
        summed = self.state.nvlink_summed
        if summed is None:
            served = {s.labels[0] for s in (*self.samples, *self.state.slow) if s.metric is catalog.NVLINK_ERRORS}
            summed = tuple(t for t in _NVLINK_COUNTERS if t not in served)
        per_link = {s.labels: s.value for s in self.samples if s.metric is catalog.NVLINK_LINK_ERRORS}
        found = []
        for label in summed:
            counts = [per_link.get((str(link), label)) for link in links]
            if None in counts and not self.on("nvlink.links"):
                counts = [self.opt(f"nvlink_errors_{label}", pynvml.nvmlDeviceGetNvLinkErrorCounter, self.h, link,
                                   _NVLINK_COUNTERS[label]) for link in links]
            if any(c is not None for c in counts):
                found.append(label)
            if None not in counts:
                self.add(catalog.NVLINK_ERRORS, sum(counts), (label,))  # type: ignore[arg-type]
        if self.state.nvlink_summed is None and decide:
            self.state.nvlink_summed = tuple(found)

    # -- MIG and processes -----------------------------------------------------------------------
    def _devices_and_processes(
        self, name: str, mig_enabled: bool
    ) -> tuple[tuple[MigDevice, ...], tuple[GpuProcess, ...], bool]:
        """MIG devices (with their processes), the processes on the full GPU and whether the
        GPU's list was read. NVML has no per-process utilisation in MIG mode, so none is asked
        for there."""
        listed, read = processes.listed_processes(self.calls, self.index, "processes", self.h)
        if not mig_enabled:
            procs, self.state.util_since = processes.with_utilization(
                self.calls, self.index, self.h, processes.merge_processes(p for _, p in listed),
                self.state.util_since)
            return (), procs, read
        by_instance = processes.split_by_instance(listed)
        return mig.read_mig_devices(self, name, by_instance, read), processes.on_full_gpu(listed), read

    def _profiling(self, migs: tuple[MigDevice, ...]) -> tuple[MigDevice, ...]:
        """GPM metrics of the GPU and of each GPU instance, where the GPU serves GPM. GPM counts
        per GPU instance, not per compute instance: a GPU instance's metrics go on its first
        compute instance alone (``gpu_instances_first``), so that no sum counts them twice."""
        if not self.state.gpm_checked:
            self.state.gpm_checked = True
            if gpm.supported(self.calls, self.index, self.h):
                self.state.gpm = gpm.GpmSampler(self.calls, self.index)
        sampler = self.state.gpm
        if sampler is None:
            return migs
        self.samples.extend(sampler.read(self.h))
        instances = {m.gpu_instance_id for m in migs}
        sampler.retain(instances)
        by_instance = {gi: tuple(sampler.read(self.h, gi)) for gi in sorted(instances)}
        carriers = mig.gpu_instances_first(migs)
        return tuple(replace(m, samples=m.samples + by_instance[m.gpu_instance_id]) if m.uuid in carriers else m
                     for m in migs)

def _enabled(on: bool) -> str:
    return ENABLED if on else DISABLED


def read_memory(
    calls: NvmlCalls, index: int, handle: Any, what: str = "memory"
) -> tuple[int, int, int, int | None] | None:
    """(total, used, free, reserved) bytes via the v2 API (``used`` excludes reserved memory);
    the v1 API on drivers without v2, where reserved is unknown (None: omitted, not 0) and
    counted in used."""
    try:
        m = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        return int(m.total), int(m.used), int(m.free), int(m.reserved)
    except pynvml.NVMLError as e:
        if e.value not in ABSENT and e.value != pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
            calls.failed(index, what, e)
            return None
        calls.absent(index, f"{what}_v2", f"{e}; reserved memory unknown, counted in used")
    m = calls.optional(index, what, pynvml.nvmlDeviceGetMemoryInfo, handle)
    if m is None:
        return None
    return int(m.total), int(m.used), int(m.free), None
