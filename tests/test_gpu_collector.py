"""The loop's side of a backend: deadlines, one GPU failing alone, bounded threads, init retry.

These use a small in-test backend that follows our ``GpuBackend`` protocol, so that hangs and
failures can be timed exactly; the same behaviours through the real pynvml on the fake NVML
library are covered in test_e2e.py.
"""

from __future__ import annotations

import threading

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

    def start(self) -> None:
        self.starts += 1
        if self.fail_start:
            self.fail_start -= 1
            raise BackendUnavailable("driver not loaded")

    def device_count(self) -> int:
        return self.count

    def read_gpu(self, index: int) -> Gpu:
        self.reads[index] = self.reads.get(index, 0) + 1
        if index == self.hung_gpu:
            self.hang.wait(10)
        if index in self.broken:
            raise RuntimeError("GPU is lost")
        return Gpu(index=index, uuid=f"GPU-{index}", samples=(Sample(catalog.TEMPERATURE, self.temperature),))

    def stop(self) -> None:
        pass


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
        assert backend.reads[2] == 2  # one good read, then one that hangs: never a pile of threads
        assert collector.errors["timeout"] == 3
    finally:
        backend.hang.set()
    backend.hung_gpu = None
    snapshot = await collector.collect()
    assert not snapshot.stale and temps(snapshot)[2] == 55.0


async def test_backend_that_cannot_start_is_retried_with_backoff_and_recovers(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("exporter.gpu_collector.time.monotonic", lambda: clock[0])
    backend = ScriptedBackend()
    backend.fail_start = 2
    collector = GpuCollector(backend, timeout=1)
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
    snapshot = await collector.collect()
    assert [(g.uuid, g.up) for g in snapshot.gpus] == [("GPU-0", False), ("GPU-1", False)]
    assert not collector.state.up
