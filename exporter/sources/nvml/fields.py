"""Metrics read in one ``nvmlDeviceGetFieldValues`` call per GPU.

A field batch costs one driver round trip for a dozen values, and each value carries its own
``nvmlReturn``: a GPU that lacks one field (NOT_SUPPORTED) loses only that series. When the
whole call is unavailable (an old driver), ``FieldSpec.fallback`` names the classic function
that serves the same metric.

The batch is only as fast as its slowest field: on an H200 the energy counter alone takes
4.1 ms of the batch's 4.7. Fields marked ``slow`` (and any that prove slow on a GPU, see
``reader.py``) go in a second batch read once per ``--collector.slow-interval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pynvml

from ... import catalog
from ...catalog import MetricSpec
from ...model.vocabulary import BYTES_PER_KIB, DIRECTIONS, ECC_ERROR_TYPES, JOULES_PER_MILLIJOULE, NOT_MIG, RETIREMENT_CAUSES


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
    # NVLink payload over all links (scopeId UINT_MAX = sum of links), KiB -> bytes.
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, "nvlink_throughput", catalog.NVLINK_DATA, (_RX,),
              scale=BYTES_PER_KIB, scope_id=NOT_MIG),
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, "nvlink_throughput", catalog.NVLINK_DATA, (_TX,),
              scale=BYTES_PER_KIB, scope_id=NOT_MIG),
)


Batch = tuple[FieldSpec, ...]


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
