"""NvmlBackend through the real pynvml, on the fake libnvidia-ml.so.1 (tests/fakes/fake_nvml.c)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pynvml
import pytest

from exporter import catalog
from exporter.backend import BackendUnavailable
from exporter.nvml import GpuReadError, NvmlBackend
from exporter.nvml.backend import mig_profile
from exporter.snapshot import Gpu
from fakenvml import GIB, FakeNode, h100

MIB = 1 << 20

REPO = Path(__file__).resolve().parent.parent


def values(gpu: Gpu) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.metric.name, s.labels): s.value for s in gpu.samples}


def value(gpu: Gpu, metric: catalog.MetricSpec, *labels: str) -> float | None:
    return values(gpu).get((metric.name, tuple(labels)))


def names(gpu: Gpu) -> set[str]:
    return {s.metric.name for s in gpu.samples}


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def backend(fake_nvml: FakeNode) -> Iterator[NvmlBackend]:
    b = NvmlBackend(xid_event_timeout_ms=100)
    yield b
    b.stop()


@pytest.fixture
def started(backend: NvmlBackend) -> NvmlBackend:
    backend.start()
    return backend


def test_reads_several_gpus_with_units(started: NvmlBackend) -> None:
    assert started.simulated is False
    assert started.device_count() == 3
    g0 = started.read_gpu(0)
    assert g0.up and g0.uuid == "GPU-7c2e4f10-0000-4000-8000-000000000000"
    assert g0.info == {
        "model": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:18:00.0", "serial": "1652323000000",
        "vbios_version": "96.00.74.00.01", "driver_version": "550.54.15", "cuda_version": "12.4",
        "mig_mode": "disabled", "persistence_mode": "enabled", "compute_mode": "default",
    }
    assert set(g0.info) == set(catalog.GPU_INFO.labels)
    v = values(g0)
    assert v[(catalog.UTILIZATION.name, ())] == pytest.approx(0.87)
    assert v[(catalog.MEMORY_UTILIZATION.name, ())] == pytest.approx(0.41)
    assert v[(catalog.DECODER_UTILIZATION.name, ())] == pytest.approx(0.03)
    assert v[(catalog.MEMORY_TOTAL.name, ())] == 80 * GIB
    assert v[(catalog.MEMORY_USED.name, ())] == 30 * GIB
    assert v[(catalog.MEMORY_RESERVED.name, ())] == GIB // 2
    assert v[(catalog.MEMORY_FREE.name, ())] == 80 * GIB - 30 * GIB - GIB // 2
    assert v[(catalog.TEMPERATURE.name, ())] == 52
    assert v[(catalog.MEMORY_TEMPERATURE.name, ())] == 60
    assert v[(catalog.TEMPERATURE_THRESHOLD.name, ("slowdown",))] == 90
    assert v[(catalog.TEMPERATURE_THRESHOLD.name, ("gpu_max",))] == 87
    assert v[(catalog.POWER.name, ())] == pytest.approx(412.345)  # mW -> W
    assert v[(catalog.POWER_LIMIT.name, ())] == pytest.approx(700.0)
    assert v[(catalog.ENERGY.name, ())] == pytest.approx(123_456.789)  # mJ -> J
    assert v[(catalog.CLOCK.name, ("sm",))] == pytest.approx(1980e6)  # MHz -> Hz
    assert v[(catalog.CLOCK_MAX.name, ("memory",))] == pytest.approx(2619e6)
    assert v[(catalog.PERFORMANCE_STATE.name, ())] == 0
    events = {k[1][0]: val for k, val in v.items() if k[0] == catalog.CLOCK_EVENT.name}
    assert len(events) == 9 and events["sw_power_cap"] == 1 and sum(events.values()) == 1
    assert v[(catalog.VIOLATION_TIME.name, ("power",))] == pytest.approx(2.5)  # ns -> s
    assert len([k for k in v if k[0] == catalog.VIOLATION_TIME.name]) == 8
    assert v[(catalog.PCIE_LINK_GENERATION.name, ())] == 5
    assert v[(catalog.PCIE_LINK_MAX_WIDTH.name, ())] == 16
    assert v[(catalog.PCIE_REPLAYS.name, ())] == 2
    assert v[(catalog.PCIE_THROUGHPUT.name, ("rx",))] == 1000 * 1024  # KB/s -> bytes/s
    assert v[(catalog.ECC_ERRORS.name, ("corrected", "volatile"))] == 3
    assert v[(catalog.ECC_ERRORS.name, ("uncorrected", "aggregate"))] == 1
    assert v[(catalog.REMAPPED_ROWS.name, ("correctable",))] == 1
    assert v[(catalog.REMAPPED_ROWS_PENDING.name, ())] == 0
    assert v[(catalog.REMAPPED_ROWS_FAILURE.name, ())] == 0
    assert len([k for k in v if k[0] == catalog.NVLINK_UP.name]) == 18
    assert v[(catalog.NVLINK_ERRORS.name, ("17", "crc_flit"))] == 0
    assert v[(catalog.NVLINK_DATA.name, ("tx",))] == 1_000_000 * 1024  # KiB -> bytes
    assert v[(catalog.NVLINK_DATA.name, ("rx",))] == 2_000_000 * 1024
    assert v[(catalog.PROCESSES.name, ())] == 1
    # The H100 has no fan and no page retirement: omitted, not zero.
    assert catalog.FAN_SPEED.name not in names(g0)
    assert catalog.RETIRED_PAGES.name not in names(g0)
    assert started.errors_by_kind() == {}

    g1 = started.read_gpu(1)
    assert g1.uuid.endswith("000000000001") and g1.info["pci_bus_id"] == "00000000:28:00.0"


def test_mig_gpu_lists_instances(started: NvmlBackend) -> None:
    g = started.read_gpu(2)
    assert g.info["mig_mode"] == "enabled" and g.info["model"] == "NVIDIA A100-SXM4-40GB"
    assert [(m.uuid[:12], m.gpu_instance_id, m.compute_instance_id, m.profile) for m in g.mig_devices] == [
        ("MIG-aaaaaaaa", 7, 0, "1g.5gb"),
        ("MIG-bbbbbbbb", 2, 0, "3g.20gb"),
    ]
    small = {s.metric.name: s.value for s in g.mig_devices[0].samples}
    assert small[catalog.MIG_MEMORY_TOTAL.name] == 5 * GIB
    assert small[catalog.MIG_MEMORY_USED.name] == 2 * GIB
    assert small[catalog.MIG_MEMORY_FREE.name] == 3 * GIB
    assert small[catalog.MIG_PROCESSES.name] == 1
    assert [p.pid for p in g.mig_devices[1].processes] == [7002]
    assert g.mig_devices[1].processes[0].used_memory_bytes == 6 * GIB
    assert g.processes == ()  # all its processes are inside MIG instances
    assert value(g, catalog.PROCESSES) == 2
    assert value(g, catalog.RETIRED_PAGES, "single_bit") == 1


def test_mig_profile_from_name() -> None:
    assert mig_profile("NVIDIA A100-SXM4-40GB MIG 1g.5gb") == "1g.5gb"
    assert mig_profile("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb") == "1c.3g.20gb"


def test_not_supported_omits_only_that_series(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.unsupported(0, "memory_temp", "power_mw", "ecc", "clock")
    g = started.read_gpu(0)
    assert g.up
    present = names(g)
    assert catalog.MEMORY_TEMPERATURE.name not in present  # a field of the batch
    assert catalog.POWER.name not in present  # a function
    assert catalog.ECC_ERRORS.name not in present
    assert catalog.CLOCK.name not in present
    assert value(g, catalog.ENERGY) == pytest.approx(123_456.789)  # same batch, still there
    assert value(g, catalog.POWER_LIMIT) == pytest.approx(700.0)
    assert value(g, catalog.CLOCK_MAX, "sm") == pytest.approx(1980e6)
    assert started.errors_by_kind() == {}
    # The other GPUs are untouched.
    assert value(started.read_gpu(1), catalog.POWER) == pytest.approx(412.345)


def test_function_not_found_is_treated_as_not_supported(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"temperature": 13})  # NVML_ERROR_FUNCTION_NOT_FOUND
    g = started.read_gpu(0)
    assert catalog.TEMPERATURE.name not in names(g)
    assert started.errors_by_kind() == {}


def test_field_batch_unavailable_falls_back_to_functions(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.unsupported(0, "field_values")
    g = started.read_gpu(0)
    assert value(g, catalog.ENERGY) == pytest.approx(123_456.789)
    assert value(g, catalog.PCIE_REPLAYS) == 2
    assert value(g, catalog.ECC_ERRORS, "corrected", "aggregate") == 10
    assert catalog.MEMORY_TEMPERATURE.name not in names(g)  # no function serves it


def test_other_error_omits_series_counts_it_and_keeps_gpu_up(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"temperature": 999, "energy": 999})  # NVML_ERROR_UNKNOWN
    g = started.read_gpu(0)
    assert g.up
    assert catalog.TEMPERATURE.name not in names(g)
    assert catalog.ENERGY.name not in names(g)
    assert value(g, catalog.POWER) == pytest.approx(412.345)
    assert started.errors_by_kind() == {"unknown": 2}
    started.read_gpu(0)
    assert started.errors_by_kind() == {"unknown": 4}  # cumulative


def test_lost_gpu_raises_others_read_and_it_recovers(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    started.read_gpu(1)
    fake_nvml.update_gpu(1, lost=1)
    with pytest.raises(GpuReadError) as err:
        started.read_gpu(1)
    assert err.value.kind == "gpu_is_lost"
    assert started.read_gpu(0).up
    assert started.read_gpu(2).up
    assert started.errors_by_kind()["gpu_is_lost"] == 1
    fake_nvml.update_gpu(1, lost=None)
    g = started.read_gpu(1)
    assert g.up and value(g, catalog.TEMPERATURE) == 52


def test_gpu_lost_on_an_optional_read_raises(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"power_mw": 15})  # NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuReadError):
        started.read_gpu(0)
    fake_nvml.update_gpu(0, fail={"memory_temp": 15})  # inside the field batch
    with pytest.raises(GpuReadError):
        started.read_gpu(0)


def test_xid_events_counted_per_code(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    uuid0, uuid1 = started.read_gpu(0).uuid, started.read_gpu(1).uuid
    fake_nvml.add_xid(0, 79, 79)
    fake_nvml.add_xid(0, 13)
    fake_nvml.add_xid(1, 48)
    assert wait_for(lambda: sum(started.xid_counts().values()) == 4)
    assert started.xid_counts() == {(uuid0, 79): 2, (uuid0, 13): 1, (uuid1, 48): 1}
    # Rewriting the config (other changes) does not replay old events.
    fake_nvml.update_gpu(0, temperature=60)
    time.sleep(0.3)
    assert started.xid_counts()[(uuid0, 79)] == 2


def test_read_gpu_has_no_xid_samples(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """The collector adds XID series from xid_counts(), also for a GPU that is down."""
    fake_nvml.add_xid(0, 79)
    assert wait_for(lambda: started.xid_counts() != {})
    assert catalog.XID_ERRORS.name not in names(started.read_gpu(0))


def test_xid_counts_stay_readable_while_the_gpu_is_lost(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    uuid1 = started.read_gpu(1).uuid
    fake_nvml.add_xid(1, 79)
    assert wait_for(lambda: started.xid_counts() != {})
    fake_nvml.update_gpu(1, lost=1)
    with pytest.raises(GpuReadError):
        started.read_gpu(1)
    assert started.xid_counts() == {(uuid1, 79): 1}


def test_xid_on_a_mig_instance_counts_on_the_gpu_and_logs_the_instance(
    fake_nvml: FakeNode, started: NvmlBackend, caplog: pytest.LogCaptureFixture
) -> None:
    uuid2 = started.read_gpu(2).uuid
    fake_nvml.add_xid(2, 31, mig=(7, 0))
    assert wait_for(lambda: started.xid_counts() == {(uuid2, 31): 1})
    assert "MIG GPU instance 7 compute instance 0" in caplog.text


def test_xid_gpu_refusing_registration_leaves_others_watched(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    fake_nvml.unsupported(0, "events")
    backend.start()
    fake_nvml.add_xid(0, 31)
    fake_nvml.add_xid(1, 31)
    assert wait_for(lambda: sum(backend.xid_counts().values()) == 1)
    assert backend.xid_counts() == {(backend.read_gpu(1).uuid, 31): 1}


def test_start_is_fast_and_xid_registration_runs_in_the_thread(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    # No persistence mode: every handle takes its time (9 s for all three if start() looked
    # them up itself). The bound is generous for a loaded CI machine and far below that.
    for i in range(3):
        fake_nvml.update_gpu(i, handle_seconds=3.0)
    t0 = time.monotonic()
    backend.start()
    assert time.monotonic() - t0 < 1.5
    for i in range(3):  # the thread is in GPU 0's lookup; the others are fast from now on
        fake_nvml.update_gpu(i, handle_seconds=None)
    fake_nvml.add_xid(2, 79)
    assert wait_for(lambda: backend.xid_counts() != {}, timeout_s=20)
    assert list(backend.xid_counts().values()) == [1]


def test_concurrent_starts_initialise_once(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    fake_nvml.set(init_seconds=0.3)  # both calls are inside nvmlInit at once
    before = {t.ident for t in threading.enumerate()}
    starters = [threading.Thread(target=backend.start) for _ in range(2)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(timeout=5)
    watchers = [t for t in threading.enumerate() if t.name == "nvml-xid-events" and t.ident not in before]
    assert len(watchers) == 1
    backend.stop()
    with pytest.raises(pynvml.NVMLError_Uninitialized):  # one nvmlInit, so one stop shuts NVML down
        pynvml.nvmlDeviceGetCount()


def test_init_failure_then_recovery(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    fake_nvml.set(init_error=1)
    with pytest.raises(BackendUnavailable, match="Driver Not Loaded"):
        backend.start()
    backend.stop()  # safe after a failed start
    fake_nvml.set(init_error=None)
    backend.start()
    assert backend.device_count() == 3
    assert backend.read_gpu(0).up


def test_values_change_while_loaded(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    assert value(started.read_gpu(0), catalog.TEMPERATURE) == 52
    fake_nvml.update_gpu(0, temperature=71, energy_mj=223_456_789, clock_events=0x40)
    g = started.read_gpu(0)
    assert value(g, catalog.TEMPERATURE) == 71
    assert value(g, catalog.ENERGY) == pytest.approx(223_456.789)
    assert value(g, catalog.CLOCK_EVENT, "hw_thermal_slowdown") == 1
    assert value(g, catalog.CLOCK_EVENT, "sw_power_cap") == 0


def test_mig_processes_come_from_the_parent_list_by_instance(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """The MIG handles' own lists refused (as for an unprivileged caller): the parent's list,
    tagged with gi/ci, still puts each process on its instance, not on the full GPU."""
    fake_nvml.unsupported(2, "mig_processes")
    fake_nvml.update_gpu(2, processes=[(9001, GIB, 50)])  # gi 0xFFFFFFFF: the full GPU
    g = started.read_gpu(2)
    assert [[p.pid for p in m.processes] for m in g.mig_devices] == [[7001], [7002]]
    assert g.mig_devices[1].processes[0].used_memory_bytes == 6 * GIB
    assert {s.metric.name: s.value for s in g.mig_devices[0].samples}[catalog.MIG_PROCESSES.name] == 1
    assert [(p.pid, p.utilization_ratio) for p in g.processes] == [(9001, None)]
    assert value(g, catalog.PROCESSES) == 3
    assert fake_nvml.util_calls(2) == 0  # not supported on a MIG GPU: never asked
    assert started.errors_by_kind() == {}


def test_mig_processes_merge_own_and_parent_lists_by_pid(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    g = started.read_gpu(2)  # both lists hold 7001 and 7002: one entry each
    assert [[p.pid for p in m.processes] for m in g.mig_devices] == [[7001], [7002]]
    fake_nvml.update_gpu(2, fail={"processes": 4})  # the parent's list refused: NO_PERMISSION
    mig = dict(fake_nvml.gpus[2]["mig"][0], mps_processes=[(7101, GIB, 0)])
    fake_nvml.update_gpu(2, mig=[mig, fake_nvml.gpus[2]["mig"][1]])
    g = started.read_gpu(2)
    assert [[p.pid for p in m.processes] for m in g.mig_devices] == [[7001, 7101], [7002]]
    assert g.processes == () and value(g, catalog.PROCESSES) == 3
    assert fake_nvml.util_calls(2) == 0


def test_mps_clients_are_merged_with_the_plain_list(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    # The plain list shows the MPS server; its clients are only in the MPS list.
    fake_nvml.update_gpu(1, processes=[(50, 512 * MIB, 0)],
                         mps_processes=[(100, 3 * GIB, 40), (200, GIB, 0), (50, 512 * MIB, 0)])
    g = started.read_gpu(1)
    procs = {p.pid: p for p in g.processes}
    assert sorted(procs) == [50, 100, 200] and len(g.processes) == 3
    assert procs[100].used_memory_bytes == 3 * GIB
    assert procs[100].utilization_ratio == pytest.approx(0.40)
    assert procs[200].utilization_ratio == 0.0
    assert value(g, catalog.PROCESSES) == 3


@pytest.mark.parametrize("refusal", [{"unsupported": ["mps_processes"]}, {"fail": {"mps_processes": 13}}])
def test_no_mps_list_means_no_mps(fake_nvml: FakeNode, started: NvmlBackend, refusal: dict) -> None:
    fake_nvml.update_gpu(1, mps_processes=[(100, GIB, 40)], **refusal)  # NOT_SUPPORTED, FUNCTION_NOT_FOUND
    g = started.read_gpu(1)
    assert [p.pid for p in g.processes] == [4243]
    assert started.errors_by_kind() == {}


def test_idle_processes_have_zero_utilization(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """NVML samples only processes that used the SMs; NOT_FOUND when none did."""
    fake_nvml.update_gpu(1, processes=[(100, GIB, 40), (200, GIB, 0)])
    util = {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes}
    assert util == {100: pytest.approx(0.4), 200: 0.0}
    fake_nvml.update_gpu(1, processes=[(100, GIB, 0), (200, GIB, 0)])  # no samples: NOT_FOUND
    assert {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes} == {100: 0.0, 200: 0.0}
    fake_nvml.update_gpu(1, no_util_samples_result=0)  # SUCCESS on the sizing call: NVMLError(0)
    assert {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes} == {100: 0.0, 200: 0.0}
    assert started.errors_by_kind() == {}
    fake_nvml.unsupported(1, "process_utilization")  # NVML cannot tell: unknown, not 0
    assert {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes} == {100: None, 200: None}


def test_process_utilization_reads_since_the_last_sample(
    fake_nvml: FakeNode, started: NvmlBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pynvml.nvmlDeviceGetProcessUtilization
    calls: list[tuple[int, list[int]]] = []

    def spy(handle, since):  # type: ignore[no-untyped-def]
        try:
            samples = real(handle, since)
        except pynvml.NVMLError:
            calls.append((since, []))
            raise
        calls.append((since, [s.timeStamp for s in samples]))
        return samples

    monkeypatch.setattr(pynvml, "nvmlDeviceGetProcessUtilization", spy)
    started.read_gpu(1)
    fake_nvml.update_gpu(1, processes=[(4243, GIB, 0)])  # idle: NOT_FOUND keeps the timestamp
    started.read_gpu(1)
    fake_nvml.update_gpu(1, processes=[(4243, GIB, 10)])
    started.read_gpu(1)
    (since0, stamps0), (since1, _), (since2, _) = calls
    assert since0 == 0 and stamps0 and since1 == max(stamps0) and since2 == since1


def test_minor_number(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    assert started.read_gpu(1).minor_number == 1
    fake_nvml.update_gpu(1, minor=5)  # /dev/nvidia5 need not be GPU index 5
    assert started.read_gpu(1).minor_number == 5
    fake_nvml.unsupported(1, "minor")
    assert started.read_gpu(1).minor_number is None


def test_v1_memory_fallback_omits_reserved(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.unsupported(0, "memory_v2")
    g = started.read_gpu(0)
    assert value(g, catalog.MEMORY_TOTAL) == 80 * GIB
    assert value(g, catalog.MEMORY_USED) == 30 * GIB + GIB // 2  # v1 counts reserved in used
    assert catalog.MEMORY_RESERVED.name not in names(g)


def test_unknown_performance_state_is_omitted(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, pstate=pynvml.NVML_PSTATE_UNKNOWN)
    assert catalog.PERFORMANCE_STATE.name not in names(started.read_gpu(0))


def test_processes_with_memory_and_utilization(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(1, processes=[(100, 3 * GIB, 40), (200, GIB, 5)])
    g = started.read_gpu(1)
    procs = {p.pid: p for p in g.processes}
    assert set(procs) == {100, 200}
    assert procs[100].used_memory_bytes == 3 * GIB
    assert procs[100].utilization_ratio == pytest.approx(0.40)
    assert procs[200].utilization_ratio == pytest.approx(0.05)
    assert value(g, catalog.PROCESSES) == 2
    fake_nvml.update_gpu(1, processes=[])
    g = started.read_gpu(1)
    assert g.processes == () and value(g, catalog.PROCESSES) == 0


def test_stop_is_quick_and_idempotent(fake_nvml: FakeNode) -> None:
    before = set(threading.enumerate())
    b = NvmlBackend(xid_event_timeout_ms=1000)
    b.start()
    time.sleep(0.1)  # the thread is inside nvmlEventSetWait
    t0 = time.monotonic()
    b.stop()
    # within about one event timeout (1 s); generous for a loaded CI machine. The thread ended.
    assert time.monotonic() - t0 < 3.0
    assert not [t for t in threading.enumerate() if t.name == "nvml-xid-events" and t not in before]
    b.stop()
    fake_nvml.add_xid(0, 79)
    b.start()  # restartable; XID counts survive a restart
    assert wait_for(lambda: b.xid_counts() != {})
    b.stop()
    b.start()
    assert b.xid_counts() == {(b.read_gpu(0).uuid, 79): 1}
    b.stop()


def test_hanging_gpu_blocks_only_its_calls(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(2, hang_seconds=60)
    result: list[Gpu] = []
    worker = threading.Thread(target=lambda: result.append(started.read_gpu(2)), daemon=True)
    worker.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert started.read_gpu(0).up  # another GPU reads while GPU 2's call is stuck (for 60 s)
    assert time.monotonic() - t0 < 5.0
    assert worker.is_alive() and not result
    fake_nvml.update_gpu(2, hang_seconds=None)  # the driver "comes back"
    worker.join(timeout=2)
    assert result and result[0].up


def test_custom_node_without_nvlink_or_mig(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.gpus = [h100(0, nvlink_links=0, unsupported=["mig_mode"], fan=55)]
    fake_nvml.write()
    assert started.device_count() == 1
    g = started.read_gpu(0)
    assert g.info["mig_mode"] == ""
    assert catalog.NVLINK_UP.name not in names(g)
    assert catalog.NVLINK_DATA.name not in names(g)
    assert value(g, catalog.FAN_SPEED) == pytest.approx(0.55)
    assert started.errors_by_kind() == {}


_SUBPROCESS = textwrap.dedent("""
    import sys
    from exporter.backend import BackendUnavailable
    from exporter.nvml import NvmlBackend
    b = NvmlBackend(xid_event_timeout_ms=100)
    try:
        b.start()
    except BackendUnavailable as e:
        print("unavailable:", e)
        sys.exit(0)
    print("gpus:", b.device_count(), b.read_gpu(0).info["model"])
    b.stop()
""")


def _run(env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_subprocess_uses_fake_via_env(fake_nvml: FakeNode) -> None:
    assert _run(fake_nvml.env).strip() == "gpus: 3 NVIDIA H100 80GB HBM3"


def test_missing_library_is_backend_unavailable(fake_nvml: FakeNode) -> None:
    env = {k: v for k, v in fake_nvml.env.items() if k != "LD_LIBRARY_PATH"}
    out = _run(env)
    if out.startswith("gpus:"):
        pytest.skip("a real libnvidia-ml.so.1 is installed on this machine")
    assert out.startswith("unavailable: NVML init failed: NVML Shared Library Not Found")
