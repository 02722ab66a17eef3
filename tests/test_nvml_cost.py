"""What NVML costs per cycle (issue 14): static facts read once, slow counters on their own
cadence, fields that prove slow moved out of the fast batch per GPU, every group's time reported.

The fake library counts calls per GPU and per read name (``FakeNode.stat(gpu, "calls.<name>")``,
``"field.<id>"``) and sleeps where told to (``delay.<name>``, ``delay.field.<id>``), so these
tests count calls instead of timing them.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Iterator

import pynvml
import pytest

from exporter import catalog
from exporter.model import vocabulary
from exporter.config import parse_config
from exporter.sources.nvml import GpuReadError, NvmlBackend
from exporter.sources.nvml.cost import GROUPS
from exporter.model.gpu import Gpu
from conftest import wait_until
from fakenvml import FakeNode
from test_nvml_backend import value

REPLAY = pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER
ENERGY = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
MEMORY_TEMP = pynvml.NVML_FI_DEV_MEMORY_TEMP


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def started(fake_nvml: FakeNode, clock: Clock) -> Iterator[NvmlBackend]:
    backend = NvmlBackend(xid_event_timeout_ms=100, slow_interval=30, monotonic=clock)
    backend.start()
    yield backend
    backend.stop()


def read(backend: NvmlBackend, index: int, times: int) -> list[Gpu]:
    return [backend.read_gpu(index) for _ in range(times)]


def test_static_facts_are_read_once_and_served_every_read(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    gpus = read(started, 0, 3)
    for name in ("max_clock", "temp_slowdown", "temp_shutdown", "pcie_max_gen", "pcie_max_width",
                 "power_limit_range", "power_default_mw", "default_app_clock"):
        per_read = {"max_clock": 4, "default_app_clock": 2}.get(name, 1)
        assert fake_nvml.stat(0, f"calls.{name}") == per_read, name
    assert fake_nvml.stat(0, "calls.clock") == 3 * 4  # current clocks: every read
    for g in gpus:
        assert value(g, catalog.CLOCK_MAX, "sm") == 1980e6
        assert value(g, catalog.TEMPERATURE_THRESHOLD, "slowdown") == 90
        assert value(g, catalog.PCIE_LINK_MAX_GENERATION) == 5
        assert value(g, catalog.POWER_LIMIT_MIN) == 200
        assert value(g, catalog.POWER_LIMIT_MAX) == 700
        assert value(g, catalog.POWER_LIMIT_DEFAULT) == 700
        assert value(g, catalog.APPLICATION_CLOCK_DEFAULT, "graphics") == 1755e6


def test_static_facts_are_read_again_when_the_gpu_comes_back(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    read(started, 0, 2)
    fake_nvml.update_gpu(0, lost=1)
    with pytest.raises(GpuReadError):
        started.read_gpu(0)
    fake_nvml.update_gpu(0, lost=None, max_clock={"graphics": 1755, "sm": 1755, "memory": 2619, "video": 1545})
    g = started.read_gpu(0)
    assert fake_nvml.stat(0, "calls.max_clock") == 2 * 4
    assert value(g, catalog.CLOCK_MAX, "sm") == 1755e6  # maybe another board now: its own facts


def test_static_facts_read_with_an_error_are_read_again(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"max_clock": 999})  # NVML_ERROR_UNKNOWN: maybe passing
    assert value(started.read_gpu(0), catalog.CLOCK_MAX, "sm") is None
    fake_nvml.update_gpu(0, fail=None)
    assert value(started.read_gpu(0), catalog.CLOCK_MAX, "sm") == 1980e6
    started.read_gpu(0)
    assert fake_nvml.stat(0, "calls.max_clock") == 2 * 4  # kept once read without an error


def test_slow_counters_are_read_once_per_slow_interval_and_served_in_between(
    fake_nvml: FakeNode, started: NvmlBackend, clock: Clock
) -> None:
    first = started.read_gpu(0)
    assert value(first, catalog.ENERGY) == pytest.approx(123_456.789)
    fake_nvml.update_gpu(0, energy_mj=223_456_789, violation={0: 5_000_000_000})
    for step in (10, 10):
        clock.now += step
        g = started.read_gpu(0)
        assert value(g, catalog.ENERGY) == pytest.approx(123_456.789)  # the last reading, served
        assert value(g, catalog.VIOLATION_TIME, "power") == 2.5
    assert fake_nvml.stat(0, "calls.violation") == len(vocabulary.VIOLATION_POLICIES)
    assert fake_nvml.stat(0, f"field.{ENERGY}") == 1
    assert fake_nvml.stat(0, f"field.{MEMORY_TEMP}") == 3  # the fast batch: every read
    clock.now += 10  # 30 s since the slow read
    g = started.read_gpu(0)
    assert value(g, catalog.ENERGY) == pytest.approx(223_456.789)
    assert value(g, catalog.VIOLATION_TIME, "power") == 5
    assert fake_nvml.stat(0, "calls.violation") == 2 * len(vocabulary.VIOLATION_POLICIES)
    assert fake_nvml.stat(0, f"field.{ENERGY}") == 2


def replays(gpu: Gpu) -> list[float]:
    """Every PCIe replay sample of a reading: one, whether read in the fast batch or served."""
    return [x.value for x in gpu.samples if x.metric is catalog.PCIE_REPLAYS]


def moves(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "from now on" in r.getMessage()]


def test_a_field_that_proves_slow_leaves_the_fast_batch_of_that_gpu_only(
    fake_nvml: FakeNode, started: NvmlBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.sources.nvml")
    fake_nvml.update_gpu(0, delay={"field": {REPLAY: 0.003}})  # 3 ms, reported as its latencyUsec
    gpu0, gpu1 = read(started, 0, 5), read(started, 1, 5)
    # GPU 0: slow in its first three reads (a majority of five), then only on the slow cadence.
    assert fake_nvml.stat(0, f"field.{REPLAY}") == 3
    assert fake_nvml.stat(1, f"field.{REPLAY}") == 5  # GPU 1 is not slow: every read, as before
    assert fake_nvml.stat(0, f"field.{MEMORY_TEMP}") == 5
    assert all(replays(g) == [2] for g in gpu0 + gpu1)  # never a gap in the series, never twice
    assert moves(caplog) == [(logging.INFO, f"GPU 0: field {REPLAY} (pcie_replay) slow (3 of 3 reads over 1 ms, "
                                            "median 3.0 ms); read every slow interval from now on")]


@pytest.mark.parametrize("slow_reads", [(0,), (0, 1), (2, 5)])
def test_one_or_two_slow_reads_in_five_move_no_field(
    fake_nvml: FakeNode, started: NvmlBackend, caplog: pytest.LogCaptureFixture, slow_reads: tuple[int, ...]
) -> None:
    """A loaded node delays a read now and then: that is jitter, not a slow field (it used to move
    the field for good after one slow read)."""
    caplog.set_level(logging.DEBUG, logger="exporter.sources.nvml")
    for n in range(8):
        fake_nvml.update_gpu(0, delay={"field": {REPLAY: 0.003}} if n in slow_reads else None)
        assert replays(started.read_gpu(0)) == [2]
    assert fake_nvml.stat(0, f"field.{REPLAY}") == 8  # in the fast batch on every read
    assert moves(caplog) == []


def test_a_slow_field_comes_back_when_it_is_fast_again(
    fake_nvml: FakeNode, started: NvmlBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.sources.nvml")
    fake_nvml.update_gpu(0, delay={"field": {REPLAY: 0.003}})
    read(started, 0, 3)  # slow three times: moved
    fake_nvml.update_gpu(0, delay=None)
    calls = [fake_nvml.stat(0, f"field.{REPLAY}")]
    for _ in range(3):  # timed at each slow read: fast three times
        clock.now += 30
        assert replays(started.read_gpu(0)) == [2]
        calls.append(fake_nvml.stat(0, f"field.{REPLAY}"))
    assert calls == [3, 4, 5, 6]  # only in the slow batch so far
    fake_nvml.update_gpu(0, pcie_replay=7)
    for _ in range(2):  # back in the fast batch: read every cycle, fresh, and no longer served
        assert replays(started.read_gpu(0)) == [7]
    assert fake_nvml.stat(0, f"field.{REPLAY}") == 8

    fake_nvml.update_gpu(0, delay={"field": {REPLAY: 0.003}})
    read(started, 0, 4)  # slow again: moved again after three reads
    assert fake_nvml.stat(0, f"field.{REPLAY}") == 11
    # Each direction logged once at info; the field's later moves at debug.
    assert [(level, re.search(r"\(pcie_replay\) (.+?) \(", message).group(1)) for level, message in moves(caplog)] == [
        (logging.INFO, "slow"), (logging.INFO, "fast again"), (logging.DEBUG, "slow")]


def test_a_driver_without_field_latencies_has_its_fast_batch_taken_apart_once_per_slow_interval(
    fake_nvml: FakeNode, started: NvmlBackend, clock: Clock
) -> None:
    fake_nvml.update_gpu(0, field_latency=0, delay={"field": {REPLAY: 0.003}})
    calls = []
    for step in (0, 0, 30, 30, 0):
        clock.now += step
        g = started.read_gpu(0)
        assert replays(g) == [2] and value(g, catalog.MEMORY_TEMPERATURE) == 60
        calls.append(fake_nvml.stat(0, f"field.{REPLAY}"))
    # Each read: the fast batch. Reads 1, 3 and 4 (a slow interval apart): each field alone,
    # twice. After the third such timing the field moves, and read 4's slow batch (due) has it,
    # timed alone as well; read 5 reads it not at all.
    assert calls == [1 + 2, 4, 5 + 2, 8 + 2 + 1 + 2, 13]


@pytest.mark.integration
def test_a_slow_query_on_one_gpu_does_not_hold_up_another(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    read(started, 0, 1)
    fake_nvml.update_gpu(0, delay={"temperature": 1.5})
    result: list[Gpu] = []
    worker = threading.Thread(target=lambda: result.append(started.read_gpu(0)), daemon=True)
    worker.start()
    wait_until(lambda: fake_nvml.stat(0, "delayed") == 1)  # GPU 0's temperature call is in flight
    g1 = started.read_gpu(1)
    assert g1.up and fake_nvml.stat(0, "delayed") == 1 and not result  # GPU 1 read while it was
    worker.join(timeout=10)
    assert result and result[0].up


def test_every_read_reports_its_nvml_time_by_group(fake_nvml: FakeNode, started: NvmlBackend, clock: Clock) -> None:
    fake_nvml.update_gpu(0, delay={"violation": 0.002, "uuid": 0.003})
    started.identify(0)  # as the collector does, before the first read: reported with that read
    first, second = read(started, 0, 2)
    assert set(first.nvml_seconds) == set(second.nvml_seconds) == set(GROUPS)  # series stay put
    assert first.nvml_seconds["slow"] >= len(vocabulary.VIOLATION_POLICIES) * 0.002  # each reason delayed
    assert first.nvml_seconds["identity"] >= 0.003
    assert second.nvml_seconds["slow"] == second.nvml_seconds["static"] == second.nvml_seconds["identity"] == 0
    assert second.nvml_seconds["fields"] > 0


def test_slow_interval_and_profiling_flags() -> None:
    config = parse_config(["--collector.slow-interval", "60", "--collector.profiling"], environ={})
    assert (config.collector_slow_interval, "profiling" in config.collectors) == (60, True)
    config = parse_config([], environ={"KUBE_GPU_EXPORTER_COLLECTOR_SLOW_INTERVAL": "45"})
    assert (config.collector_slow_interval, "profiling" in config.collectors) == (45, False)
