"""The simulated backend: GPUs and a Kubernetes node played from a scenario.

``SimulatedBackend`` implements ``GpuBackend``: every reading is a pure function of the
scenario and of the time elapsed since the backend was made (``clock() - t0``), so a test with
a fake clock can pin values. The only state kept is a cache that makes the integrated counters
(energy, NVLink bytes) cheap to advance; it does not change their values.

``SimulatedCluster`` is the Kubernetes side of the same scenario: what the kubelet's
pod-resources API, the API server and ``/proc/<pid>/cgroup`` would say, so that simulated pods
flow through the real attribution code.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Callable

from .. import catalog as C
from ..snapshot import ContainerDevices, ContainerRef, Gpu, GpuProcess, MigDevice, PodMeta, PodResources, Sample
from .scenario import GPU_RESOURCE, NVLINK_ERROR_TYPES, FaultSpec, GpuSpec, LoadSpec, Scenario

__all__ = ["SimulatedBackend", "SimulatedCluster", "SimulatedGpuLost"]

CLOCK_EVENT_REASONS = (
    "gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
    "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "display_clock_setting",
)
VIOLATION_REASONS = ("power", "thermal", "sync_boost", "board_limit", "low_utilization", "reliability")
_MHZ = 1_000_000
_BUSY = 0.02  # utilisation above which clocks, PCIe link and performance state go up


class SimulatedGpuLost(Exception):
    """Raised by ``read_gpu`` while a ``gpu_lost`` fault holds the GPU."""


# -- Pure functions of (scenario, time) -------------------------------------------------------------


def _noise(seed: int, *parts: object) -> float:
    """Deterministic pseudo-noise in [-1, 1) for a (seed, parts) key."""
    d = hashlib.blake2b("\x1f".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2 ** 63 - 1.0


def _pattern(load: LoadSpec, t: float) -> float:
    x = t + load.phase
    span = load.max - load.min
    if load.pattern == "idle":
        return 0.0
    if load.pattern == "constant":
        return load.level
    if load.pattern == "sine":
        return load.min + span * (0.5 + 0.5 * math.sin(2 * math.pi * x / load.period))
    if load.pattern == "ramp":
        return load.min + span * ((x % load.period) / load.period)
    # square / bursty
    return load.max if (x % load.period) < load.duty * load.period else load.min


def _occurrence(f: FaultSpec, t: float, period: float | None) -> tuple[int, float]:
    """How many times the fault has started by ``t``, and when it last started."""
    if t < f.at:
        return 0, 0.0
    if period is None:
        return 1, f.at
    k = int((t - f.at) // period)
    return k + 1, f.at + k * period


def _active(f: FaultSpec, t: float, period: float | None) -> bool:
    n, start = _occurrence(f, t, period)
    return n > 0 and (f.duration is None or t - start < f.duration)


def _active_seconds(f: FaultSpec, t: float, period: float | None) -> float:
    n, start = _occurrence(f, t, period)
    if n == 0:
        return 0.0
    d = f.duration if f.duration is not None else math.inf
    return (n - 1) * d + min(t - start, d)


def _count(f: FaultSpec, t: float, period: float | None, amount: int) -> int:
    """Events counted by ``t``: ``amount`` per occurrence, spread evenly over ``duration`` if set."""
    n, start = _occurrence(f, t, period)
    if n == 0 or amount == 0:
        return 0
    if f.duration is None:
        return n * amount
    return (n - 1) * amount + int(amount * min(1.0, (t - start) / f.duration))


class _GpuModel:
    """One simulated GPU: its readings at time t."""

    def __init__(self, spec: GpuSpec, scenario: Scenario) -> None:
        self.spec = spec
        self.seed = scenario.seed
        self.period = scenario.repeat_every
        self.faults = tuple(f for f in scenario.faults if f.gpu == spec.index)
        self.lock = threading.Lock()
        d = spec.defaults
        self.idle_power = min(d.idle_power, spec.power_limit * 0.5)
        self.energy_base = 1e8 + (_noise(self.seed, spec.uuid, "energy0") + 1) * 2e9
        self.ecc_base = int((_noise(self.seed, spec.uuid, "ecc0") + 1) * 2)  # 0..3 lifetime corrected
        # integration cache: (whole second k, energy J, nvlink tx bytes, nvlink rx bytes) at time k
        self._acc = (0, 0.0, 0.0, 0.0)

    # -- state at t --

    def xid_counts(self, t: float) -> dict[int, int]:
        """XID events up to t by code (faults of kind xid; repeating schedules count again)."""
        xids: dict[int, int] = {}
        for f in self.faults:
            if f.kind == "xid" and (n := _count(f, t, self.period, f.count)):
                xids[f.code] = xids.get(f.code, 0) + n
        return xids

    def active(self, kind: str, t: float) -> list[FaultSpec]:
        return [f for f in self.faults if f.kind == kind and _active(f, t, self.period)]

    def utilization(self, t: float) -> float:
        load = self.spec.load
        u = _pattern(load, t)
        if load.noise:
            u += load.noise * _noise(self.seed, self.spec.index, "util", int(t))
        if self.active("power_cap", t):  # a burst that runs into the power limit
            u = max(u, 0.97)
        return min(1.0, max(0.0, u))

    def power_limit(self, t: float) -> float:
        caps = [f.limit_watts for f in self.active("power_cap", t) if f.limit_watts is not None]
        return min([self.spec.power_limit, *caps])

    def power(self, t: float) -> float:
        u = self.utilization(t)
        limit = self.spec.power_limit
        p = self.idle_power + (0.93 * limit - self.idle_power) * u
        p *= 1 + 0.01 * _noise(self.seed, self.spec.index, "power", int(t))
        if self.active("thermal", t):
            p *= 0.92
        if self.active("power_cap", t):
            p = self.power_limit(t)  # pinned at the enforced limit: that is why the cap acts
        return max(0.0, min(p, self.power_limit(t)))

    def nvlink_rate(self, t: float) -> float:
        """NVLink tx bytes/s over all links."""
        links_up = self.spec.nvlink_links - self._links_down(t)
        return self.utilization(t) * max(0, links_up) * 4e9

    def _links_down(self, t: float) -> int:
        down = {f.link for f in self.active("nvlink_down", t)}
        return self.spec.nvlink_links if None in down else len(down)

    def temperature(self, t: float) -> float:
        temp = 30 + 48 * self.power(t) / self.spec.power_limit
        for f in self.active("thermal", t):
            _, start = _occurrence(f, t, self.period)
            temp += f.temperature_rise * min(1.0, (t - start) / 30.0)  # heats up over 30 s
        return round(temp + 0.6 * _noise(self.seed, self.spec.index, "temp", int(t)))

    def integrals(self, t: float) -> tuple[float, float, float]:
        """(energy J, NVLink tx bytes, NVLink rx bytes) from time 0 to t: 1-second midpoint sums."""
        with self.lock:
            k, e, tx, rx = self._acc
            whole = int(t)
            if whole < k:
                k, e, tx, rx = 0, 0.0, 0.0, 0.0
            while k < whole:
                mid = k + 0.5
                e += self.power(mid)
                rate = self.nvlink_rate(mid)
                tx += rate
                rx += rate * 0.97
                k += 1
            self._acc = (k, e, tx, rx)
        frac = t - whole
        mid = whole + 0.5
        rate = self.nvlink_rate(mid) if self.spec.nvlink_links else 0.0
        return (self.energy_base + e + self.power(mid) * frac, tx + rate * frac, rx + rate * 0.97 * frac)

    # -- the reading --

    def read(self, t: float, node_driver: str, node_cuda: str, procs: list) -> Gpu:
        g, d = self.spec, self.spec.defaults
        lost = self.active("gpu_lost", t)
        if lost:
            raise SimulatedGpuLost(f"GPU {g.index} ({g.uuid}) has fallen off the bus (simulated gpu_lost fault)")
        u = self.utilization(t)
        busy = u > _BUSY
        thermal = bool(self.active("thermal", t))
        capped = bool(self.active("power_cap", t))
        s: list[Sample] = []

        def add(metric: C.MetricSpec, value: float, *labels: str) -> None:
            s.append(Sample(metric, float(value), tuple(labels)))

        # Processes: memory follows load a little (allocator caches stay), utilisation is a share.
        full: list[GpuProcess] = []
        per_mig: dict[str, list[GpuProcess]] = {m.uuid: [] for m in g.mig}
        for proc, ref in procs:
            mem = int(proc.memory * (0.8 + 0.2 * u))
            if ref.mig is not None:
                per_mig[ref.mig.uuid].append(GpuProcess(proc.pid, mem, None))
            else:
                full.append(GpuProcess(proc.pid, mem, round(u * proc.utilization, 4)))

        if not g.mig_enabled:  # NVML answers NOT_SUPPORTED for these in MIG mode
            add(C.UTILIZATION, round(u, 4))
            add(C.MEMORY_UTILIZATION, round(min(1.0, u * 0.55 * (1 + 0.05 * _noise(self.seed, g.index, "mu", int(t)))), 4))
            add(C.ENCODER_UTILIZATION, 0.0)
            add(C.DECODER_UTILIZATION, 0.0)

        used = sum(p.used_memory_bytes or 0 for p in full) + sum(
            p.used_memory_bytes or 0 for ps in per_mig.values() for p in ps)
        reserved = (int(g.memory * 0.0066) // (1024 * 1024)) * 1024 * 1024
        add(C.MEMORY_TOTAL, g.memory)
        add(C.MEMORY_USED, used)
        add(C.MEMORY_FREE, max(0, g.memory - reserved - used))
        add(C.MEMORY_RESERVED, reserved)

        temp = self.temperature(t)
        add(C.TEMPERATURE, temp)
        if d.memory_temperature:
            add(C.MEMORY_TEMPERATURE, temp + 6)
        add(C.TEMPERATURE_THRESHOLD, d.slowdown_c, "slowdown")
        add(C.TEMPERATURE_THRESHOLD, d.shutdown_c, "shutdown")
        add(C.TEMPERATURE_THRESHOLD, d.memory_max_c, "memory_max")
        add(C.TEMPERATURE_THRESHOLD, d.gpu_max_c, "gpu_max")
        if d.fan:
            add(C.FAN_SPEED, round(min(1.0, max(0.3, 0.3 + 0.7 * (temp - 30) / 60)), 2))

        energy, nv_tx, nv_rx = self.integrals(t)
        add(C.POWER, round(self.power(t), 3))
        add(C.POWER_LIMIT, self.power_limit(t))
        add(C.ENERGY, round(energy, 3))

        sm = d.sm_clock_max_mhz if busy else d.sm_clock_idle_mhz
        if thermal:
            sm *= 0.65
        if capped:
            sm *= 0.85
        sm = int(sm // 15 * 15)
        video = int(d.video_clock_max_mhz * 0.8) if busy else d.sm_clock_idle_mhz * 2
        for clock, now, top in (("graphics", sm, d.sm_clock_max_mhz), ("sm", sm, d.sm_clock_max_mhz),
                                ("memory", d.mem_clock_mhz, d.mem_clock_mhz),
                                ("video", video, d.video_clock_max_mhz)):
            add(C.CLOCK, now * _MHZ, clock)
            add(C.CLOCK_MAX, top * _MHZ, clock)
        add(C.PERFORMANCE_STATE, 0 if busy or full or any(per_mig.values()) or g.mig_enabled else 8)
        events = {"gpu_idle": not busy, "sw_power_cap": capped, "hw_slowdown": thermal,
                  "sw_thermal_slowdown": thermal, "hw_thermal_slowdown": thermal}
        for reason in CLOCK_EVENT_REASONS:
            add(C.CLOCK_EVENT, 1 if events.get(reason) else 0, reason)
        violation = {
            "power": sum(_active_seconds(f, t, self.period) for f in self.faults if f.kind == "power_cap"),
            "thermal": sum(_active_seconds(f, t, self.period) for f in self.faults if f.kind == "thermal"),
        }
        for reason in VIOLATION_REASONS:
            add(C.VIOLATION_TIME, round(violation.get(reason, 0.0), 3), reason)

        add(C.PCIE_LINK_GENERATION, d.pcie_generation if busy else 1)  # links downshift when idle
        add(C.PCIE_LINK_MAX_GENERATION, d.pcie_generation)
        add(C.PCIE_LINK_WIDTH, d.pcie_width)
        add(C.PCIE_LINK_MAX_WIDTH, d.pcie_width)
        add(C.PCIE_REPLAYS, self._total("pcie_replay", t, "count"))
        jitter = 1 + 0.1 * _noise(self.seed, g.index, "pcie", int(t))
        add(C.PCIE_THROUGHPUT, round(u * 6e9 * jitter), "rx")
        add(C.PCIE_THROUGHPUT, round(u * 2e9 * jitter), "tx")

        corrected = self._total("ecc", t, "corrected")
        uncorrected = self._total("ecc", t, "uncorrected")
        add(C.ECC_ERRORS, corrected, "corrected", "volatile")
        add(C.ECC_ERRORS, self.ecc_base + corrected, "corrected", "aggregate")
        add(C.ECC_ERRORS, uncorrected, "uncorrected", "volatile")
        add(C.ECC_ERRORS, uncorrected, "uncorrected", "aggregate")
        remaps = [f for f in self.faults if f.kind == "row_remap"]
        add(C.REMAPPED_ROWS, self._total("row_remap", t, "corrected", spread=False), "correctable")
        add(C.REMAPPED_ROWS, self._total("row_remap", t, "uncorrected", spread=False), "uncorrectable")
        add(C.REMAPPED_ROWS_PENDING, int(any(f.pending and _active(f, t, self.period) for f in remaps)))
        add(C.REMAPPED_ROWS_FAILURE, int(any(f.failure and _active(f, t, self.period) for f in remaps)))

        if g.nvlink_links:
            down = {f.link for f in self.active("nvlink_down", t)}
            errors = [f for f in self.faults if f.kind == "nvlink_errors"]
            for link in range(g.nvlink_links):
                add(C.NVLINK_UP, 0 if (None in down or link in down) else 1, str(link))
                for etype in NVLINK_ERROR_TYPES:
                    n = sum(_count(f, t, self.period, f.count) for f in errors
                            if f.link == link and f.error_type == etype)
                    add(C.NVLINK_ERRORS, n, str(link), etype)
            add(C.NVLINK_DATA, round(nv_rx), "rx")
            add(C.NVLINK_DATA, round(nv_tx), "tx")

        add(C.PROCESSES, len(full) + sum(len(ps) for ps in per_mig.values()))

        migs = []
        for m in g.mig:
            ps = per_mig[m.uuid]
            m_used = sum(p.used_memory_bytes or 0 for p in ps)
            migs.append(MigDevice(
                uuid=m.uuid, gpu_instance_id=m.gpu_instance_id, compute_instance_id=m.compute_instance_id,
                profile=m.profile, processes=tuple(ps),
                samples=(Sample(C.MIG_MEMORY_TOTAL, float(m.memory)), Sample(C.MIG_MEMORY_USED, float(m_used)),
                         Sample(C.MIG_MEMORY_FREE, float(max(0, m.memory - m_used))),
                         Sample(C.MIG_PROCESSES, float(len(ps)))),
            ))

        info = {
            "model": g.model, "pci_bus_id": g.pci_bus_id, "serial": g.serial, "vbios_version": g.vbios_version,
            "driver_version": node_driver, "cuda_version": node_cuda,
            "mig_mode": "enabled" if g.mig_enabled else "disabled",
            "persistence_mode": "enabled" if g.persistence_mode else "disabled",
            "compute_mode": g.compute_mode,
        }
        return Gpu(index=g.index, uuid=g.uuid, up=True, minor_number=g.index, info=info, samples=tuple(s),
                   mig_devices=tuple(migs), processes=tuple(full))

    def _total(self, kind: str, t: float, attr: str, *, spread: bool = True) -> int:
        total = 0
        for f in self.faults:
            if f.kind == kind:
                if spread:
                    total += _count(f, t, self.period, getattr(f, attr))
                else:
                    total += _occurrence(f, t, self.period)[0] * getattr(f, attr)
        return total


# -- Kubernetes side ----------------------------------------------------------------------------------


class SimulatedCluster:
    """The kubelet, API server and procfs view of a scenario's pods (static over time)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
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
                                    dict(pod.labels), {c.container_id: c.name for c in pod.containers})
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


