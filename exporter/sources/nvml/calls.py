"""How the NVML backend calls NVML, and what a failed call costs, in one place.

* required reads (the handle by index, the UUID): an error raises ``GpuReadError``; the
  collector reports the GPU with ``up=0`` and counts the failure (the backend does not, so that
  each failed read is counted once).
* NOT_SUPPORTED / FUNCTION_NOT_FOUND on any other read: the GPU has no such metric (or the
  driver is too old for the call). The series is omitted and logged once per GPU at debug; it
  is no error.
* GPU_IS_LOST anywhere: the read of the whole GPU fails (``NvmlBackend`` drops its handle, so
  that a GPU that comes back after a reset is looked up afresh).
* any other error on an optional read: the series is omitted, logged once per GPU at warning
  and counted in ``error_counts()``; the GPU stays up, since the rest of its readings are good.

The reader of a GPU, the process lists, GPM and the XID thread all make their calls through one
``NvmlCalls`` (``required`` or ``optional``), which also counts the errors and logs each once,
and tells an ``observer``, when it has one, of every optional read that did not answer
(``kube-gpu-exporter check`` reports them per query group).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable, Hashable, Optional

import pynvml

from ..backend import GpuReadError

#: nvmlReturn_t -> "gpu_is_lost", "unknown", ... (the NVML_ERROR_* name, lower case).
ERROR_KIND_OF: dict[int, str] = {
    value: name[len("NVML_ERROR_"):].lower()
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}
#: Answers that mean "this GPU (or driver) has no such thing": not an error.
ABSENT = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
LOST = ERROR_KIND_OF[pynvml.NVML_ERROR_GPU_IS_LOST]

#: ``observer(gpu index, read name, NVML return code, detail)`` for each optional read that did
#: not answer; the code is None for a read the GPU does not have (whatever NVML answered).
Observer = Callable[[int, str, Optional[int], str], None]


def error_kind(err: pynvml.NVMLError) -> str:
    return ERROR_KIND_OF.get(getattr(err, "value", None), "unknown")


class NvmlCalls:
    """NVML calls made by the rules above; keeps the error counts and what was logged.
    Thread-safe: GPUs are read in parallel and the XID thread reports here too."""

    def __init__(self, logger: logging.Logger, observer: Observer | None = None) -> None:
        self.log = logger
        self.observer = observer
        self._lock = threading.Lock()
        self._logged: set[Hashable] = set()
        self._errors: Counter[str] = Counter()

    def required(self, index: int, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; any NVML error raises ``GpuReadError`` (not counted here)."""
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            raise GpuReadError(f"GPU {index}: {what}: {e}", error_kind(e)) from e

    def optional(self, index: int, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None when the GPU cannot serve it; GPU_IS_LOST raises."""
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            self.failed(index, what, e)
            return None

    def failed(self, index: int, what: str, err: pynvml.NVMLError) -> None:
        """An optional read failed with ``err``: log (once) and count it, or re-raise GPU_IS_LOST."""
        if err.value in ABSENT:
            self.absent(index, what, str(err))
            return
        if self.observer is not None:
            self.observer(index, what, err.value, str(err))
        if err.value == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise err
        self.count(error_kind(err))
        if self.once((index, what)):
            self.log.warning("GPU %d: reading %s failed: %s; series omitted", index, what, err)

    def absent(self, index: int, what: str, detail: str) -> None:
        """The GPU has no ``what``: logged once per GPU at debug."""
        if self.observer is not None:
            self.observer(index, what, None, detail)
        if self.once((index, what)):
            self.log.debug("GPU %d: %s not supported (%s)", index, what, detail)

    def count(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def once(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen (until ``forget``)."""
        with self._lock:
            if key in self._logged:
                return False
            self._logged.add(key)
            return True

    def forget(self, index: int) -> None:
        """Log again what GPU ``index`` lacks: another GPU may hold that index now."""
        with self._lock:
            self._logged = {k for k in self._logged if not (isinstance(k, tuple) and k[:1] == (index,))}
