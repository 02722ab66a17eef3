"""The loop's side of a backend: deadlines, one GPU failing alone, bounded threads, init retry.

These use a small in-test backend that follows our ``GpuBackend`` protocol, so that hangs and
failures can be timed exactly; the same behaviours through the real pynvml on the fake NVML
library are covered in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

from exporter import catalog
from exporter.backend import BackendUnavailable
from exporter.gpu_collector import GpuCollector
from exporter.snapshot import Gpu, Sample


class ScriptedBackend:
    simulated = False

    def __init__(self, count: int = 3) -> None:
        self.count = count
        self.fail_start = 0
        self.starts = 0
        self.broken: set[int] = set()
        self.hang = threading.Event()
        self.hung_gpu: int | None = None
        self.reads: dict[int, int] = {}
        self.temperature = 40.0
        self.xids: dict[tuple[str, int], int] = {}
        self.count_hang = threading.Event()
        self.count_hangs = False
        self.stop_hang = threading.Event()
        self.stops = 0
        self.start_hang = threading.Event()
        self.start_hangs = False

    def start(self) -> None:
        self.starts += 1
        if self.start_hangs:
            self.start_hang.wait(10)
        if self.fail_start:
            self.fail_start -= 1
            raise BackendUnavailable("driver not loaded")

    def device_count(self) -> int:
        if self.count_hangs:
            self.count_hang.wait(10)
        return self.count

    def xid_counts(self) -> dict[tuple[str, int], int]:
        return dict(self.xids)

    def read_gpu(self, index: int) -> Gpu:
        self.reads[index] = self.reads.get(index, 0) + 1
        if index == self.hung_gpu:
            self.hang.wait(10)
        if index in self.broken:
            raise RuntimeError("GPU is lost")
        return Gpu(index=index, uuid=f"GPU-{index}", samples=(Sample(catalog.TEMPERATURE, self.temperature),))

    def stop(self) -> None:
        self.stops += 1
        self.stop_hang.wait(10)


async def collect_until(collector, condition, attempts: int = 50):
    """Collect until ``condition(snapshot)``: a released thread needs a moment on a busy machine."""
    for _ in range(attempts):
        snapshot = await collector.collect()
        if condition(snapshot):
            return snapshot
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition never held; last snapshot {snapshot}")


def temps(snapshot):
    return {g.index: g.samples[0].value if g.samples else None for g in snapshot.gpus}


async def test_a_broken_gpu_costs_only_its_own_series():
    backend = ScriptedBackend()
    collector = GpuCollector(backend, timeout=1)
    await collector.collect()
    backend.broken.add(1)
    snapshot = await collector.collect()
    assert [g.up for g in snapshot.gpus] == [True, False, True]
    assert snapshot.gpus[1].uuid == "GPU-1"  # remembered from the last good read
    assert "lost" in snapshot.gpus[1].error
    assert temps(snapshot)[0] == temps(snapshot)[2] == 40.0
    backend.broken.clear()
    snapshot = await collector.collect()
    assert all(g.up for g in snapshot.gpus)


async def test_a_hung_gpu_keeps_its_last_readings_marked_stale_and_gets_one_thread():
    backend = ScriptedBackend()
    collector = GpuCollector(backend, timeout=0.2)
    await collector.collect()
    backend.hung_gpu, backend.temperature = 2, 55.0
    try:
        for _ in range(3):
            snapshot = await collector.collect()
            assert snapshot.stale
            assert temps(snapshot) == {0: 55.0, 1: 55.0, 2: 40.0}  # GPU 2 keeps its old reading
            assert [g.up for g in snapshot.gpus] == [True, True, False]  # ... and is down
        assert backend.reads[2] == 2  # one good read, then one that hangs: never a pile of threads
        assert collector.errors["timeout"] == 3
    finally:
        backend.hang.set()
    backend.hung_gpu = None
    snapshot = await collector.collect()
    assert not snapshot.stale and temps(snapshot)[2] == 55.0


async def test_backend_that_cannot_start_is_retried_with_backoff_and_recovers():
    clock = [1000.0]
    backend = ScriptedBackend()
    backend.fail_start = 2
    collector = GpuCollector(backend, timeout=1, monotonic=lambda: clock[0])
    snapshot = await collector.collect()
    assert snapshot.gpus == () and not collector.state.up
    assert "driver not loaded" in collector.state.error
    await collector.collect()  # within the backoff: no new attempt
    assert backend.starts == 1
    clock[0] += 1.5
    await collector.collect()  # second failure, backoff doubles to 2 s
    assert backend.starts == 2
    clock[0] += 1.5
    await collector.collect()
    assert backend.starts == 2
    clock[0] += 1.0
    snapshot = await collector.collect()
    assert backend.starts == 3 and collector.state.up and len(snapshot.gpus) == 3


async def test_device_count_failure_reports_known_gpus_down_and_restarts():
    backend = ScriptedBackend(count=2)
    collector = GpuCollector(backend, timeout=1)
    await collector.collect()

    def broken_count() -> int:
        raise RuntimeError("NVML_ERROR_UNKNOWN")

    backend.device_count = broken_count  # type: ignore[method-assign]
    backend.xids = {("GPU-1", 79): 2}
    started = time.monotonic()
    snapshot = await collector.collect()  # backend.stop() blocks: it must not block the loop
    assert time.monotonic() - started < 1
    assert [(g.uuid, g.up) for g in snapshot.gpus] == [("GPU-0", False), ("GPU-1", False)]
    assert not collector.state.up
    # XIDs stay visible while the GPUs are down: 79 comes right before a GPU falls off the bus.
    assert [(s.metric, s.value, s.labels) for s in snapshot.gpus[1].samples] == [(catalog.XID_ERRORS, 2, ("79",))]
    backend.stop_hang.set()


async def test_a_node_without_gpus_still_collects():
    collector = GpuCollector(ScriptedBackend(count=0), timeout=1)
    snapshot = await collector.collect()
    assert snapshot.gpus == () and collector.state.up


async def test_a_hung_device_count_serves_the_last_readings_stale_and_starts_no_second_call():
    backend = ScriptedBackend(count=2)
    collector = GpuCollector(backend, timeout=0.2)
    await collector.collect()
    backend.count_hangs = True
    try:
        for _ in range(2):
            started = time.monotonic()
            snapshot = await collector.collect()
            assert time.monotonic() - started < 1
            assert snapshot.stale and [(g.uuid, g.up) for g in snapshot.gpus] == [("GPU-0", False), ("GPU-1", False)]
            assert temps(snapshot) == {0: 40.0, 1: 40.0}
        assert backend.stops == 0  # a hang is no failure to restart from ...
        assert not collector.state.up and "hangs" in collector.state.error  # ... but not ready either
    finally:
        backend.count_hang.set()
    snapshot = await collect_until(collector, lambda s: not s.stale)
    assert all(g.up for g in snapshot.gpus)


async def test_xid_counts_are_added_to_their_gpus():
    backend = ScriptedBackend(count=2)
    backend.xids = {("GPU-0", 13): 1, ("GPU-0", 79): 3, ("GPU-gone", 48): 1}
    snapshot = await GpuCollector(backend, timeout=1).collect()
    xids = {(g.index, s.labels, s.value) for g in snapshot.gpus for s in g.samples if s.metric is catalog.XID_ERRORS}
    assert xids == {(0, ("13",), 1), (0, ("79",), 3)}


async def test_a_hung_nvml_init_holds_one_thread_however_often_the_cycle_retries():
    clock = [1000.0]
    backend = ScriptedBackend()
    backend.start_hangs = True
    collector = GpuCollector(backend, timeout=0.05, monotonic=lambda: clock[0])
    try:
        for _ in range(5):
            await collector.collect()
            clock[0] += 120  # far past any backoff
        assert backend.starts == 1
        assert "does not return" in collector.state.error
    finally:
        backend.start_hang.set()
    snapshot = await collect_until(collector, lambda s: collector.state.up)
    assert len(snapshot.gpus) == 3


async def test_restarts_after_count_failures_back_off_exponentially():
    clock = [1000.0]
    backend = ScriptedBackend()
    backend.stop_hang.set()

    def broken_count() -> int:
        raise RuntimeError("NVML_ERROR_UNKNOWN")

    backend.device_count = broken_count  # type: ignore[method-assign]
    collector = GpuCollector(backend, timeout=1, monotonic=lambda: clock[0])
    starts_at = []
    for _ in range(40):  # 40 s of cycles, one a second
        before = backend.starts
        await collector.collect()
        if backend.starts != before:
            starts_at.append(clock[0] - 1000)
        clock[0] += 1
    # Each restart waits twice as long as the one before: 1, 2, 4, 8, 16 s apart.
    gaps = [b - a for a, b in zip(starts_at, starts_at[1:])]
    assert gaps[:4] == [1, 2, 4, 8]
