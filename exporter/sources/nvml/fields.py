"""Metrics read in one ``nvmlDeviceGetFieldValues`` call per GPU.

A field batch costs one driver round trip for a dozen values, and each value carries its own
``nvmlReturn``: a GPU that lacks one field (NOT_SUPPORTED) loses only that series. When the
whole call is unavailable (an old driver), ``FieldSpec.fallback`` names the classic function
that serves the same metric.

The batch is only as fast as its slowest field: on an H200 the energy counter alone takes
4.1 ms of the batch's 4.7. Fields marked ``slow`` go in a second batch read once per
``--collector.slow-interval``, and so does any field that proves slow on a GPU: ``read_fast``
times the fast batch on every read (NVML reports each field's latency; a driver that does not
gets its fields timed one by one, once per GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AbstractSet, Any, Callable

import pynvml

from ... import catalog
from ...catalog import MetricSpec
from ...model.vocabulary import (
    BYTES_PER_KIB, DIRECTIONS, ECC_ERROR_TYPES, JOULES_PER_MILLIJOULE, NOT_MIG, NVLINK_ERROR_TYPES, RETIREMENT_CAUSES,
)
from .calls import ABSENT
from .cost import FAST_BATCH_BUDGET_SECONDS, SLOW_FIELD_SECONDS

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


def read_fast(reader: GpuReader, specs: Batch) -> bool:
    """The fast batch, timed: a field that proves slow on this GPU moves to the slow batch.
    Whether the batch answered (each field with its own result).

    NVML reports each field's own cost (``latencyUsec``); a driver that leaves it 0 while the
    batch runs over budget gets its fields timed one by one, once per GPU.
    """
    if not specs:
        return True
    started = time.perf_counter()
    values = read_batch(reader, specs)
    elapsed = time.perf_counter() - started
    if not values:
        return False
    latencies = {s.field_id: v.latencyUsec / 1e6 for s, v in zip(specs, values)}
    if elapsed > FAST_BATCH_BUDGET_SECONDS and not any(latencies.values()) and not reader.state.fields_probed:
        reader.state.fields_probed = True
        latencies = {s.field_id: _time_alone(reader, s) for s in specs}
    slow = {field_id for field_id, seconds in latencies.items() if seconds >= SLOW_FIELD_SECONDS}
    if slow:
        _move_to_slow(reader, specs, slow, latencies)
    return True

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

def _move_to_slow(reader: GpuReader, specs: Batch, slow: set[int], seconds: dict[int, float]) -> None:
    """Read ``slow`` on the slow cadence from now on; until the next slow read, serve this
    read's values of them from the slow reading."""
    reader.state.slow_fields |= slow
    moved = [s for s in specs if s.field_id in slow]
    reader.calls.log.info(
        "GPU %d: %s slow (%s); read every slow interval from now on", reader.index,
        ", ".join(f"field {s.field_id} ({s.key})" for s in moved),
        ", ".join(f"{seconds[s.field_id] * 1000:.1f} ms" for s in moved))
    keep = {(s.metric, s.labels) for s in moved}
    fresh = tuple(x for x in reader.samples if (x.metric, x.labels) in keep)
    reader.state.slow = tuple(x for x in reader.state.slow if (x.metric, x.labels) not in keep) + fresh
    reader.samples = [x for x in reader.samples if (x.metric, x.labels) not in keep]

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
