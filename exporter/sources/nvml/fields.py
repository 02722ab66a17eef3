"""Metrics read in one ``nvmlDeviceGetFieldValues`` call per GPU.

A field batch costs one driver round trip for a dozen values, and each value carries its own
``nvmlReturn``: a GPU that lacks one field (NOT_SUPPORTED) loses only that series. When the
whole call is unavailable (an old driver), ``FieldSpec.fallback`` names the classic function
that serves the same metric.

The batch is only as fast as its slowest field: on an H200 the energy counter alone takes
4.1 ms of the batch's 4.7. Fields marked ``slow`` go in a second batch read once per
``--collector.slow-interval``, and so does any field that proves slow on a GPU. Each read notes
every field's own time (NVML reports it as ``latencyUsec``; a driver that does not has its
fields timed one by one, at most once per slow interval), and a field moves to the slow batch
when most of its last ``FIELD_TIMINGS`` timings are slow, and back when most are fast again:
one slow read on a loaded node moves nothing, and a field that was slow for a while is not slow
for good. Each field's first move in each direction is logged at info, later ones at debug.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Any, Callable

import pynvml

from ... import catalog
from ...catalog import MetricSpec
from ...model.vocabulary import (
    BYTES_PER_KIB, DIRECTIONS, ECC_ERROR_TYPES, JOULES_PER_MILLIJOULE, NOT_MIG, NVLINK_ERROR_TYPES, RETIREMENT_CAUSES,
)
from .calls import ABSENT
from .cost import FAST_BATCH_BUDGET_SECONDS, FIELD_TIMINGS, SLOW_FIELD_SECONDS

if TYPE_CHECKING:
    from .reader import GpuReader


@dataclass(frozen=True, slots=True)
class FieldSpec:
    field_id: int
    key: str  # name used for once-only logging and error accounting
    metric: MetricSpec
    labels: tuple[str, ...] = ()
    scale: float = 1.0  # vocabulary factor from the raw value to the catalog's unit
    scope_id: int | None = None  # nvmlFieldValue_t.scopeId; None = 0
    # (handle) -> raw value, used when nvmlDeviceGetFieldValues itself is unavailable
    fallback: Callable[[Any], float] | None = None
    slow: bool = False  # known to be slow on real drivers: read on the slow cadence


def _retired_count(cause: int) -> Callable[[Any], float]:
    return lambda h: float(len(pynvml.nvmlDeviceGetRetiredPages(h, cause)))


def _ecc(error_type: int, counter: int) -> Callable[[Any], float]:
    return lambda h: float(pynvml.nvmlDeviceGetTotalEccErrors(h, error_type, counter))


_CORRECTED, _UNCORRECTED = ECC_ERROR_TYPES
_SINGLE_BIT, _DOUBLE_BIT = RETIREMENT_CAUSES
_RX, _TX = DIRECTIONS
_REPLAY, _RECOVERY, _CRC_FLIT, _CRC_DATA = NVLINK_ERROR_TYPES
_CORR = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
_UNCORR = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
_VOL = pynvml.NVML_VOLATILE_ECC
_AGG = pynvml.NVML_AGGREGATE_ECC

#: Fields read from every GPU, in one batch.
GPU_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(pynvml.NVML_FI_DEV_MEMORY_TEMP, "memory_temp", catalog.MEMORY_TEMPERATURE),
    FieldSpec(pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, "energy", catalog.ENERGY, scale=JOULES_PER_MILLIJOULE,
              fallback=pynvml.nvmlDeviceGetTotalEnergyConsumption, slow=True),  # 4.1 ms on an H200
    FieldSpec(pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, "pcie_replay", catalog.PCIE_REPLAYS,
              fallback=pynvml.nvmlDeviceGetPcieReplayCounter),
    # Byte counters; no fallback: nvmlDeviceGetPcieThroughput is a rate that samples for 20 ms a call.
    FieldSpec(pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, "pcie_data", catalog.PCIE_DATA, (_RX,)),
    FieldSpec(pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, "pcie_data", catalog.PCIE_DATA, (_TX,)),
    # ECC: volatile (since the driver loaded) and aggregate (lifetime, includes volatile) apart.
    FieldSpec(pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, "ecc", catalog.ECC_ERRORS, (_CORRECTED,),
              fallback=_ecc(_CORR, _VOL)),
    FieldSpec(pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, "ecc", catalog.ECC_ERRORS, (_UNCORRECTED,),
              fallback=_ecc(_UNCORR, _VOL)),
    # Lifetime counts read from the InfoROM (0.18 ms on an H200): history, not alerts, so slow.
    FieldSpec(pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, "ecc_aggregate", catalog.ECC_AGGREGATE_ERRORS, (_CORRECTED,),
              fallback=_ecc(_CORR, _AGG), slow=True),
    FieldSpec(pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, "ecc_aggregate", catalog.ECC_AGGREGATE_ERRORS, (_UNCORRECTED,),
              fallback=_ecc(_UNCORR, _AGG), slow=True),
    FieldSpec(pynvml.NVML_FI_DEV_RETIRED_SBE, "retired_pages", catalog.RETIRED_PAGES, (_SINGLE_BIT,),
              fallback=_retired_count(pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)),
    FieldSpec(pynvml.NVML_FI_DEV_RETIRED_DBE, "retired_pages", catalog.RETIRED_PAGES, (_DOUBLE_BIT,),
              fallback=_retired_count(pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)),
    FieldSpec(pynvml.NVML_FI_DEV_RETIRED_PENDING, "retired_pages", catalog.RETIRED_PAGES_PENDING,
              fallback=pynvml.nvmlDeviceGetRetiredPagesPendingStatus),
    # NVLink errors of every link at once, one field per type (no fallback: the reader sums the
    # links' own counters where a driver lacks these).
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL, "nvlink_errors", catalog.NVLINK_ERRORS, (_REPLAY,)),
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL, "nvlink_errors", catalog.NVLINK_ERRORS,
              (_RECOVERY,)),
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, "nvlink_errors", catalog.NVLINK_ERRORS,
              (_CRC_FLIT,)),
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL, "nvlink_errors", catalog.NVLINK_ERRORS,
              (_CRC_DATA,)),
    # NVLink payload over all links (scopeId UINT_MAX = sum of links), KiB -> bytes.
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, "nvlink_throughput", catalog.NVLINK_DATA, (_RX,),
              scale=BYTES_PER_KIB, scope_id=NOT_MIG),
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, "nvlink_throughput", catalog.NVLINK_DATA, (_TX,),
              scale=BYTES_PER_KIB, scope_id=NOT_MIG),
)


Batch = tuple[FieldSpec, ...]

#: The fields of a GPU with NVLink only.
_NVLINK_GROUPS = frozenset({catalog.NVLINK_ERRORS.group, catalog.NVLINK_DATA.group})


def of_groups(specs: Batch, collectors: AbstractSet[str], *, nvlink: bool) -> Batch:
    """The fields of the collector groups read (``collectors``); NVLink's only on a GPU that has
    links (``nvlink``), so that a PCIe board exports no NVLink series even if a driver answers 0."""
    return tuple(s for s in specs if s.metric.group in collectors and (nvlink or s.metric.group not in _NVLINK_GROUPS))


def split(specs: Batch, slow_ids: frozenset[int]) -> tuple[Batch, Batch]:
    """(fast, slow): the fields marked slow, or proven slow on this GPU (``slow_ids``), apart."""
    slow = tuple(s for s in specs if s.slow or s.field_id in slow_ids)
    return tuple(s for s in specs if s not in slow), slow


def field_ids(specs: tuple[FieldSpec, ...]) -> list[int | tuple[int, int]]:
    """The argument of ``pynvml.nvmlDeviceGetFieldValues`` for these specs."""
    return [s.field_id if s.scope_id is None else (s.field_id, s.scope_id) for s in specs]


def field_value(value: Any) -> float:
    """The number in a ``c_nvmlFieldValue_t``, whatever its ``valueType``."""
    t = value.valueType
    v = value.value
    if t == pynvml.NVML_VALUE_TYPE_DOUBLE:
        return float(v.dVal)
    if t == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return float(v.uiVal)
    if t == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return float(v.ulVal)
    if t == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return float(v.sllVal)
    if t == pynvml.NVML_VALUE_TYPE_SIGNED_INT:
        return float(v.siVal)
    if t == getattr(pynvml, "NVML_VALUE_TYPE_UNSIGNED_SHORT", 6):
        return float(v.usVal)
    return float(v.ullVal)


# -- reading the batches ----------------------------------------------------------------------


@dataclass
class FieldTimes:
    """The recent own times of one GPU's fields (kept in its ``GpuState``), and the fields that
    just came back to the fast batch."""

    seconds: dict[int, deque[float]] = field(default_factory=dict)  # field id -> its last timings
    probed_at: float | None = None  # when the fields were last timed one by one (no latencyUsec)
    returning: frozenset[int] = frozenset()  # back in the fast batch: their slow reading goes

    def note(self, field_id: int, seconds: float) -> bool | None:
        """Add a timing of ``field_id``. True: most of its last ``FIELD_TIMINGS`` timings are
        slow; False: most are fast; None: no majority yet."""
        window = self.seconds.setdefault(field_id, deque(maxlen=FIELD_TIMINGS))
        window.append(seconds)
        slow = sum(s >= SLOW_FIELD_SECONDS for s in window)
        majority = FIELD_TIMINGS // 2 + 1
        return True if slow >= majority else False if len(window) - slow >= majority else None

    def moved(self, field_id: int) -> str:
        """Forget the timings of a field that changes batch (its new batch starts afresh); how
        they read, for the log: ``"3 of 3 reads over 1 ms, median 3.0 ms"``."""
        window = self.seconds.pop(field_id, deque())
        slow = sum(s >= SLOW_FIELD_SECONDS for s in window)
        return (f"{slow} of {len(window)} reads over {SLOW_FIELD_SECONDS * 1000:g} ms, "
                f"median {statistics.median(window or [0.0]) * 1000:.1f} ms")


def read_fast(reader: GpuReader, specs: Batch) -> bool:
    """The fast batch, timed: a field that proves slow on this GPU moves to the slow batch.
    Whether the batch answered (each field with its own result)."""
    if not specs:
        return True
    times = reader.state.field_times
    if times.returning:  # back from the slow batch: read here from now on, no longer served
        _unserve(reader, {(s.metric, s.labels) for s in specs if s.field_id in times.returning})
        times.returning = frozenset()
    started = time.perf_counter()
    values = read_batch(reader, specs)
    elapsed = time.perf_counter() - started
    if not values:
        return False
    now = reader.cadence.monotonic()
    due = times.probed_at is None or now - times.probed_at >= reader.cadence.slow_interval
    probe = specs if elapsed > FAST_BATCH_BUDGET_SECONDS and due else ()
    seconds = _own_seconds(reader, specs, values, elapsed, probe)
    if probe and not _reported(values):
        times.probed_at = now  # timed one by one: not again within a slow interval
    slow = {field_id for field_id, s in seconds.items() if times.note(field_id, s)}
    if slow:
        _move_to_slow(reader, specs, slow)
    return True


def read_slow(reader: GpuReader, specs: Batch) -> None:
    """The slow batch. The fields in it that proved slow on this GPU are timed again: one that
    proves fast goes back to the fast batch from the next read on."""
    proven = tuple(s for s in specs if s.field_id in reader.state.slow_fields and not s.slow)
    started = time.perf_counter()
    values = read_batch(reader, specs)
    elapsed = time.perf_counter() - started
    if not values or not proven:
        return
    # Without latencies the batch's time says nothing of one field beside the known slow ones.
    seconds = _own_seconds(reader, specs, values, elapsed if specs == proven else float("inf"), proven)
    times = reader.state.field_times
    fast = {field_id for field_id, s in seconds.items() if field_id in reader.state.slow_fields
            and times.note(field_id, s) is False}
    if fast:
        _move_to_fast(reader, proven, fast)


def _reported(values: list[Any]) -> bool:
    """Whether the driver reports each field's latency (some leave ``latencyUsec`` at 0)."""
    return any(v.latencyUsec for v in values)


