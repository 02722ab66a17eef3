"""XID error events, counted by a dedicated thread.

NVML delivers XIDs only as events: a thread blocks in ``nvmlEventSetWait`` (ctypes releases the
GIL meanwhile) and counts each event per (GPU uuid, XID code). Counts are cumulative since the
watcher was made (across restarts), exported as a counter: a "last XID" gauge loses repeats and
never resets. An event on a MIG instance is counted on its parent GPU.

GPUs are registered at any time: ``watch()`` queues a GPU, and the thread registers what is
queued between two waits, so every NVML call on the event set stays in that one thread. NVML
records no event that came before a GPU's registration, and the XIDs that matter most come while
a GPU fails, its first read included: the backend has each GPU registered before it is first
read (``watch(..., wait=...)`` returns once the thread tried), and submits it again at every
later read, so that a GPU whose registration failed (lost at that moment, say) is retried at its next
good read; one already registered costs a set lookup. Each run (start .. stop) has its own stop
flag, event set and registrations, so a thread that outlives ``stop()`` (stuck in the driver) can
never mix with the next run's.

The wait uses a timeout: ``stop()`` and newly queued GPUs are noticed within about one timeout,
or within ``_SETTLE_WAIT_MS`` while GPUs are being identified (they come together: at start,
after a reset), or at once while no GPU is registered (the thread then waits on no NVML call).
``drain()`` returns once every event NVML has delivered is counted (a wait of a millisecond came
back empty): ``--once`` prints counts that include the events of its own reads.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml

from ...model.vocabulary import NOT_MIG
from .calls import NvmlCalls, error_kind

_ERROR_BACKOFF_S = 0.5
#: The wait while GPUs are being identified (for ``_SETTLE_S`` after one was submitted): the
#: others of the burst must not each wait a whole timeout to be registered before their first read.
_SETTLE_WAIT_MS = 20
_SETTLE_S = 2.0
#: The wait that tells whether an event is left (``drain``): short, but not 0, which some
#: bindings document as "wait without end".
_DRAIN_WAIT_MS = 1


def handle_key(handle: Any) -> int | None:
    """The address behind an ``nvmlDevice_t``: how an event's ``device`` is matched to a GPU."""
    return ctypes.cast(handle, ctypes.c_void_p).value


@dataclass
class _Run:
    """State of one start .. stop of the thread. ``pending``, ``uuid_by_handle`` and ``refused``
    are keyed by ``handle_key`` and guarded by the watcher's lock, as are ``tried`` (set once a
    pending GPU's registration was tried), ``drains`` (set once no event is left) and
    ``submitted`` (monotonic time a GPU being identified was last submitted)."""

    event_set: Any
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)  # for a thread waiting on no NVML call
    pending: dict[int, tuple[str, Any]] = field(default_factory=dict)
    tried: dict[int, threading.Event] = field(default_factory=dict)
    uuid_by_handle: dict[int, str] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)  # NOT_SUPPORTED: not asked again this run
    outcome: dict[str, tuple[str, str]] = field(default_factory=dict)  # by uuid: see registration()
    drains: list[threading.Event] = field(default_factory=list)
    submitted: float = float("-inf")


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
            run.wake.set()
            limit_s = self.longest_wait
            thread.join(timeout=limit_s)
            if thread.is_alive():
                self._log.warning("XID event thread did not stop within %.1f s", limit_s)
                return False
            try:
                pynvml.nvmlEventSetFree(run.event_set)
            except pynvml.NVMLError as e:
                self._log.debug("nvmlEventSetFree: %s", e)
            return True

    def watch(self, uuid: str, handle: Any, *, wait: float = 0.0) -> bool:
        """Have GPU ``uuid`` registered by the thread, and wait up to ``wait`` seconds until it
        tried. Whether the GPU is watched now. Thread-safe and cheap when the GPU is already
        watched or refused events in this run; False while the watcher is not running."""
        key = handle_key(handle)
        if key is None:
            return False
        with self._lock:
            run = self._run
            if run is None or key in run.refused:
                return False
            if key in run.uuid_by_handle:
                return True
            if key not in run.pending:
                run.pending[key] = (uuid, handle)
            run.outcome.setdefault(uuid, ("pending", ""))
            tried = run.tried.setdefault(key, threading.Event())
            if wait > 0:  # a GPU being identified: others may follow
                run.submitted = time.monotonic()
        run.wake.set()
        if wait > 0 and not tried.wait(wait):
            self._log.debug("GPU %s: XID registration not done within %.1f s; reading on", uuid, wait)
        with self._lock:
            return key in run.uuid_by_handle

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every event NVML has delivered so far is counted.
        True when it is (or the watcher is not running)."""
        with self._lock:
            run = self._run
            if run is None:
                return True
            drained = threading.Event()
            run.drains.append(drained)
        run.wake.set()
        return drained.wait(timeout)

    @property
    def longest_wait(self) -> float:
        """Seconds the thread may take to act on a request (stop, a GPU to register, a drain):
        its longest wait, and a second more."""
        return self._timeout_ms / 1000.0 + 1.0

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
        try:
            while not run.stop.is_set():
                self._register_pending(run)
                with self._lock:
                    watching = bool(run.uuid_by_handle)
                    drains = list(run.drains)
                    settling = time.monotonic() - run.submitted < _SETTLE_S
                if not watching:  # nothing to wait for in NVML: nothing can be pending either
                    self._drained(run, drains)
                    run.wake.wait(self._timeout_ms / 1000.0)
                    run.wake.clear()
                    continue
                try:
                    data = pynvml.nvmlEventSetWait(
                        run.event_set, _DRAIN_WAIT_MS if drains else _SETTLE_WAIT_MS if settling else self._timeout_ms)
                except pynvml.NVMLError_Timeout:
                    self._drained(run, drains)
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
        finally:  # nobody waits on a thread that ended
            with self._lock:
                waiting = [*run.tried.values(), *run.drains]
                run.tried, run.drains = {}, []
            for event in waiting:
                event.set()

    def _drained(self, run: _Run, drains: list[threading.Event]) -> None:
        """No event is left: the drains asked for before that wait are done."""
        if not drains:
            return
        with self._lock:
            run.drains = [d for d in run.drains if d not in drains]
        for d in drains:
            d.set()

    def _register_pending(self, run: _Run) -> None:
        with self._lock:
            pending, run.pending = run.pending, {}
        for key, (uuid, handle) in pending.items():
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, run.event_set)
            except pynvml.NVMLError as e:
                self._refused(run, key, uuid, e)
            else:
                with self._lock:
                    run.uuid_by_handle[key] = uuid
                    run.outcome[uuid] = ("watched", "")
            with self._lock:
                tried = run.tried.pop(key, None)
            if tried is not None:
                tried.set()

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
