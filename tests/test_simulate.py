"""The simulated backend: the GpuBackend protocol, readings over time, vocabulary, Kubernetes side.

Loading and validating scenario files is tested in ``test_scenario.py``."""

from __future__ import annotations

import textwrap

import pytest

from exporter import catalog
from exporter.model import vocabulary
from exporter.sources.backend import GpuReadError
from exporter.sources.nvml.cost import GROUPS
from exporter.sources.simulate import SimulatedBackend, SimulatedCluster, SimulatedGpuLost, load_scenario, load_scenario_text
from exporter.model.gpu import GpuSnapshot


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.start = t

    def __call__(self) -> float:
        return self.t

    def at(self, seconds: float) -> None:
        """Move to ``seconds`` after the backend was made."""
        self.t = self.start + seconds


def value(gpu, metric, *labels):
    found = [s.value for s in gpu.samples if s.metric is metric and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else None


def scenario(text: str):
    return load_scenario_text(textwrap.dedent(text))


SMALL = """
    node: {name: n1}
    gpus:
      - model: NVIDIA H100 80GB HBM3
        load: {pattern: sine, min: 0.1, max: 0.9, period: 100, noise: 0}
      - model: NVIDIA H100 80GB HBM3
        sharing: {replicas: 2}
    pods:
      - namespace: a
        name: p
        containers:
          - name: c
            resource: nvidia.com/gpu
            devices: [{gpu: 0}]
            processes: [{memory: 1GiB, utilization: 1.0}]
    faults:
      events:
        - {kind: xid, at: 60, gpu: 0, code: 79}
        - {kind: gpu_lost, at: 100, gpu: 1, duration: 30}
"""


@pytest.fixture
def clock():
    return FakeClock()


# -- The backend protocol ---------------------------------------------------------------------------


def test_default_scenario_has_four_gpus_one_mig_enabled(clock):
    s = load_scenario(None)
    backend = SimulatedBackend(s, clock=clock)
    assert backend.simulated is True
    backend.start()
    assert backend.device_count() == 4
    gpus = [backend.read_gpu(i) for i in range(4)]
    mig = [g for g in gpus if g.info["mig_mode"] == "enabled"]
    assert len(mig) == 1
    assert len(mig[0].mig_devices) >= 2
    assert all(m.uuid.startswith("MIG-") for m in mig[0].mig_devices)
    assert len({g.uuid for g in gpus}) == 4
    for g in gpus:
        assert set(g.info) == set(catalog.GPU_INFO.labels)
        assert g.info["driver_version"] == s.node.driver_version
        for sample in g.samples:
            assert len(sample.labels) == len(sample.metric.labels), sample
            assert sample.metric.scope in ("gpu", "device")
    backend.stop()
    backend.stop()


def test_identify_names_the_gpu_as_its_readings_do(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)
    identities = [backend.identify(i) for i in range(backend.device_count())]
    assert identities == [backend.read_gpu(i).identity for i in range(backend.device_count())]
    assert [i.index for i in identities] == [0, 1, 2, 3]
    assert backend.error_counts() == {}


LOST_AT_START = """
    node: {name: n1}
    gpus: [{model: NVIDIA H200}, {model: NVIDIA H200}]
    faults:
      events: [{kind: gpu_lost, at: 0, gpu: 1, duration: 30}]
"""


def test_a_lost_gpu_answers_gpu_is_lost_even_for_its_identity(clock):
    """As NVML answers GPU_IS_LOST to every call, the UUID included: identity is known only if it
    was read before the GPU was lost."""
    backend = SimulatedBackend(scenario(LOST_AT_START), clock=clock)
    for call in (backend.identify, backend.read_gpu):
        with pytest.raises(GpuReadError) as err:
            call(1)
        assert isinstance(err.value, SimulatedGpuLost) and err.value.kind == "gpu_is_lost"
    assert backend.identify(0).uuid.startswith("GPU-")  # the other GPU answers
    clock.at(30)
    assert backend.identify(1) == backend.read_gpu(1).identity


# -- Readings over time -------------------------------------------------------------------------------


def test_load_pattern_changes_utilisation_and_power_over_time(clock):
    backend = SimulatedBackend(scenario(SMALL), clock=clock)
    readings = []
    for t in (0, 25, 50, 75):
        clock.at(t)
        g = backend.read_gpu(0)
        readings.append((value(g, catalog.UTILIZATION), value(g, catalog.POWER)))
    utils = [u for u, _ in readings]
    assert utils[0] == pytest.approx(0.5, abs=0.01)
    assert utils[1] == pytest.approx(0.9, abs=0.01)  # sine peak a quarter period in
    assert utils[3] == pytest.approx(0.1, abs=0.01)
    assert readings[1][1] > readings[3][1]  # busier draws more power
    # deterministic: a second backend on the same clock reads the same
    clock.at(0)
    again = SimulatedBackend(scenario(SMALL), clock=clock)
    clock.at(75)
    assert value(again.read_gpu(0), catalog.UTILIZATION) == utils[3]


INTEGRATED = [(catalog.ENERGY, ()), (catalog.PCIE_DATA, ("rx",)), (catalog.PCIE_DATA, ("tx",)),
              (catalog.NVLINK_DATA, ("rx",)), (catalog.NVLINK_DATA, ("tx",))]


def counters(gpu) -> list[float]:
    return [value(gpu, metric, *labels) for metric, labels in INTEGRATED]


def test_integrated_counters_never_decrease_and_do_not_depend_on_the_steps(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)
    last = [counters(backend.read_gpu(i)) for i in range(4)]
    for step in range(1, 1300, 7):
        clock.at(step * 0.93)
        for i in range(4):
            now = counters(backend.read_gpu(i))
            assert all(b >= a for a, b in zip(last[i], now)), (i, last[i], now)
            last[i] = now
    # a fresh backend jumping straight to the end agrees with the stepped one
    end = clock.t
    clock.at(0)
    fresh = SimulatedBackend(load_scenario(None), clock=clock)
    clock.t = end
    assert counters(fresh.read_gpu(0)) == pytest.approx(last[0])


RATE_FAULTS = """
    node: {name: n1}
    gpus:
      - {model: NVIDIA H100 80GB HBM3, load: {pattern: sine, min: 0.3, max: 0.99, period: 97}}
      - {model: NVIDIA H100 80GB HBM3, load: {pattern: ramp, min: 0.1, max: 0.9, period: 71, phase: 13}}
      - {model: NVIDIA H100 80GB HBM3, load: {pattern: bursty, min: 0.05, max: 0.7, period: 20, duty: 0.3}}
      - {model: NVIDIA H100 80GB HBM3, load: {pattern: constant, level: 0.98}}
    faults:
      repeat_every: 400
      events:
        - {kind: thermal, at: 50, gpu: 0, duration: 90}
        - {kind: power_cap, at: 100, gpu: 0, duration: 60, limit_watts: 450}
        - {kind: power_cap, at: 120, gpu: 1, duration: 200, limit_watts: 500}
        - {kind: thermal, at: 150, gpu: 1, duration: 100}
        - {kind: nvlink_down, at: 30, gpu: 2, duration: 150, link: 3}
        - {kind: nvlink_down, at: 200, gpu: 2, duration: 100}
        - {kind: power_cap, at: 10, gpu: 3, duration: 300}
"""


@pytest.mark.parametrize("start", [0.0, 333.0, 5000.0])
def test_integrated_counters_grow_by_what_the_readings_say(clock, start):
    """The counters are integrated in closed form (they were summed second by second: 10 s of CPU
    per simulated day): over any stretch they grow by the power and traffic the readings show,
    across load patterns and fault episodes, to the readings' per-second jitter (power 1 %,
    PCIe 10 %), which averages out. (The readings are summed at each second's middle here: every
    edge of the loads and faults falls on a whole second, where that sum is exact too.)"""
    backend = SimulatedBackend(scenario(RATE_FAULTS), clock=clock)
    seconds = 800
    for i in range(4):
        gpu = backend._gpus[i]
        clock.at(start)
        before = counters(backend.read_gpu(i))
        clock.at(start + seconds)
        grown = [b - a for a, b in zip(before, counters(backend.read_gpu(i)))]
        rates = [gpu.rates(start + k + 0.5) for k in range(seconds)]
        shown = [sum(getattr(r, name) for r in rates) for name in ("energy", "pcie_rx", "pcie_tx", "nvlink_rx", "nvlink_tx")]
        energy, pcie_rx, pcie_tx, nvlink_rx, nvlink_tx = zip(grown, shown)  # the order of INTEGRATED
        assert energy[0] == pytest.approx(energy[1], rel=2e-3), i
        assert nvlink_tx[0] == pytest.approx(nvlink_tx[1], rel=5e-3, abs=1e6), i
        assert nvlink_rx[0] == pytest.approx(0.97 * nvlink_tx[0], rel=1e-9), i
        assert pcie_rx[0] == pytest.approx(pcie_rx[1], rel=2e-2), i
        assert pcie_rx[0] == pytest.approx(3 * pcie_tx[0], rel=1e-9), i


def test_pcie_bytes_follow_the_load(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)  # GPU 0 at 0.82..0.99, GPU 3 idle
    clock.at(100)
    busy, idle = backend.read_gpu(0), backend.read_gpu(3)
    clock.at(160)
    busy_later, idle_later = backend.read_gpu(0), backend.read_gpu(3)
    rx = value(busy_later, catalog.PCIE_DATA, "rx") - value(busy, catalog.PCIE_DATA, "rx")
    tx = value(busy_later, catalog.PCIE_DATA, "tx") - value(busy, catalog.PCIE_DATA, "tx")
    assert 60 * 0.8 * 6e9 * 0.9 <= rx <= 60 * 1.0 * 6e9 * 1.1  # 60 s at 6 GB/s x load, +-10 % jitter
    assert rx == pytest.approx(3 * tx, rel=1e-6)
    for direction in vocabulary.DIRECTIONS:
        assert value(idle_later, catalog.PCIE_DATA, direction) == value(idle, catalog.PCIE_DATA, direction)


def xid(backend, gpu: int, code: int) -> int | None:
    return backend.xid_counts().get((backend.identify(gpu).uuid, code))


def test_xid_counts_at_its_time_and_not_before(clock):
    backend = SimulatedBackend(scenario(SMALL), clock=clock)
    clock.at(59.9)
    assert xid(backend, 0, 79) is None
    clock.at(60)
    assert xid(backend, 0, 79) == 1
    clock.at(500)
    assert xid(backend, 0, 79) == 1
    assert value(backend.read_gpu(0), catalog.XID_ERRORS, "79") is None  # the collector adds XID series


def test_repeating_schedule_counts_again(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)  # XID 13 on GPU 0 at 120 s, every 600 s
    clock.at(119)
    assert xid(backend, 0, 13) is None
    clock.at(121)
    assert xid(backend, 0, 13) == 1
    clock.at(721)
    assert xid(backend, 0, 13) == 2


def test_gpu_lost_raises_during_the_window_and_recovers(clock):
    backend = SimulatedBackend(scenario(SMALL), clock=clock)
    clock.at(99)
    assert backend.read_gpu(1).up
    for t in (100, 115, 129.9):
        clock.at(t)
        with pytest.raises(SimulatedGpuLost):
            backend.read_gpu(1)
        with pytest.raises(SimulatedGpuLost):
            backend.identify(1)
        assert backend.read_gpu(0).up  # the other GPU is unaffected
    clock.at(130)
    assert backend.read_gpu(1).up


def test_thermal_fault_heats_and_throttles(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)  # thermal on GPU 0, 300..390 s
    clock.at(290)
    before = backend.read_gpu(0)
    assert value(before, catalog.CLOCK_EVENT, "hw_thermal_slowdown") == 0
    assert value(before, catalog.VIOLATION_TIME, "thermal") == 0
    clock.at(350)
    during = backend.read_gpu(0)
    assert value(during, catalog.CLOCK_EVENT, "hw_thermal_slowdown") == 1
    assert value(during, catalog.CLOCK_EVENT, "sw_thermal_slowdown") == 1
    assert value(during, catalog.TEMPERATURE) > value(before, catalog.TEMPERATURE) + 10
    assert value(during, catalog.CLOCK, "sm") < value(before, catalog.CLOCK, "sm")
    assert value(during, catalog.VIOLATION_TIME, "thermal") == pytest.approx(50)
    clock.at(400)
    after = backend.read_gpu(0)
    assert value(after, catalog.CLOCK_EVENT, "hw_thermal_slowdown") == 0
    assert value(after, catalog.VIOLATION_TIME, "thermal") == pytest.approx(90)
    clock.at(950)  # the schedule repeats every 600 s: 50 s into the second episode
    again = backend.read_gpu(0)
    assert value(again, catalog.VIOLATION_TIME, "thermal") == pytest.approx(140)
    assert value(again, catalog.VIOLATION_TIME, "total_base_clocks") == pytest.approx(140)
    assert value(again, catalog.VIOLATION_TIME, "total_app_clocks") == pytest.approx(140)


OVERLAPPING = """
    node: {name: n1}
    gpus: [{model: NVIDIA H200, load: {pattern: constant, level: 0.5}}]
    faults:
      events:
        - {kind: thermal, at: 10, gpu: 0, duration: 20}
        - {kind: power_cap, at: 20, gpu: 0, duration: 20}
        - {kind: power_cap, at: 25, gpu: 0, duration: 5}
"""


def test_violation_time_counts_overlapping_episodes_once(clock):
    backend = SimulatedBackend(scenario(OVERLAPPING), clock=clock)
    clock.at(50)
    seconds = {reason: value(backend.read_gpu(0), catalog.VIOLATION_TIME, reason)
               for reason in vocabulary.VIOLATION_POLICIES}
    assert seconds == {
        "power": 20, "thermal": 20, "sync_boost": 0, "board_limit": 0, "low_utilization": 0, "reliability": 0,
        "total_app_clocks": 30,  # 10..40: below the application clocks for either reason
        "total_base_clocks": 20,  # only the thermal episode takes clocks below base
    }


def test_ecc_trickle_grows(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)  # GPU 2: 6 corrected per 600 s
    seen = []
    for t in (0, 150, 300, 599, 700):
        clock.at(t)
        seen.append(value(backend.read_gpu(2), catalog.ECC_ERRORS, "corrected"))
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] > 6