def _own_seconds(
    reader: GpuReader, specs: Batch, values: list[Any], elapsed: float, probe: Batch
) -> dict[int, float]:
    """Each field's own time in this read, by field id: its ``latencyUsec``; without those,
    the batch's time where that shows every field fast, else the fields of ``probe`` timed alone
    (none: nothing is known this time). Fields that failed tell nothing."""
    if _reported(values):
        return {s.field_id: v.latencyUsec / 1e6 for s, v in zip(specs, values)
                if v.nvmlReturn == pynvml.NVML_SUCCESS}
    if elapsed < SLOW_FIELD_SECONDS:
        return {s.field_id: elapsed for s, v in zip(specs, values) if v.nvmlReturn == pynvml.NVML_SUCCESS}
    return {s.field_id: _time_alone(reader, s) for s in probe}


def _time_alone(reader: GpuReader, spec: FieldSpec) -> float:
    """The field alone, the faster of two tries: a busy CPU must not make a field look slow."""
    tries = []
    for _ in range(2):
        started = time.perf_counter()
        try:
            pynvml.nvmlDeviceGetFieldValues(reader.h, field_ids((spec,)))
        except pynvml.NVMLError as e:
            reader.calls.failed(reader.index, "field_values", e)
        tries.append(time.perf_counter() - started)
    return min(tries)


