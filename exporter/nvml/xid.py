"""XID error events, counted by a dedicated thread.

NVML delivers XIDs only as events: a thread blocks in ``nvmlEventSetWait`` (ctypes releases the
GIL meanwhile) and counts each event per (GPU uuid, XID code). Counts are cumulative since the
agent started, exported as a counter: a "last XID" gauge loses repeats and never resets.

The thread also registers the GPUs, before it starts waiting: that needs a handle per GPU, and
without persistence mode the driver takes 1-3 s per GPU to hand one out, far too long for
``start()``. Each run (start .. stop) has its own stop flag, event set and handle map, so a
thread that outlives ``stop()`` (stuck in the driver) can never mix with the next run's.

The wait uses a timeout so that ``stop()`` is noticed within about one timeout.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pynvml

_ERROR_BACKOFF_S = 0.5
_NOT_MIG = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of an event not tied to a MIG instance

#: Yields (uuid, handle) for each GPU to watch; called in the event thread.
GpuSource = Callable[[], Iterable[tuple[str, Any]]]


def handle_key(handle: Any) -> int | None:
    """The address behind an ``nvmlDevice_t``: how an event's ``device`` is matched to a GPU."""
    return ctypes.cast(handle, ctypes.c_void_p).value


@dataclass
class _Run:
    """State of one start .. stop of the thread."""

    event_set: Any
    stop: threading.Event = field(default_factory=threading.Event)
    uuid_by_handle: dict[int, str] = field(default_factory=dict)
    registered: threading.Event = field(default_factory=threading.Event)


class XidWatcher:
    """Registers every GPU for XID events and counts them in a daemon thread."""

    def __init__(self, *, timeout_ms: int = 1000, logger: logging.Logger | None = None) -> None:
        self._timeout_ms = max(1, int(timeout_ms))
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()  # guards _counts and _logged
        self._life = threading.Lock()  # serialises start() and stop()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._run_state: _Run | None = None
        self._thread: threading.Thread | None = None
        self._logged: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, gpus: GpuSource) -> None:
        """Create the event set and start the thread, which registers what ``gpus()`` yields.

        Returns at once; a GPU that refuses registration (NOT_SUPPORTED, lost) is logged and
        skipped by the thread. Raises ``pynvml.NVMLError`` only if no event set can be created.
        A second call while running does nothing.
        """
        with self._life:
            if self._thread is not None:
                return
            run = _Run(event_set=pynvml.nvmlEventSetCreate())
            thread = threading.Thread(target=self._main, args=(run, gpus), name="nvml-xid-events", daemon=True)
            self._run_state, self._thread = run, thread
            thread.start()

    def stop(self) -> bool:
        """Stop the thread and free the event set. Returns False if the thread did not end in
        time (a call that hangs in the driver); the set is then left alone rather than freed
        under it."""
        with self._life:
            run, thread = self._run_state, self._thread
            self._run_state = self._thread = None
        if run is None or thread is None:
            return True
        run.stop.set()
        limit_s = self._timeout_ms / 1000.0 + 1.0
        thread.join(timeout=limit_s)
        if thread.is_alive():
            self._log.warning("XID event thread did not stop within %.1f s", limit_s)
            return False
        try:
            pynvml.nvmlEventSetFree(run.event_set)
        except pynvml.NVMLError as e:
            self._log.debug("nvmlEventSetFree: %s", e)
        return True

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait_registered(self, timeout_s: float) -> bool:
        """Wait until the thread has registered the GPUs (for tests and diagnostics)."""
        run = self._run_state
        return run is not None and run.registered.wait(timeout_s)

    # -- results ---------------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, int], int]:
        """(GPU uuid, XID code) -> events seen since the watcher was made (across restarts)."""
        with self._lock:
            return dict(self._counts)

    # -- the thread ------------------------------------------------------------------------
    def _main(self, run: _Run, gpus: GpuSource) -> None:
        self._register_all(run, gpus)
        run.registered.set()
        while not run.stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait(run.event_set, self._timeout_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError_Uninitialized:
                self._log.info("NVML shut down; XID event thread ends")
                return
            except pynvml.NVMLError as e:
                self._log_once(type(e).__name__, "nvmlEventSetWait failed: %s", e)
                run.stop.wait(_ERROR_BACKOFF_S)
                continue
            self._record(run, data)

    def _register_all(self, run: _Run, gpus: GpuSource) -> None:
        try:
            for uuid, handle in gpus():
                if run.stop.is_set():
                    return
                self._register(run, uuid, handle)
        except pynvml.NVMLError as e:
            self._log.warning("XID events: listing GPUs failed: %s", e)

    def _register(self, run: _Run, uuid: str, handle: Any) -> None:
        try:
            pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, run.event_set)
        except pynvml.NVMLError as e:
            self._log.warning("GPU %s: XID events not watched: %s", uuid, e)
            return
        key = handle_key(handle)
        if key is not None:
            run.uuid_by_handle[key] = uuid

    def _record(self, run: _Run, data: Any) -> None:
        if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            return
        code = int(data.eventData)
        uuid = run.uuid_by_handle.get(handle_key(data.device) or 0)
        if uuid is None:
            self._log_once("unknown-device", "XID %d on an unregistered device; ignored", code)
            return
        with self._lock:
            self._counts[(uuid, code)] += 1
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        if gi != _NOT_MIG:
            # Counted on the parent GPU (the series has no MIG labels); the log names the instance.
            self._log.warning("XID %d on GPU %s, MIG GPU instance %d compute instance %s", code, uuid, gi,
                              "any" if ci == _NOT_MIG else ci)
        else:
            self._log.warning("XID %d on GPU %s", code, uuid)

    def _log_once(self, key: str, msg: str, *args: Any) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        self._log.warning(msg, *args)
