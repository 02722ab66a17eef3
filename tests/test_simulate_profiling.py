"""The simulated backend's profiling metrics and NVML facts (issue 12): what GPM would read for
each kind of load, so that dashboards and alerts can be built without a Hopper GPU."""

from __future__ import annotations

import pytest

from exporter import catalog
from exporter.model import vocabulary
from exporter.sources.simulate import ScenarioError, SimulatedBackend, load_scenario
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
    sm = {m.profile + f"/{m.gpu_instance_id}": value(m, catalog.SM_ACTIVE) for m in mig.mig_devices}
    # Each busy instance by its own load: the eval job (3g) trains, the CI runner (1g) barely
    # works (constant 0.15, noise 0.02), the free 1g.10gb does nothing. They all read alike before.
    assert 0.13 * 0.96 <= sm["1g.10gb/9"] <= 0.17 * 0.96 and sm["1g.10gb/10"] == 0
    assert sm["3g.40gb/2"] > 0.25 and len({sm["3g.40gb/2"], sm["2g.20gb/3"], sm["1g.10gb/9"]}) == 3
    for m in mig.mig_devices:
        assert {s.labels for s in m.samples if s.metric is catalog.PIPE_ACTIVE} == {
            (p,) for p in vocabulary.PROFILING_PIPES}
    for g in gpus:
        assert g.info["architecture"] == "hopper" and g.info["board_part_number"]
        assert value(g, catalog.POWER_LIMIT_MIN) < value(g, catalog.POWER_LIMIT_DEFAULT) <= value(
            g, catalog.POWER_LIMIT_MAX)
        assert value(g, catalog.BAR1_USED) < value(g, catalog.BAR1_TOTAL)
        assert value(g, catalog.APPLICATION_CLOCK, "graphics") <= value(g, catalog.CLOCK_MAX, "graphics")


MIG_LOADS = """
    node: {name: n1}
    gpus:
      - model: NVIDIA H100 80GB HBM3
        load: {pattern: constant, level: 0.5, noise: 0}
        mig:
          - {profile: 3g.40gb, gpu_instance_id: 1, load: {pattern: constant, level: 0.9, noise: 0}}
          - {profile: 1g.10gb, gpu_instance_id: 2, load: {pattern: bursty, min: 0.6, max: 0.6, noise: 0}}
          - {profile: 1g.10gb, gpu_instance_id: 3}
          - {profile: 1g.10gb, gpu_instance_id: 4, load: {pattern: constant, level: 0.9, noise: 0}}
    pods:
      - namespace: a
        name: p
        containers:
          - {name: big, resource: nvidia.com/mig-3g.40gb, devices: [{gpu: 0, mig: 1}], processes: [{memory: 1GiB}]}
          - {name: serve, resource: nvidia.com/mig-1g.10gb, devices: [{gpu: 0, mig: 2}], processes: [{memory: 1GiB}]}
          - {name: plain, resource: nvidia.com/mig-1g.10gb, devices: [{gpu: 0, mig: 3}], processes: [{memory: 1GiB}]}
"""


def test_each_mig_instance_is_as_busy_as_its_own_load() -> None:
    g = SimulatedBackend(scenario(MIG_LOADS), clock=FakeClock()).read_gpu(0)
    by_gi = {m.gpu_instance_id: m for m in g.mig_devices}
    ratio = {gi: (value(m, catalog.SM_ACTIVE), value(m, catalog.SM_OCCUPANCY)) for gi, m in by_gi.items()}
    assert ratio[1] == (round(0.9 * 0.96, 4), round(0.9 * 0.3, 4))  # its own load, training
    assert ratio[2] == (round(0.6 * 0.6, 4), round(0.6 * 0.08, 4))  # bursty: an inference server
    assert ratio[3] == (round(0.5 * 0.96, 4), round(0.5 * 0.3, 4))  # no load of its own: the GPU's
    assert ratio[4] == (0.0, 0.0)  # a load, but no process: idle
    # traffic: the GPU's, by compute slices
    pcie = value(g, catalog.PCIE_RATE, "rx")
    assert [value(by_gi[gi], catalog.PCIE_RATE, "rx") for gi in (1, 2, 4)] == [round(pcie * 3 / 7), round(pcie / 7), 0]


def test_compute_instances_of_one_gpu_instance_share_its_load() -> None:
    with pytest.raises(ScenarioError) as err:
        scenario("""
            node: {name: n1}
            gpus:
              - model: NVIDIA H100 80GB HBM3
                mig:
                  - {profile: 4g.40gb, gpu_instance_id: 1, compute_instance_id: 0, load: {pattern: constant, level: 0.9}}
                  - {profile: 4g.40gb, gpu_instance_id: 1, compute_instance_id: 1, load: idle}
        """)
    assert "gpus[0].mig[1].load: differs from the load of gpu_instance_id 1 at gpus[0].mig[0]" in str(err.value)