def _move_to_slow(reader: GpuReader, specs: Batch, slow: set[int]) -> None:
    """Read ``slow`` on the slow cadence from now on; until the next slow read, serve this
    read's values of them from the slow reading."""
    reader.state.slow_fields |= slow
    moved = [s for s in specs if s.field_id in slow]
    for s in moved:
        _log_move(reader, s, "slow", "read every slow interval from now on")
    keep = {(s.metric, s.labels) for s in moved}
    fresh = tuple(x for x in reader.samples if (x.metric, x.labels) in keep)
    _unserve(reader, keep)
    reader.state.slow += fresh
    reader.samples = [x for x in reader.samples if (x.metric, x.labels) not in keep]


def _move_to_fast(reader: GpuReader, specs: Batch, fast: set[int]) -> None:
    """Read ``fast`` in the fast batch from the next read on (this read serves the slow batch's
    values of them)."""
    reader.state.slow_fields -= fast
    reader.state.field_times.returning |= fast
    for s in specs:
        if s.field_id in fast:
            _log_move(reader, s, "fast again", "read every cycle from now on")


def _log_move(reader: GpuReader, spec: FieldSpec, verdict: str, consequence: str) -> None:
    """Info the first time a field of a GPU moves this way, debug after: a field whose cost
    wavers between the batches must not fill the log."""
    first = reader.calls.once((reader.index, "field_moved", spec.field_id, verdict))
    reader.calls.log.log(logging.INFO if first else logging.DEBUG, "GPU %d: field %d (%s) %s (%s); %s",
                         reader.index, spec.field_id, spec.key, verdict,
                         reader.state.field_times.moved(spec.field_id), consequence)


