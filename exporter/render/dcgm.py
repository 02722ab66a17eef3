"""The dcgm-exporter compatible output (``--compat.dcgm-exporter``): the same cycle's snapshot and
attribution written under NVIDIA dcgm-exporter's names, units and labels, so that dashboards,
alerts, autoscalers and cost tools built for it read this agent unchanged
(docs/migrate-from-dcgm-exporter.md).

Nothing here reads a GPU: every value is a reading the native series are rendered from, converted
to DCGM's unit (``FIELDS``). The collector groups those readings belong to are read while the
compat output is on even where their native series are off (``READ_GROUPS``; the native
exposition is unchanged).

Text format 0.0.4 only, as dcgm-exporter serves: its counters keep their names without ``_total``
(legal in 0.0.4, illegal in OpenMetrics), integer fields are written as integers and the others
with six decimals, as dcgm-exporter's ``%f``. Labels are written in dcgm-exporter's order:
``gpu, UUID, pci_bus_id, device, modelName[, GPU_I_PROFILE, GPU_I_ID][, Hostname]``, then
``DCGM_FI_DRIVER_VERSION`` and the pod's labels, then the attributes (``container``, ``namespace``,
``pod``, ``pod_uid``, ``dra_*``, ``err_code``, ``err_msg``).

Semantics (docs/migrate-from-dcgm-exporter.md#semantics):

- A MIG-enabled GPU: the fields of an instance (memory, profiling) per GPU instance only, with
  ``GPU_I_ID`` and ``GPU_I_PROFILE`` and the parent's ``gpu``/``UUID``, never for the parent.
  The fields of the board (clocks, temperatures, power, energy, PCIe, ECC, XID, ...) once per GPU,
  without instance labels: dcgm-exporter repeats them on every instance (its issue #50), which
  multiplies a ``sum()``.
- Holders: a device held by one container alone carries its ``pod``/``namespace``/``container``;
  an unallocated one none; a shared one (time-slicing, MPS, a shared DRA claim, several holders)
  none on its device series, plus one ``DCGM_FI_DEV_GPU_UTIL`` and ``DCGM_FI_DEV_FB_USED`` series
  per holder from the per-container split (dcgm-exporter labels every series of a shared GPU with
  one arbitrary holder, its issue #307).
- A field a GPU does not report is absent, not 0.
"""

from __future__ import annotations

import math
import re
import socket
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from .. import catalog
from ..attribution import Attribution, ContainerUsage, Holder
from ..catalog import MetricSpec
from ..model import vocabulary, xid
from ..model.gpu import Gpu, GpuSnapshot, MigDevice, Readings
from .exposition import TEXT_CONTENT_TYPE, _escape, _gzip  # one escaping and one gzip for both outputs

CONTENT_TYPE = TEXT_CONTENT_TYPE  # text format 0.0.4, whatever the scraper accepts
HOSTNAME_LABELS = ("Hostname", "hostname", "")  # dcgm-exporter <= 4.5.x; its HEAD (#655); none (-n)

Read = Callable[[Readings], "float | None"]


@dataclass(frozen=True, slots=True)
class Field:
    """One DCGM field: its name (the metric name), type, help, where its value comes from (a
    catalog metric with fixed label values, or a function of the readings) and how it is written.

    ``where``: ``gpu`` (a whole GPU, and once per MIG-enabled GPU: a field of the board), ``gpu_only``
    (a whole GPU only: not on a MIG-enabled one, as in DCGM), ``instance`` (a whole GPU, and per GPU
    instance on a MIG-enabled one, never the parent)."""

    name: str
    kind: str  # gauge or counter (no _total: text format 0.0.4)
    help: str
    metrics: tuple[MetricSpec, ...]  # what it reads (their groups are read while compat is on)
    read: Read
    integer: bool = True
    where: str = "gpu"


def _get(metric: MetricSpec, scale: float = 1.0, *, floor: bool = False, **labels: str) -> Read:
    """The reading of ``metric`` with these labels, times ``scale``; ``floor``: truncated, as DCGM
    truncates bytes to MiB and byte rates to whole bytes (other integers are rounded)."""
    def read(r: Readings) -> float | None:
        v = r.get(metric, **labels)
        if v is None:
            return None
        return float(math.floor(v * scale)) if floor else v * scale
    return read


def _clock_reasons(r: Readings) -> float | None:
    """nvmlClocksEventReasons as DCGM gives it: the bitmask of the reasons active now."""
    active = r.by(catalog.CLOCK_EVENT, "reason")
    if not active:
        return None
    bits = dict(vocabulary.CLOCK_EVENT_REASONS)
    return float(sum(bits[reason] for reason, on in active.items() if on and reason in bits))


