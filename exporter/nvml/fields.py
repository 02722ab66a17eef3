"""Metrics read in one ``nvmlDeviceGetFieldValues`` call per GPU.

A field batch costs one driver round trip for a dozen values, and each value carries its own
``nvmlReturn``: a GPU that lacks one field (NOT_SUPPORTED) loses only that series. When the
whole call is unavailable (an old driver), ``FieldSpec.fallback`` names the classic function
that serves the same metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pynvml

from .. import catalog
from ..catalog import MetricSpec


@dataclass(frozen=True, slots=True)
class FieldSpec:
    field_id: int
    key: str  # name used for once-only logging and error accounting
    metric: MetricSpec
    labels: tuple[str, ...] = ()
    scale: float = 1.0  # multiply the raw value by this to get the catalog's unit
    scope_id: int | None = None  # nvmlFieldValue_t.scopeId; None = 0
    # (handle) -> raw value, used when nvmlDeviceGetFieldValues itself is unavailable
    fallback: Callable[[Any], float] | None = None


def _retired_count(cause: int) -> Callable[[Any], float]:
    return lambda h: float(len(pynvml.nvmlDeviceGetRetiredPages(h, cause)))


def _ecc(error_type: int, counter: int) -> Callable[[Any], float]:
    return lambda h: float(pynvml.nvmlDeviceGetTotalEccErrors(h, error_type, counter))


ALL_LINKS = 0xFFFFFFFF  # scopeId UINT_MAX: NVLink counters summed over every link
_CORR = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
_UNCORR = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
_VOL = pynvml.NVML_VOLATILE_ECC
_AGG = pynvml.NVML_AGGREGATE_ECC

#: Fields read from every GPU, in one batch.
GPU_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(pynvml.NVML_FI_DEV_MEMORY_TEMP, "memory_temp", catalog.MEMORY_TEMPERATURE),
    FieldSpec(pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, "energy", catalog.ENERGY, scale=1e-3,
              fallback=pynvml.nvmlDeviceGetTotalEnergyConsumption),
    FieldSpec(pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, "pcie_replay", catalog.PCIE_REPLAYS,
              fallback=pynvml.nvmlDeviceGetPcieReplayCounter),
    FieldSpec(pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, "ecc", catalog.ECC_ERRORS, ("corrected", "volatile"),
              fallback=_ecc(_CORR, _VOL)),
    FieldSpec(pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, "ecc", catalog.ECC_ERRORS, ("uncorrected", "volatile"),
              fallback=_ecc(_UNCORR, _VOL)),
    FieldSpec(pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, "ecc", catalog.ECC_ERRORS, ("corrected", "aggregate"),
              fallback=_ecc(_CORR, _AGG)),
    FieldSpec(pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, "ecc", catalog.ECC_ERRORS, ("uncorrected", "aggregate"),
              fallback=_ecc(_UNCORR, _AGG)),
    FieldSpec(pynvml.NVML_FI_DEV_RETIRED_SBE, "retired_pages", catalog.RETIRED_PAGES, ("single_bit",),
              fallback=_retired_count(pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)),
    FieldSpec(pynvml.NVML_FI_DEV_RETIRED_DBE, "retired_pages", catalog.RETIRED_PAGES, ("double_bit",),
              fallback=_retired_count(pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)),
    FieldSpec(pynvml.NVML_FI_DEV_RETIRED_PENDING, "retired_pages", catalog.RETIRED_PAGES_PENDING,
              fallback=pynvml.nvmlDeviceGetRetiredPagesPendingStatus),
    # NVLink payload over all links (scopeId UINT_MAX = sum of links), KiB -> bytes.
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, "nvlink_throughput", catalog.NVLINK_DATA, ("tx",),
              scale=1024.0, scope_id=ALL_LINKS),
    FieldSpec(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, "nvlink_throughput", catalog.NVLINK_DATA, ("rx",),
              scale=1024.0, scope_id=ALL_LINKS),
)


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
