"""XID error events, counted by a dedicated thread.

NVML delivers XIDs only as events: a thread blocks in ``nvmlEventSetWait`` (ctypes releases the
GIL meanwhile) and counts each event per (GPU uuid, XID code). Counts are cumulative since the
agent started, exported as a counter: a "last XID" gauge loses repeats and never resets.

The wait uses a timeout so that ``stop()`` is noticed within about one timeout.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import Counter
from typing import Any, Iterable

import pynvml

_ERROR_BACKOFF_S = 0.5


def handle_key(handle: Any) -> int | None:
    """The address behind an ``nvmlDevice_t``: how an event's ``device`` is matched to a GPU."""
    return ctypes.cast(handle, ctypes.c_void_p).value


class XidWatcher:
    """Registers every GPU for XID events and counts them in a daemon thread."""

    def __init__(self, *, timeout_ms: int = 1000, logger: logging.Logger | None = None) -> None:
        self._timeout_ms = max(1, int(timeout_ms))
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._uuid_by_handle: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._logged: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, gpus: Iterable[tuple[str, Any]]) -> None:
        """Create the event set, register each ``(uuid, handle)`` and start the thread.

        A GPU that refuses registration (NOT_SUPPORTED, lost) is logged and skipped; the others
        are still watched. Raises ``pynvml.NVMLError`` only if no event set can be created.
        """
        if self._thread is not None:
            return
        self._stop.clear()
        self._uuid_by_handle.clear()
        self._event_set = pynvml.nvmlEventSetCreate()
        for uuid, handle in gpus:
            self._register(uuid, handle)
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Stop the thread and free the event set. Returns False if the thread did not end in
        time (a wait that hangs in the driver); the set is then left alone rather than freed
        under it."""
        thread, self._thread = self._thread, None
        self._stop.set()
        stopped = True
        if thread is not None:
            thread.join(timeout=self._timeout_ms / 1000.0 + 1.0)
            stopped = not thread.is_alive()
        if stopped and self._event_set is not None:
            try:
                pynvml.nvmlEventSetFree(self._event_set)
            except pynvml.NVMLError as e:
                self._log.debug("nvmlEventSetFree: %s", e)
        self._event_set = None
        if not stopped:
            self._log.warning("XID event thread did not stop within %.1f s", self._timeout_ms / 1000.0 + 1.0)
        return stopped

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- results ---------------------------------------------------------------------------
    def counts_for(self, uuid: str) -> dict[int, int]:
        """XID code -> events seen since start, for one GPU."""
        with self._lock:
            return {code: n for (u, code), n in self._counts.items() if u == uuid}

    def counts(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._counts)

    # -- internals -------------------------------------------------------------------------
    def _register(self, uuid: str, handle: Any) -> None:
        try:
            pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
        except pynvml.NVMLError as e:
            self._log.warning("GPU %s: XID events not watched: %s", uuid, e)
            return
        key = handle_key(handle)
        if key is not None:
            self._uuid_by_handle[key] = uuid

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait(self._event_set, self._timeout_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError_Uninitialized:
                self._log.info("NVML shut down; XID event thread ends")
                return
            except pynvml.NVMLError as e:
                self._log_once(type(e).__name__, "nvmlEventSetWait failed: %s", e)
                self._stop.wait(_ERROR_BACKOFF_S)
                continue
            self._record(data)

    def _record(self, data: Any) -> None:
        if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            return
        uuid = self._uuid_by_handle.get(handle_key(data.device) or 0)
        if uuid is None:
            self._log_once("unknown-device", "XID %d on an unregistered device; ignored", data.eventData)
            return
        code = int(data.eventData)
        with self._lock:
            self._counts[(uuid, code)] += 1
        self._log.warning("XID %d on GPU %s", code, uuid)

    def _log_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self._log.warning(msg, *args)