def test_aggregate_ecc_includes_the_volatile_count(clock):
    backend = SimulatedBackend(scenario("""
        node: {name: n1}
        gpus: [{model: NVIDIA H200}]
        faults:
          events: [{kind: ecc, at: 10, gpu: 0, corrected: 5, uncorrected: 2}]
    """), clock=clock)
    before = backend.read_gpu(0)
    clock.at(20)
    after = backend.read_gpu(0)
    assert {t: value(after, catalog.ECC_ERRORS, t) for t in vocabulary.ECC_ERROR_TYPES} == {
        "corrected": 5, "uncorrected": 2}
    for t in vocabulary.ECC_ERROR_TYPES:
        lifetime_before_boot = value(before, catalog.ECC_AGGREGATE_ERRORS, t)
        assert lifetime_before_boot >= value(before, catalog.ECC_ERRORS, t) == 0
        assert value(after, catalog.ECC_AGGREGATE_ERRORS, t) == lifetime_before_boot + value(after, catalog.ECC_ERRORS, t)


def labelled_values(gpus) -> dict[tuple[str, str], set[str]]:
    seen: dict[tuple[str, str], set[str]] = {}
    for g in gpus:
        for sample in g.samples:
            for label, v in zip(sample.metric.labels, sample.labels):
                seen.setdefault((sample.metric.name, label), set()).add(v)
    return seen


