"""What NVML costs per cycle: the time of each query group, and the limits that move a query
to the slow cadence.

Real drivers differ by orders of magnitude between queries (an H200 with driver 580: 5-20 us for
most, 0.85 ms per violation reason, 2.5 ms per maximum clock, 4.1 ms for the energy field;
docs/performance.md has the table), and a fake library answers every one at once. So the
reader times every group of queries on every read, the agent exports the sums
(``kube_gpu_exporter_nvml_query_duration_seconds{group}``), and ``bench/nvml_cost.py`` prints
them on any machine.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

#: The query groups, in the order a read runs them. ``identity`` and ``static`` run when a GPU
#: is first seen (or comes back); ``slow`` once per ``--collector.slow-interval``.
GROUPS: tuple[str, ...] = (
    "identity", "static", "modes", "activity", "thermal_power", "clocks", "pcie", "memory_errors", "nvlink",
    "fields", "slow", "processes", "profiling",
)

#: A field whose own latency (``nvmlFieldValue_t.latencyUsec``) reaches this in most of its
#: recent reads (``FIELD_TIMINGS``) leaves the fast batch of that GPU for the slow one, and comes
#: back when most of them are below it again: 1 ms is 20-200 times a typical field.
SLOW_FIELD_SECONDS = 0.001
#: A field moves between the batches on its last this many timings, when a majority of them (3 of
#: 5) agree: one read slowed by a busy CPU or a driver hiccup moves nothing.
FIELD_TIMINGS = 5
#: A fast batch slower than this whose fields report no latency (drivers that leave it 0) is
#: taken apart, each field timed alone: at most once per ``--collector.slow-interval``.
FAST_BATCH_BUDGET_SECONDS = 0.002


_current = threading.local()


def current_group() -> str | None:
    """The query group this thread is reading now (``QueryTimer.group``), None outside one: lets
    an observer of failed calls (``NvmlCalls``) say which group a call belonged to."""
    return getattr(_current, "group", None)


class QueryTimer:
    """Seconds spent per query group during one read of one GPU; every group is present (0 when
    it did not run in this read), so that the exported series stay put from cycle to cycle."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
        self._lap = time.perf_counter()

    @contextmanager
    def group(self, name: str) -> Iterator[None]:
        outer, _current.group = current_group(), name
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            _current.group = outer

    def lap(self, name: str) -> None:
        """Add the time since the last lap (or since the timer was made) to group ``name``: for
        a read that runs its groups one stretch after another (the simulated backend's)."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._lap
        self._lap = now

    def total(self) -> float:
        return sum(self.seconds.values())

    def slowest(self, n: int = 3) -> str:
        """``"slow 7.1 ms, fields 0.6 ms, clocks 0.1 ms"``: for the debug line of each read."""
        top = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in top)
