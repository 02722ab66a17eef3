"""The simulated backend's profiling metrics and NVML facts (issue 12): what GPM would read for
each kind of load, so that dashboards and alerts can be built without a Hopper GPU."""

from __future__ import annotations

import pytest

from exporter import catalog
from exporter.model import vocabulary
from exporter.sources.simulate import SimulatedBackend, load_scenario
from test_simulate import FakeClock, scenario, value

LOADS = """
    node: {name: n1}
    gpus:
      - {model: NVIDIA H100 80GB HBM3, load: {pattern: constant, level: 0.95}}
      - {model: NVIDIA H100 80GB HBM3, load: {pattern: bursty, min: 0.0, max: 0.8, period: 10, duty: 0.5}}
      - {model: NVIDIA H100 80GB HBM3, load: idle}
      - {model: NVIDIA A100-SXM4-80GB, load: {pattern: constant, level: 0.95}}
"""


@pytest.fixture
def backend() -> SimulatedBackend:
    return SimulatedBackend(scenario(LOADS), clock=FakeClock())


def test_training_keeps_the_tensor_cores_busy(backend: SimulatedBackend) -> None:
    g = backend.read_gpu(0)
    assert value(g, catalog.SM_ACTIVE) > 0.9
    assert value(g, catalog.TENSOR_ACTIVE) > 0.8
    assert value(g, catalog.PIPE_ACTIVE, "tensor_hmma") == value(g, catalog.TENSOR_ACTIVE)
    assert value(g, catalog.SM_OCCUPANCY) < value(g, catalog.SM_ACTIVE)


def test_inference_is_bursty_with_low_occupancy(backend: SimulatedBackend) -> None:
    busy = backend.read_gpu(1)  # t=0: in the burst
    assert value(busy, catalog.SM_OCCUPANCY) < 0.1
    assert value(busy, catalog.TENSOR_ACTIVE) < value(backend.read_gpu(0), catalog.TENSOR_ACTIVE)
    assert value(busy, catalog.DRAM_ACTIVE) > value(busy, catalog.SM_OCCUPANCY)


def test_an_idle_gpu_reads_zero_and_a_gpu_without_gpm_reads_nothing(backend: SimulatedBackend) -> None:
    idle = backend.read_gpu(2)
    profiling = [s for s in idle.samples if s.metric.scope == "device"]
    assert profiling and all(s.value == 0 for s in profiling)
    a100 = backend.read_gpu(3)
    assert not [s for s in a100.samples if s.metric.scope == "device"]
    assert a100.info["architecture"] == "ampere" and a100.info["compute_capability"] == "8.0"


def test_mig_instances_have_profiling_series_and_every_gpu_the_new_facts() -> None:
    backend = SimulatedBackend(load_scenario(None), clock=FakeClock())
    gpus = [backend.read_gpu(i) for i in range(backend.device_count())]
    mig = next(g for g in gpus if g.mig_devices)
    for m in mig.mig_devices:  # the built-in node leaves one 1g.10gb instance unallocated and idle
        assert value(m, catalog.SM_ACTIVE) == (value(mig, catalog.SM_ACTIVE) if m.processes else 0)
        assert {s.labels for s in m.samples if s.metric is catalog.PIPE_ACTIVE} == {
            (p,) for p in vocabulary.PROFILING_PIPES}
    for g in gpus:
        assert g.info["architecture"] == "hopper" and g.info["board_part_number"]
        assert value(g, catalog.POWER_LIMIT_MIN) < value(g, catalog.POWER_LIMIT_DEFAULT) <= value(
            g, catalog.POWER_LIMIT_MAX)
        assert value(g, catalog.BAR1_USED) < value(g, catalog.BAR1_TOTAL)
        assert value(g, catalog.APPLICATION_CLOCK, "graphics") <= value(g, catalog.CLOCK_MAX, "graphics")