def test_label_values_are_exactly_the_vocabulary_s(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)  # H100 SXM: 18 NVLink links
    gpus = [backend.read_gpu(i) for i in range(backend.device_count())]
    links = {str(link) for link in range(18)}
    V = vocabulary
    # Every labelled metric the backend emits, with every value it uses. Retired pages are not
    # emitted: the simulated models remap rows, and NVML answers NOT_SUPPORTED there.
    assert labelled_values(gpus) == {
        (catalog.CLOCK.name, "clock"): set(V.CLOCK_DOMAINS),
        (catalog.CLOCK_MAX.name, "clock"): set(V.CLOCK_DOMAINS),
        (catalog.APPLICATION_CLOCK.name, "clock"): set(V.APPLICATION_CLOCK_DOMAINS),
        (catalog.APPLICATION_CLOCK_DEFAULT.name, "clock"): set(V.APPLICATION_CLOCK_DOMAINS),
        (catalog.PIPE_ACTIVE.name, "pipe"): set(V.PROFILING_PIPES),
        (catalog.PCIE_RATE.name, "direction"): set(V.DIRECTIONS),
        (catalog.NVLINK_RATE.name, "direction"): set(V.DIRECTIONS),
        (catalog.CLOCK_EVENT.name, "reason"): {reason for reason, _bit in V.CLOCK_EVENT_REASONS},
        (catalog.VIOLATION_TIME.name, "reason"): set(V.VIOLATION_POLICIES),
        (catalog.TEMPERATURE_THRESHOLD.name, "threshold"): set(V.TEMPERATURE_THRESHOLDS),
        (catalog.PCIE_DATA.name, "direction"): set(V.DIRECTIONS),
        (catalog.NVLINK_DATA.name, "direction"): set(V.DIRECTIONS),
        (catalog.ECC_ERRORS.name, "type"): set(V.ECC_ERROR_TYPES),
        (catalog.ECC_AGGREGATE_ERRORS.name, "type"): set(V.ECC_ERROR_TYPES),
        (catalog.REMAPPED_ROWS.name, "type"): set(V.REMAPPED_ROW_TYPES),
        (catalog.NVLINK_ERRORS.name, "type"): set(V.NVLINK_ERROR_TYPES),
        (catalog.NVLINK_LINK_ERRORS.name, "type"): set(V.NVLINK_ERROR_TYPES),
        (catalog.NVLINK_LINK_ERRORS.name, "link"): links,
        (catalog.NVLINK_LINK_UP.name, "link"): links,
    }
    for g in gpus:
        assert g.info["mig_mode"] in (V.ENABLED, V.DISABLED)
        assert g.info["persistence_mode"] in (V.ENABLED, V.DISABLED)
        assert g.info["compute_mode"] in V.COMPUTE_MODES
        assert value(g, catalog.CLOCK_MAX, "sm") == 1980 * V.HERTZ_PER_MEGAHERTZ  # H100 SXM, in hertz
    resources = set(backend.cluster.pod_resources().allocatable)
    assert {r for r in resources if not r.startswith(V.MIG_RESOURCE_PREFIX)} == set(V.DEFAULT_RESOURCE_NAMES)


