"""One simulated GPU: every reading a pure function of the scenario and of the scenario time.

From the load pattern's utilisation *u* at time *t* follow power, temperature, clocks, PCIe and
NVLink traffic, process memory and, on Hopper models, the GPM profiling ratios (a ``bursty``
load reads as an inference server, any other as training; see ``_Profile``); the faults active
at *t* change them (``docs/scenarios.md`` says how). Counters that integrate a rate (energy,
PCIe and NVLink bytes) are integrals from time 0 in closed form (``totals``): a day costs as
little as a second. The only state kept is the totals at the last time asked for, which makes
them cheaper still to advance, without changing their values. Every label value comes from
``exporter.vocabulary``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from types import MappingProxyType
from typing import Iterable, Iterator, NamedTuple

from ... import catalog as C
from ...model import vocabulary as V
from ...model.gpu import Gpu, GpuIdentity, GpuProcess, MigDevice, Sample
from ..nvml.cost import QueryTimer
from .scenario import DeviceRef, FaultSpec, GpuSpec, LoadSpec, MigSpec, ProcessSpec, Scenario

_BUSY = 0.02  # utilisation above which clocks, PCIe link and performance state go up

#: Fault kinds whose active time a violation policy counts. ``total_app_clocks`` is any time
#: below the application clocks (both kinds); ``total_base_clocks`` time below the base clock,
#: where only a thermal episode takes the clocks (to 65 % of the maximum).
_VIOLATION_CAUSES: dict[str, tuple[str, ...]] = {
    "power": ("power_cap",),
    "thermal": ("thermal",),
    "total_app_clocks": ("power_cap", "thermal"),
    "total_base_clocks": ("thermal",),
}


# -- Pure functions of (scenario, time) -------------------------------------------------------


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


def _count(f: FaultSpec, t: float, period: float | None, amount: int) -> int:
    """Events counted by ``t``: ``amount`` per occurrence, spread evenly over ``duration`` if set."""
    n, start = _occurrence(f, t, period)
    if n == 0 or amount == 0:
        return 0
    if f.duration is None:
        return n * amount
    return (n - 1) * amount + int(amount * min(1.0, (t - start) / f.duration))


def _covered(spans: list[tuple[float, float]], end: float) -> float:
    """Length of the union of ``spans`` within [0, end]."""
    total = reach = 0.0
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


def _active_seconds(faults: list[FaultSpec], t: float, period: float | None) -> float:
    """Seconds up to ``t`` during which at least one of ``faults`` was active (overlaps count once).

    For faults with a duration, as the kinds counted here have: a repeating schedule keeps every
    fault within one period, so each period covers the same spans."""
    spans = [(f.at, f.at + (f.duration if f.duration is not None else math.inf)) for f in faults]
    if period is None:
        return _covered(spans, t)
    whole, rest = divmod(t, period)
    return whole * _covered(spans, period) + _covered(spans, rest)


class _Chip(NamedTuple):
    """What ``nvidia_gpu_info`` says of a model's chip, and whether it serves GPM (Hopper and newer)."""

    architecture: str
    compute_capability: str
    board_part_number: str
    gpm: bool


_CHIPS: dict[str, _Chip] = {
    "A100": _Chip("ampere", "8.0", "692-2G506-0210-002", False),
    "L40S": _Chip("ada", "8.9", "900-2G133-0080-000", False),
    "H200": _Chip("hopper", "9.0", "692-2G530-0200-000", True),
}
_HOPPER = _Chip("hopper", "9.0", "692-2G520-0200-000", True)  # H100 and any model not named above


def _chip(model: str) -> _Chip:
    return next((chip for name, chip in _CHIPS.items() if name in model), _HOPPER)


class _Profile(NamedTuple):
    """GPM activity per unit of utilisation for a kind of work (the shares a profiler sees)."""

    sm_active: float
    sm_occupancy: float
    tensor: float
    dram: float
    fp32: float
    fp16: float
    integer: float


