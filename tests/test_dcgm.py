"""The dcgm-exporter compatible output (--compat.dcgm-exporter, exporter/render/dcgm.py).

``UPDATE_GOLDEN=1`` rewrites tests/fixtures/dcgm-output.txt (the built-in simulated node: an
exclusive GPU, a time-sliced one, a MIG one, an idle DRA-held one) from this run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalog
from exporter.attribution import Attribution, ContainerUsage, Holder
from exporter.cli import build_agent, read_collectors
from exporter.config import ConfigError, parse_config
from exporter.model.gpu import Gpu, GpuSnapshot, MigDevice, Sample
from exporter.render import dcgm
from exporter.serve.routes import make_app, make_dcgm_app

GOLDEN = Path(__file__).parent / "fixtures" / "dcgm-output.txt"
COMPAT = ["--compat.dcgm-exporter"]


def series(body: str, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of the samples of ``name`` whose labels include ``match`` (client_python's
    parser names a counter's samples <name>_total, whatever the exposition says)."""
    out = []
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name in (name, name + "_total") and all(s.labels.get(k, "") == v for k, v in match.items()):
                out.append((s.labels, s.value))
    return out


async def simulated(*flags: str, cycles: int = 2, step: float = 10.0):
    """An agent on the built-in simulated node at a fixed clock, after ``cycles`` cycles."""
    clock = [1000.0]
    agent = build_agent(parse_config(["--simulate", "--kubernetes.enabled", "--kubernetes.pod-labels", "team",
                                      *flags], environ={}), simulated_clock=lambda: clock[0])
    await agent.start_sources()
    for _ in range(cycles):
        await agent.collect_once()
        clock[0] += step
    await agent.stop()
    return agent


# -- the golden exposition ------------------------------------------------------------------------

async def test_golden_compat_exposition_of_the_built_in_node_and_promtool():
    agent = await simulated(*COMPAT, "--compat.dcgm-exporter.pod-uid")
    # the NVLink rate divides the simulated counters' growth by the real time between the cycles
    body = re.sub(r"^(DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL\{.*\}) [1-9]\d*$", r"\1 <rate>",
                  agent.dcgm_exposition.text.decode(), flags=re.M)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(body)
    assert body == GOLDEN.read_text(), "compat exposition differs from the golden file: review, then UPDATE_GOLDEN=1"
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing"
    check = subprocess.run([promtool, "check", "metrics"], input=agent.dcgm_exposition.text.decode(), capture_output=True, text=True)
    # promtool's style lints (counters without _total, camelCase labels such as modelName) are
    # dcgm-exporter's names, kept as they are; anything else (a parse error) fails
    style = ('counter metrics should have "_total" suffix', "label names should be written in 'snake_case'",
             "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'")
    problems = [line for line in (check.stdout + check.stderr).splitlines()
                if line.strip() and not any(s in line for s in style)]
    assert not problems, check.stdout + check.stderr
    # every name is a DCGM field of the table, every counter without _total, in text format 0.0.4
    names = {f.name for f in text_string_to_metric_families(agent.dcgm_exposition.text.decode())}
    assert names <= set(dcgm.field_names())
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in body and "_total{" not in body


async def test_with_the_flag_off_nothing_changes():
    off = await simulated()
    on = await simulated(*COMPAT)
    assert off.dcgm is None and off.dcgm_exposition is None
    volatile = re.compile(r"^(kube_gpu_exporter_(cycle_duration|collector_duration|last_cycle|collector_last_success"
                          r"|gpu_snapshot_age|nvml_query_duration)\S*|process_\S+|python_gc\S+) .*$", re.M)
    assert volatile.sub("", on.exposition.text.decode()) == volatile.sub("", off.exposition.text.decode())
    assert not any(s.startswith("DCGM_") for s in off.exposition.text.decode().split())
    assert read_collectors(off.config) == off.config.collectors


# -- semantics ------------------------------------------------------------------------------------

