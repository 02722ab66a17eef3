"""NvmlBackend through the real pynvml, on the fake libnvidia-ml.so.1 (tests/fakes/fake_nvml.c)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator

import pynvml
import pytest

from exporter import catalog
from exporter.model import vocabulary
from exporter.sources.backend import BackendUnavailable
from exporter.sources.nvml import GpuReadError, NvmlBackend
from exporter.sources.nvml.processes import merge_processes
from exporter.sources.nvml.mig import mig_profile
from exporter.model.gpu import Gpu, GpuProcess
from conftest import wait_until
from fakenvml import GIB, FakeNode, h100

MIB = 1 << 20

REPO = Path(__file__).resolve().parent.parent


def values(gpu: Gpu) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.metric.name, s.labels): s.value for s in gpu.samples}


def value(gpu: Gpu, metric: catalog.MetricSpec, *labels: str) -> float | None:
    return values(gpu).get((metric.name, tuple(labels)))


def names(gpu: Gpu) -> set[str]:
    return {s.metric.name for s in gpu.samples}


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
        "architecture": "hopper", "compute_capability": "9.0", "board_part_number": "692-2G520-0200-000",
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
    assert v[(catalog.PCIE_DATA.name, ("tx",))] == 123_456_789_000  # fields 197/198, bytes
    assert v[(catalog.PCIE_DATA.name, ("rx",))] == 98_765_432_000
    assert v[(catalog.ECC_ERRORS.name, ("corrected",))] == 3  # volatile
    assert v[(catalog.ECC_ERRORS.name, ("uncorrected",))] == 0
    assert v[(catalog.ECC_AGGREGATE_ERRORS.name, ("corrected",))] == 10
    assert v[(catalog.ECC_AGGREGATE_ERRORS.name, ("uncorrected",))] == 1
    assert v[(catalog.REMAPPED_ROWS.name, ("correctable",))] == 1
    assert v[(catalog.REMAPPED_ROWS_PENDING.name, ())] == 0
    assert v[(catalog.REMAPPED_ROWS_FAILURE.name, ())] == 0
    assert len([k for k in v if k[0] == catalog.NVLINK_LINK_UP.name]) == 18  # the fixture reads every group
    assert v[(catalog.NVLINK_LINK_ERRORS.name, ("17", "crc_flit"))] == 0
    assert v[(catalog.NVLINK_ERRORS.name, ("crc_flit",))] == 0
    assert (v[(catalog.NVLINK_LINKS_UP.name, ())], v[(catalog.NVLINK_LINKS.name, ())]) == (18, 18)
    assert v[(catalog.NVLINK_DATA.name, ("tx",))] == 1_000_000 * 1024  # KiB -> bytes
    assert v[(catalog.NVLINK_DATA.name, ("rx",))] == 2_000_000 * 1024
    assert v[(catalog.PROCESSES.name, ())] == 1
    # The H100 has no fan and no page retirement: omitted, not zero.
    assert catalog.FAN_SPEED.name not in names(g0)
    assert catalog.RETIRED_PAGES.name not in names(g0)
    assert started.error_counts() == {}

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
    assert started.error_counts() == {}
    # The other GPUs are untouched.
    assert value(started.read_gpu(1), catalog.POWER) == pytest.approx(412.345)


def test_function_not_found_is_treated_as_not_supported(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"temperature": 13})  # NVML_ERROR_FUNCTION_NOT_FOUND
    g = started.read_gpu(0)
    assert catalog.TEMPERATURE.name not in names(g)
    assert started.error_counts() == {}


def test_field_batch_unavailable_falls_back_to_functions(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.unsupported(0, "field_values")
    g = started.read_gpu(0)
    assert value(g, catalog.ENERGY) == pytest.approx(123_456.789)
    assert value(g, catalog.PCIE_REPLAYS) == 2
    assert value(g, catalog.ECC_ERRORS, "corrected") == 3
    assert value(g, catalog.ECC_AGGREGATE_ERRORS, "corrected") == 10
    assert catalog.MEMORY_TEMPERATURE.name not in names(g)  # no function serves it
    assert catalog.PCIE_DATA.name not in names(g)  # nor the byte counters (no 20 ms sampling)


def test_other_error_omits_series_counts_it_and_keeps_gpu_up(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"temperature": 999, "memory_temp": 999})  # NVML_ERROR_UNKNOWN
    g = started.read_gpu(0)
    assert g.up
    assert catalog.TEMPERATURE.name not in names(g)
    assert catalog.MEMORY_TEMPERATURE.name not in names(g)
    assert value(g, catalog.POWER) == pytest.approx(412.345)
    assert started.error_counts() == {"unknown": 2}
    started.read_gpu(0)
    assert started.error_counts() == {"unknown": 4}  # cumulative


def test_lost_gpu_raises_others_read_and_it_recovers(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    started.read_gpu(1)
    fake_nvml.update_gpu(1, lost=1)
    with pytest.raises(GpuReadError) as err:
        started.read_gpu(1)
    assert err.value.kind == "gpu_is_lost"
    assert started.read_gpu(0).up
    assert started.read_gpu(2).up
    # Raised, not counted here: the collector counts each failed read once.
    assert started.error_counts() == {}
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
    wait_until(lambda: sum(started.xid_counts().values()) == 4)
    assert started.xid_counts() == {(uuid0, 79): 2, (uuid0, 13): 1, (uuid1, 48): 1}
    # Rewriting the config (other changes) does not replay old events: once a later event is
    # counted (events come in order), a replay would have been counted before it.
    fake_nvml.update_gpu(0, temperature=60)
    fake_nvml.add_xid(1, 31)
    wait_until(lambda: (uuid1, 31) in started.xid_counts())
    assert started.xid_counts() == {(uuid0, 79): 2, (uuid0, 13): 1, (uuid1, 48): 1, (uuid1, 31): 1}


def test_read_gpu_has_no_xid_samples(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """The collector adds XID series from xid_counts(), also for a GPU that is down."""
    started.identify(0)
    fake_nvml.add_xid(0, 79)
    wait_until(lambda: started.xid_counts() != {})
    assert catalog.XID_ERRORS.name not in names(started.read_gpu(0))


def test_xid_counts_stay_readable_while_the_gpu_is_lost(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    uuid1 = started.read_gpu(1).uuid
    fake_nvml.add_xid(1, 79)
    wait_until(lambda: started.xid_counts() != {})
    fake_nvml.update_gpu(1, lost=1)
    with pytest.raises(GpuReadError):
        started.read_gpu(1)
    assert started.xid_counts() == {(uuid1, 79): 1}


def test_xid_on_a_mig_instance_counts_on_the_gpu_and_logs_the_instance(
    fake_nvml: FakeNode, started: NvmlBackend, caplog: pytest.LogCaptureFixture
) -> None:
    uuid2 = started.read_gpu(2).uuid
    fake_nvml.add_xid(2, 31, mig=(7, 0))
    wait_until(lambda: started.xid_counts() == {(uuid2, 31): 1})
    assert "MIG GPU instance 7 compute instance 0" in caplog.text


def test_xid_gpu_refusing_registration_leaves_others_watched(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.unsupported(0, "events")
    started.identify(0)
    uuid1 = started.identify(1).uuid
    fake_nvml.add_xid(0, 31)
    fake_nvml.add_xid(1, 31)
    wait_until(lambda: sum(started.xid_counts().values()) == 1)
    assert started.xid_counts() == {(uuid1, 31): 1}
    assert started.error_counts() == {}  # NOT_SUPPORTED: the GPU has no XID events, no error


def test_xid_registration_failed_is_retried_at_the_next_good_read(
    fake_nvml: FakeNode, started: NvmlBackend
) -> None:
    """Registration used to happen once per start: a GPU that failed it was never watched."""
    fake_nvml.update_gpu(0, fail={"events": 999})  # NVML_ERROR_UNKNOWN when registering
    uuid0 = started.identify(0).uuid
    wait_until(lambda: started.error_counts() == {"unknown": 1})  # tried, failed, counted
    fake_nvml.update_gpu(0, fail=None)
    assert started.read_gpu(0).up  # submits the GPU again
    wait_until(lambda: fake_nvml.stat(0, "calls.events") == 2)  # registered this time
    fake_nvml.add_xid(0, 79)
    wait_until(lambda: started.xid_counts() == {(uuid0, 79): 1})


def test_a_gpu_lost_at_start_is_watched_once_it_is_back(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(1, lost=1)
    with pytest.raises(GpuReadError) as err:
        started.identify(1)
    assert err.value.kind == "gpu_is_lost"
    fake_nvml.update_gpu(1, lost=None)
    uuid1 = started.identify(1).uuid
    fake_nvml.add_xid(1, 48)
    wait_until(lambda: started.xid_counts() == {(uuid1, 48): 1})


@pytest.mark.parametrize("identified_first", [False, True])
def test_an_xid_during_the_first_read_of_a_gpu_is_counted(
    fake_nvml: FakeNode, started: NvmlBackend, identified_first: bool
) -> None:
    """NVML records no event from before a GPU's registration, and a failing GPU raises its XID
    while it is read. The GPU used to be registered after its first read: the event was lost
    ("XID 48 on an unregistered device")."""
    if identified_first:
        started.identify(0)  # as the collector does
    fake_nvml.update_gpu(0, delay={"temperature": 0.5})
    result: list[Gpu] = []
    reader = threading.Thread(target=lambda: result.append(started.read_gpu(0)), daemon=True)
    reader.start()
    wait_until(lambda: fake_nvml.stat(0, "delayed") == 1)  # the read is in its temperature call
    fake_nvml.add_xid(0, 48)
    reader.join(timeout=10)
    assert result and result[0].up
    wait_until(lambda: started.xid_counts() == {(result[0].uuid, 48): 1})
    assert fake_nvml.stat(0, "xid_dropped") == 0


def test_settle_xids_counts_the_events_nvml_has_delivered(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """``--once`` has no next cycle: what NVML delivered during its reads must be in its counts."""
    uuids = [started.identify(i).uuid for i in range(2)]
    fake_nvml.add_xid(0, 48, 48)
    fake_nvml.add_xid(1, 79)
    started.settle_xids(10)
    assert started.xid_counts() == {(uuids[0], 48): 2, (uuids[1], 79): 1}
    started.settle_xids(10)  # nothing pending: returns as well


def test_start_looks_up_no_gpu(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    """Without persistence mode a handle takes seconds per GPU: start() must not wait for any."""
    for i in range(3):
        fake_nvml.update_gpu(i, handle_seconds=600)
    starter = threading.Thread(target=backend.start, daemon=True)
    starter.start()
    starter.join(timeout=60)  # far below 3 x 600 s
    assert not starter.is_alive()
    assert backend.device_count() == 3


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
    fake_nvml.update_gpu(0, temperature=71, memory_temp=80, clock_events=0x40)
    g = started.read_gpu(0)
    assert value(g, catalog.TEMPERATURE) == 71
    assert value(g, catalog.MEMORY_TEMPERATURE) == 80
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
    assert fake_nvml.stat(2, "process_utilization") == 0  # not supported on a MIG GPU: never asked
    assert started.error_counts() == {}


def test_mig_processes_merge_own_and_parent_lists_by_pid(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    g = started.read_gpu(2)  # both lists hold 7001 and 7002: one entry each
    assert [[p.pid for p in m.processes] for m in g.mig_devices] == [[7001], [7002]]
    fake_nvml.update_gpu(2, fail={"processes": 4})  # the parent's list refused: NO_PERMISSION
    mig = dict(fake_nvml.gpus[2]["mig"][0], mps_processes=[(7101, GIB, 0)])
    fake_nvml.update_gpu(2, mig=[mig, fake_nvml.gpus[2]["mig"][1]])
    g = started.read_gpu(2)
    assert [[p.pid for p in m.processes] for m in g.mig_devices] == [[7001, 7101], [7002]]
    assert g.processes == () and value(g, catalog.PROCESSES) == 3
    assert fake_nvml.stat(2, "process_utilization") == 0


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
    assert started.error_counts() == {}


def test_idle_processes_have_zero_utilization(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """NVML samples only processes that used the SMs; NOT_FOUND when none did."""
    fake_nvml.update_gpu(1, processes=[(100, GIB, 40), (200, GIB, 0)])
    util = {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes}
    assert util == {100: pytest.approx(0.4), 200: 0.0}
    fake_nvml.update_gpu(1, processes=[(100, GIB, 0), (200, GIB, 0)])  # no samples: NOT_FOUND
    assert {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes} == {100: 0.0, 200: 0.0}
    fake_nvml.update_gpu(1, no_util_samples_result=0)  # SUCCESS on the sizing call: NVMLError(0)
    assert {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes} == {100: 0.0, 200: 0.0}
    assert started.error_counts() == {}
    fake_nvml.unsupported(1, "process_utilization")  # NVML cannot tell: unknown, not 0
    assert {p.pid: p.utilization_ratio for p in started.read_gpu(1).processes} == {100: None, 200: None}


@pytest.mark.parametrize(("refusal", "read"), [
    ({}, True),
    ({"unsupported": ["mps_processes"]}, True),  # no MPS: the plain list is all there is
    ({"fail": {"processes": 999}}, False),  # NVML_ERROR_UNKNOWN: nothing is known about what runs
    ({"unsupported": ["processes"]}, False),
    ({"fail": {"mps_processes": 999}}, False),  # MPS clients unknown
], ids=["both", "no-mps", "plain-failed", "plain-refused", "mps-failed"])
def test_a_process_list_is_read_only_when_nvml_answered_it(
    fake_nvml: FakeNode, started: NvmlBackend, refusal: dict, read: bool
) -> None:
    fake_nvml.update_gpu(1, processes=[], **refusal)  # an empty list: nothing runs, if it was read
    g = started.read_gpu(1)
    assert g.processes == () and g.processes_read is read


def test_a_mig_instance_list_is_read_if_its_own_or_the_parents_was(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    assert [m.processes_read for m in started.read_gpu(2).mig_devices] == [True, True]
    fake_nvml.update_gpu(2, fail={"mig_processes": 4})  # own lists refused: the parent's names every instance's
    assert [m.processes_read for m in started.read_gpu(2).mig_devices] == [True, True]
    fake_nvml.update_gpu(2, fail={"mig_processes": 4, "processes": 4})
    g = started.read_gpu(2)
    assert [m.processes_read for m in g.mig_devices] == [False, False] and not g.processes_read


def test_an_idle_holder_of_a_shared_gpu_reads_zero_through_nvml(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """Issue 17, item 5, through the real pynvml: GPU 1 time-sliced between nb-a (pid 5001, with
    memory but no SM sample in the window: NOT_FOUND) and nb-b (no process)."""
    from exporter.attribution import attribute
    from exporter.model.kube import ProcessOwners
    from exporter.model.gpu import GpuSnapshot
    from exporter.model.kube import ContainerDevices, ContainerRef, PodMeta, PodResources

    uuid = fake_nvml.gpus[1]["uuid"]
    resources = PodResources(tuple(ContainerDevices("ml", pod, "c", "nvidia.com/gpu.shared", (f"{uuid}::{i}",))
                                   for i, pod in enumerate(("nb-a", "nb-b"))))
    pods = {"ua": PodMeta("ml", "nb-a", "ua", "Deployment", "nb", container_ids={"ca": "c"})}
    owners = ProcessOwners({5001: ContainerRef("ua", "ca")}, lists_complete=True)

    def usage() -> dict[str, tuple[float | None, float | None]]:
        snapshot = GpuSnapshot((started.read_gpu(1),), taken=0.0)
        return {u.pod: (u.memory_used_bytes, u.utilization_ratio)
                for u in attribute(snapshot, resources, pods, owners).usage.get(uuid, ())}

    fake_nvml.update_gpu(1, processes=[(5001, 4 * GIB, 0)])
    assert usage() == {"nb-a": (4 * GIB, 0.0), "nb-b": (0, 0.0)}
    fake_nvml.update_gpu(1, processes=[(5001, 4 * GIB, 60)])
    assert usage() == {"nb-a": (4 * GIB, pytest.approx(0.6)), "nb-b": (0, 0.0)}
    fake_nvml.update_gpu(1, fail={"processes": 999})  # the list not read: nb-b's usage is unknown, not 0
    assert usage() == {}


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
    assert started.identify(1).minor_number == 5
    assert started.read_gpu(1).minor_number == 5
    fake_nvml.unsupported(1, "minor")
    assert started.identify(1).minor_number is None


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


def test_stop_ends_the_thread_and_is_idempotent(fake_nvml: FakeNode) -> None:
    before = set(threading.enumerate())
    b = NvmlBackend(xid_event_timeout_ms=1000)
    b.start()
    b.stop()  # the thread ended (stop() waits for it), within about one event timeout
    assert not [t for t in threading.enumerate() if t.name == "nvml-xid-events" and t not in before]
    b.stop()
    b.start()  # restartable; XID counts survive a restart
    uuid0 = b.identify(0).uuid
    fake_nvml.add_xid(0, 79)
    wait_until(lambda: b.xid_counts() != {})
    b.stop()
    b.start()
    assert b.xid_counts() == {(uuid0, 79): 1}
    b.stop()


def test_hanging_gpu_blocks_only_its_calls(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(2, hang_seconds=60)
    result: list[Gpu] = []
    worker = threading.Thread(target=lambda: result.append(started.read_gpu(2)), daemon=True)
    worker.start()
    wait_until(lambda: fake_nvml.stat(2, "hanging") == 1)  # GPU 2's call is stuck (for 60 s)
    assert started.read_gpu(0).up  # another GPU reads meanwhile: it does not wait for GPU 2
    assert worker.is_alive() and not result
    fake_nvml.update_gpu(2, hang_seconds=None)  # the driver "comes back"
    worker.join(timeout=2)
    assert result and result[0].up


def test_custom_node_without_nvlink_or_mig(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.gpus = [h100(0, nvlink_links=[], unsupported=["mig_mode"], fan=55)]
    fake_nvml.write()
    assert started.device_count() == 1
    g = started.read_gpu(0)
    assert g.info["mig_mode"] == ""
    assert not names(g) & {m.name for m in catalog.metrics_of("nvlink") + catalog.metrics_of("nvlink.links")}
    assert value(g, catalog.FAN_SPEED) == pytest.approx(0.55)
    assert started.error_counts() == {}


_SUBPROCESS = textwrap.dedent("""
    import sys
    from exporter.sources.backend import BackendUnavailable
    from exporter.sources.nvml import NvmlBackend
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