#: Training (a steady load: dense matmuls) keeps the tensor cores busy, as a bf16 matmul loop on
#: an H200 did (SM 96 %, occupancy 14 %, tensor 93 %, DRAM 18 %); an inference server (bursty)
#: runs small batches: few warps per SM, more memory-bound, little tensor work.
_TRAINING = _Profile(sm_active=0.96, sm_occupancy=0.3, tensor=0.9, dram=0.35, fp32=0.05, fp16=0.02, integer=0.1)
_INFERENCE = _Profile(sm_active=0.6, sm_occupancy=0.08, tensor=0.3, dram=0.5, fp32=0.12, fp16=0.05, integer=0.15)


def _activity(u: float, load: LoadSpec) -> list[Sample]:
    """GPM activity of a GPU, or of a MIG GPU instance, busy ``u`` with the kind of work of
    ``load`` (a ``bursty`` load reads as an inference server, any other as training)."""
    p = _INFERENCE if load.pattern == "bursty" else _TRAINING
    ratios = {C.GRAPHICS_ACTIVE: 1.0, C.SM_ACTIVE: p.sm_active, C.SM_OCCUPANCY: p.sm_occupancy,
              C.TENSOR_ACTIVE: p.tensor, C.DRAM_ACTIVE: p.dram}
    samples = [Sample(metric, round(u * share, 4)) for metric, share in ratios.items()]
    fp64, fp32, fp16, integer, hmma, imma, dfma = V.PROFILING_PIPES
    pipes = {fp64: 0.0, fp32: p.fp32, fp16: p.fp16, integer: p.integer, hmma: p.tensor, imma: 0.0, dfma: 0.0}
    return samples + [Sample(C.PIPE_ACTIVE, round(u * pipes[pipe], 4), (pipe,)) for pipe in V.PROFILING_PIPES]


class _Totals(NamedTuple):
    """Integrated counters, or their rates per second: J (W), bytes (bytes/s)."""

    energy: float = 0.0
    nvlink_rx: float = 0.0
    nvlink_tx: float = 0.0
    pcie_rx: float = 0.0
    pcie_tx: float = 0.0

    def plus(self, more: _Totals) -> _Totals:
        return _Totals(*(total + x for total, x in zip(self, more)))


#: What a GPU draws and moves at utilisation u: power idle + (BUSY_POWER x limit - idle) x u,
#: times THERMAL_POWER during a thermal episode (clocks held down); PCIe rx and tx bytes/s per unit
#: of u; NVLink bytes/s per link up per unit of u (tx; rx a share of it).
_BUSY_POWER, _THERMAL_POWER = 0.93, 0.92
_PCIE_RX, _PCIE_TX = 6e9, 2e9
_NVLINK_TX, _NVLINK_RX_SHARE = 4e9, 0.97
#: Utilisation during a power-cap episode: at least this (a burst that runs into the limit).
_CAPPED_UTILIZATION = 0.97
#: Fault kinds that change how fast the integrated counters grow.
_RATE_FAULTS = ("thermal", "power_cap", "nvlink_down")


def _load_integral(load: LoadSpec, a: float, b: float, floor: float = 0.0) -> float:
    """The integral of ``max(_pattern(load, s), floor)`` over s from ``a`` to ``b``, exactly."""
    return _antiderivative(load, b + load.phase, floor) - _antiderivative(load, a + load.phase, floor)