def _fb_used_percent(r: Readings) -> float | None:
    used, total = r.get(catalog.MEMORY_USED), r.get(catalog.MEMORY_TOTAL)
    reserved = r.get(catalog.MEMORY_RESERVED) or 0.0
    if used is None or not total or total - reserved <= 0:
        return None
    return used / (total - reserved)


_MIB = 1.0 / vocabulary.BYTES_PER_MIB
_MHZ = 1.0 / vocabulary.HERTZ_PER_MEGAHERTZ
_NS = 1.0 / vocabulary.SECONDS_PER_NANOSECOND
C = catalog

#: Every DCGM field of the compat output, in the order written (dcgm-exporter's default counters
#: file first, then the fields commonly enabled). docs/migrate-from-dcgm-exporter.md has the table.
FIELDS: tuple[Field, ...] = (
    Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", (C.CLOCK,), _get(C.CLOCK, _MHZ, clock="sm")),
    Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", (C.CLOCK,),
          _get(C.CLOCK, _MHZ, clock="memory")),
    Field("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", (C.MEMORY_TEMPERATURE,),
          _get(C.MEMORY_TEMPERATURE)),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", (C.TEMPERATURE,), _get(C.TEMPERATURE)),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", (C.POWER,), _get(C.POWER), integer=False),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
          (C.ENERGY,), _get(C.ENERGY, 1000.0)),
    Field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", (C.PCIE_REPLAYS,),
          _get(C.PCIE_REPLAYS)),
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", (C.UTILIZATION,), _get(C.UTILIZATION, 100.0),
          where="gpu_only"),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", (C.MEMORY_UTILIZATION,),
          _get(C.MEMORY_UTILIZATION, 100.0), where="gpu_only"),
    Field("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", (C.ENCODER_UTILIZATION,),
          _get(C.ENCODER_UTILIZATION, 100.0)),
    Field("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", (C.DECODER_UTILIZATION,),
          _get(C.DECODER_UTILIZATION, 100.0)),
    # DCGM_FI_DEV_XID_ERRORS: written from the snapshot's XID events (see _xid), in this place.
    Field("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", (C.XID_ERRORS,),
          lambda r: None),
    Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", (C.MEMORY_FREE, C.MIG_MEMORY_FREE),
          _get(C.MEMORY_FREE, _MIB, floor=True), where="instance"),
    Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", (C.MEMORY_USED, C.MIG_MEMORY_USED),
          _get(C.MEMORY_USED, _MIB, floor=True), where="instance"),
    Field("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", (C.MEMORY_RESERVED,),
          _get(C.MEMORY_RESERVED, _MIB, floor=True), where="gpu_only"),
    # DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL: a rate between two cycles' counters (see _nvlink_rate).
    Field("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter",
          "Total number of NVLink bandwidth counters for all lanes.", (C.NVLINK_DATA, C.NVLINK_LINKS), lambda r: None),
    Field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for uncorrectable errors",
          (C.REMAPPED_ROWS,), _get(C.REMAPPED_ROWS, type="uncorrectable")),
    Field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors",
          (C.REMAPPED_ROWS,), _get(C.REMAPPED_ROWS, type="correctable")),
    Field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed",
          (C.REMAPPED_ROWS_FAILURE,), _get(C.REMAPPED_ROWS_FAILURE)),
    Field("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
          (C.GRAPHICS_ACTIVE,), _get(C.GRAPHICS_ACTIVE), integer=False, where="instance"),
    Field("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active.",
          (C.TENSOR_ACTIVE,), _get(C.TENSOR_ACTIVE), integer=False, where="instance"),
    Field("DCGM_FI_PROF_DRAM_ACTIVE", "gauge",
          "Ratio of cycles the device memory interface is active sending or receiving data.", (C.DRAM_ACTIVE,),
          _get(C.DRAM_ACTIVE), integer=False, where="instance"),
    Field("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "The rate of data transmitted over the PCIe bus - including both "
          "protocol headers and data payloads - in bytes per second.", (C.PCIE_RATE,),
          _get(C.PCIE_RATE, floor=True, direction="tx"), where="instance"),
    Field("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "The rate of data received over the PCIe bus - including both "
          "protocol headers and data payloads - in bytes per second.", (C.PCIE_RATE,),
          _get(C.PCIE_RATE, floor=True, direction="rx"), where="instance"),
    # -- commonly enabled beyond the default file --------------------------------------------
    Field("DCGM_FI_PROF_SM_ACTIVE", "gauge", "The ratio of cycles an SM has at least 1 warp assigned.",
          (C.SM_ACTIVE,), _get(C.SM_ACTIVE), integer=False, where="instance"),
    Field("DCGM_FI_PROF_SM_OCCUPANCY", "gauge", "The ratio of number of warps resident on an SM.",
          (C.SM_OCCUPANCY,), _get(C.SM_OCCUPANCY), integer=False, where="instance"),
    Field("DCGM_FI_PROF_PIPE_FP64_ACTIVE", "gauge", "Ratio of cycles the fp64 pipes are active.", (C.PIPE_ACTIVE,),
          _get(C.PIPE_ACTIVE, pipe="fp64"), integer=False, where="instance"),
    Field("DCGM_FI_PROF_PIPE_FP32_ACTIVE", "gauge", "Ratio of cycles the fp32 pipes are active.", (C.PIPE_ACTIVE,),
          _get(C.PIPE_ACTIVE, pipe="fp32"), integer=False, where="instance"),
    Field("DCGM_FI_PROF_PIPE_FP16_ACTIVE", "gauge", "Ratio of cycles the fp16 pipes are active.", (C.PIPE_ACTIVE,),
          _get(C.PIPE_ACTIVE, pipe="fp16"), integer=False, where="instance"),
    Field("DCGM_FI_PROF_NVLINK_TX_BYTES", "gauge", "The rate of data transmitted over NVLink, not including "
          "protocol headers, in bytes per second.", (C.NVLINK_RATE,), _get(C.NVLINK_RATE, floor=True, direction="tx"),
          where="instance"),
    Field("DCGM_FI_PROF_NVLINK_RX_BYTES", "gauge", "The rate of data received over NVLink, not including protocol "
          "headers, in bytes per second.", (C.NVLINK_RATE,), _get(C.NVLINK_RATE, floor=True, direction="rx"), where="instance"),
    *(Field(f"DCGM_FI_DEV_{name}_VIOLATION", "counter", f"Throttling duration due to {what} constraints (in ns).",
            (C.VIOLATION_TIME,), _get(C.VIOLATION_TIME, _NS, reason=reason))
      for name, what, reason in (("POWER", "power", "power"), ("THERMAL", "thermal", "thermal"),
                                 ("SYNC_BOOST", "sync-boost", "sync_boost"),
                                 ("BOARD_LIMIT", "board limit", "board_limit"),
                                 ("LOW_UTIL", "low utilization", "low_utilization"),
                                 ("RELIABILITY", "reliability", "reliability"))),
    Field("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Current clock throttle reasons (bitmask of "
          "nvmlClocksEventReasons).", (C.CLOCK_EVENT,), _clock_reasons),
    Field("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "Current clock event reasons (bitmask of "
          "nvmlClocksEventReasons).", (C.CLOCK_EVENT,), _clock_reasons),
    Field("DCGM_FI_DEV_PSTATE", "gauge", "Performance state (P-State) 0-15. 0=highest.", (C.PERFORMANCE_STATE,),
          _get(C.PERFORMANCE_STATE)),
    Field("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge", "Effective power limit that the driver enforces (in W).",
          (C.POWER_LIMIT,), _get(C.POWER_LIMIT), integer=False),
    Field("DCGM_FI_DEV_SLOWDOWN_TEMP", "gauge", "Slowdown temperature for the device (in C).",
          (C.TEMPERATURE_THRESHOLD,), _get(C.TEMPERATURE_THRESHOLD, threshold="slowdown")),
    Field("DCGM_FI_DEV_FAN_SPEED", "gauge", "Fan speed for the device in percent 0-100.", (C.FAN_SPEED,),
          _get(C.FAN_SPEED, 100.0)),
    Field("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).", (C.MEMORY_TOTAL, C.MIG_MEMORY_TOTAL),
          _get(C.MEMORY_TOTAL, _MIB, floor=True), where="instance"),
    Field("DCGM_FI_DEV_FB_USED_PERCENT", "gauge", "Percentage used of Frame Buffer: 'Used/(Total - Reserved)'. "
          "Range 0.0-1.0", (C.MEMORY_USED, C.MEMORY_TOTAL, C.MEMORY_RESERVED), _fb_used_percent, integer=False,
          where="gpu_only"),
    Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.",
          (C.ECC_ERRORS,), _get(C.ECC_ERRORS, type="corrected")),
    Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.",
          (C.ECC_ERRORS,), _get(C.ECC_ERRORS, type="uncorrected")),
    Field("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter", "Total number of single-bit persistent ECC errors.",
          (C.ECC_AGGREGATE_ERRORS,), _get(C.ECC_AGGREGATE_ERRORS, type="corrected")),
    Field("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter", "Total number of double-bit persistent ECC errors.",
          (C.ECC_AGGREGATE_ERRORS,), _get(C.ECC_AGGREGATE_ERRORS, type="uncorrected")),
    Field("DCGM_FI_DEV_RETIRED_SBE", "counter", "Total number of retired pages due to single-bit errors.",
          (C.RETIRED_PAGES,), _get(C.RETIRED_PAGES, cause="single_bit")),
    Field("DCGM_FI_DEV_RETIRED_DBE", "counter", "Total number of retired pages due to double-bit errors.",
          (C.RETIRED_PAGES,), _get(C.RETIRED_PAGES, cause="double_bit")),
    Field("DCGM_FI_DEV_RETIRED_PENDING", "counter", "Total number of pages pending retirement.",
          (C.RETIRED_PAGES_PENDING,), _get(C.RETIRED_PAGES_PENDING)),
    *(Field(f"DCGM_FI_DEV_NVLINK_{name}_ERROR_COUNT_TOTAL", "counter",
            f"Total number of NVLink {what} errors.", (C.NVLINK_ERRORS,), _get(C.NVLINK_ERRORS, type=kind))
      for name, what, kind in (("CRC_FLIT", "flow-control CRC", "crc_flit"), ("CRC_DATA", "data CRC", "crc_data"),
                               ("REPLAY", "retries", "replay"), ("RECOVERY", "recovery", "recovery"))),
)