def _unserve(reader: GpuReader, keys: set[tuple[MetricSpec, tuple[str, ...]]]) -> None:
    """Drop these series from the slow reading served between slow reads."""
    reader.state.slow = tuple(x for x in reader.state.slow if (x.metric, x.labels) not in keys)


def read_batch(reader: GpuReader, specs: Batch) -> list[Any]:
    """One ``nvmlDeviceGetFieldValues`` for ``specs``; per-field errors omit one series. The
    raw values (empty when the call failed)."""
    try:
        values = pynvml.nvmlDeviceGetFieldValues(reader.h, field_ids(specs))
    except pynvml.NVMLError as e:
        reader.calls.failed(reader.index, "field_values", e)
        if e.value in ABSENT:
            _fallbacks(reader, specs)
        return []
    for spec, value in zip(specs, values):
        if value.nvmlReturn != pynvml.NVML_SUCCESS:
            reader.calls.failed(reader.index, spec.key, pynvml.NVMLError(value.nvmlReturn))
            continue
        reader.add(spec.metric, field_value(value), spec.labels, spec.scale)
    return list(values)

def _fallbacks(reader: GpuReader, specs: Batch) -> None:
    for spec in specs:
        if spec.fallback is not None:
            reader.add(spec.metric, reader.opt(spec.key, spec.fallback, reader.h), spec.labels, spec.scale)