async def test_labels_units_and_holders_on_the_built_in_node():
    agent = await simulated(*COMPAT)
    body, native = agent.dcgm_exposition.text.decode(), agent.exposition.text.decode()

    def nat(name: str, **match: str) -> float:
        (_, v), = series(native, name, **match)
        return v

    # exclusive GPU 0: its holder's labels, DCGM identity labels, DCGM units
    (labels, util), = series(body, "DCGM_FI_DEV_GPU_UTIL", gpu="0")
    assert (labels["pod"], labels["namespace"], labels["container"]) == (
        "train-llama-0-8xq2v", "ml-training", "trainer")
    assert labels["team"] == "llm"  # the allowlisted pod label, without label_
    assert labels["device"] == "nvidia0" and labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert labels["Hostname"] == "gpu-node-h100-01" and labels["DCGM_FI_DRIVER_VERSION"] == "550.90.07"
    assert labels["UUID"] == series(native, "nvidia_gpu_info", gpu="0")[0][0]["uuid"]
    assert labels["pci_bus_id"] == series(native, "nvidia_gpu_info", gpu="0")[0][0]["pci_bus_id"]
    assert "pod_uid" not in labels  # only with --compat.dcgm-exporter.pod-uid
    assert util == round(100 * nat("nvidia_gpu_utilization_ratio", gpu="0"))
    assert series(body, "DCGM_FI_DEV_SM_CLOCK", gpu="0")[0][1] == nat("nvidia_gpu_clock_hertz", gpu="0", clock="sm") / 1e6
    assert series(body, "DCGM_FI_DEV_POWER_USAGE", gpu="0")[0][1] == pytest.approx(nat("nvidia_gpu_power_watts", gpu="0"))
    assert series(body, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu="0")[0][1] == round(
        1000 * nat("nvidia_gpu_energy_joules", gpu="0"))
    assert series(body, "DCGM_FI_DEV_FB_USED", gpu="0")[0][1] == nat("nvidia_gpu_memory_used_bytes", gpu="0") // 2**20

    # time-sliced GPU 1: one device series without pod labels, plus GPU_UTIL/FB_USED per holder
    for name in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_XID_ERRORS"):
        (lab, _), = series(body, name, gpu="1")
        assert not {"pod", "namespace", "container"} & set(lab), (name, lab)
    for name, native_name, convert in (
            ("DCGM_FI_DEV_FB_USED", "nvidia_gpu_container_memory_used_bytes", lambda v: v // 2**20),
            ("DCGM_FI_DEV_GPU_UTIL", "nvidia_gpu_container_utilization_ratio", lambda v: round(100 * v))):
        got = {lab.get("pod", ""): v for lab, v in series(body, name, gpu="1")}
        want = {lab["pod"]: convert(v) for lab, v in series(native, native_name, gpu="1")}
        assert set(want) == {"notebook-6d5f7c9b8-k2x7p", "notebook-6d5f7c9b8-wq9zt"}
        assert {k: v for k, v in got.items() if k} == want
        assert "" in got  # the device's own value beside them

    # MIG GPU 2: instance fields per GPU instance only, never the parent; board fields once, no instance
    fb = series(body, "DCGM_FI_DEV_FB_USED", gpu="2")
    assert {lab["GPU_I_ID"] for lab, _ in fb} == {"2", "3", "9", "10"}
    assert {lab["GPU_I_ID"]: v for lab, v in fb} == {
        lab["gpu_instance_id"]: v // 2**20 for lab, v in series(native, "nvidia_gpu_mig_memory_used_bytes", gpu="2")}
    profiles = {lab["GPU_I_ID"]: lab["GPU_I_PROFILE"] for lab, _ in fb}
    assert profiles == {"2": "3g.40gb", "3": "2g.20gb", "9": "1g.10gb", "10": "1g.10gb"}
    holders = {lab["GPU_I_ID"]: lab.get("pod") for lab, _ in fb}
    assert holders["10"] is None and holders["9"] == "ci-runner-0"  # unallocated: no pod labels
    (power, _), = series(body, "DCGM_FI_DEV_POWER_USAGE", gpu="2")
    assert "GPU_I_ID" not in power and "pod" not in power
    assert not series(body, "DCGM_FI_DEV_GPU_UTIL", gpu="2")  # not on MIG, as in DCGM
    assert not series(body, "DCGM_FI_DEV_FB_RESERVED", gpu="2")
    # nothing double counts: one series per GPU of every board field, power sums to the native sum
    assert sum(v for _, v in series(body, "DCGM_FI_DEV_POWER_USAGE")) == pytest.approx(
        sum(v for _, v in series(native, "nvidia_gpu_power_watts")))
    for f in dcgm.FIELDS:
        if f.where == "gpu" and f.name not in dcgm.SPLIT_FIELDS:
            gpus = [lab["gpu"] for lab, _ in series(body, f.name)]
            assert len(gpus) == len(set(gpus)), f.name

    # the DRA-held idle GPU 3: its holder, and DCGM's DRA labels
    (lab, v), = series(body, "DCGM_FI_DEV_GPU_UTIL", gpu="3")
    assert lab["pod"] == "dev-sandbox-5b8d7f6c9-r4n2j" and lab["dra_claim_name"] == "dev-sandbox-gpu"
    assert lab["dra_driver_name"] == "gpu.nvidia.com" and v == 0


def _gpu(index: int = 0, samples=(), migs=()) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index}", info={"model": "M", "pci_bus_id": f"00000000:0{index}:00.0",
                                                         "driver_version": "1.2"},
               samples=tuple(samples), mig_devices=tuple(migs))