_MIG_READS: Mapping[str, Read] = {  # an instance field on a MIG GPU instance: its own memory metric
    "DCGM_FI_DEV_FB_FREE": _get(C.MIG_MEMORY_FREE, _MIB, floor=True),
    "DCGM_FI_DEV_FB_USED": _get(C.MIG_MEMORY_USED, _MIB, floor=True),
    "DCGM_FI_DEV_FB_TOTAL": _get(C.MIG_MEMORY_TOTAL, _MIB, floor=True),
}
#: The per-holder series of a shared device: the per-container split of these two fields.
SPLIT_FIELDS = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED")

#: The collector groups the compat output reads: on while it is, whatever --collector.<group> says
#: (their native series stay as those flags say).
READ_GROUPS: frozenset[str] = frozenset(m.group for f in FIELDS for m in f.metrics)


def field_names() -> list[str]:
    return [f.name for f in FIELDS]


@dataclass(frozen=True, slots=True)
class Options:
    """How the compat series are labelled (the --compat.dcgm-exporter.* flags)."""

    hostname: str = ""  # the Hostname label's value: the node name (NODE_NAME), else this host's name
    hostname_label: str = "Hostname"  # or "hostname" (dcgm-exporter's HEAD), or "" (none: its -n)
    exported_holder_labels: bool = False  # exported_pod/exported_namespace/exported_container
    pod_uid: bool = False  # pod_uid on holder series (dcgm-exporter's --kubernetes-enable-pod-uid)