def _antiderivative(load: LoadSpec, x: float, floor: float) -> float:
    """An antiderivative of ``max(pattern, floor)`` at pattern time ``x`` (``t + phase``): each
    pattern is a repetition of pieces (constant, linear, a sine arc) whose integrals are known."""
    lo, hi, period = load.min, load.max, load.period
    whole, r = divmod(x, period)
    if load.pattern == "idle":
        return max(0.0, floor) * x
    if load.pattern == "constant":
        return max(load.level, floor) * x
    if load.pattern in ("square", "bursty"):
        lo, hi, on = max(lo, floor), max(hi, floor), load.duty * period
        return whole * (hi * on + lo * (period - on)) + (hi * r if r < on else hi * on + lo * (r - on))
    if load.pattern == "ramp":  # lo + (hi - lo) r / period in each period; below floor until `cross`
        span = hi - lo
        cross = period if floor >= hi else 0.0 if floor <= lo else (floor - lo) / span * period

        def within(r: float) -> float:
            if r <= cross:
                return floor * r
            return floor * cross + lo * (r - cross) + span * (r * r - cross * cross) / (2 * period)

        return whole * within(period) + within(r)
    # sine: mid + amp sin(w x), at or above floor on the arc [theta, theta + arc] of each turn
    mid, amp, w = (lo + hi) / 2, (hi - lo) / 2, 2 * math.pi / period
    if floor <= lo:
        return mid * x - amp / w * math.cos(w * x)
    if floor >= hi:
        return floor * x
    theta = math.asin((floor - mid) / amp)
    arc = math.pi - 2 * theta
    turns, phi = divmod(w * x - theta, 2 * math.pi)

    def turn(phi: float) -> float:
        above = min(phi, arc)
        return (mid * above - amp * (math.cos(theta + above) - math.cos(theta)) + floor * (phi - above)) / w

    return turns * turn(2 * math.pi) + turn(phi)


def _edges(f: FaultSpec, a: float, b: float, period: float | None) -> Iterator[float]:
    """Where fault ``f`` starts or ends within (a, b)."""
    if period is None:
        starts: Iterable[float] = (f.at,)
    else:
        first = max(0, math.ceil((a - f.at - (f.duration or 0.0)) / period))
        starts = (f.at + k * period for k in range(first, math.floor((b - f.at) / period) + 1))
    for start in starts:
        for edge in (start, None if f.duration is None else start + f.duration):
            if edge is not None and a < edge < b:
                yield edge


# -- The GPU ----------------------------------------------------------------------------------