# -- identity -------------------------------------------------------------------------------------


def test_identify_reads_uuid_minor_and_info(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    identity = started.identify(2)
    assert identity.index == 2 and identity.uuid == fake_nvml.gpus[2]["uuid"] and identity.minor_number == 2
    assert set(identity.info) == set(catalog.GPU_INFO.labels)
    assert identity.info["model"] == "NVIDIA A100-SXM4-40GB" and identity.info["mig_mode"] == "enabled"
    assert started.read_gpu(2).identity == identity


def test_identify_without_uuid_raises_and_counts_nothing(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, fail={"uuid": 999})
    with pytest.raises(GpuReadError, match="uuid") as err:
        started.identify(0)
    assert err.value.kind == "unknown"
    assert started.error_counts() == {}  # the collector counts it
    fake_nvml.unsupported(1, "serial", "name")  # optional facts: empty, no error
    info = started.identify(1).info
    assert info["serial"] == "" and info["model"] == "" and info["pci_bus_id"] == "00000000:28:00.0"
    assert started.error_counts() == {}


def test_modes_changed_at_run_time_show_without_identifying_again(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    started.identify(0)
    fake_nvml.update_gpu(0, persistence_mode=0, compute_mode=3)
    info = started.read_gpu(0).info
    assert info["persistence_mode"] == "disabled" and info["compute_mode"] == "exclusive_process"


# -- names from the vocabulary ------------------------------------------------------------------


def test_label_values_come_from_the_vocabulary(started: NvmlBackend) -> None:
    labels: dict[str, set[tuple[str, ...]]] = {}
    for s in started.read_gpu(0).samples:
        labels.setdefault(s.metric.name, set()).add(s.labels)
    assert labels[catalog.CLOCK.name] == {(c,) for c in vocabulary.CLOCK_DOMAINS}
    assert labels[catalog.CLOCK_EVENT.name] == {(r,) for r, _ in vocabulary.CLOCK_EVENT_REASONS}
    assert labels[catalog.VIOLATION_TIME.name] == {(p,) for p in vocabulary.VIOLATION_POLICIES}
    assert labels[catalog.TEMPERATURE_THRESHOLD.name] == {(t,) for t in vocabulary.TEMPERATURE_THRESHOLDS}
    assert labels[catalog.NVLINK_ERRORS.name] == {(t,) for t in vocabulary.NVLINK_ERROR_TYPES}
    assert {t for _, t in labels[catalog.NVLINK_LINK_ERRORS.name]} == set(vocabulary.NVLINK_ERROR_TYPES)
    assert labels[catalog.ECC_ERRORS.name] == {(t,) for t in vocabulary.ECC_ERROR_TYPES}
    assert labels[catalog.ECC_AGGREGATE_ERRORS.name] == {(t,) for t in vocabulary.ECC_ERROR_TYPES}
    assert labels[catalog.REMAPPED_ROWS.name] == {(t,) for t in vocabulary.REMAPPED_ROW_TYPES}
    assert labels[catalog.PCIE_DATA.name] == {(d,) for d in vocabulary.DIRECTIONS}
    assert labels[catalog.NVLINK_DATA.name] == {(d,) for d in vocabulary.DIRECTIONS}


def test_percentages_convert_to_exact_ratios(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """41 * 0.01 is 0.41000000000000003 in floating point; the exposition shows 0.41."""
    fake_nvml.update_gpu(0, utilization_memory=41, utilization_gpu=57)
    g = started.read_gpu(0)
    assert repr(value(g, catalog.MEMORY_UTILIZATION)) == "0.41"
    assert repr(value(g, catalog.UTILIZATION)) == "0.57"


def test_pcie_traffic_is_read_as_counters_without_sampling(
    fake_nvml: FakeNode, started: NvmlBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sampling(*_: object) -> None:  # 20 ms per call on a real GPU
        raise AssertionError("nvmlDeviceGetPcieThroughput called")

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPcieThroughput", sampling)
    g = started.read_gpu(0)
    assert value(g, catalog.PCIE_DATA, "tx") == 123_456_789_000
    fake_nvml.update_gpu(0, pcie_tx_bytes=123_456_790_000)
    assert value(started.read_gpu(0), catalog.PCIE_DATA, "tx") == 123_456_790_000
    fake_nvml.unsupported(0, "pcie_data")
    assert catalog.PCIE_DATA.name not in names(started.read_gpu(0))
    assert started.error_counts() == {}


# -- NVLink ----------------------------------------------------------------------------------------


def test_sparse_nvlink_links_are_all_read(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """Links 2 and 3 do not exist (NOT_SUPPORTED); reading used to stop there."""
    fake_nvml.update_gpu(0, nvlink_links=[0, 1, 4, 5], nvlink_down=[4], nvlink={"5": {"replay": 7}, "0": {"replay": 2}})
    g = started.read_gpu(0)
    up = {labels[0]: v for (name, labels), v in values(g).items() if name == catalog.NVLINK_LINK_UP.name}
    assert up == {"0": 1, "1": 1, "4": 0, "5": 1}
    assert value(g, catalog.NVLINK_LINK_ERRORS, "5", "replay") == 7
    assert (value(g, catalog.NVLINK_LINKS_UP), value(g, catalog.NVLINK_LINKS)) == (3, 4)
    assert value(g, catalog.NVLINK_ERRORS, "replay") == 9 and value(g, catalog.NVLINK_ERRORS, "crc_data") == 0
    assert started.error_counts() == {}


def _backend(fake_nvml: FakeNode, collectors: frozenset[str]) -> NvmlBackend:
    b = NvmlBackend(xid_event_timeout_ms=100, collectors=collectors)
    b.start()
    return b


def test_nvlink_by_default_is_per_gpu_from_the_total_fields(fake_nvml: FakeNode) -> None:
    """The default groups: per GPU, the error totals from one field per type (no per-link
    counter call), links up and present from the links' states; no per-link series."""
    fake_nvml.update_gpu(0, nvlink_down=[3], nvlink={"3": {"crc_flit": 5}, "11": {"crc_flit": 2, "recovery": 1}})
    b = _backend(fake_nvml, catalog.default_collectors())
    try:
        for _ in range(2):
            g = b.read_gpu(0)
    finally:
        b.stop()
    assert {labels: v for (name, labels), v in values(g).items() if name == catalog.NVLINK_ERRORS.name} == {
        ("replay",): 0, ("recovery",): 1, ("crc_flit",): 7, ("crc_data",): 0}
    assert (value(g, catalog.NVLINK_LINKS_UP), value(g, catalog.NVLINK_LINKS)) == (17, 18)
    assert not names(g) & {catalog.NVLINK_LINK_UP.name, catalog.NVLINK_LINK_ERRORS.name}
    assert _calls(fake_nvml, "calls.nvlink_errors") == 0
    assert _calls(fake_nvml, f"field.{pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL}") == 2


def test_nvlink_totals_a_driver_lacks_are_summed_over_the_links(fake_nvml: FakeNode) -> None:
    """A driver without the total fields: the GPU's totals are its links' counters summed; a
    GPU whose links have no counters either is not asked for them again."""
    fake_nvml.update_gpu(0, nvlink_links=[0, 1], nvlink={"1": {"replay": 4}}, unsupported=["fan", "nvlink_totals"])
    fake_nvml.update_gpu(1, nvlink_links=[0, 1], unsupported=["fan", "nvlink_totals", "nvlink_errors"])
    b = _backend(fake_nvml, catalog.default_collectors())
    try:
        assert value(b.read_gpu(0), catalog.NVLINK_ERRORS, "replay") == 4
        b.read_gpu(1)
        asked = fake_nvml.stat(1, "calls.nvlink_errors")
        assert asked == 8  # 4 types x 2 links, once
        g1 = b.read_gpu(1)
        assert fake_nvml.stat(1, "calls.nvlink_errors") == asked
        fake_nvml.update_gpu(0, nvlink={"1": {"replay": 5}})
        assert value(b.read_gpu(0), catalog.NVLINK_ERRORS, "replay") == 5
    finally:
        b.stop()
    assert catalog.NVLINK_ERRORS.name not in names(g1) and value(g1, catalog.NVLINK_LINKS) == 2
    assert b.error_counts() == {}


#: The fake's read ("calls.<what>") of one metric of each group that a group off spares.
_READ_OF = {
    "utilization": "calls.encoder", "memory": "calls.bar1", "thermal": "calls.temperature", "power": "calls.power_mw",
    "clocks": "calls.clock", "throttle": "calls.violation", "pcie": "calls.pcie_gen",
    "nvlink": f"field.{pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL}",
    "nvlink.links": "calls.nvlink_errors", "ecc": f"field.{pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL}",
    "limits": "calls.max_clock", "profiling": "calls.gpm",
}


def _calls(fake_nvml: FakeNode, read: str) -> int:
    """The fake's count of ``read`` on GPU 0 (0 before its first call)."""
    try:
        return fake_nvml.stat(0, read)
    except ValueError:
        return 0


@pytest.mark.parametrize("group", sorted(_READ_OF))
def test_a_group_off_is_neither_read_nor_served(fake_nvml: FakeNode, group: str) -> None:
    everything = catalog.all_collectors()
    for collectors, expect_reads in ((everything - {group}, False), (everything, True)):
        before = _calls(fake_nvml, _READ_OF[group])
        b = _backend(fake_nvml, collectors)
        try:
            g = b.read_gpu(0)
        finally:
            b.stop()
        assert (_calls(fake_nvml, _READ_OF[group]) > before) == expect_reads, (group, collectors == everything)
        if not expect_reads:  # nothing of the group read; what others need may be (the renderer drops it)
            shared = {catalog.UTILIZATION.name, catalog.MEMORY_UTILIZATION.name, catalog.PROCESSES.name,
                      *(m.name for m in catalog.metrics_of("memory") if m.name.startswith("nvidia_gpu_memory_"))}
            assert not (names(g) & {m.name for m in catalog.metrics_of(group)}) - shared


def _count_nvlink_state_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = pynvml.nvmlDeviceGetNvLinkState

    def spy(handle, link):  # type: ignore[no-untyped-def]
        calls.append(link)
        return real(handle, link)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetNvLinkState", spy)
    return calls


def test_links_are_probed_once_per_handle(
    fake_nvml: FakeNode, started: NvmlBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.sources.nvml")
    fake_nvml.update_gpu(1, nvlink_links=[])  # a PCIe board: no NVLink at all
    calls = _count_nvlink_state_calls(monkeypatch)
    started.read_gpu(1)
    assert len(calls) == pynvml.NVML_NVLINK_MAX_LINKS  # every possible link asked once
    calls.clear()
    g = started.read_gpu(1)
    assert calls == [] and catalog.NVLINK_LINKS.name not in names(g)  # no cost on later reads
    assert [r.getMessage() for r in caplog.records if "nvlink not" in r.getMessage()] == [
        "GPU 1: nvlink not supported (no link answered)"]
    started.read_gpu(0)
    calls.clear()
    started.read_gpu(0)
    assert calls == list(range(18))  # only the links that exist
    # A lost GPU's handle is dropped; the next read probes again.
    fake_nvml.update_gpu(1, lost=1)
    with pytest.raises(GpuReadError):
        started.read_gpu(1)
    fake_nvml.update_gpu(1, lost=None, nvlink_links=[2, 3])
    assert {labels for (name, labels) in values(started.read_gpu(1)) if name == catalog.NVLINK_LINK_UP.name} == {
        ("2",), ("3",)}


# -- logging ---------------------------------------------------------------------------------------


def test_each_unsupported_read_is_logged_once_per_gpu_at_debug(
    fake_nvml: FakeNode, started: NvmlBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.sources.nvml")
    fake_nvml.unsupported(0, "memory_v2")  # an old driver: v1 memory, reserved unknown
    for _ in range(3):
        for i in (0, 1):
            started.read_gpu(i)
    unsupported = [(r.levelno, r.getMessage().split(" not supported")[0]) for r in caplog.records
                   if "not supported" in r.getMessage()]
    assert sorted(unsupported) == sorted((logging.DEBUG, m) for m in [
        "GPU 0: fan", "GPU 0: retired_pages", "GPU 0: memory_v2",
        "GPU 1: fan", "GPU 1: retired_pages",
    ])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- what real NVML does, and the fake too -------------------------------------------------------


def test_mig_enabled_gpu_has_no_utilization(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    g = started.read_gpu(2)
    assert not names(g) & {catalog.UTILIZATION.name, catalog.MEMORY_UTILIZATION.name,
                           catalog.ENCODER_UTILIZATION.name, catalog.DECODER_UTILIZATION.name}
    assert g.up and started.error_counts() == {}


def test_process_memory_not_available_is_unknown(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    fake_nvml.update_gpu(1, processes=[(100, None, 40), (200, GIB, 0)])
    g = started.read_gpu(1)
    procs = {p.pid: p for p in g.processes}
    assert procs[100].used_memory_bytes is None and procs[100].utilization_ratio == pytest.approx(0.4)
    assert procs[200].used_memory_bytes == GIB
    assert value(g, catalog.PROCESSES) == 2
    mig = dict(fake_nvml.gpus[2]["mig"][0], processes=[(7001, None, 0)])
    fake_nvml.update_gpu(2, mig=[mig, fake_nvml.gpus[2]["mig"][1]])
    g = started.read_gpu(2)
    assert [(p.pid, p.used_memory_bytes) for p in g.mig_devices[0].processes] == [(7001, None)]
    assert started.error_counts() == {}


def test_merge_fills_unknown_memory_from_a_later_list() -> None:
    merged = merge_processes([GpuProcess(1), GpuProcess(2, 5)], [GpuProcess(1, 7), GpuProcess(2, 9), GpuProcess(3)])
    assert merged == (GpuProcess(1, 7), GpuProcess(2, 5), GpuProcess(3))


def test_process_lists_are_sized_first(fake_nvml: FakeNode, started: NvmlBackend) -> None:
    """NVML answers the sizing call (count 0, no buffer) with INSUFFICIENT_SIZE when there are
    processes; pynvml's _v3 wrappers then ask again with room for them."""
    fake_nvml.update_gpu(1, processes=[(100, GIB, 0), (200, 2 * GIB, 0)])
    assert [p.pid for p in started.read_gpu(1).processes] == [100, 200]
    assert fake_nvml.stat(1, "process_list_sizing") == 1  # the plain list; the MPS list is empty
    fake_nvml.update_gpu(1, processes=[])
    assert started.read_gpu(1).processes == ()
    assert fake_nvml.stat(1, "process_list_sizing") == 1  # nothing to size: SUCCESS at once


def test_the_pid_namespace_probe_for_a_real_gpu_runs(fake_nvml: FakeNode, tmp_path: Path) -> None:
    """bench/nvml_pids.py is what docs/deploy.md#shared-gpus-and-hostpid asks to run on a GPU
    node; here, on the fake, it must at least run and report each list and sample by pid."""
    import json

    fake_nvml.update_gpu(1, processes=[(os.getpid(), GIB, 40)])
    result = subprocess.run([sys.executable, str(REPO / "bench" / "nvml_pids.py")], env=fake_nvml.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["driver"] == "550.54.15" and out["host_proc_self"] == str(out["pid"])
    gpu = out["gpus"][1]
    assert gpu["processes"] == [{"pid": os.getpid(), "in_own_proc": True, "in_host_proc": True, "used_bytes": GIB}]
    assert [s["pid"] for s in gpu["utilization_samples"]] == [os.getpid()]