@dataclass(frozen=True, slots=True)
class DcgmExposition:
    """One cycle's compat output: text format 0.0.4, and its gzip (written with it: a scrape only
    picks bytes)."""

    text: bytes
    text_gzip: bytes

    @classmethod
    def of(cls, text: bytes) -> DcgmExposition:
        return cls(text, _gzip(text))


class DcgmRenderer:
    """Writes the compat output of each cycle; keeps only what a rate needs (the NVLink byte
    counters of the cycle before)."""

    def __init__(self, options: Options | None = None) -> None:
        options = options or Options()
        if options.hostname_label not in HOSTNAME_LABELS:
            raise ValueError(f"hostname label {options.hostname_label!r} is not one of {HOSTNAME_LABELS}")
        self.options = options
        self.hostname = options.hostname or socket.gethostname()
        self._nvlink: dict[str, tuple[float, float]] = {}  # uuid -> (rx + tx bytes, snapshot time)

    def render(self, snapshot: GpuSnapshot, attribution: Attribution) -> DcgmExposition:
        series: dict[str, list[str]] = {f.name: [] for f in FIELDS}
        last_xid = _last_xids(snapshot)
        nvlink_seen: dict[str, tuple[float, float]] = {}
        for gpu in snapshot.gpus:
            self._gpu(series, gpu, snapshot, attribution, last_xid, nvlink_seen)
        self._nvlink = nvlink_seen
        out: list[str] = []
        for f in FIELDS:
            if series[f.name]:
                out.append(f"# HELP {f.name} {f.help}\n# TYPE {f.name} {f.kind}\n")
                out.extend(series[f.name])
        return DcgmExposition.of("".join(out).encode())

    # -- one GPU ---------------------------------------------------------------------------------

    def _gpu(self, series: dict[str, list[str]], gpu: Gpu, snapshot: GpuSnapshot, attribution: Attribution,
             last_xid: Mapping[str, int], nvlink_seen: dict[str, tuple[float, float]]) -> None:
        identity = self._identity(gpu)
        instances = _gpu_instances(gpu.mig_devices)
        mig = bool(instances)
        holders = () if mig else attribution.holders.get(gpu.uuid, ())
        usage = () if mig else attribution.usage.get(gpu.uuid, ())
        # The board's fields: on a MIG GPU once, without instance or holder labels.
        board = identity + (self._holder_labels(holders) if not mig else [])
        for f in FIELDS:
            if f.where == "gpu_only" and mig:
                continue
            if f.where == "instance" and mig:
                continue
            if f.name == "DCGM_FI_DEV_XID_ERRORS":
                if gpu.uuid:
                    code = last_xid.get(gpu.uuid, 0)
                    series[f.name].append(_line(f.name, board + [
                        ("err_code", str(code)), ("err_msg", xid.xid_message(code))], code, integer=True))
                continue
            if f.name == "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL":
                rate = self._nvlink_rate(gpu, snapshot.taken, nvlink_seen)
                if rate is not None:
                    series[f.name].append(_line(f.name, board, rate, integer=True))
                continue
            value = f.read(gpu.readings)
            if value is not None:
                series[f.name].append(_line(f.name, board, value, f.integer))
        if not mig:
            self._split(series, identity, holders, usage, instance=False)
        for gi_id, (profile, members) in instances.items():
            labels = identity + [("GPU_I_PROFILE", profile), ("GPU_I_ID", str(gi_id))]
            gi_holders = tuple(h for m in members for h in attribution.holders.get(m.uuid, ()))
            gi_usage = tuple(u for m in members for u in attribution.usage.get(m.uuid, ()))
            own = labels + self._holder_labels(gi_holders)
            for f in FIELDS:
                if f.where != "instance":
                    continue
                read = _MIG_READS.get(f.name, f.read)
                values = [v for m in members if (v := read(m.readings)) is not None]
                if values:  # a GPU instance's memory is each of its compute instances'; profiling on the first
                    series[f.name].append(_line(f.name, own, max(values), f.integer))
            self._split(series, labels, gi_holders, gi_usage, instance=True)

    def _identity(self, gpu: Gpu) -> list[tuple[str, str]]:
        labels = [("gpu", str(gpu.index)), ("UUID", gpu.uuid), ("pci_bus_id", gpu.info.get("pci_bus_id", "")),
                  ("device", f"nvidia{gpu.index}"), ("modelName", gpu.info.get("model", ""))]
        if self.options.hostname_label:
            labels.append((self.options.hostname_label, self.hostname))
        if driver := gpu.info.get("driver_version", ""):
            labels.append(("DCGM_FI_DRIVER_VERSION", driver))
        return labels

    def _holder_labels(self, holders: Sequence[Holder]) -> list[tuple[str, str]]:
        """The holder's labels on a device's own series: only when one container holds it alone."""
        if len(holders) != 1 or holders[0].shared:
            return []
        return self._labels_of(holders[0], holders[0].namespace, holders[0].pod, holders[0].container)

    def _labels_of(self, holder: Holder | None, namespace: str, pod: str, container: str) -> list[tuple[str, str]]:
        prefix = "exported_" if self.options.exported_holder_labels else ""
        pod_labels = sorted((name.removeprefix("label_"), value) for name, value in (holder.pod_labels if holder else ())
                            if value and name.removeprefix("label_") not in _RESERVED)
        attributes = [(prefix + "container", container), (prefix + "namespace", namespace), (prefix + "pod", pod)]
        if holder is not None:
            if self.options.pod_uid and holder.pod_uid:
                attributes.append(("pod_uid", holder.pod_uid))
            attributes += [(name, value) for name, value in (
                ("dra_claim_name", holder.claim_name), ("dra_claim_namespace", holder.claim_namespace),
                ("dra_device_name", holder.device), ("dra_driver_name", holder.driver),
                ("dra_pool_name", holder.pool)) if value]
        return pod_labels + sorted(attributes)

    def _split(self, series: dict[str, list[str]], labels: list[tuple[str, str]], holders: Sequence[Holder],
               usage: Sequence[ContainerUsage], *, instance: bool) -> None:
        """A shared device: one GPU_UTIL (not on a MIG instance, as in DCGM) and FB_USED series per
        holder, from the per-container split."""
        if not usage or (len(holders) == 1 and not holders[0].shared):
            return
        by_container = {(h.namespace, h.pod, h.container): h for h in holders}
        for u in sorted(usage, key=lambda u: (u.namespace, u.pod, u.container)):
            own = labels + self._labels_of(by_container.get((u.namespace, u.pod, u.container)),
                                           u.namespace, u.pod, u.container)
            if u.utilization_ratio is not None and not instance:
                series["DCGM_FI_DEV_GPU_UTIL"].append(
                    _line("DCGM_FI_DEV_GPU_UTIL", own, min(u.utilization_ratio, 1.0) * 100.0, integer=True))
            if u.memory_used_bytes is not None:
                series["DCGM_FI_DEV_FB_USED"].append(
                    _line("DCGM_FI_DEV_FB_USED", own, math.floor(u.memory_used_bytes * _MIB), integer=True))

    def _nvlink_rate(self, gpu: Gpu, taken: float, seen: dict[str, tuple[float, float]]) -> float | None:
        """DCGM's NVLINK_BANDWIDTH_TOTAL: rx + tx over the cycle in KiB/s / 1000 (its "MiB/s"), 0 on a
        GPU without NVLink (as DCGM); none until two cycles' counters are there."""
        data = gpu.readings.by(catalog.NVLINK_DATA, "direction")
        if not data:
            links = gpu.readings.get(catalog.NVLINK_LINKS)
            return 0.0 if gpu.up and not links else None
        total = sum(data.values())
        seen[gpu.uuid] = (total, taken)
        before = self._nvlink.get(gpu.uuid)
        if before is None or taken <= before[1] or total < before[0]:
            return None
        return float(math.floor((total - before[0]) / vocabulary.BYTES_PER_KIB / (taken - before[1]) / 1000.0))


