"""The GPUs as a source: a GPU backend run from the event loop with worker threads and deadlines,
one GPU failing alone. (The backend is NVML, ``nvml/``, or the simulated node, ``simulate/``;
their contract is ``backend.py``.)

Each GPU is read in its own daemon thread; the cycle's NVML work (start, device count, the reads)
has one deadline, ``--collector.timeout`` from its start. A GPU whose read has not returned by
then is reported down, with its previous readings for a bounded time (marked stale), and no
second read of it is started until the first one returns: a hung NVML call costs one thread,
never a pile of them, and never the loop. Daemon threads also mean a hung call cannot block
process exit.

NVML that cannot start (driver not loaded yet) is retried with capped exponential backoff.

Each snapshot says whether NVML as a whole answers (``nvml_up``) and, for a GPU that is down,
the kind of failure (``Gpu.error_kind``): the push path tells a lost GPU from a hung read and
from an NVML restart by them. XID counts come with every snapshot, with the time each count
last grew; a failed XID read serves the last counts (a counter never drops to nothing and back).
An event that comes while the GPUs are read is counted in the next snapshot, unless the source
``settles_xids`` (``--once``: there is no next one) and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Mapping

from ..model.gpu import Gpu, GpuIdentity, GpuSnapshot
from .backend import GpuBackend
from .base import Outcome, Source, run_in_daemon_thread

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


#: A GPU whose reads hang is served with its last readings (marked stale, with up=0) for this many
#: intervals, then with its identity alone.
STALE_CYCLES = 3


@dataclass(frozen=True, slots=True)
class BackendState:
    up: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class _Reading:
    gpu: Gpu
    taken: float  # monotonic time of the cycle that read it


@dataclass(frozen=True, slots=True)
class _ReadResult:
    """What one worker thread brings back: the identity it knew or read, and the reading or why not."""

    identity: GpuIdentity
    gpu: Gpu | None
    error: BaseException | None


class GpuSource(Source[GpuSnapshot]):
    """Reads every GPU of a backend once per ``snapshot()``, in parallel, all within ``timeout``.

    What it remembers per GPU index, and why:

    * the identity (uuid, minor number, info facts), read first and kept while the GPU is down:
      a lost GPU still has its name, its XIDs and its holders;
    * the MIG layout of the last good read: a failing MIG GPU keeps its instances, so that their
      holders stay attributed exactly when operators need to know who was on it;
    * the last good reading, served stale (with ``up=0``) while a read hangs, for at most
      ``stale_limit`` seconds: after that only the identity is left, so alerts on the readings
      resolve instead of being kept up by numbers that no longer describe the GPU.

    A GPU that leaves the device count is forgotten.

    As a source (``read``): ``ok`` when NVML answers and every GPU was read in time.
    """

    name = "nvml"
    title = "NVML"
    provides = "gpus"
    #: Present at 0 from the start; a failed read adds the NVML_ERROR_* name of its error, in lower
    #: case, and the backend its own (``GpuBackend.error_counts``).
    error_kinds = ("init", "timeout", "restart", "gpu_is_lost", "unknown")

    def __init__(
        self,
        backend: GpuBackend,
        *,
        timeout: float,
        stale_limit: float,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        settles_xids: bool = False,
    ):
        self.backend = backend
        self.timeout = timeout
        self.stale_limit = stale_limit
        self.settles_xids = settles_xids
        self._monotonic = monotonic
        self._clock = clock  # unix time, for xid_last_event
        self._started = False
        self._start_error: str | None = "not started yet"
        self._next_start = 0.0
        self._backoff = BACKOFF_INITIAL_SECONDS
        self._in_flight: dict[int, asyncio.Future[_ReadResult]] = {}
        self._count: asyncio.Future[int] | None = None  # a device_count call still running
        self._start: asyncio.Future[None] | None = None  # a start call still running
        self._known_count = 0
        self._identity: dict[int, GpuIdentity] = {}
        self._last: dict[int, _Reading] = {}
        self._down_kind: dict[int, str] = {}  # GPUs reported down, by error kind: one log line per kind of spell
        self._xids: dict[tuple[str, int], int] = {}  # the last XID counts read
        self._xid_last_event: dict[tuple[str, int], float] = {}  # unix time each count last grew
        self._xid_error: str | None = None  # the last failure to read them, for one log line per change
        self.errors: Counter[str] = Counter(dict.fromkeys(self.error_kinds, 0))

    @classmethod
    def configured(cls, backend: GpuBackend, config: Config) -> "GpuSource":
        """With the deadline of ``--collector.timeout``, stale readings kept for ``STALE_CYCLES``
        intervals; under ``--once`` each snapshot waits for the XID events of its reads."""
        return cls(backend, timeout=config.collector_timeout, stale_limit=STALE_CYCLES * config.collector_interval,
                   settles_xids=config.once)

    @property
    def simulated(self) -> bool:
        return self.backend.simulated

    # -- as a source -------------------------------------------------------------------------------

    async def read(self, gpus: GpuSnapshot | None = None) -> Outcome[GpuSnapshot]:
        snapshot = await self.snapshot()
        return Outcome(snapshot, ok=self.state.up and not snapshot.stale and all(g.up for g in snapshot.gpus))

    def error_counts(self) -> Mapping[str, int]:
        counts = Counter(self.errors)
        counts.update(self.backend.error_counts())
        return counts

    async def stop(self) -> None:
        """Stop the backend, in a daemon thread: it may sit in a call that hangs (an event wait)."""
        await run_in_daemon_thread(self.stop_backend, name="nvml-stop")

    @property
    def state(self) -> BackendState:
        if not self._started:
            return BackendState(False, self._start_error)
        if self._count is not None and not self._count.done():
            return BackendState(False, "NVML calls do not return (device count hangs)")
        return BackendState(True, None)

    async def _ensure_started(self, deadline: float) -> bool:
        if self._started:
            return True
        if self._start is None:
            if self._monotonic() < self._next_start:
                return False
            self._start = run_in_daemon_thread(self.backend.start, name="nvml-init")
        # A hung nvmlInit keeps its one thread; no second attempt starts until it returns.
        await asyncio.wait([self._start], timeout=_left(deadline))
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
        self.errors["restart"] += 1
        run_in_daemon_thread(self._stop_quietly, name="nvml-stop")
        self._started, self._start_error = False, reason
        self._schedule_retry()

    def _stop_quietly(self) -> None:
        try:
            self.backend.stop()
        except Exception:  # noqa: BLE001 - stop after a failure is best effort
            log.debug("backend stop failed", exc_info=True)

    async def snapshot(self) -> GpuSnapshot:
        """One cycle: NVML started if it is not, the device count, then every GPU read in
        parallel, all within one deadline, ``timeout`` from the cycle's start: a call that has not
        returned by then keeps its thread, and the cycle goes on without it."""
        now = self._monotonic()
        deadline = asyncio.get_running_loop().time() + self.timeout
        if not await self._ensure_started(deadline):
            return self._snapshot([self._down(i, self._start_error or "backend not started", "init")
                                   for i in self._known()], now)
        if self._count is None:
            self._count = run_in_daemon_thread(self.backend.device_count, name="nvml-count")
        await asyncio.wait([self._count], timeout=_left(deadline))
        if not self._count.done():
            # NVML as a whole hangs (a driver in trouble blocks every call): serve what we had,
            # held, and start nothing new until that call returns.
            self.errors["timeout"] += 1
            return self._snapshot([self._stale(i, now) for i in self._known()], now, stale=True)
        count_future, self._count = self._count, None
        if (error := count_future.exception()) is not None:
            self._restart_later(f"device count failed: {str(error) or type(error).__name__}")
            return self._snapshot([self._down(i, self._start_error or "device count failed", "restart")
                                   for i in self._known()], now)
        self._backoff = BACKOFF_INITIAL_SECONDS  # NVML answers again: the next failure retries soon
        self._set_count(count_future.result())

        for index in range(self._known_count):
            if index not in self._in_flight:  # a read still hanging keeps its thread; no second one
                self._in_flight[index] = run_in_daemon_thread(
                    self._read, index, self._identity.get(index), name=f"nvml-gpu{index}")
        pending = [self._in_flight[i] for i in range(self._known_count)]
        if pending:
            await asyncio.wait(pending, timeout=_left(deadline))

        gpus: list[Gpu] = []
        stale = False
        for index in range(self._known_count):
            future = self._in_flight[index]
            if future.done():
                del self._in_flight[index]
                gpus.append(self._settle(index, future, now))
            else:
                stale = True
                self.errors["timeout"] += 1
                gpus.append(self._stale(index, now))
        # Reads of GPUs that left the count are not reported; a finished one frees its slot.
        for index in [i for i, f in self._in_flight.items() if i >= self._known_count and f.done()]:
            del self._in_flight[index]
        if self.settles_xids:
            await self._settle_xids()
        return self._snapshot(gpus, now, stale=stale)

    async def _settle_xids(self) -> None:
        """Wait (in a thread, within the deadline) for the XID events delivered during the reads."""
        settling = run_in_daemon_thread(self.backend.settle_xids, self.timeout, name="nvml-xids")
        await asyncio.wait([settling], timeout=self.timeout)
        if settling.done() and (error := settling.exception()) is not None:
            log.debug("waiting for XID events failed: %s", error)

    def _read(self, index: int, identity: GpuIdentity | None) -> _ReadResult:
        """Runs in a worker thread: identity first (once), then the reading."""
        if identity is None:
            identity = self.backend.identify(index)  # raises: nothing is known of this GPU
        try:
            return _ReadResult(identity, self.backend.read_gpu(index), None)
        except Exception as exc:  # noqa: BLE001 - reported by _settle with the identity kept
            return _ReadResult(identity, None, exc)

    def _set_count(self, count: int) -> None:
        for index in range(count, self._known_count):
            identity = self._identity.get(index)
            log.warning("GPU %d (%s) left the device count", index, identity.uuid if identity else "never identified")
        for known in (self._identity, self._last, self._down_kind):
            for index in [i for i in known if i >= count]:
                del known[index]
        self._known_count = count

    def _known(self) -> range:
        return range(self._known_count)

    def _settle(self, index: int, future: asyncio.Future[_ReadResult], now: float) -> Gpu:
        error = future.exception()
        if error is None:
            outcome = future.result()
            self._identity[index] = outcome.identity
            if outcome.gpu is not None:
                gpu = outcome.gpu
                self._identity[index] = gpu.identity
                self._last[index] = _Reading(gpu, now)
                self._mark_up(index)
                return gpu
            error = outcome.error
        assert error is not None
        message = str(error) or type(error).__name__
        kind = getattr(error, "kind", "unknown")
        self.errors[kind] += 1
        self._mark_down(index, kind, message)
        return self._down(index, message, kind)

    def _stale(self, index: int, now: float) -> Gpu:
        """A GPU whose read hangs: down, with its last readings (stale) for at most ``stale_limit``."""
        reason = f"read did not return within the cycle's {self.timeout:g}s"
        self._mark_down(index, "timeout", reason)
        last = self._last.get(index)
        if last is None or now - last.taken > self.stale_limit:
            return self._down(index, reason, "timeout")
        return replace(last.gpu, up=False, error=reason, error_kind="timeout")

    def _down(self, index: int, reason: str, kind: str) -> Gpu:
        """A GPU that could not be read: up=0 under its known identity, with its MIG instances
        (without readings) from the last good read. uuid is "" only if it was never identified."""
        identity = self._identity.get(index) or GpuIdentity(index=index, uuid="")
        last = self._last.get(index)
        layout = tuple(replace(m, samples=(), processes=()) for m in last.gpu.mig_devices) if last else ()
        return Gpu(index=index, uuid=identity.uuid, up=False, minor_number=identity.minor_number,
                   info=identity.info, mig_devices=layout, error=reason, error_kind=kind)

    def _snapshot(self, gpus: list[Gpu], now: float, *, stale: bool = False) -> GpuSnapshot:
        taken = min((self._last[g.index].taken for g in gpus if g.samples and g.index in self._last and not g.up),
                    default=now)
        self._read_xids()
        return GpuSnapshot(gpus=tuple(gpus), taken=taken, stale=stale, xids=dict(self._xids),
                           xid_last_event=dict(self._xid_last_event), nvml_up=self.state.up)

    def _read_xids(self) -> None:
        """The backend's XID counts, and when each last grew. A failed read keeps the last counts:
        emitting none (or 0) would read as a counter reset, and the next good read as new events."""
        try:
            counts = dict(self.backend.xid_counts())
        except Exception as exc:  # noqa: BLE001 - XIDs are an extra; a failure costs only their freshness
            message = str(exc) or type(exc).__name__
            self.errors[getattr(exc, "kind", "unknown")] += 1
            if message != self._xid_error:
                log.warning("reading XID counts failed, serving the last ones: %s", message)
            self._xid_error = message
            return
        if self._xid_error is not None:
            log.info("reading XID counts works again")
            self._xid_error = None
        now = self._clock()
        for key, count in counts.items():
            if count and count != self._xids.get(key, 0):  # grew, or a lower count after a reset
                self._xid_last_event[key] = now
        self._xids = counts
        self._xid_last_event = {k: t for k, t in self._xid_last_event.items() if k in counts}

    def _mark_down(self, index: int, kind: str, reason: str) -> None:
        """Log a GPU going down once per spell and kind of failure: a lost GPU's message changes
        with the call that fails (the read, then the handle), its kind does not."""
        if self._down_kind.get(index) != kind:
            identity = self._identity.get(index)
            log.warning("GPU %d (%s) is down: %s", index, identity.uuid if identity else "uuid unknown", reason)
            self._down_kind[index] = kind

    def _mark_up(self, index: int) -> None:
        if self._down_kind.pop(index, None) is not None:
            log.info("GPU %d (%s) is back", index, self._identity[index].uuid)

    def stop_backend(self) -> None:
        if self._started:
            self._started = False
            try:
                self.backend.stop()
            except Exception:  # noqa: BLE001
                log.debug("backend stop failed", exc_info=True)


def _left(deadline: float) -> float:
    """Seconds to the cycle's deadline (loop time), 0 once past: a wait then takes what is done."""
    return max(0.0, deadline - asyncio.get_running_loop().time())