def test_processes_are_reported_on_their_gpu_and_mig_instance(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)
    gpus = [backend.read_gpu(i) for i in range(4)]
    mig_gpu = next(g for g in gpus if g.mig_devices)
    assert value(mig_gpu, catalog.UTILIZATION) is None  # NVML cannot tell in MIG mode
    in_mig = [p for m in mig_gpu.mig_devices for p in m.processes]
    assert in_mig and not mig_gpu.processes
    assert value(mig_gpu, catalog.PROCESSES) == len(in_mig)
    for g in gpus:
        used = value(g, catalog.MEMORY_USED)
        assert used == sum(p.used_memory_bytes for p in g.processes) + sum(
            p.used_memory_bytes for m in g.mig_devices for p in m.processes)
        assert used + value(g, catalog.MEMORY_FREE) + value(g, catalog.MEMORY_RESERVED) == value(
            g, catalog.MEMORY_TOTAL)
    idle = [g for g in gpus if g.processes and value(g, catalog.UTILIZATION) == 0]
    assert idle, "the default scenario has an allocated but idle GPU"


# -- Kubernetes side ----------------------------------------------------------------------------------


def test_pod_resources_device_ids_match_the_gpus(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)
    gpus = [backend.read_gpu(i) for i in range(4)]
    gpu_uuids = {g.uuid for g in gpus}
    mig_uuids = {m.uuid: m.profile for g in gpus for m in g.mig_devices}
    res = backend.cluster.pod_resources()
    ids = [(c.resource, d) for c in res.containers for d in c.device_ids]
    kinds = set()
    for resource, d in ids:
        if d.startswith("MIG-"):
            assert mig_uuids[d] and resource == f"nvidia.com/mig-{mig_uuids[d]}"
            kinds.add("mig")
        elif "::" in d:
            base, replica = d.split("::")
            assert base in gpu_uuids and replica.isdigit() and resource == "nvidia.com/gpu.shared"
            kinds.add("shared")
        else:
            assert d in gpu_uuids and resource == "nvidia.com/gpu"
            kinds.add("gpu")
    assert kinds == {"gpu", "shared", "mig"}
    replicas = sorted(d for _, d in ids if "::" in d)
    assert [r.rsplit("::", 1)[1] for r in replicas] == ["0", "1"]
    # allocatable: whole non-MIG GPUs, every replica, every MIG instance (a free one included)
    alloc = res.allocatable
    assert set(alloc["nvidia.com/gpu"]) <= gpu_uuids
    assert {d for k, v in alloc.items() if k.startswith("nvidia.com/mig-") for d in v} == set(mig_uuids)
    allocated = {d for _, d in ids}
    assert set(mig_uuids) - allocated, "the default scenario leaves a MIG instance free"
    assert allocated <= {d for v in alloc.values() for d in v}