class SimulatedGpu:
    """One GPU of a scenario and the processes of the pods that hold it (or its MIG instances)."""

    def __init__(self, spec: GpuSpec, scenario: Scenario, processes: list[tuple[ProcessSpec, DeviceRef]]) -> None:
        self.spec = spec
        self.seed = scenario.seed
        self.period = scenario.repeat_every
        self.faults = tuple(f for f in scenario.faults if f.gpu == spec.index)
        self.processes = tuple(processes)
        d = spec.defaults
        self.idle_power = min(d.idle_power, spec.power_limit * 0.5)
        self.energy_base = 1e8 + (_noise(self.seed, spec.uuid, "energy0") + 1) * 2e9  # since the driver loaded
        self.ecc_base = int((_noise(self.seed, spec.uuid, "ecc0") + 1) * 2)  # 0..3 corrected before this boot
        node = scenario.node
        self.chip = _chip(spec.model)
        self.instance_loads = {m.gpu_instance_id: m.load for m in reversed(spec.mig) if m.load is not None}
        self.identity = GpuIdentity(index=spec.index, uuid=spec.uuid, minor_number=spec.index, info=MappingProxyType({
            "model": spec.model, "pci_bus_id": spec.pci_bus_id, "serial": spec.serial,
            "vbios_version": spec.vbios_version, "driver_version": node.driver_version,
            "cuda_version": node.cuda_version, "mig_mode": V.ENABLED if spec.mig_enabled else V.DISABLED,
            "persistence_mode": V.ENABLED if spec.persistence_mode else V.DISABLED,
            "compute_mode": spec.compute_mode, "architecture": self.chip.architecture,
            "compute_capability": self.chip.compute_capability, "board_part_number": self.chip.board_part_number,
        }))
        self._lock = threading.Lock()
        self._sums = (0.0, _Totals())  # (time t, the integrated counters from 0 to t)

    # -- state at t --

    def active(self, kind: str, t: float) -> list[FaultSpec]:
        return [f for f in self.faults if f.kind == kind and _active(f, t, self.period)]

    def lost(self, t: float) -> bool:
        """A ``gpu_lost`` fault holds the GPU at ``t``."""
        return bool(self.active("gpu_lost", t))

    def xid_counts(self, t: float) -> dict[int, int]:
        """XID events up to t by code (faults of kind xid; repeating schedules count again)."""
        xids: dict[int, int] = {}
        for f in self.faults:
            if f.kind == "xid" and (n := _count(f, t, self.period, f.count)):
                xids[f.code] = xids.get(f.code, 0) + n
        return xids

    def utilization(self, t: float) -> float:
        u = self._busy(self.spec.load, t)
        if self.active("power_cap", t):  # a burst that runs into the power limit
            u = max(u, _CAPPED_UTILIZATION)
        return u

    def instance_utilization(self, gpu_instance_id: int, t: float) -> float:
        """How busy a MIG GPU instance is while it runs processes: its own load (``mig[].load``),
        else the GPU's."""
        return self._busy(self.instance_loads.get(gpu_instance_id, self.spec.load), t, gpu_instance_id)

    def _busy(self, load: LoadSpec, t: float, *instance: int) -> float:
        """``load`` at ``t``, with its noise (a MIG GPU instance has noise of its own)."""
        u = _pattern(load, t)
        if load.noise:
            u += load.noise * _noise(self.seed, self.spec.index, "util", *instance, int(t))
        return min(1.0, max(0.0, u))

    def power_limit(self, t: float) -> float:
        caps = [f.limit_watts for f in self.active("power_cap", t) if f.limit_watts is not None]
        return min([self.spec.power_limit, *caps])

    def power(self, t: float) -> float:
        u = self.utilization(t)
        limit = self.spec.power_limit
        p = self.idle_power + (_BUSY_POWER * limit - self.idle_power) * u
        p *= 1 + 0.01 * _noise(self.seed, self.spec.index, "power", int(t))
        if self.active("thermal", t):
            p *= _THERMAL_POWER
        if self.active("power_cap", t):
            p = self.power_limit(t)  # pinned at the enforced limit: that is why the cap acts
        return max(0.0, min(p, self.power_limit(t)))

    def links_down(self, t: float) -> set[int]:
        down = {f.link for f in self.active("nvlink_down", t)}
        return set(range(self.spec.nvlink_links)) if None in down else {link for link in down if link is not None}

    def temperature(self, t: float) -> float:
        temp = 30 + 48 * self.power(t) / self.spec.power_limit
        for f in self.active("thermal", t):
            _, start = _occurrence(f, t, self.period)
            temp += f.temperature_rise * min(1.0, (t - start) / 30.0)  # heats up over 30 s
        return round(temp + 0.6 * _noise(self.seed, self.spec.index, "temp", int(t)))

    def rates(self, t: float) -> _Totals:
        """What the integrated counters grow by per second at ``t`` (with the jitter of the readings)."""
        u = self.utilization(t)
        nvlink = u * (self.spec.nvlink_links - len(self.links_down(t))) * _NVLINK_TX
        pcie = u * (1 + 0.1 * _noise(self.seed, self.spec.index, "pcie", int(t)))
        return _Totals(energy=self.power(t), nvlink_rx=nvlink * _NVLINK_RX_SHARE, nvlink_tx=nvlink,
                       pcie_rx=pcie * _PCIE_RX, pcie_tx=pcie * _PCIE_TX)

    def totals(self, t: float) -> _Totals:
        """The integrated counters from time 0 to ``t``, in closed form: between two moments at
        which a fault changes the rates, power and traffic follow the load pattern, whose
        integral is known (the readings' per-second jitter averages out and is left out). The
        totals at the last ``t`` asked for are kept: a clock that goes on costs only the faults
        since."""
        with self._lock:
            since, sums = self._sums
            if t < since:
                since, sums = 0.0, _Totals()
            edges = sorted({e for f in self.faults if f.kind in _RATE_FAULTS for e in _edges(f, since, t, self.period)})
            for a, b in zip([since, *edges], [*edges, t]):
                sums = sums.plus(self._grown(a, b))
            self._sums = (t, sums)
        return sums

    def _grown(self, a: float, b: float) -> _Totals:
        """What the integrated counters grow by from ``a`` to ``b``, where no fault starts or ends."""
        at, seconds, limit = (a + b) / 2, b - a, self.spec.power_limit
        if self.active("power_cap", at):  # pinned at the cap, busy at least _CAPPED_UTILIZATION
            busy = _load_integral(self.spec.load, a, b, _CAPPED_UTILIZATION)
            energy = self.power_limit(at) * seconds
        else:
            busy = _load_integral(self.spec.load, a, b)
            energy = self.idle_power * seconds + (_BUSY_POWER * limit - self.idle_power) * busy
            if self.active("thermal", at):
                energy *= _THERMAL_POWER
        busy = max(0.0, busy)  # not below 0 by rounding: the counters never decrease
        nvlink = busy * (self.spec.nvlink_links - len(self.links_down(at))) * _NVLINK_TX
        return _Totals(energy=max(0.0, energy), nvlink_rx=nvlink * _NVLINK_RX_SHARE, nvlink_tx=nvlink,
                       pcie_rx=busy * _PCIE_RX, pcie_tx=busy * _PCIE_TX)

    def _total(self, kind: str, t: float, attr: str, *, spread: bool = True) -> int:
        total = 0
        for f in self.faults:
            if f.kind == kind:
                if spread:
                    total += _count(f, t, self.period, getattr(f, attr))
                else:
                    total += _occurrence(f, t, self.period)[0] * getattr(f, attr)
        return total

    def profiling(self, t: float) -> list[Sample]:
        """GPM metrics at ``t`` from the load pattern (none on a GPU without GPM)."""
        if not self.chip.gpm:
            return []
        samples = _activity(self.utilization(t), self.spec.load)
        rates = self.rates(t)
        rx, tx = V.DIRECTIONS
        samples += [Sample(C.PCIE_RATE, round(rates.pcie_rx), (rx,)), Sample(C.PCIE_RATE, round(rates.pcie_tx), (tx,))]
        if self.spec.nvlink_links:
            samples += [Sample(C.NVLINK_RATE, round(rates.nvlink_rx), (rx,)),
                        Sample(C.NVLINK_RATE, round(rates.nvlink_tx), (tx,))]
        return samples

    def instance_profiling(self, mig: MigSpec, t: float, busy: bool, gpu: list[Sample]) -> tuple[Sample, ...]:
        """A MIG GPU instance's GPM metrics: its activity from its own load where it runs
        processes, else zero; its traffic its share of the GPU's (``gpu``, the GPU's GPM
        samples) by its compute slices ("3g.40gb": 3 of 7)."""
        if not gpu:
            return ()
        activity = _activity(self.instance_utilization(mig.gpu_instance_id, t) if busy else 0.0,
                             self.instance_loads.get(mig.gpu_instance_id, self.spec.load))
        traffic = [Sample(x.metric, round(x.value * mig.slices / 7) if busy else 0.0, x.labels)
                   for x in gpu if x.metric in (C.PCIE_RATE, C.NVLINK_RATE)]
        return (*activity, *traffic)

    # -- the reading --

    def read(self, t: float) -> Gpu:
        """Everything NVML would answer about this GPU at ``t`` (the caller checks ``lost`` first),
        with the time each stretch of it took in the query group NVML spends it in."""
        timer = QueryTimer()
        g, d = self.spec, self.spec.defaults
        u = self.utilization(t)
        busy = u > _BUSY
        thermal = bool(self.active("thermal", t))
        capped = bool(self.active("power_cap", t))
        s: list[Sample] = []

        def add(metric: C.MetricSpec, value: float, *labels: str) -> None:
            s.append(Sample(metric, float(value), tuple(labels)))

        timer.lap("activity")
        # Processes: memory follows load a little (allocator caches stay), utilisation is a share.
        full: list[GpuProcess] = []
        per_mig: dict[str, list[GpuProcess]] = {m.uuid: [] for m in g.mig}
        for proc, ref in self.processes:
            mem = int(proc.memory * (0.8 + 0.2 * u))
            if ref.mig is not None:
                per_mig[ref.mig.uuid].append(GpuProcess(proc.pid, mem, None))
            else:
                full.append(GpuProcess(proc.pid, mem, round(u * proc.utilization, 4)))
        timer.lap("processes")

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
        add(C.BAR1_TOTAL, 128 * 1024 ** 3 if g.memory > 64 * 1024 ** 3 else 64 * 1024 ** 3)
        add(C.BAR1_USED, 32 * V.BYTES_PER_MIB + 8 * V.BYTES_PER_MIB * (len(full) + sum(map(len, per_mig.values()))))
        timer.lap("activity")

        temp = self.temperature(t)
        add(C.TEMPERATURE, temp)
        if d.memory_temperature:
            add(C.MEMORY_TEMPERATURE, temp + 6)
        for threshold in V.TEMPERATURE_THRESHOLDS:
            add(C.TEMPERATURE_THRESHOLD, d.thresholds_c[threshold], threshold)
        if d.fan:
            add(C.FAN_SPEED, round(min(1.0, max(0.3, 0.3 + 0.7 * (temp - 30) / 60)), 2))
        timer.lap("thermal_power")

        totals = self.totals(t)
        timer.lap("fields")
        add(C.POWER, round(self.power(t), 3))
        add(C.POWER_LIMIT, self.power_limit(t))
        add(C.POWER_LIMIT_DEFAULT, g.power_limit)
        add(C.POWER_LIMIT_MIN, round(g.power_limit * 0.4))
        add(C.POWER_LIMIT_MAX, g.power_limit)
        add(C.ENERGY, round(self.energy_base + totals.energy, 3))
        timer.lap("thermal_power")

        sm = d.sm_clock_max_mhz if busy else d.sm_clock_idle_mhz
        if thermal:
            sm *= 0.65
        if capped:
            sm *= 0.85
        sm = int(sm // 15 * 15)
        video = int(d.video_clock_max_mhz * 0.8) if busy else d.sm_clock_idle_mhz * 2
        clock = {"graphics": sm, "sm": sm, "memory": d.mem_clock_mhz, "video": video}
        clock_max = {"graphics": d.sm_clock_max_mhz, "sm": d.sm_clock_max_mhz, "memory": d.mem_clock_mhz,
                     "video": d.video_clock_max_mhz}
        for domain in V.CLOCK_DOMAINS:
            add(C.CLOCK, clock[domain] * V.HERTZ_PER_MEGAHERTZ, domain)
            add(C.CLOCK_MAX, clock_max[domain] * V.HERTZ_PER_MEGAHERTZ, domain)
        for domain in V.APPLICATION_CLOCK_DOMAINS:
            base = int(d.sm_clock_max_mhz * 0.9 // 15 * 15) if domain == "graphics" else d.mem_clock_mhz
            add(C.APPLICATION_CLOCK, base * V.HERTZ_PER_MEGAHERTZ, domain)
            add(C.APPLICATION_CLOCK_DEFAULT, base * V.HERTZ_PER_MEGAHERTZ, domain)
        add(C.PERFORMANCE_STATE, 0 if busy or full or any(per_mig.values()) or g.mig_enabled else 8)
        events = {"gpu_idle": not busy, "sw_power_cap": capped, "hw_slowdown": thermal,
                  "sw_thermal_slowdown": thermal, "hw_thermal_slowdown": thermal}
        for reason, _bit in V.CLOCK_EVENT_REASONS:
            add(C.CLOCK_EVENT, int(events.get(reason, False)), reason)
        timer.lap("clocks")
        for policy in V.VIOLATION_POLICIES:
            causes = [f for f in self.faults if f.kind in _VIOLATION_CAUSES.get(policy, ())]
            add(C.VIOLATION_TIME, round(_active_seconds(causes, t, self.period), 3), policy)
        timer.lap("slow")

        add(C.PCIE_LINK_GENERATION, d.pcie_generation if busy else 1)  # links downshift when idle
        add(C.PCIE_LINK_MAX_GENERATION, d.pcie_generation)
        add(C.PCIE_LINK_WIDTH, d.pcie_width)
        add(C.PCIE_LINK_MAX_WIDTH, d.pcie_width)
        add(C.PCIE_REPLAYS, self._total("pcie_replay", t, "count"))
        pcie = {"rx": totals.pcie_rx, "tx": totals.pcie_tx}
        for direction in V.DIRECTIONS:
            add(C.PCIE_DATA, round(pcie[direction]), direction)
        timer.lap("pcie")

        ecc = {"corrected": self._total("ecc", t, "corrected"), "uncorrected": self._total("ecc", t, "uncorrected")}
        ecc_before_boot = {"corrected": self.ecc_base, "uncorrected": 0}
        for etype in V.ECC_ERROR_TYPES:
            add(C.ECC_ERRORS, ecc[etype], etype)
            add(C.ECC_AGGREGATE_ERRORS, ecc_before_boot[etype] + ecc[etype], etype)
        remaps = [f for f in self.faults if f.kind == "row_remap"]
        rows = {"correctable": self._total("row_remap", t, "corrected", spread=False),
                "uncorrectable": self._total("row_remap", t, "uncorrected", spread=False)}
        for rtype in V.REMAPPED_ROW_TYPES:
            add(C.REMAPPED_ROWS, rows[rtype], rtype)
        add(C.REMAPPED_ROWS_PENDING, int(any(f.pending and _active(f, t, self.period) for f in remaps)))
        add(C.REMAPPED_ROWS_FAILURE, int(any(f.failure and _active(f, t, self.period) for f in remaps)))
        timer.lap("memory_errors")

        if g.nvlink_links:
            down = self.links_down(t)
            errors = [f for f in self.faults if f.kind == "nvlink_errors"]
            summed = dict.fromkeys(V.NVLINK_ERROR_TYPES, 0)
            for link in range(g.nvlink_links):
                add(C.NVLINK_LINK_UP, int(link not in down), str(link))
                for etype in V.NVLINK_ERROR_TYPES:
                    n = sum(_count(f, t, self.period, f.count) for f in errors
                            if f.link == link and f.error_type == etype)
                    add(C.NVLINK_LINK_ERRORS, n, str(link), etype)
                    summed[etype] += n
            for etype, n in summed.items():  # NVML's total fields: every link at once
                add(C.NVLINK_ERRORS, n, etype)
            add(C.NVLINK_LINKS_UP, g.nvlink_links - len(down & set(range(g.nvlink_links))))
            add(C.NVLINK_LINKS, g.nvlink_links)
            nvlink = {"rx": totals.nvlink_rx, "tx": totals.nvlink_tx}
            for direction in V.DIRECTIONS:
                add(C.NVLINK_DATA, round(nvlink[direction]), direction)
        timer.lap("nvlink")

        add(C.PROCESSES, len(full) + sum(len(ps) for ps in per_mig.values()))
        profiling = self.profiling(t)
        s.extend(profiling)

        # GPM counts per GPU instance: its first compute instance carries them (as NVML's reader does)
        busy_instances = {m.gpu_instance_id for m in g.mig if per_mig[m.uuid]}
        carriers = {min((m for m in g.mig if m.gpu_instance_id == gi), key=lambda m: m.compute_instance_id).uuid
                    for gi in {m.gpu_instance_id for m in g.mig}}
        migs = []
        for m in g.mig:
            ps = per_mig[m.uuid]
            m_used = sum(p.used_memory_bytes or 0 for p in ps)
            busy_instance = m.gpu_instance_id in busy_instances
            gpm = self.instance_profiling(m, t, busy_instance, profiling) if m.uuid in carriers else ()
            migs.append(MigDevice(
                uuid=m.uuid, gpu_instance_id=m.gpu_instance_id, compute_instance_id=m.compute_instance_id,
                profile=m.profile, processes=tuple(ps), processes_read=True,
                samples=(Sample(C.MIG_MEMORY_TOTAL, float(m.memory)), Sample(C.MIG_MEMORY_USED, float(m_used)),
                         Sample(C.MIG_MEMORY_FREE, float(max(0, m.memory - m_used))),
                         Sample(C.MIG_PROCESSES, float(len(ps))), *gpm),
            ))
        timer.lap("profiling")

        i = self.identity
        return Gpu(index=i.index, uuid=i.uuid, up=True, minor_number=i.minor_number, info=i.info, samples=tuple(s),
                   mig_devices=tuple(migs), processes=tuple(full), processes_read=True,
                   nvml_seconds=dict(timer.seconds))
