"""The NVML backend: reads real GPUs through ``pynvml``.

This module holds the lifecycle (``nvmlInit`` .. ``nvmlShutdown``, the XID thread) and what is
kept per GPU between reads (its handle and ``GpuState``). How one GPU is read is in
``reader.py``, its processes in ``processes.py``, and what a failed read costs in ``calls.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, TypeVar

import pynvml

from ... import catalog
from ..backend import BackendUnavailable, GpuReadError
from ...model.gpu import Gpu, GpuIdentity
from .calls import LOST, NvmlCalls, Observer, error_kind
from .reader import Cadence, GpuReader, GpuState, text
from .xid import XidWatcher

if TYPE_CHECKING:
    from ...config import Config

_Result = TypeVar("_Result", GpuIdentity, Gpu)


class NvmlBackend:
    """``GpuBackend`` over NVML. Thread-safe: GPUs may be read in parallel.

    ``slow_interval``: seconds between reads of the slow counters (``reader.py``); ``collectors``:
    the collector groups to read (``catalog.GROUPS``, default every one; profiling is GPM, where
    the GPU serves it: ``gpm.py``); ``monotonic``: the clock of that cadence; ``observer``: told of
    every optional read that did not answer (``calls.py``).
    """

    simulated = False

    def __init__(
        self,
        *,
        xid_event_timeout_ms: int = 1000,
        slow_interval: float = 30.0,
        collectors: AbstractSet[str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._log = logger or logging.getLogger("exporter.sources.nvml")
        self._cadence = Cadence(slow_interval=slow_interval, monotonic=monotonic,
                                collectors=catalog.all_collectors() if collectors is None else frozenset(collectors))
        self._calls = NvmlCalls(self._log, observer)
        self._xid = XidWatcher(self._calls, timeout_ms=xid_event_timeout_ms)  # kept: counts survive restarts
        self._lock = threading.Lock()  # guards _gpus
        self._life = threading.Lock()  # serialises start() and stop(): one nvmlInit, one XID thread
        self._started = False
        self._gpus: dict[int, GpuState] = {}
        self._system: dict[str, str] = {}
        self._xid_error: str | None = None  # why the XID thread could not start

    @classmethod
    def configured(cls, config: Config, **kwargs: Any) -> "NvmlBackend":
        """The backend as the config asks for it (the agent's and ``check``'s); ``collectors``, when
        given, the groups to read in place of those on (the agent's, with --compat.dcgm-exporter)."""
        kwargs.setdefault("collectors", config.collectors)
        return cls(slow_interval=config.collector_slow_interval, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """``nvmlInit`` and start the XID thread. Raises ``BackendUnavailable``; may be retried.

        Fast: no GPU is looked up here (a handle takes 1-3 s per GPU without persistence mode);
        each GPU is looked up, and watched for XIDs, when it is first identified or read.
        Concurrent calls initialise once.
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
                self._gpus.clear()
            self._system = self._read_system()
            try:
                self._xid.start()
            except pynvml.NVMLError as e:
                self._xid_error = f"no event set: {e}"
                self._log.warning("XID events unavailable: %s", e)
            else:
                self._xid_error = None

    def stop(self) -> None:
        """Stop the XID thread (within about one event timeout) and ``nvmlShutdown``. Idempotent."""
        with self._life:
            self._xid.stop()
            if not self._started:
                return
            self._started = False
            with self._lock:
                states = list(self._gpus.values())
                self._gpus.clear()
            for state in states:  # before nvmlShutdown: GPM buffers are NVML's
                state.close()
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as e:
                self._log.debug("nvmlShutdown: %s", e)

    def device_count(self) -> int:
        return int(pynvml.nvmlDeviceGetCount())

    # -- reading -------------------------------------------------------------------------------
    def identify(self, index: int) -> GpuIdentity:
        """Who is GPU ``index`` now: looked up afresh (another GPU may hold the index), logged
        afresh, and watched for XID events before this returns (see ``_read``)."""
        self._forget(index)
        self._calls.forget(index)
        return self._read(index, _identity)

    def read_gpu(self, index: int) -> Gpu:
        return self._read(index, lambda reader: reader.read(self._system))

    def error_counts(self) -> dict[str, int]:
        """Errors of optional reads (and of XID watching) since the backend was made, by kind
        (the NVML_ERROR_* name in lower case). Failed required reads are raised instead."""
        return self._calls.counts()

    def xid_counts(self) -> dict[tuple[str, int], int]:
        """(GPU uuid, XID code) -> events seen since the first start; served apart from
        ``read_gpu`` so that they stay readable while a GPU is lost (see ``GpuBackend``)."""
        return self._xid.counts()

    def xid_registration(self, uuid: str) -> tuple[str, str]:
        """Whether GPU ``uuid`` is watched for XID events (``XidWatcher.registration``)."""
        if self._xid_error is not None:
            return "failed", self._xid_error
        return self._xid.registration(uuid)

    @property
    def system(self) -> dict[str, str]:
        """Driver, NVML and CUDA versions, as read at start ("" where NVML did not say)."""
        return dict(self._system)

    def settle_xids(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until the events NVML has delivered are counted."""
        self._xid.drain(timeout)

    def _read(self, index: int, read: Callable[[GpuReader], _Result]) -> _Result:
        """``read`` on GPU ``index``'s reader; a lost GPU's handle is dropped.

        A GPU not identified since its handle was looked up is identified first, and registered
        for XID events before anything else is read: NVML records no event from before the
        registration, and a GPU that fails may raise its XID during its very first read. Every
        later good read submits the GPU again: one whose registration failed is retried."""
        state = self._state(index)
        reader = GpuReader(self._calls, index, state, self._cadence)
        first = state.identity is None
        try:
            if first:
                self._xid.watch(reader.identify(self._system).uuid, state.handle, wait=self._xid.longest_wait)
            result = read(reader)
        except pynvml.NVMLError as e:  # GPU_IS_LOST on an optional read
            self._forget(index, state)
            raise GpuReadError(f"GPU {index}: {e}", error_kind(e)) from e
        except GpuReadError as e:
            if e.kind == LOST:
                self._forget(index, state)
            raise
        if not first:
            self._xid.watch(result.uuid, state.handle)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("GPU %d: NVML %.1f ms; slowest: %s", index, reader.timer.total() * 1000,
                            reader.timer.slowest())
        return result

    def _state(self, index: int) -> GpuState:
        with self._lock:
            state = self._gpus.get(index)
        if state is None:
            handle = self._calls.required(index, "handle", pynvml.nvmlDeviceGetHandleByIndex, index)
            with self._lock:
                state = self._gpus.setdefault(index, GpuState(handle))
        return state

    def _forget(self, index: int, state: GpuState | None = None) -> None:
        """Drop what is kept about GPU ``index`` (only ``state``, if given and still current)."""
        with self._lock:
            current = self._gpus.get(index)
            if current is None or (state is not None and current is not state):
                return
            del self._gpus[index]
        current.close()

    def _read_system(self) -> dict[str, str]:
        system = {"driver_version": "", "cuda_version": "", "nvml_version": ""}
        try:
            system["driver_version"] = text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as e:
            self._log.warning("driver version unknown: %s", e)
        try:
            system["nvml_version"] = text(pynvml.nvmlSystemGetNVMLVersion())
        except pynvml.NVMLError as e:
            self._log.debug("NVML version unknown: %s", e)
        try:
            v = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
            system["cuda_version"] = f"{v // 1000}.{v % 1000 // 10}"
        except pynvml.NVMLError as e:
            self._log.debug("CUDA version unknown: %s", e)
        return system


def _identity(reader: GpuReader) -> GpuIdentity:
    """What ``NvmlBackend._read`` identified first."""
    assert reader.state.identity is not None
    return reader.state.identity