def test_process_owner_maps_pids_to_pod_and_container(clock):
    s = load_scenario(None)
    backend = SimulatedBackend(s, clock=clock)
    meta = backend.cluster.pod_meta()
    pids = 0
    for i in range(backend.device_count()):
        g = backend.read_gpu(i)
        for p in list(g.processes) + [p for m in g.mig_devices for p in m.processes]:
            ref = backend.cluster.process_owner(p.pid)
            assert ref is not None
            pod = meta[ref.pod_uid]
            assert ref.container_id in pod.container_ids
            # the container that owns the pid holds this GPU (or one of its MIG instances)
            cname = pod.container_ids[ref.container_id]
            holder = (pod.namespace, pod.name, cname)
            resources, published = backend.cluster.pod_resources(), backend.cluster.slice_devices()
            held = [d for c in resources.containers if (c.namespace, c.pod, c.container) == holder
                    for d in c.device_ids]
            held += [published.uuids[d.driver, d.pool, d.device] for d in resources.claim_devices
                     if (d.namespace, d.pod, d.container) == holder]  # held through a DRA claim
            ids = {g.uuid} | {m.uuid for m in g.mig_devices}
            assert any(d.split("::")[0] in ids for d in held)
            pids += 1
    assert pids == sum(len(c.processes) for pod in s.pods for c in pod.containers)
    assert backend.cluster.process_owner(1) is None


