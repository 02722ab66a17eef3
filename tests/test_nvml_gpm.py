"""GPM profiling metrics (issue 12) through the real pynvml, on the fake library's GPM: the real
structs and versions of nvml.h, per-metric return codes, sample buffers counted for leaks."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from exporter import catalog
from exporter.sources.nvml import GpuReadError, NvmlBackend
from exporter.model.gpu import Gpu, MigDevice
from fakenvml import GIB, FakeNode, h100
from test_nvml_backend import names, value

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
PROFILING = {catalog.GRAPHICS_ACTIVE.name, catalog.SM_ACTIVE.name, catalog.SM_OCCUPANCY.name,
             catalog.TENSOR_ACTIVE.name, catalog.PIPE_ACTIVE.name, catalog.DRAM_ACTIVE.name,
             catalog.PCIE_RATE.name, catalog.NVLINK_RATE.name}


@pytest.fixture
def backend(fake_nvml: FakeNode) -> Iterator[NvmlBackend]:
    b = NvmlBackend(xid_event_timeout_ms=100)
    b.start()
    yield b
    b.stop()


def profiling(gpu: Gpu | MigDevice) -> set[str]:
    return {s.metric.name for s in gpu.samples} & PROFILING


def assert_no_leak(fake_nvml: FakeNode) -> None:
    assert fake_nvml.stat(0, "gpm_allocs") == fake_nvml.stat(0, "gpm_frees") > 0


def test_first_read_has_nothing_then_the_metrics_between_two_samples(
    fake_nvml: FakeNode, backend: NvmlBackend
) -> None:
    assert not profiling(backend.read_gpu(0))  # no previous sample: nothing rather than a guess
    g = backend.read_gpu(0)
    assert value(g, catalog.SM_ACTIVE) == 0.96
    assert value(g, catalog.SM_OCCUPANCY) == 0.14
    assert value(g, catalog.TENSOR_ACTIVE) == 0.93
    assert value(g, catalog.PIPE_ACTIVE, "tensor_hmma") == 0.93
    assert value(g, catalog.PIPE_ACTIVE, "fp64") == 0
    assert value(g, catalog.DRAM_ACTIVE) == 0.177
    assert value(g, catalog.GRAPHICS_ACTIVE) == 0.995
    assert value(g, catalog.PCIE_RATE, "tx") == 5 * MIB
    assert value(g, catalog.PCIE_RATE, "rx") == 14 * MIB
    assert value(g, catalog.NVLINK_RATE, "rx") == 0


def test_values_follow_the_gpu_over_time(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    backend.read_gpu(0)
    assert value(backend.read_gpu(0), catalog.SM_ACTIVE) == 0.96
    fake_nvml.update_gpu(0, gpm={2: 12.5, 3: 3.0, 5: 0.0})
    g = backend.read_gpu(0)
    assert (value(g, catalog.SM_ACTIVE), value(g, catalog.SM_OCCUPANCY), value(g, catalog.TENSOR_ACTIVE)) == (
        0.125, 0.03, 0)


def test_a_gpu_without_gpm_has_no_series_and_says_so_once_at_debug(
    fake_nvml: FakeNode, backend: NvmlBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.sources.nvml")
    for _ in range(3):
        g = backend.read_gpu(2)  # the A100: Ampere
        assert not profiling(g) and not any(profiling(m) for m in g.mig_devices)
    assert [r.getMessage() for r in caplog.records if "gpm" in r.getMessage()] == [
        "GPU 2: gpm not supported (GPM needs Hopper or newer)"]
    assert fake_nvml.stat(2, "calls.gpm") == 1  # asked once per GPU
    assert fake_nvml.stat(2, "calls.gpm_sample") == 0
    assert backend.error_counts() == {}


def test_a_driver_without_the_gpm_symbols_has_no_series_and_no_errors(
    fake_nvml: FakeNode, backend: NvmlBackend, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.set(gpm_missing=1)
    for _ in range(2):
        assert not profiling(backend.read_gpu(0))
    assert backend.error_counts() == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_one_metric_not_supported_loses_only_its_series(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    fake_nvml.update_gpu(0, gpm_unsupported=[10])  # DRAM bandwidth
    backend.read_gpu(0)
    g = backend.read_gpu(0)
    assert catalog.DRAM_ACTIVE.name not in names(g)
    assert profiling(g) == PROFILING - {catalog.DRAM_ACTIVE.name}
    assert backend.error_counts() == {}


def test_profiling_off_makes_no_gpm_call(fake_nvml: FakeNode) -> None:
    backend = NvmlBackend(xid_event_timeout_ms=100, collectors=catalog.all_collectors() - {"profiling"})
    backend.start()
    try:
        for _ in range(2):
            assert not profiling(backend.read_gpu(0))
    finally:
        backend.stop()
    assert fake_nvml.stat(0, "calls.gpm") == fake_nvml.stat(0, "gpm_allocs") == 0


def test_mig_instances_carry_their_own_gpu_instance_metrics(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    fake_nvml.gpus = [h100(0, mig_mode=1, processes=[], mig=[
        {"uuid": "MIG-a", "gi": 1, "ci": 0, "profile": "3g.40gb", "mem_total": 40 * GIB, "gpm": {2: 80.0, 5: 70.0}},
        {"uuid": "MIG-b", "gi": 5, "ci": 0, "profile": "1g.10gb", "mem_total": 10 * GIB, "gpm": {2: 10.0}},
    ])]
    fake_nvml.write()
    assert not any(profiling(m) for m in backend.read_gpu(0).mig_devices)
    g = backend.read_gpu(0)
    by_uuid = {m.uuid: m for m in g.mig_devices}
    assert value(by_uuid["MIG-a"], catalog.SM_ACTIVE) == 0.8
    assert value(by_uuid["MIG-a"], catalog.TENSOR_ACTIVE) == 0.7
    assert value(by_uuid["MIG-b"], catalog.SM_ACTIVE) == 0.1
    assert value(g, catalog.SM_ACTIVE) == 0.96  # the whole GPU: its own sample
    # An instance destroyed: its buffers are freed at the next read, the other's kept.
    fake_nvml.update_gpu(0, mig=[fake_nvml.gpus[0]["mig"][0]])
    g = backend.read_gpu(0)
    assert [m.uuid for m in g.mig_devices] == ["MIG-a"] and value(g.mig_devices[0], catalog.SM_ACTIVE) == 0.8
    assert fake_nvml.stat(0, "gpm_allocs") - fake_nvml.stat(0, "gpm_frees") == 4  # two per device left
    backend.stop()
    assert_no_leak(fake_nvml)


def test_a_gpu_instance_with_two_compute_instances_reports_its_metrics_once(
    fake_nvml: FakeNode, backend: NvmlBackend
) -> None:
    """GPM counts per GPU instance: two compute instances of GPU instance 1 must not each carry
    its values (a sum over them would count it twice). The series is labelled by the GPU
    instance, without compute_instance_id."""
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.attribution import Attribution
    from exporter.model.cycle import AgentStatus
    from exporter.render.families import Renderer
    from exporter.model.gpu import GpuSnapshot

    fake_nvml.gpus = [h100(0, mig_mode=1, processes=[], mig=[
        {"uuid": "MIG-a1", "gi": 1, "ci": 1, "profile": "1c.4g.40gb", "mem_total": 40 * GIB, "gpm": {2: 80.0}},
        {"uuid": "MIG-a0", "gi": 1, "ci": 0, "profile": "3c.4g.40gb", "mem_total": 40 * GIB, "gpm": {2: 80.0}},
        {"uuid": "MIG-b", "gi": 5, "ci": 0, "profile": "1g.10gb", "mem_total": 10 * GIB, "gpm": {2: 10.0}},
    ])]
    fake_nvml.write()
    backend.read_gpu(0)
    g = backend.read_gpu(0)
    by_uuid = {m.uuid: m for m in g.mig_devices}
    assert value(by_uuid["MIG-a0"], catalog.SM_ACTIVE) == 0.8 and not profiling(by_uuid["MIG-a1"])
    assert value(by_uuid["MIG-b"], catalog.SM_ACTIVE) == 0.1
    assert fake_nvml.stat(0, "calls.gpm_sample") == 2 * 3  # the GPU and each GPU instance, once a read

    text = Renderer(process_metrics=False).render(
        GpuSnapshot((g,), taken=0.0), Attribution(), AgentStatus(simulated=False, nvml_up=True)).text.decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == catalog.SM_ACTIVE.name]
    per_instance = {s.labels.get("gpu_instance_id", ""): (s.value, s.labels) for s in family.samples}
    assert {k: v for k, (v, _) in per_instance.items()} == {"": 0.96, "1": 0.8, "5": 0.1}
    assert not any("compute_instance_id" in labels for _, labels in per_instance.values())
    backend.stop()
    assert_no_leak(fake_nvml)


def test_a_gpu_lost_and_back_starts_over_without_leaking(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    backend.read_gpu(0)
    assert profiling(backend.read_gpu(0))
    fake_nvml.update_gpu(0, lost=1)
    with pytest.raises(GpuReadError):
        backend.read_gpu(0)
    assert_no_leak(fake_nvml)  # the lost GPU's buffers went with its handle
    fake_nvml.update_gpu(0, lost=None)
    assert not profiling(backend.read_gpu(0))  # a fresh start: no sample from before the loss
    assert value(backend.read_gpu(0), catalog.SM_ACTIVE) == 0.96
    backend.stop()
    assert_no_leak(fake_nvml)


def test_buffers_are_reused_not_allocated_per_read(fake_nvml: FakeNode, backend: NvmlBackend) -> None:
    for _ in range(5):
        backend.read_gpu(0)
        backend.read_gpu(1)
    assert fake_nvml.stat(0, "gpm_allocs") == 2 * 2  # two per GPU, swapped each read
    assert fake_nvml.stat(0, "calls.gpm_sample") == 5 and fake_nvml.stat(0, "calls.gpm_metrics") == 4
    backend.stop()
    assert_no_leak(fake_nvml)


def test_the_documented_sm_activity_per_workload_query_holds() -> None:
    documented = re.findall(r"```promql\n(.*?)```", (ROOT / "docs" / "metrics.md").read_text(), re.S)
    spec_path = ROOT / "tests" / "promql" / "profiling.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    tested = [t["expr"] for group in spec["tests"] for t in group["promql_expr_test"]]
    assert [q.strip() for q in documented] == [q.strip() for q in tested]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    result = subprocess.run([promtool, "test", "rules", str(spec_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