_RESERVED = frozenset({"gpu", "UUID", "pci_bus_id", "device", "modelName", "GPU_I_PROFILE", "GPU_I_ID", "Hostname",
                       "hostname", "DCGM_FI_DRIVER_VERSION", "container", "namespace", "pod", "pod_uid", "err_code",
                       "err_msg", "job", "instance"})
_CI_PROFILE = re.compile(r"^\d+c\.(.+)$")  # a compute instance's sub-profile: 1c.3g.40gb -> 3g.40gb


def _gpu_instances(migs: Iterable[MigDevice]) -> dict[int, tuple[str, list[MigDevice]]]:
    """A MIG GPU's instances by GPU instance id: DCGM's GI profile name and its compute instances."""
    out: dict[int, tuple[str, list[MigDevice]]] = {}
    for m in sorted(migs, key=lambda m: (m.gpu_instance_id, m.compute_instance_id)):
        match = _CI_PROFILE.match(m.profile)
        out.setdefault(m.gpu_instance_id, (match.group(1) if match else m.profile, []))[1].append(m)
    return out


def _last_xids(snapshot: GpuSnapshot) -> dict[str, int]:
    """The last XID code of each GPU, by the time its count last grew (DCGM's sticky last value)."""
    last: dict[str, tuple[float, int]] = {}
    for (uuid, code), when in snapshot.xid_last_event.items():
        if uuid not in last or when >= last[uuid][0]:
            last[uuid] = (when, code)
    for (uuid, code), count in snapshot.xids.items():  # counted but with no time: still its last known
        if count and uuid not in last:
            last[uuid] = (-math.inf, code)
    return {uuid: code for uuid, (_, code) in last.items()}


def _line(name: str, labels: list[tuple[str, str]], value: float, integer: bool) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels if v)
    if integer:
        # half up, as PromQL's round() (the recording rules) does: NVML's own integers never fall on .5
        number = str(math.floor(value + 0.5)) if math.isfinite(value) else _special(value)
    else:
        number = f"{value:f}" if math.isfinite(value) else _special(value)
    return f"{name}{{{text}}} {number}\n"


def _special(value: float) -> str:
    return "NaN" if value != value else ("+Inf" if value > 0 else "-Inf")
