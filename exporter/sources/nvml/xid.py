"""XID error events, counted by a dedicated thread.

NVML delivers XIDs only as events: a thread blocks in ``nvmlEventSetWait`` (ctypes releases the
GIL meanwhile) and counts each event per (GPU uuid, XID code). Counts are cumulative since the
watcher was made (across restarts), exported as a counter: a "last XID" gauge loses repeats and
never resets. An event on a MIG instance is counted on its parent GPU.

GPUs are registered at any time: ``watch()`` queues a GPU, and the thread registers what is
queued between two waits, so every NVML call on the event set stays in that one thread. The
backend submits a GPU each time it identifies or reads it, so a GPU whose registration failed
(lost at that moment, say) is retried at its next good read; one already registered costs a set
lookup. Each run (start .. stop) has its own stop flag, event set and registrations, so a
thread that outlives ``stop()`` (stuck in the driver) can never mix with the next run's.

The wait uses a timeout: ``stop()`` and newly queued GPUs are noticed within about one timeout.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml

from ...model.vocabulary import NOT_MIG
from .calls import NvmlCalls, error_kind

_ERROR_BACKOFF_S = 0.5


def handle_key(handle: Any) -> int | None:
    """The address behind an ``nvmlDevice_t``: how an event's ``device`` is matched to a GPU."""
    return ctypes.cast(handle, ctypes.c_void_p).value


@dataclass
class _Run:
    """State of one start .. stop of the thread. ``pending``, ``uuid_by_handle`` and ``refused``
    are keyed by ``handle_key`` and guarded by the watcher's lock."""

    event_set: Any
    stop: threading.Event = field(default_factory=threading.Event)
    pending: dict[int, tuple[str, Any]] = field(default_factory=dict)
    uuid_by_handle: dict[int, str] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)  # NOT_SUPPORTED: not asked again this run
    outcome: dict[str, tuple[str, str]] = field(default_factory=dict)  # by uuid: see registration()


class XidWatcher:
    """Counts XID events of the GPUs it is asked to watch, in a daemon thread."""

    def __init__(self, calls: NvmlCalls, *, timeout_ms: int = 1000) -> None:
        self._calls = calls
        self._log = calls.log
        self._timeout_ms = max(1, int(timeout_ms))
        self._lock = threading.Lock()  # guards _counts and the current run's maps
        self._life = threading.Lock()  # serialises start() and stop()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._run: _Run | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Create the event set and start the thread; no GPU is watched until ``watch()``.
        Raises ``pynvml.NVMLError`` if no event set can be created. Does nothing while running."""
        with self._life:
            if self._thread is not None:
                return
            run = _Run(event_set=pynvml.nvmlEventSetCreate())
            thread = threading.Thread(target=self._main, args=(run,), name="nvml-xid-events", daemon=True)
            with self._lock:
                self._run, self._thread = run, thread
            thread.start()

    def stop(self) -> bool:
        """Stop the thread and free the event set. Returns False if the thread did not end in
        time (a call that hangs in the driver); the set is then left alone rather than freed
        under it."""
        with self._life:
            with self._lock:
                run, thread = self._run, self._thread
                self._run = self._thread = None
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

    def watch(self, uuid: str, handle: Any) -> None:
        """Have GPU ``uuid`` registered by the thread (soon, not now). Thread-safe and cheap when
        the GPU is already watched, queued, or refused events in this run; ignored while the
        watcher is not running."""
        key = handle_key(handle)
        if key is None:
            return
        with self._lock:
            run = self._run
            if run is None or key in run.uuid_by_handle or key in run.refused or key in run.pending:
                return
            run.pending[key] = (uuid, handle)
            run.outcome.setdefault(uuid, ("pending", ""))

    def registration(self, uuid: str) -> tuple[str, str]:
        """How GPU ``uuid`` stands in this run, and why: ``watched``; ``pending`` (queued, or
        never asked); ``not_supported`` or ``failed`` (retried at its next read), with NVML's
        answer; ``not_running`` (no thread). For ``kube-gpu-exporter check``."""
        with self._lock:
            run = self._run
            if run is None:
                return "not_running", ""
            return run.outcome.get(uuid, ("pending", ""))

    # -- results ---------------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, int], int]:
        """(GPU uuid, XID code) -> events seen since the watcher was made (across restarts)."""
        with self._lock:
            return dict(self._counts)

    # -- the thread ------------------------------------------------------------------------
    def _main(self, run: _Run) -> None:
        while not run.stop.is_set():
            self._register_pending(run)
            try:
                data = pynvml.nvmlEventSetWait(run.event_set, self._timeout_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError_Uninitialized:
                self._log.info("NVML shut down; XID event thread ends")
                return
            except pynvml.NVMLError as e:
                self._calls.count(error_kind(e))
                if self._calls.once(("xid_wait", error_kind(e))):
                    self._log.warning("nvmlEventSetWait failed: %s", e)
                run.stop.wait(_ERROR_BACKOFF_S)
                continue
            self._record(run, data)

    def _register_pending(self, run: _Run) -> None:
        with self._lock:
            pending, run.pending = run.pending, {}
        for key, (uuid, handle) in pending.items():
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, run.event_set)
            except pynvml.NVMLError as e:
                self._refused(run, key, uuid, e)
                continue
            with self._lock:
                run.uuid_by_handle[key] = uuid
                run.outcome[uuid] = ("watched", "")

    def _refused(self, run: _Run, key: int, uuid: str, err: pynvml.NVMLError) -> None:
        unsupported = err.value == pynvml.NVML_ERROR_NOT_SUPPORTED
        with self._lock:
            run.outcome[uuid] = ("not_supported" if unsupported else "failed", str(err))
            if unsupported:
                run.refused.add(key)
        if unsupported:
            if self._calls.once(("xid_unsupported", uuid)):
                self._log.warning("GPU %s: XID events not supported; its XIDs are not counted", uuid)
            return
        self._calls.count(error_kind(err))  # retried when the GPU is next identified or read
        if self._calls.once(("xid_register", uuid)):
            self._log.warning("GPU %s: XID events not watched yet: %s; retried at its next read", uuid, err)

    def _record(self, run: _Run, data: Any) -> None:
        if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            return
        code = int(data.eventData)
        with self._lock:
            uuid = run.uuid_by_handle.get(handle_key(data.device) or 0)
            if uuid is not None:
                self._counts[(uuid, code)] += 1
        if uuid is None:
            if self._calls.once(("xid_unknown_device",)):
                self._log.warning("XID %d on an unregistered device; ignored", code)
            return
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        if gi != NOT_MIG:
            # Counted on the parent GPU (the series has no MIG labels); the log names the instance.
            self._log.warning("XID %d on GPU %s, MIG GPU instance %d compute instance %s", code, uuid, gi,
                              "any" if ci == NOT_MIG else ci)
        else:
            self._log.warning("XID %d on GPU %s", code, uuid)
