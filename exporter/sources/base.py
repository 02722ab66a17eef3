"""The one interface every source implements, and what sources share.

A source is one thing the agent reads each cycle (NVML, the kubelet, a watch of the API server,
procfs). Its ``name`` is the ``collector`` label of its self-metrics; ``read`` returns an
``Outcome``: the value it read (``None``: nothing usable) and whether the read fully succeeded
(``kube_gpu_exporter_collector_success``). A source counts its own errors by kind
(``error_counts``, every kind of ``error_kinds`` present at 0 from the start); the agent's error
book adds them up, so that each source is asked the same way and no source is a special case.

The interface fits a source whose work runs in threads (the GPU reads) as well as one that runs
on the event loop (the API server's watches, the kubelet): every method the agent calls is a coroutine,
and a source that reads between cycles (``background``) answers ``read`` from what it holds.
What a source reads goes into the field of ``model.cycle.Observations`` named by its
``provides``; a source that needs the GPUs' snapshot of the cycle (procfs places the GPU
processes) says ``after_gpus`` and gets it in ``read``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from ..model.gpu import GpuSnapshot, Sample

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one read of a source gave."""

    value: T | None  # None: nothing usable this time (a failure, or nothing known yet)
    ok: bool  # the read fully succeeded: kube_gpu_exporter_collector_success


class Source(Generic[T]):
    """A source of the collection cycle (see the module docstring). Subclasses set the class
    attributes and implement ``read``; the other methods have defaults for a source with no
    lifecycle of its own."""

    #: The ``collector`` label: kube_gpu_exporter_collector_{success,duration_seconds,...}{collector}.
    name: str = ""
    #: What a person calls it: log lines ("... lost") and the status page.
    title: str = ""
    #: The field of ``model.cycle.Observations`` that its value fills.
    provides: str = ""
    #: Error kinds it counts, each present at 0 from the start in collector_errors_total.
    error_kinds: tuple[str, ...] = ()
    #: Read after the GPUs, with their snapshot of the cycle; otherwise alongside them.
    after_gpus: bool = False
    #: Its work runs between cycles (a watch): a read costs nothing and reports no duration.
    background: bool = False
    #: False for ``Off``: a source the configuration switches off.
    enabled: bool = True

    async def start(self) -> None:
        """Begin (a watch starts its task). Raises when it cannot run at all, e.g. no API-server
        configuration: the agent counts that as kind ``config`` and goes on without it."""

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for what a first cycle needs (a watch's first list);
        ``--once`` does, before its one cycle."""
        return True

    async def read(self, gpus: GpuSnapshot | None) -> Outcome[T]:
        """This cycle's value. A failure it can name is counted (``error_counts``) and answered
        with an ``Outcome`` that is not ``ok``, never raised. ``gpus`` is the cycle's snapshot
        for a source read ``after_gpus``, else None."""
        raise NotImplementedError

    async def stop(self) -> None:
        """End what ``start`` began. Safe after a failed start; the agent bounds how long it waits."""

    def error_counts(self) -> Mapping[str, int]:
        """Errors since start, by kind."""
        return {}

    def self_metrics(self) -> Iterable[Sample]:
        """Metrics of its own beyond the collector_* ones (procfs: unresolved_gpu_processes);
        called on the event loop after each cycle's reads."""
        return ()


class Off(Source[None]):
    """A source the configuration switches off, given to the agent all the same: it is never
    started, read or counted, and the status page lists it as disabled (``cli.build_sources``
    gives one for each source it does not build)."""

    enabled = False

    def __init__(self, kind: type[Source]) -> None:
        self.name, self.title, self.provides = kind.name, kind.title, kind.provides


class ErrorTally:
    """The errors a source counts, by kind, each distinct message logged once at warning (again
    after 1000 others: messages can carry ids that churn). Thread-safe."""

    def __init__(self, kinds: Iterable[str], logger: logging.Logger) -> None:
        self._counts: Counter[str] = Counter(dict.fromkeys(kinds, 0))
        self._log = logger
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def count(self, kind: str, message: str | None = None, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n
            first = message is not None and message not in self._logged
            if first:
                if len(self._logged) >= 1000:
                    self._logged.clear()
                self._logged.add(message)
        if first:
            self._log.warning("%s", message)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def run_in_daemon_thread(fn: Callable[..., R], *args: Any, name: str = "source") -> asyncio.Future[R]:
    """Run ``fn`` in a fresh daemon thread; the returned future resolves on the running loop.

    For calls that may block without end (NVML in a driver in trouble, a watch's socket): a
    daemon thread cannot hold up the process's exit, and the loop waits only as long as it likes.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

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
