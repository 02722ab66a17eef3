"""Profiling metrics from NVML's GPU Performance Monitoring (GPM): Hopper and newer, no DCGM.

GPM counts on the GPU; a *sample* is a snapshot of those counters in a host buffer, and
``nvmlGpmMetricsGet`` turns two samples into rates over the time between them. So each device
(the whole GPU, or one GPU instance of a MIG GPU) keeps the previous cycle's sample; a cycle
takes a new one and reports the metrics between the two. The first cycle after start, or after
the GPU came back, has no previous sample and reports nothing rather than a guess.

Streaming mode (``nvmlGpmSetStreamingEnabled``) is not used: NVML's documentation only asks for
more than 100 ms between two samples, and the counters accumulate between samples, so a 10 s
interval averages over the whole 10 s. Streaming would change a device-wide setting that
other tools (DCGM, Nsight) rely on, for no accuracy gained at our intervals.

Buffers are allocated once per device (two, swapped each cycle) and freed when the device is
dropped: ``GpmSampler.close()`` frees every buffer, ``retain()`` those of vanished instances.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pynvml

from ... import catalog
from ...catalog import MetricSpec
from ...model.gpu import Sample
from ...model.vocabulary import BYTES_PER_MIB, DIRECTIONS, PROFILING_PIPES, RATIO_PER_PERCENT
from .calls import NvmlCalls
from .units import scaled


@dataclass(frozen=True, slots=True)
class GpmMetric:
    metric_id: int
    key: str  # for once-only logging
    metric: MetricSpec
    labels: tuple[str, ...] = ()
    scale: float = RATIO_PER_PERCENT  # percent -> ratio unless said otherwise


_FP64, _FP32, _FP16, _INTEGER, _HMMA, _IMMA, _DFMA = PROFILING_PIPES
_RX, _TX = DIRECTIONS

#: What each cycle asks GPM for (one ``nvmlGpmMetricsGet``: 1.6 ms for 14 metrics on an H200).
GPM_METRICS: tuple[GpmMetric, ...] = (
    GpmMetric(pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, "gpm_graphics", catalog.GRAPHICS_ACTIVE),
    GpmMetric(pynvml.NVML_GPM_METRIC_SM_UTIL, "gpm_sm_active", catalog.SM_ACTIVE),
    GpmMetric(pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, "gpm_sm_occupancy", catalog.SM_OCCUPANCY),
    GpmMetric(pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, "gpm_tensor", catalog.TENSOR_ACTIVE),
    GpmMetric(pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, "gpm_dram", catalog.DRAM_ACTIVE),
    GpmMetric(pynvml.NVML_GPM_METRIC_FP64_UTIL, "gpm_fp64", catalog.PIPE_ACTIVE, (_FP64,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_FP32_UTIL, "gpm_fp32", catalog.PIPE_ACTIVE, (_FP32,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_FP16_UTIL, "gpm_fp16", catalog.PIPE_ACTIVE, (_FP16,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_INTEGER_UTIL, "gpm_integer", catalog.PIPE_ACTIVE, (_INTEGER,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL, "gpm_hmma", catalog.PIPE_ACTIVE, (_HMMA,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_IMMA_TENSOR_UTIL, "gpm_imma", catalog.PIPE_ACTIVE, (_IMMA,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_DFMA_TENSOR_UTIL, "gpm_dfma", catalog.PIPE_ACTIVE, (_DFMA,)),
    GpmMetric(pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC, "gpm_pcie", catalog.PCIE_RATE, (_RX,), BYTES_PER_MIB),
    GpmMetric(pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, "gpm_pcie", catalog.PCIE_RATE, (_TX,), BYTES_PER_MIB),
    GpmMetric(pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, "gpm_nvlink", catalog.NVLINK_RATE, (_RX,),
              BYTES_PER_MIB),
    GpmMetric(pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, "gpm_nvlink", catalog.NVLINK_RATE, (_TX,),
              BYTES_PER_MIB),
)

#: Key of the whole GPU's buffers; a GPU instance's are keyed by its id.
WHOLE_GPU = None


@dataclass(slots=True)
class _Buffers:
    spare: Any  # the buffer the next sample goes into
    previous: Any | None = None  # last cycle's sample, None until there is one


def supported(calls: NvmlCalls, index: int, handle: Any) -> bool:
    """Whether the GPU serves GPM; an old driver (no symbol) or an older GPU does not (logged once)."""
    support = calls.optional(index, "gpm", pynvml.nvmlGpmQueryDeviceSupport, handle)
    if support is None:
        return False
    if not support.isSupportedDevice:
        calls.absent(index, "gpm", "GPM needs Hopper or newer")
        return False
    return True


class GpmSampler:
    """The GPM buffers of one GPU and its GPU instances; used by the GPU's reader thread only,
    closed by whoever drops the GPU (the lock makes a close during a read wait for it)."""

    def __init__(self, calls: NvmlCalls, index: int) -> None:
        self._calls = calls
        self._index = index
        self._buffers: dict[int | None, _Buffers] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._request = pynvml.c_nvmlGpmMetricsGet_t()  # ~19 KB: built once, refilled each time
        self._request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        self._request.numMetrics = len(GPM_METRICS)
        for i, spec in enumerate(GPM_METRICS):
            self._request.metrics[i].metricId = spec.metric_id

    def read(self, handle: Any, gpu_instance: int | None = WHOLE_GPU) -> list[Sample]:
        """Sample the GPU (or GPU instance ``gpu_instance``) now; the metrics since the last sample."""
        with self._lock:
            if self._closed:
                return []
            buffers = self._buffers.get(gpu_instance)
            if buffers is None:
                spare = self._calls.optional(self._index, "gpm_alloc", pynvml.nvmlGpmSampleAlloc)
                if spare is None:
                    return []
                buffers = self._buffers[gpu_instance] = _Buffers(spare)
            if gpu_instance is WHOLE_GPU:
                taken = self._calls.optional(self._index, "gpm_sample", pynvml.nvmlGpmSampleGet, handle, buffers.spare)
            else:
                taken = self._calls.optional(self._index, "gpm_mig_sample", pynvml.nvmlGpmMigSampleGet, handle,
                                              gpu_instance, buffers.spare)
            if taken is None:
                return []
            previous, buffers.previous = buffers.previous, buffers.spare
            if previous is None:  # first sample: nothing to compare with yet
                buffers.spare = self._calls.optional(self._index, "gpm_alloc", pynvml.nvmlGpmSampleAlloc)
                if buffers.spare is None:
                    del self._buffers[gpu_instance]
                    self._free(buffers.previous)
                return []
            buffers.spare = previous
            return self._metrics(previous, buffers.previous)

    def _metrics(self, older: Any, newer: Any) -> list[Sample]:
        request = self._request
        request.sample1, request.sample2 = older, newer
        if self._calls.optional(self._index, "gpm_metrics", pynvml.nvmlGpmMetricsGet, request) is None:
            return []
        samples = []
        for spec, result in zip(GPM_METRICS, request.metrics):
            if result.nvmlReturn != pynvml.NVML_SUCCESS:
                self._calls.failed(self._index, spec.key, pynvml.NVMLError(result.nvmlReturn))
                continue
            value = scaled(max(0.0, float(result.value)), spec.scale)
            if spec.scale == RATIO_PER_PERCENT:
                value = min(value, 1.0)  # counters sampled a hair apart can read 100.2 %
            samples.append(Sample(spec.metric, value, spec.labels))
        return samples

    def retain(self, gpu_instances: set[int]) -> None:
        """Free the buffers of GPU instances that are gone (MIG layout changed)."""
        with self._lock:
            for key in [k for k in self._buffers if k is not WHOLE_GPU and k not in gpu_instances]:
                self._free_buffers(self._buffers.pop(key))

    def close(self, timeout: float = 1.0) -> None:
        """Free every buffer. A read that hangs in NVML keeps its buffers (after ``timeout``)
        rather than the caller: a leak at shutdown beats a hung exit."""
        if not self._lock.acquire(timeout=timeout):
            self._calls.log.debug("GPU %d: GPM buffers not freed, a read still runs", self._index)
            return
        try:
            self._closed = True
            for buffers in self._buffers.values():
                self._free_buffers(buffers)
            self._buffers.clear()
        finally:
            self._lock.release()

    def _free_buffers(self, buffers: _Buffers) -> None:
        self._free(buffers.spare)
        if buffers.previous is not None:
            self._free(buffers.previous)

    def _free(self, sample: Any) -> None:
        try:
            pynvml.nvmlGpmSampleFree(sample)
        except pynvml.NVMLError as e:
            self._calls.log.debug("GPU %d: nvmlGpmSampleFree: %s", self._index, e)
