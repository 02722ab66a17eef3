"""The simulated backend: scenario loading and validation, readings over time, Kubernetes side."""

from __future__ import annotations

import textwrap

import pytest

from exporter import catalog
from exporter.simulate import (
    ScenarioError, SimulatedBackend, SimulatedCluster, SimulatedGpuLost, load_scenario, load_scenario_text,
)


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


# -- Loading and validation ---------------------------------------------------------------------------


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
            assert sample.metric.scope == "gpu"
    backend.stop()
    backend.stop()


def test_bad_scenario_lists_every_problem():
    text = """
        node: {name: n1, drivr_version: "1"}
        gpus:
          - model: NVIDIA H100 80GB HBM3
            mig:
              - {profile: x, gpu_instance_id: 1}
          - model: NVIDIA H100 80GB HBM3
            load: {pattern: wobble}
        pods:
          - namespace: a
            name: p
            containers:
              - name: c
                resource: nvidia.com/gpu
                devices: [{gpu: 7}]
        faults:
          events:
            - {kind: thermal, at: 10, gpu: 0}
    """
    with pytest.raises(ScenarioError) as err:
        scenario(text)
    problems = err.value.problems
    message = str(err.value)
    expected = [
        "node.drivr_version: unknown key",
        "gpus[0].mig[0].profile: unknown profile 'x'",
        "gpus[1].load.pattern: unknown value 'wobble'",
        "pods[0].containers[0].devices[0]: gpu 7 does not exist",
        "faults.events[0].duration: required for thermal",
    ]
    for e in expected:
        assert any(p.startswith(e) for p in problems), (e, problems)
        assert e in message
    assert len(problems) == len(expected)


def test_device_references_must_match_the_gpu_layout():
    text = """
        node: {name: n1}
        gpus:
          - {model: NVIDIA H100 80GB HBM3, mig: [{profile: 1g.10gb, gpu_instance_id: 9}]}
          - {model: NVIDIA H100 80GB HBM3, sharing: {replicas: 2}}
        pods:
          - namespace: a
            name: p
            containers:
              - {name: c1, resource: nvidia.com/gpu, devices: [{gpu: 0}]}
              - {name: c2, resource: nvidia.com/mig-2g.20gb, devices: [{gpu: 0, mig: 9}]}
              - {name: c3, resource: nvidia.com/gpu.shared, devices: [{gpu: 1, replica: 5}]}
              - {name: c4, resource: nvidia.com/gpu.shared, devices: [{gpu: 1, replica: 0}]}
              - {name: c5, resource: nvidia.com/gpu.shared, devices: [{gpu: 1, replica: 0}]}
    """
    with pytest.raises(ScenarioError) as err:
        scenario(text)
    paths = [p.split(":", 1)[0] for p in err.value.problems]
    assert paths == [
        "pods[0].containers[0].devices[0]",  # a MIG-enabled GPU held whole
        "pods[0].containers[1].devices[0]",  # wrong resource name for the MIG profile
        "pods[0].containers[2].devices[0].replica",  # no such replica
        "pods[0].containers[4].devices[0]",  # replica held twice
    ]


def test_unreadable_and_invalid_yaml_are_scenario_errors(tmp_path):
    with pytest.raises(ScenarioError):
        load_scenario(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: [\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(bad))
    assert "invalid YAML" in str(err.value)


def test_same_scenario_same_identifiers():
    a, b = scenario(SMALL), scenario(SMALL)
    assert [g.uuid for g in a.gpus] == [g.uuid for g in b.gpus]
    assert a.pods[0].uid == b.pods[0].uid
    assert a.pods[0].containers[0].processes[0].pid == b.pods[0].containers[0].processes[0].pid


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


def test_energy_counter_never_decreases(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)
    last = [0.0] * 4
    for step in range(0, 1300, 7):
        clock.at(step * 0.93)
        for i in range(4):
            e = value(backend.read_gpu(i), catalog.ENERGY)
            assert e >= last[i]
            last[i] = e
    # a fresh backend jumping straight to the end agrees with the stepped one
    end = clock.t
    clock.at(0)
    fresh = SimulatedBackend(load_scenario(None), clock=clock)
    clock.t = end
    assert value(fresh.read_gpu(0), catalog.ENERGY) == pytest.approx(last[0])


def xid(backend, gpu: int, code: int) -> int | None:
    return backend.xid_counts().get((backend.read_gpu(gpu).uuid, code))


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


def test_ecc_trickle_grows(clock):
    backend = SimulatedBackend(load_scenario(None), clock=clock)  # GPU 2: 6 corrected per 600 s
    seen = []
    for t in (0, 150, 300, 599, 700):
        clock.at(t)
        seen.append(value(backend.read_gpu(2), catalog.ECC_ERRORS, "corrected", "volatile"))
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] > 6


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
    res = backend.pod_resources()
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
    meta = backend.pod_meta()
    pids = 0
    for i in range(backend.device_count()):
        g = backend.read_gpu(i)
        for p in list(g.processes) + [p for m in g.mig_devices for p in m.processes]:
            ref = backend.process_owner(p.pid)
            assert ref is not None
            pod = meta[ref.pod_uid]
            assert ref.container_id in pod.container_ids
            # the container that owns the pid holds this GPU (or one of its MIG instances)
            cname = pod.container_ids[ref.container_id]
            held = next(c for c in backend.pod_resources().containers
                        if c.namespace == pod.namespace and c.pod == pod.name and c.container == cname)
            ids = {g.uuid} | {m.uuid for m in g.mig_devices}
            assert any(d.split("::")[0] in ids for d in held.device_ids)
            pids += 1
    assert pids == sum(len(c.processes) for pod in s.pods for c in pod.containers)
    assert backend.process_owner(1) is None


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
