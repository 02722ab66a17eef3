"""The loop's side of a backend: deadlines, one GPU failing alone, bounded threads, init retry,
identity kept while a GPU is down.

These use a small in-test backend that follows our ``GpuBackend`` protocol, so that hangs and
failures can be timed exactly; the same behaviours through the real pynvml on the fake NVML
library are covered in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import wait_until_async

from exporter import catalog
from exporter.config import parse_config
from exporter.sources.backend import BackendUnavailable, GpuReadError
from exporter.sources.gpus import GpuSource
from exporter.model.gpu import Gpu, GpuIdentity, MigDevice, Sample


class ScriptedBackend:
    simulated = False

    def __init__(self, count: int = 3) -> None:
        self.count = count
        self.fail_start = 0
        self.starts = 0
        self.broken: set[int] = set()
        self.unidentifiable: set[int] = set()
        self.hang = threading.Event()
        self.hung_gpu: int | None = None
        self.reads: dict[int, int] = {}
        self.identified: dict[int, int] = {}
        self.temperature = 40.0
        self.migs: dict[int, tuple[MigDevice, ...]] = {}
        self.xids: dict[tuple[str, int], int] = {}
        self.delivered: dict[tuple[str, int], int] = {}  # XID events not counted until settle_xids
        self.xid_fails = 0  # the next n xid_counts calls raise
        self.count_hang = threading.Event()
        self.count_hangs = False
        self.count_fails = False
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
        if self.count_fails:
            raise RuntimeError("NVML_ERROR_UNKNOWN")
        return self.count

    def identify(self, index: int) -> GpuIdentity:
        self.identified[index] = self.identified.get(index, 0) + 1
        if index in self.unidentifiable:
            raise GpuReadError(f"GPU {index}: uuid: GPU is lost", "gpu_is_lost")
        return GpuIdentity(index, f"GPU-{index}", index, {"model": "H100"})

    def error_counts(self) -> dict[str, int]:
        return {}

    def xid_counts(self) -> dict[tuple[str, int], int]:
        if self.xid_fails:
            self.xid_fails -= 1
            raise GpuReadError("event set: unknown error", "unknown")
        return dict(self.xids)

    def settle_xids(self, timeout: float) -> None:
        for key, n in self.delivered.items():
            self.xids[key] = self.xids.get(key, 0) + n
        self.delivered = {}

    def read_gpu(self, index: int) -> Gpu:
        self.reads[index] = self.reads.get(index, 0) + 1
        if index == self.hung_gpu:
            self.hang.wait(10)
        if index in self.broken:
            raise GpuReadError(f"GPU {index}: temperature: GPU is lost", "gpu_is_lost")
        return Gpu(index=index, uuid=f"GPU-{index}", minor_number=index, info={"model": "H100"},
                   samples=(Sample(catalog.TEMPERATURE, self.temperature),), mig_devices=self.migs.get(index, ()))

    def stop(self) -> None:
        self.stops += 1
        self.stop_hang.wait(10)


async def collect_until(collector, condition):
    """Collect until ``condition(snapshot)``: a released thread needs a moment on a busy machine."""
    last = []

    async def collected():
        last[:] = [await collector.snapshot()]
        return last[0] if condition(last[0]) else None

    return await wait_until_async(collected, message=lambda: f"the condition; last snapshot {last}")


def temps(snapshot):
    return {g.index: g.samples[0].value if g.samples else None for g in snapshot.gpus}


def collector_for(backend, timeout: float = 1.0, stale_limit: float = 60.0, clock=None) -> GpuSource:
    if clock is None:
        return GpuSource(backend, timeout=timeout, stale_limit=stale_limit)
    return GpuSource(backend, timeout=timeout, stale_limit=stale_limit, monotonic=lambda: clock[0],
                        clock=lambda: clock[0])


async def test_a_broken_gpu_costs_only_its_own_series_and_is_counted_once():
    backend = ScriptedBackend()
    collector = collector_for(backend)
    await collector.snapshot()
    backend.broken.add(1)
    snapshot = await collector.snapshot()
    assert [g.up for g in snapshot.gpus] == [True, False, True]
    assert snapshot.gpus[1].uuid == "GPU-1" and snapshot.gpus[1].info == {"model": "H100"}
    assert "lost" in snapshot.gpus[1].error
    assert temps(snapshot)[0] == temps(snapshot)[2] == 40.0
    assert collector.errors["gpu_is_lost"] == 1 and sum(collector.errors.values()) == 1
    backend.broken.clear()
    snapshot = await collector.snapshot()
    assert all(g.up for g in snapshot.gpus)


async def test_a_gpu_lost_before_its_first_good_read_keeps_the_identity_read_first():
    backend = ScriptedBackend()
    backend.broken.add(1)
    snapshot = await collector_for(backend).snapshot()
    gpu = snapshot.gpus[1]
    assert (gpu.up, gpu.uuid, gpu.minor_number, gpu.info) == (False, "GPU-1", 1, {"model": "H100"})


async def test_identity_is_read_once_and_a_gpu_never_identified_has_no_uuid():
    backend = ScriptedBackend()
    backend.unidentifiable.add(2)
    collector = collector_for(backend)
    for _ in range(3):
        snapshot = await collector.snapshot()
    assert backend.identified == {0: 1, 1: 1, 2: 3}  # retried only while it fails
    assert (snapshot.gpus[2].up, snapshot.gpus[2].uuid) == (False, "")
    backend.unidentifiable.clear()
    snapshot = await collector.snapshot()
    assert (snapshot.gpus[2].up, snapshot.gpus[2].uuid) == (True, "GPU-2")


async def test_a_failing_mig_gpu_keeps_its_instances_without_readings():
    backend = ScriptedBackend()
    mig = MigDevice("MIG-a", 1, 0, "3g.40gb", samples=(Sample(catalog.MIG_MEMORY_USED, 5.0),))
    backend.migs[2] = (mig,)
    collector = collector_for(backend)
    await collector.snapshot()
    backend.broken.add(2)
    snapshot = await collector.snapshot()
    (kept,) = snapshot.gpus[2].mig_devices
    assert (kept.uuid, kept.gpu_instance_id, kept.profile, kept.samples) == ("MIG-a", 1, "3g.40gb", ())


async def test_a_hung_gpu_is_down_with_its_last_readings_for_a_bounded_time_and_gets_one_thread():
    clock = [1000.0]
    backend = ScriptedBackend()
    collector = collector_for(backend, timeout=0.2, stale_limit=25, clock=clock)
    await collector.snapshot()
    backend.hung_gpu, backend.temperature = 2, 55.0
    try:
        for _ in range(3):
            clock[0] += 10
            snapshot = await collector.snapshot()
            held = clock[0] - 1000 <= 25  # the readings are held, then dropped
            assert snapshot.stale and snapshot.taken == (1000.0 if held else clock[0])
            assert [g.up for g in snapshot.gpus] == [True, True, False]
            assert temps(snapshot) == {0: 55.0, 1: 55.0, 2: 40.0 if held else None}
        assert snapshot.gpus[2].uuid == "GPU-2"  # the identity stays
        assert backend.reads[2] == 2  # one good read, then one that hangs: never a pile of threads
        assert collector.errors["timeout"] == 3
    finally:
        backend.hang.set()
    backend.hung_gpu = None
    snapshot = await collect_until(collector, lambda s: not s.stale)
    assert temps(snapshot)[2] == 55.0 and snapshot.taken == clock[0]


async def test_backend_that_cannot_start_is_retried_with_backoff_and_recovers():
    clock = [1000.0]
    backend = ScriptedBackend()
    backend.fail_start = 2
    collector = collector_for(backend, clock=clock)
    snapshot = await collector.snapshot()
    assert snapshot.gpus == () and not collector.state.up
    assert "driver not loaded" in collector.state.error
    await collector.snapshot()  # within the backoff: no new attempt
    assert backend.starts == 1
    clock[0] += 1.5
    await collector.snapshot()  # second failure, backoff doubles to 2 s
    assert backend.starts == 2
    clock[0] += 1.5
    await collector.snapshot()
    assert backend.starts == 2
    clock[0] += 1.0
    snapshot = await collector.snapshot()
    assert backend.starts == 3 and collector.state.up and len(snapshot.gpus) == 3
    assert collector.errors["init"] == 2


async def test_device_count_failure_reports_known_gpus_down_and_restarts():
    backend = ScriptedBackend(count=2)
    collector = collector_for(backend)
    await collector.snapshot()
    backend.count_fails = True
    backend.xids = {("GPU-1", 79): 2}
    started = time.monotonic()
    snapshot = await collector.snapshot()  # backend.stop() blocks: it must not block the loop
    assert time.monotonic() - started < 1
    assert [(g.uuid, g.up) for g in snapshot.gpus] == [("GPU-0", False), ("GPU-1", False)]
    assert not collector.state.up and collector.errors["restart"] == 1
    # XIDs stay visible while the GPUs are down: 79 comes right before a GPU falls off the bus.
    assert snapshot.xids == {("GPU-1", 79): 2}
    backend.stop_hang.set()


async def test_a_gpu_that_leaves_the_device_count_is_forgotten():
    clock = [1000.0]
    backend = ScriptedBackend(count=3)
    backend.stop_hang.set()
    collector = collector_for(backend, clock=clock)
    await collector.snapshot()
    backend.count = 2
    snapshot = await collector.snapshot()
    assert [g.uuid for g in snapshot.gpus] == ["GPU-0", "GPU-1"]
    backend.count_fails = True  # NVML fails: the known GPUs are reported down, the gone one not
    snapshot = await collector.snapshot()
    assert [(g.uuid, g.up) for g in snapshot.gpus] == [("GPU-0", False), ("GPU-1", False)]


async def test_a_hung_read_of_a_gpu_that_left_and_came_back_does_not_start_a_second_thread():
    backend = ScriptedBackend(count=3)
    collector = collector_for(backend, timeout=0.1)
    await collector.snapshot()
    backend.hung_gpu = 2
    try:
        await collector.snapshot()  # GPU 2's read hangs
        backend.count = 2
        await collector.snapshot()  # GPU 2 leaves the count while its read still hangs
        backend.count = 3
        snapshot = await collector.snapshot()  # ... and comes back
        assert backend.reads[2] == 2
        assert snapshot.stale and not snapshot.gpus[2].up
    finally:
        backend.hang.set()
    backend.hung_gpu = None
    snapshot = await collect_until(collector, lambda s: not s.stale)
    assert snapshot.gpus[2].up


async def test_a_node_without_gpus_still_collects():
    collector = collector_for(ScriptedBackend(count=0))
    snapshot = await collector.snapshot()
    assert snapshot.gpus == () and collector.state.up


async def test_a_hung_device_count_serves_the_last_readings_stale_and_starts_no_second_call():
    backend = ScriptedBackend(count=2)
    collector = collector_for(backend, timeout=0.2)
    await collector.snapshot()
    backend.count_hangs = True
    try:
        for _ in range(2):
            started = time.monotonic()
            snapshot = await collector.snapshot()
            assert time.monotonic() - started < 1
            assert snapshot.stale and [(g.uuid, g.up) for g in snapshot.gpus] == [("GPU-0", False), ("GPU-1", False)]
            assert temps(snapshot) == {0: 40.0, 1: 40.0}
        assert backend.stops == 0  # a hang is no failure to restart from ...
        assert not collector.state.up and "hangs" in collector.state.error  # ... but not ready either
    finally:
        backend.count_hang.set()
    snapshot = await collect_until(collector, lambda s: not s.stale)
    assert all(g.up for g in snapshot.gpus)


async def test_xid_counts_come_with_the_snapshot_even_for_gpus_that_are_down():
    backend = ScriptedBackend(count=2)
    backend.broken.add(0)
    backend.xids = {("GPU-0", 79): 3}
    snapshot = await collector_for(backend).snapshot()
    assert snapshot.xids == {("GPU-0", 79): 3} and not snapshot.gpus[0].up


async def test_a_hung_nvml_init_holds_one_thread_however_often_the_cycle_retries():
    clock = [1000.0]
    backend = ScriptedBackend()
    backend.start_hangs = True
    collector = collector_for(backend, timeout=0.05, clock=clock)
    try:
        for _ in range(5):
            await collector.snapshot()
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
    backend.count_fails = True
    collector = collector_for(backend, clock=clock)
    starts_at = []
    for _ in range(40):  # 40 s of cycles, one a second
        before = backend.starts
        await collector.snapshot()
        if backend.starts != before:
            starts_at.append(clock[0] - 1000)
        clock[0] += 1
    # Each restart waits twice as long as the one before: 1, 2, 4, 8, 16 s apart.
    gaps = [b - a for a, b in zip(starts_at, starts_at[1:])]
    assert gaps[:4] == [1, 2, 4, 8]


async def test_going_down_and_coming_back_is_logged_once_each(caplog):
    backend = ScriptedBackend()
    collector = collector_for(backend)
    await collector.snapshot()
    backend.broken.add(1)
    with caplog.at_level("INFO", logger="exporter.sources.gpus"):
        for _ in range(3):
            await collector.snapshot()
        backend.broken.clear()
        for _ in range(2):
            await collector.snapshot()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("GPU 1 (GPU-1) is down" in m for m in messages) == 1
    assert sum("GPU 1 (GPU-1) is back" in m for m in messages) == 1


async def test_a_lost_gpu_is_logged_once_while_the_failing_call_changes_and_again_for_a_new_kind(caplog):
    class Changing(ScriptedBackend):
        """A lost GPU fails at another call each cycle (the read, then its handle), then hangs."""

        def read_gpu(self, index: int) -> Gpu:
            if index == 1 and index in self.broken:
                self.reads[index] = self.reads.get(index, 0) + 1
                raise GpuReadError(f"GPU 1: {('temperature', 'handle')[self.reads[index] % 2]}: GPU is lost",
                                   "gpu_is_lost")
            return super().read_gpu(index)

    backend = Changing()
    collector = collector_for(backend, timeout=0.2)
    await collector.snapshot()
    backend.broken.add(1)
    with caplog.at_level("INFO", logger="exporter.sources.gpus"):
        for _ in range(4):
            await collector.snapshot()
        backend.broken.clear()
        backend.hung_gpu = 1
        await collector.snapshot()
        backend.hang.set()
    down = [r.getMessage() for r in caplog.records if "GPU 1 (GPU-1) is down" in r.getMessage()]
    assert len(down) == 2, down  # once for the loss, once when it turns into a hang
    assert "GPU is lost" in down[0] and "did not return" in down[1]


def kinds(snapshot) -> list[str | None]:
    return [g.error_kind for g in snapshot.gpus]


async def test_a_down_gpu_says_why_and_the_snapshot_whether_nvml_as_a_whole_answers():
    """What the push path tells apart: a lost GPU (GpuLost at once), a hung read (only if it lasts),
    NVML down or restarting (no GPU's fault: no GpuLost at all)."""
    backend = ScriptedBackend()
    collector = collector_for(backend, timeout=0.2)
    snapshot = await collector.snapshot()
    assert snapshot.nvml_up and kinds(snapshot) == [None, None, None]
    backend.broken.add(1)
    backend.hung_gpu = 2
    try:
        snapshot = await collector.snapshot()
        assert snapshot.nvml_up and kinds(snapshot) == [None, "gpu_is_lost", "timeout"]
    finally:
        backend.hang.set()
    backend.broken.clear()
    backend.hung_gpu = None
    snapshot = await collect_until(collector, lambda s: all(g.up for g in s.gpus))
    assert kinds(snapshot) == [None, None, None]

    backend.count_hangs = True  # NVML hangs as a whole: every GPU held down, NVML not up
    try:
        snapshot = await collector.snapshot()
        assert not snapshot.nvml_up and kinds(snapshot) == ["timeout"] * 3
    finally:
        backend.count_hang.set()
    await collect_until(collector, lambda s: s.nvml_up)

    backend.count_fails = True  # NVML fails as a whole: restarted; the GPUs down meanwhile
    backend.stop_hang.set()
    backend.fail_start = 1
    snapshot = await collector.snapshot()
    assert not snapshot.nvml_up and kinds(snapshot) == ["restart"] * 3
    snapshot = await collector.snapshot()  # not started again yet (backoff)
    assert not snapshot.nvml_up and kinds(snapshot) == ["init"] * 3


async def test_each_xid_count_is_stamped_with_the_time_it_last_grew():
    clock = [1000.0]
    backend = ScriptedBackend(count=2)
    collector = collector_for(backend, clock=clock)
    backend.xids = {("GPU-0", 48): 1}
    snapshot = await collector.snapshot()
    assert snapshot.xid_last_event == {("GPU-0", 48): 1000.0}  # seen since the agent started: an event now
    clock[0] += 10
    backend.xids = {("GPU-0", 48): 1, ("GPU-1", 13): 2}
    snapshot = await collector.snapshot()
    assert snapshot.xid_last_event == {("GPU-0", 48): 1000.0, ("GPU-1", 13): 1010.0}
    clock[0] += 10
    backend.xids = {("GPU-0", 48): 2, ("GPU-1", 13): 2}
    snapshot = await collector.snapshot()
    assert snapshot.xid_last_event == {("GPU-0", 48): 1020.0, ("GPU-1", 13): 1010.0}


async def test_a_failed_xid_read_keeps_the_last_counts_and_is_counted():
    clock = [1000.0]
    backend = ScriptedBackend(count=1)
    collector = collector_for(backend, clock=clock)
    backend.xids = {("GPU-0", 79): 3}
    await collector.snapshot()
    backend.xid_fails = 1
    clock[0] += 10
    snapshot = await collector.snapshot()
    assert snapshot.xids == {("GPU-0", 79): 3}  # not {}: that would read as a counter reset
    assert snapshot.xid_last_event == {("GPU-0", 79): 1000.0}
    assert collector.errors["unknown"] == 1
    clock[0] += 10
    snapshot = await collector.snapshot()  # the same count again: no new event
    assert snapshot.xids == {("GPU-0", 79): 3} and snapshot.xid_last_event == {("GPU-0", 79): 1000.0}


# -- one deadline for the cycle, through the real pynvml on the fake NVML library ------------------

PHASE_SECONDS = 0.6  # each phase alone fits the 1 s timeout; any two together do not


@pytest.mark.integration
@pytest.mark.parametrize("slow", [("init", "count"), ("count", "read"), ("init", "read")], ids="+".join)
async def test_the_timeout_bounds_the_whole_cycle_not_each_nvml_phase(fake_nvml, slow):
    """nvmlInit, the device count and a GPU's read take 0.6 s each where told to: with a 1 s
    --collector.timeout, two of them do not fit one cycle. The cycle goes on without what has not
    returned by its deadline, however the time was spent (each phase used to get the whole timeout)."""
    from exporter.sources.nvml import NvmlBackend

    fake_nvml.set(init_seconds=PHASE_SECONDS if "init" in slow else None,
                  count_seconds=PHASE_SECONDS if "count" in slow else None)
    for index in range(len(fake_nvml.gpus)):
        fake_nvml.update_gpu(index, delay={"temperature": PHASE_SECONDS} if "read" in slow else None)
    collector = GpuSource(NvmlBackend(xid_event_timeout_ms=100), timeout=1.0, stale_limit=60.0)
    try:
        first = await collector.snapshot()
        assert not any(g.up for g in first.gpus), first
        if "read" in slow:  # every GPU's read cut short, each counted
            assert collector.errors["timeout"] == 3
            assert {g.error for g in first.gpus} == {"read did not return within the cycle's 1s"}
        else:  # the count cut short: no GPU known yet
            assert collector.errors["timeout"] == 1 and first.gpus == () and first.stale
        # Calls cut short keep their threads and finish; without the delays the GPUs read again.
        fake_nvml.set(init_seconds=None, count_seconds=None)
        for index in range(len(fake_nvml.gpus)):
            fake_nvml.update_gpu(index, delay=None)
        await collect_until(collector, lambda s: len(s.gpus) == 3 and all(g.up for g in s.gpus))
    finally:
        await collector.stop()


def test_under_once_the_snapshot_waits_for_the_xid_events_of_its_reads():
    """The loop counts an event that came during the reads in the next cycle; --once has none."""
    backend = ScriptedBackend(count=1)
    backend.delivered = {("GPU-0", 48): 1}
    assert asyncio.run(collector_for(backend).snapshot()).xids == {}
    once = GpuSource.configured(backend, parse_config(["--once"], environ={}))
    assert asyncio.run(once.snapshot()).xids == {("GPU-0", 48): 1}