def _holder(pod: str, *, shared: bool = False, uid: str = "") -> Holder:
    return Holder(namespace="ns", pod=pod, container="c", resource="nvidia.com/gpu", shared=shared,
                  workload_kind="", workload="", pod_uid=uid)


def test_xid_is_the_last_code_with_its_message_and_0_before_any():
    gpus = (_gpu(0), _gpu(1))
    snapshot = GpuSnapshot(gpus=gpus, taken=1.0, xids={("GPU-0", 13): 2, ("GPU-0", 79): 1},
                           xid_last_event={("GPU-0", 13): 200.0, ("GPU-0", 79): 100.0})
    body = dcgm.DcgmRenderer(dcgm.Options(hostname="n")).render(snapshot, Attribution()).text.decode()
    (lab0, v0), = series(body, "DCGM_FI_DEV_XID_ERRORS", gpu="0")
    assert v0 == 13 and lab0["err_code"] == "13" and lab0["err_msg"] == "Graphics engine exception"
    (lab1, v1), = series(body, "DCGM_FI_DEV_XID_ERRORS", gpu="1")
    assert v1 == 0 and lab1["err_code"] == "0" and lab1["err_msg"] == "No Error"
    assert dcgm.xid.xid_message(99999) == "Unknown Error"


def test_a_field_a_gpu_does_not_report_is_absent_not_zero():
    snapshot = GpuSnapshot(gpus=(_gpu(0, [Sample(catalog.TEMPERATURE, 40.0)]),), taken=1.0)
    body = dcgm.DcgmRenderer(dcgm.Options(hostname="n")).render(snapshot, Attribution()).text.decode()
    assert series(body, "DCGM_FI_DEV_GPU_TEMP")[0][1] == 40
    assert not series(body, "DCGM_FI_DEV_MEMORY_TEMP") and not series(body, "DCGM_FI_DEV_POWER_USAGE")
    assert not series(body, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")


def test_options_exported_holder_labels_pod_uid_and_hostname_label():
    snapshot = GpuSnapshot(gpus=(_gpu(0, [Sample(catalog.TEMPERATURE, 40.0)]),), taken=1.0)
    attribution = Attribution(holders={"GPU-0": (_holder("p", uid="u-1"),)})
    options = dcgm.Options(hostname="node-a", hostname_label="hostname", exported_holder_labels=True, pod_uid=True)
    body = dcgm.DcgmRenderer(options).render(snapshot, attribution).text.decode()
    (lab, _), = series(body, "DCGM_FI_DEV_GPU_TEMP")
    assert lab["exported_pod"] == "p" and lab["exported_namespace"] == "ns" and lab["exported_container"] == "c"
    assert "pod" not in lab and lab["pod_uid"] == "u-1"
    assert lab["hostname"] == "node-a" and "Hostname" not in lab
    none = dcgm.DcgmRenderer(dcgm.Options(hostname="x", hostname_label="")).render(snapshot, attribution).text.decode()
    (lab, _), = series(none, "DCGM_FI_DEV_GPU_TEMP")
    assert "Hostname" not in lab and "hostname" not in lab and lab["pod"] == "p"


def test_a_shared_gpu_never_carries_one_holders_labels_even_with_one_holder_left():
    snapshot = GpuSnapshot(gpus=(_gpu(0, [Sample(catalog.TEMPERATURE, 40.0), Sample(catalog.MEMORY_USED, 2**30)]),),
                           taken=1.0)
    attribution = Attribution(holders={"GPU-0": (_holder("a", shared=True),)},
                              usage={"GPU-0": (ContainerUsage("ns", "a", "c", 2**29, 0.5),)})
    body = dcgm.DcgmRenderer(dcgm.Options(hostname="n")).render(snapshot, attribution).text.decode()
    (lab, _), = series(body, "DCGM_FI_DEV_GPU_TEMP")
    assert "pod" not in lab
    assert {lab.get("pod", ""): v for lab, v in series(body, "DCGM_FI_DEV_FB_USED")} == {"": 1024, "a": 512}
    assert {lab.get("pod", ""): v for lab, v in series(body, "DCGM_FI_DEV_GPU_UTIL")} == {"a": 50}


def test_nvlink_bandwidth_is_a_rate_over_the_cycle_and_0_without_nvlink():
    renderer = dcgm.DcgmRenderer(dcgm.Options(hostname="n"))

    def cycle(taken: float, nvlink_bytes: float) -> str:
        with_links = _gpu(0, [Sample(catalog.NVLINK_DATA, nvlink_bytes, ("rx",)), Sample(catalog.NVLINK_DATA, 0, ("tx",)),
                              Sample(catalog.NVLINK_LINKS, 18)])
        pcie_card = _gpu(1, [Sample(catalog.TEMPERATURE, 30.0)])
        return renderer.render(GpuSnapshot(gpus=(with_links, pcie_card), taken=taken), Attribution()).text.decode()

    first = cycle(10.0, 0)
    assert not series(first, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", gpu="0")  # no rate yet
    assert series(first, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", gpu="1")[0][1] == 0
    second = cycle(20.0, 1024 * 1000 * 10 * 7)  # 7,000 KiB/s over 10 s
    assert series(second, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", gpu="0")[0][1] == 7


def test_a_compute_instance_profile_names_its_gpu_instance():
    migs = [MigDevice(uuid="MIG-a", gpu_instance_id=1, compute_instance_id=0, profile="1c.3g.40gb",
                      samples=(Sample(catalog.MIG_MEMORY_USED, 2**30),)),
            MigDevice(uuid="MIG-b", gpu_instance_id=1, compute_instance_id=1, profile="2c.3g.40gb",
                      samples=(Sample(catalog.MIG_MEMORY_USED, 2**30),))]
    snapshot = GpuSnapshot(gpus=(_gpu(0, [Sample(catalog.MEMORY_USED, 2**33)], migs),), taken=1.0)
    body = dcgm.DcgmRenderer(dcgm.Options(hostname="n")).render(snapshot, Attribution()).text.decode()
    (lab, v), = series(body, "DCGM_FI_DEV_FB_USED")  # one GPU instance, not the parent, not per CI
    assert lab["GPU_I_PROFILE"] == "3g.40gb" and lab["GPU_I_ID"] == "1" and v == 1024


# -- what it reads, where it is served ------------------------------------------------------------

def test_the_groups_it_needs_are_read_and_their_native_series_stay_off():
    config = parse_config(COMPAT, environ={})
    assert "profiling" not in config.collectors and "ecc" not in config.collectors
    assert {"profiling", "ecc", "throttle", "nvlink"} <= read_collectors(config)
    assert read_collectors(parse_config([], environ={})) == parse_config([], environ={}).collectors


async def test_one_nvml_pass_per_cycle_and_no_native_change_on_the_fake_nvml_node(fake_nvml):
    def counts() -> tuple[int, int]:
        return fake_nvml.stat(0, "calls.power_mw"), fake_nvml.stat(0, "calls.temperature")

    bodies = {}
    for flags in ([], COMPAT):
        agent = build_agent(parse_config(["--no-kubelet.enabled", "--path.procfs", "", *flags], environ={}))
        await agent.start_sources()
        await agent.collect_once()
        before = counts()
        await agent.collect_once()
        after = counts()
        await agent.stop()
        # one read of each per GPU per cycle, with the compat output as without it
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1), flags
        bodies[bool(flags)] = agent
    on = bodies[True]
    native = on.exposition.text.decode()
    assert "nvidia_gpu_sm_active_ratio" not in native  # profiling's native series stay off
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in on.dcgm_exposition.text.decode()  # read for the compat output


@pytest.mark.parametrize("flags, problem", [
    (["--compat.dcgm-exporter.pod-uid"], "--compat.dcgm-exporter.pod-uid: needs --compat.dcgm-exporter"),
    (["--compat.dcgm-exporter.listen-address", ":9401"], "needs --compat.dcgm-exporter"),
    (COMPAT + ["--compat.dcgm-exporter.listen-address", ":9400"], "port 9400 is --web.listen-address's"),
    (COMPAT + ["--compat.dcgm-exporter.listen-address", "9401"], "is not host:port"),
    (COMPAT + ["--compat.dcgm-exporter.hostname-label", "host"], "is not one of Hostname, hostname, none"),
])
def test_bad_compat_flags_are_configuration_errors(flags, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(flags, environ={})
    assert problem in str(err.value)


async def test_served_at_metrics_dcgm_in_text_format_whatever_is_accepted_and_on_its_own_listener():
    agent = build_agent(parse_config(["--simulate", *COMPAT], environ={}))
    async with TestClient(TestServer(make_app(agent))) as client,             TestClient(TestServer(make_dcgm_app(agent))) as own:
        assert (await client.get("/metrics/dcgm")).status == 503
        await agent.collect_once()
        for c, path in ((client, "/metrics/dcgm"), (own, "/metrics")):
            response = await c.get(path, headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                                  "Accept-Encoding": "gzip"})
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert response.headers["Content-Encoding"] == "gzip"
            assert (await response.read()) == agent.dcgm_exposition.text  # aiohttp undoes the gzip
        assert (await own.get("/metrics/dcgm")).status == 404
        native = await (await client.get("/metrics")).text()
        assert "DCGM_FI_" not in native
    await agent.stop()
    off = build_agent(parse_config(["--simulate"], environ={}))
    async with TestClient(TestServer(make_app(off))) as client:
        await off.collect_once()
        assert (await client.get("/metrics/dcgm")).status == 404
    await off.stop()


# -- docs and rules -------------------------------------------------------------------------------

def test_the_migration_guide_lists_every_field_and_the_readme_points_to_it():
    root = Path(__file__).resolve().parent.parent
    guide = (root / "docs" / "migrate-from-dcgm-exporter.md").read_text()
    table = guide.partition("## The fields")[2].partition("## Recording rules")[0]
    for name in dcgm.field_names():
        short = name.rsplit("_", 2)  # rows that list variants name them by their distinct part
        assert f"`{name}`" in table or f"_{short[1]}_" in table, name
    assert "needs no dashboard change" in (root / "README.md").read_text()


def test_promtool_accepts_the_dcgm_compat_rule_files(tmp_path):
    import yaml

    root = Path(__file__).resolve().parent.parent
    promtool = shutil.which("promtool")
    assert promtool
    check = subprocess.run([promtool, "check", "rules", str(root / "alerts" / "dcgm-compat.rules.yaml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    spec = yaml.safe_load((root / "alerts" / "dcgm-compat.prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "spec.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
