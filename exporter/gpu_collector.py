"""Runs a GPU backend from the event loop: worker threads, deadlines, one GPU failing alone.

Each GPU is read in its own daemon thread with a deadline. A GPU whose read has not returned
by then keeps its previous readings in the snapshot (marked stale), and no second read of it
is started until the first one returns: a hung NVML call costs one thread, never a pile of
them, and never the loop. Daemon threads also mean a hung call cannot block process exit.

NVML that cannot start (driver not loaded yet) is retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, TypeVar

from . import catalog
from .backend import GpuBackend
from .snapshot import Gpu, GpuSnapshot, Sample

T = TypeVar("T")
log = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


def run_in_daemon_thread(fn: Callable[..., T], *args: Any, name: str = "nvml") -> asyncio.Future[T]:
    """Run ``fn`` in a fresh daemon thread; the returned future resolves on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # loop closed while we were blocked: nobody waits any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


@dataclass(frozen=True, slots=True)
class BackendState:
    up: bool
    error: str | None


class GpuCollector:
    def __init__(
        self,
        backend: GpuBackend,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.backend = backend
        self.timeout = timeout
        self._clock = clock  # wall time, for snapshot timestamps
        self._monotonic = monotonic  # for retry backoff
        self._started = False
        self._start_error: str | None = "not started yet"
        self._next_start = 0.0
        self._backoff = BACKOFF_INITIAL_SECONDS
        self._in_flight: dict[int, asyncio.Future[Gpu]] = {}
        self._count: asyncio.Future[int] | None = None  # a device_count call still running
        self._start: asyncio.Future[None] | None = None  # a start call still running
        self._last: dict[int, tuple[Gpu, float]] = {}  # index -> (reading, time taken)
        self._logged_down: set[tuple[int, str]] = set()
        self.errors: Counter[str] = Counter()

    @property
    def state(self) -> BackendState:
        if not self._started:
            return BackendState(False, self._start_error)
        if self._count is not None and not self._count.done():
            return BackendState(False, "NVML calls do not return (device count hangs)")
        return BackendState(True, None)

    async def _ensure_started(self) -> bool:
        if self._started:
            return True
        if self._start is None:
            if self._monotonic() < self._next_start:
                return False
            self._start = run_in_daemon_thread(self.backend.start, name="nvml-init")
        # A hung nvmlInit keeps its one thread; no second attempt starts until it returns.
        await asyncio.wait([self._start], timeout=self.timeout)
        if not self._start.done():
            self._note_start_failure("NVML initialisation does not return")
            return False
        attempt, self._start = self._start, None
        if (error := attempt.exception()) is not None:
            self._note_start_failure(str(error) or type(error).__name__)
            return False
        log.info("GPU backend started")
        self._started, self._start_error = True, None
        return True

    def _note_start_failure(self, message: str) -> None:
        if message != self._start_error:
            log.warning("GPU backend unavailable, retrying in %.0fs: %s", self._backoff, message)
        self._start_error = message
        self.errors["init"] += 1
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        """Capped exponential backoff; reset only by a cycle that reads the GPUs."""
        self._next_start = self._monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)

    def _restart_later(self, reason: str) -> None:
        """NVML failed as a whole: stop it (in the background: stop may block) and start again later."""
        log.warning("GPU backend failed, restarting: %s", reason)
        self.errors["backend"] += 1
        run_in_daemon_thread(self._stop_quietly, name="nvml-stop")
        self._started, self._start_error = False, reason
        self._schedule_retry()

    def _stop_quietly(self) -> None:
        try:
            self.backend.stop()
        except Exception:  # noqa: BLE001 - stop after a failure is best effort
            log.debug("backend stop failed", exc_info=True)

    async def collect(self) -> GpuSnapshot:
        """One cycle: every GPU read in parallel, each within the deadline."""
        now = self._clock()
        if not await self._ensure_started():
            return self._down_snapshot(now, self._start_error or "backend not started")
        if self._count is None:
            self._count = run_in_daemon_thread(self.backend.device_count, name="nvml-count")
        await asyncio.wait([self._count], timeout=self.timeout)
        if not self._count.done():
            # NVML as a whole hangs (a driver in trouble blocks every call): serve what we had,
            # marked stale, and start nothing new until that call returns.
            self.errors["timeout"] += 1
            return self._held_snapshot(now)
        count_future, self._count = self._count, None
        if (error := count_future.exception()) is not None:
            self._restart_later(f"device count failed: {str(error) or type(error).__name__}")
            return self._down_snapshot(now, self._start_error or "device count failed")
        count = count_future.result()
        self._backoff = BACKOFF_INITIAL_SECONDS  # NVML answers again: the next failure retries soon

        for index in range(count):
            if index not in self._in_flight:
                self._in_flight[index] = run_in_daemon_thread(self.backend.read_gpu, index, name=f"nvml-gpu{index}")
        pending = [self._in_flight[i] for i in range(count)]
        if pending:
            await asyncio.wait(pending, timeout=self.timeout)

        gpus: list[Gpu] = []
        stale = False
        oldest = now
        for index in range(count):
            future = self._in_flight[index]
            if not future.done():
                stale = True
                self.errors["timeout"] += 1
                gpu, taken = self._held(index, now)
                gpus.append(gpu)
                oldest = min(oldest, taken)
                continue
            del self._in_flight[index]
            gpus.append(self._settle(index, future, now))
        # Forget in-flight reads of GPUs that vanished from the count.
        for index in [i for i in self._in_flight if i >= count]:
            self._in_flight.pop(index)
        return GpuSnapshot(gpus=self._with_xids(gpus), timestamp=oldest, stale=stale)

    def _held(self, index: int, now: float) -> tuple[Gpu, float]:
        """A GPU whose read hangs: down, but its last readings stay so graphs do not gap."""
        previous = self._last.get(index)
        if previous is None:
            return self._down(index, "read timed out"), now
        return replace(previous[0], up=False, error="read timed out"), previous[1]

    def _held_snapshot(self, now: float) -> GpuSnapshot:
        held = [self._held(i, now) for i in sorted(self._last)]
        oldest = min((taken for _, taken in held), default=now)
        return GpuSnapshot(gpus=self._with_xids([g for g, _ in held]), timestamp=oldest, stale=True)

    def _with_xids(self, gpus: list[Gpu]) -> tuple[Gpu, ...]:
        """Add XID counters to every GPU, up or down: the XIDs that matter most come right
        before a GPU is lost, and must stay visible while its reads fail."""
        try:
            counts: Mapping[tuple[str, int], int] = self.backend.xid_counts()
        except Exception:  # noqa: BLE001 - XIDs are an extra; a failure costs only them
            log.debug("reading XID counts failed", exc_info=True)
            return tuple(gpus)
        by_uuid: dict[str, list[Sample]] = {}
        for (uuid, code), n in sorted(counts.items()):
            by_uuid.setdefault(uuid, []).append(Sample(catalog.XID_ERRORS, n, (str(code),)))
        return tuple(
            replace(g, samples=g.samples + tuple(by_uuid[g.uuid])) if g.uuid in by_uuid else g for g in gpus
        )

    def _settle(self, index: int, future: asyncio.Future[Gpu], now: float) -> Gpu:
        error = future.exception()
        if error is None:
            gpu = future.result()
            self._last[index] = (gpu, now)
            self._logged_down = {k for k in self._logged_down if k[0] != index}
            return gpu
        message = str(error) or type(error).__name__
        self.errors["gpu"] += 1
        if (index, message) not in self._logged_down:
            log.warning("GPU %d read failed: %s", index, message)
            self._logged_down.add((index, message))
        return self._down(index, message)

    def _down(self, index: int, reason: str) -> Gpu:
        """A GPU that could not be read: up=0, its identity (not its readings) from the last good read."""
        previous = self._last.get(index)
        if previous is None:
            return Gpu(index=index, uuid="", up=False, error=reason)
        last = previous[0]
        return Gpu(index=index, uuid=last.uuid, up=False, minor_number=last.minor_number, info=last.info, error=reason)

    def _down_snapshot(self, now: float, reason: str) -> GpuSnapshot:
        """NVML is down: every GPU seen before is reported with up=0, nothing else."""
        gpus = [self._down(i, reason) for i in sorted(self._last)]
        return GpuSnapshot(gpus=self._with_xids(gpus), timestamp=now)

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self.backend.stop()
            except Exception:  # noqa: BLE001
                log.debug("backend stop failed", exc_info=True)