def test_pod_meta_has_workloads():
    cluster = SimulatedCluster(load_scenario(None))
    kinds = {(m.workload_kind, m.workload) for m in cluster.pod_meta().values()}
    assert ("Job", "train-llama") in kinds
    assert ("CronJob", "nightly-eval") in kinds
    notebooks = [m for m in cluster.pod_meta().values() if m.workload == "notebook"]
    assert len(notebooks) == 2 and all(m.workload_kind == "Deployment" for m in notebooks)


def test_the_documented_example_loads_and_runs(clock):
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "scenarios.md").read_text()
    example = doc.split("## Example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    backend = SimulatedBackend(load_scenario_text(example), clock=clock)
    clock.at(510)
    with pytest.raises(SimulatedGpuLost):
        backend.read_gpu(1)
    assert xid(backend, 0, 13) == 1


def test_what_a_model_does_not_report_is_logged_once_at_debug(caplog):
    from exporter.sources.simulate import SimulatedBackend, load_scenario

    backend = SimulatedBackend(load_scenario(None))
    with caplog.at_level("DEBUG", logger="exporter.sources.simulate"):
        backend.start()
    lines = [r.getMessage() for r in caplog.records if "not supported" in r.getMessage()]
    assert len(lines) == len(backend.scenario.gpus)  # the built-in H100 SXM boards have no fan
    assert all("fan speed" in line for line in lines)


def test_an_idle_holder_of_a_simulated_shared_gpu_reads_zero(clock):
    """Issue 17, item 5, through the simulated node's sources: the second replica's holder runs
    nothing, and the simulated procfs knows every pid (the agent shares the host's pid namespace)."""
    from exporter.attribution import attribute
    from exporter.sources.simulate import process_owners

    s = scenario("""
        node: {name: n1}
        gpus:
          - {model: NVIDIA H100 80GB HBM3, sharing: {replicas: 2}, load: {pattern: constant, level: 0.5}}
        pods:
          - namespace: a
            name: busy
            containers:
              - {name: c, resource: nvidia.com/gpu.shared, devices: [{gpu: 0, replica: 0}],
                 processes: [{memory: 1GiB, utilization: 1.0}]}
          - namespace: a
            name: idle
            containers:
              - {name: c, resource: nvidia.com/gpu.shared, devices: [{gpu: 0, replica: 1}]}
    """)
    backend = SimulatedBackend(s, clock=clock)
    gpu = backend.read_gpu(0)
    assert gpu.processes_read
    snapshot = GpuSnapshot((gpu,), taken=0.0)
    pids = [p.pid for p in gpu.processes]
    result = attribute(snapshot, backend.cluster.pod_resources(), backend.cluster.pod_meta(),
                       process_owners(backend.cluster)(pids))
    usage = {u.pod: (u.memory_used_bytes, u.utilization_ratio) for u in result.usage[gpu.uuid]}
    assert usage["idle"] == (0, 0.0) and usage["busy"][1] > 0.4  # the constant load, with its noise


def test_simulated_profiling_of_a_mig_gpu_instance_comes_once(clock):
    """GPM counts per GPU instance: of two compute instances of one GPU instance, only the first
    carries its metrics."""
    s = scenario("""
        node: {name: n1}
        gpus:
          - model: NVIDIA H100 80GB HBM3
            load: {pattern: constant, level: 0.8, noise: 0}
            mig:
              - {profile: 4g.40gb, gpu_instance_id: 1, compute_instance_id: 0}
              - {profile: 4g.40gb, gpu_instance_id: 1, compute_instance_id: 1}
              - {profile: 3g.40gb, gpu_instance_id: 2, compute_instance_id: 0}
        pods:
          - namespace: a
            name: p
            containers:
              - {name: c, resource: nvidia.com/mig-4g.40gb, devices: [{gpu: 0, mig: 1, compute_instance_id: 1}],
                 processes: [{memory: 1GiB}]}
    """)
    g = SimulatedBackend(s, clock=clock).read_gpu(0)
    sm = {(m.gpu_instance_id, m.compute_instance_id): value(m, catalog.SM_ACTIVE) for m in g.mig_devices}
    # busy through its second compute instance (at the GPU's load: it has none of its own);
    # reported on the first, once; the idle instance at 0
    assert sm == {(1, 0): value(g, catalog.SM_ACTIVE), (1, 1): None, (2, 0): 0.0}
    assert all(m.processes_read for m in g.mig_devices)


def test_every_read_reports_its_own_time_in_the_nvml_query_groups(clock):
    """So that a simulated node shows kube_gpu_exporter_nvml_query_duration_seconds as a real one
    does (it was absent under --simulate)."""
    backend = SimulatedBackend(load_scenario(None), clock=clock)
    for i in range(backend.device_count()):
        seconds = backend.read_gpu(i).nvml_seconds
        assert set(seconds) == set(GROUPS)
        assert all(seconds[group] > 0 for group in ("activity", "thermal_power", "fields", "clocks", "profiling"))
        assert seconds["identity"] == seconds["static"] == seconds["modes"] == 0


def test_nvlink_faults_show_per_gpu_and_per_link(clock):
    """An nvlink_down fault takes links out of the GPU's links_up (not out of its links); an
    nvlink_errors fault counts on its link and in the GPU's total of its type."""
    backend = SimulatedBackend(scenario("""
        node: {name: n1}
        gpus:
          - model: NVIDIA H100 80GB HBM3
        faults:
          events:
            - {kind: nvlink_down, at: 10, gpu: 0, link: 5, duration: 20}
            - {kind: nvlink_errors, at: 10, gpu: 0, link: 5, type: crc_data, count: 3}
            - {kind: nvlink_errors, at: 10, gpu: 0, link: 7, type: crc_data, count: 2}
    """), clock=clock)
    clock.at(0)
    g = backend.read_gpu(0)
    assert (value(g, catalog.NVLINK_LINKS_UP), value(g, catalog.NVLINK_LINKS)) == (18, 18)
    assert value(g, catalog.NVLINK_ERRORS, "crc_data") == 0
    clock.at(15)
    g = backend.read_gpu(0)
    assert (value(g, catalog.NVLINK_LINKS_UP), value(g, catalog.NVLINK_LINKS)) == (17, 18)
    assert value(g, catalog.NVLINK_LINK_UP, "5") == 0
    assert value(g, catalog.NVLINK_ERRORS, "crc_data") == 5
    assert value(g, catalog.NVLINK_LINK_ERRORS, "7", "crc_data") == 2
    clock.at(40)
    assert value(backend.read_gpu(0), catalog.NVLINK_LINKS_UP) == 18