# -- The backend ---------------------------------------------------------------------------------------


class SimulatedBackend:
    """A ``GpuBackend`` playing a scenario. Time 0 is when the backend is made."""

    simulated = True

    def __init__(self, scenario: Scenario, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.scenario = scenario
        self.cluster = SimulatedCluster(scenario)
        self._clock = clock
        self._t0 = clock()
        self._gpus = [_GpuModel(g, scenario) for g in scenario.gpus]
        self._procs: dict[int, list] = {g.index: [] for g in scenario.gpus}
        for pod in scenario.pods:
            for c in pod.containers:
                for p in c.processes:
                    ref = c.devices[p.device]
                    self._procs[ref.gpu].append((p, ref))
        self.started = False

    def elapsed(self) -> float:
        """Seconds of scenario time: ``clock() - t0``, never below 0."""
        return max(0.0, self._clock() - self._t0)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def device_count(self) -> int:
        return len(self._gpus)

    def read_gpu(self, index: int) -> Gpu:
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no GPU {index}; the scenario has {len(self._gpus)}")
        node = self.scenario.node
        return self._gpus[index].read(self.elapsed(), node.driver_version, node.cuda_version, self._procs[index])

    def xid_counts(self) -> dict[tuple[str, int], int]:
        t = self.elapsed()
        return {(g.spec.uuid, code): n for g in self._gpus for code, n in g.xid_counts(t).items()}

    # The Kubernetes side, for callers that hold only the backend.
    def pod_resources(self) -> PodResources:
        return self.cluster.pod_resources()

    def pod_meta(self) -> dict[str, PodMeta]:
        return self.cluster.pod_meta()

    def process_owner(self, pid: int) -> ContainerRef | None:
        return self.cluster.process_owner(pid)
