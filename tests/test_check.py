"""``kube-gpu-exporter check``: every row in each state it can take, on the test fakes (the fake
NVML library, the fake kubelet on a unix socket, the fake API server, a real Alertmanager), its
exit code, the text and the JSON (against docs/check.schema.json).

Most tests run the checks in this process (``run_checks``); the ones about the command itself
(a hung NVML call must not hold the exit, a socket that uid 0 without capabilities cannot open,
the library missing, the exit codes) run it as a subprocess.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import wait_until
from e2e import free_port
from fakekubeapi import FakeKubeApi
from fakekubelet import pod
from fakenvml import a100_mig
from test_alertmanager import alertmanager, stop_process  # noqa: F401 - alertmanager: a fixture
from test_procfs import CASES, UID, write_proc

from exporter.check import apiserver, output
from exporter.check import nvml as check_nvml
from exporter.check.apiserver import ACCESS, SLICES, in_cluster
from exporter.sources.kube import api as api_client
from exporter.check.kubelet import id_form
from exporter.check.report import DEGRADED, FAILED, OK, SKIPPED, Check, Report
from exporter.check.run import running_agent_args, run_checks
from exporter.check.web import check_web
from exporter.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "check.schema.json").read_text())
#: Every dependency but NVML off: the rows of one section decide the exit code.
NVML_ONLY = ("--no-kubelet.enabled", "--path.procfs=", "--collector.profiling")  # profiling: an opt-in group
#: A generous guard for the subprocess runs: a check that hangs fails the test instead of the suite.
COMMAND_GUARD_SECONDS = 120


@pytest.fixture(autouse=True)
def _short_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second read of the GPUs 50 ms after the first, not half a second: the fake NVML's GPM
    values do not depend on the time between two samples (the commands, as processes, keep 0.5 s)."""
    monkeypatch.setattr(check_nvml, "GAP_SECONDS", 0.05)


async def check(*args: str, environ: dict[str, str] | None = None) -> Report:
    return await run_checks(parse_config(list(args), environ or {}), args=args)


def rows(report: Report) -> dict[str, Check]:
    return {c.id: c for c in report.checks}


def valid_json(report: Report) -> dict[str, Any]:
    document = json.loads(output.as_json(report))
    jsonschema.validate(document, SCHEMA)
    return document


def command(*args: str, env: dict[str, str], prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "exporter", "check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=COMMAND_GUARD_SECONDS)


# -- NVML ----------------------------------------------------------------------------------------


async def test_every_nvml_row_on_a_healthy_node(fake_nvml):
    """Two H100s (GPM) and an A100 in MIG mode (no GPM): library, identity, query groups with their
    time, MIG, XID registration, a real GPM sample."""
    report = await check(*NVML_ONLY)
    got = rows(report)
    assert report.exit_code == 0
    assert got["nvml"].status == OK
    assert "driver 550.54.15, NVML 12.550.54.15, CUDA 12.4; 3 GPUs" in got["nvml"].seen
    assert got["nvml"].details["library"].endswith("libnvidia-ml.so.1")
    for i in range(3):
        assert got[f"gpu.{i}"].status == OK and fake_nvml.gpus[i]["uuid"] in got[f"gpu.{i}"].seen
        assert got[f"gpu.{i}.queries"].status == OK
        assert got[f"gpu.{i}.xid"].status == OK and got[f"gpu.{i}.xid"].details["registration"] == "watched"
    groups = {g["name"]: g for g in got["gpu.0.queries"].details["groups"]}
    assert groups["activity"]["outcome"] == "ok" and groups["activity"]["seconds"] > 0
    assert groups["thermal_power"]["outcome"] == "not_supported"  # no fan on an H100 SXM
    assert "not supported: fan" in got["gpu.0.queries"].seen
    assert got["gpu.0.mig"].seen == "MIG disabled"
    assert got["gpu.2.mig"].status == OK and "1g.5gb (GI 7, CI 0), 3g.20gb (GI 2, CI 0)" in got["gpu.2.mig"].seen
    assert got["gpu.0.profiling"].status == OK and "SM active" in got["gpu.0.profiling"].seen
    assert got["gpu.0.profiling"].details["metrics"]["SM active"] > 0
    assert got["gpu.2.profiling"].status == SKIPPED and "GPM not supported" in got["gpu.2.profiling"].seen
    assert not any(c.simulated for c in report.checks)
    valid_json(report)


async def test_gpm_without_its_functions_is_not_supported(fake_nvml):
    fake_nvml.set(gpm_missing=1)  # a driver without the GPM symbols
    got = rows(await check(*NVML_ONLY))
    assert got["gpu.0.profiling"].status == SKIPPED and "GPM not supported" in got["gpu.0.profiling"].seen


async def test_gpm_sampling_refused_is_degraded_with_the_driver_setting_as_fix(fake_nvml):
    fake_nvml.update_gpu(0, fail={"gpm_sample": 4})  # NVML_ERROR_NO_PERMISSION
    report = await check(*NVML_ONLY)
    got = rows(report)
    row = got["gpu.0.profiling"]
    assert row.status == DEGRADED and "sampling refused: gpm_sample (profiling)" in row.seen
    assert "CAP_SYS_ADMIN" in row.cause and "NVreg_RestrictProfilingToAdminUsers=0" in row.fix
    assert got["gpu.0.queries"].status == OK, "the profiling row speaks for GPM"
    assert got["gpu.1.profiling"].status == OK
    assert report.exit_code == 0, "a degraded row is not a failure"


async def test_gpm_sampling_that_fails_otherwise_is_degraded(fake_nvml):
    fake_nvml.update_gpu(1, fail={"gpm_metrics": 999})
    row = rows(await check(*NVML_ONLY))["gpu.1.profiling"]
    assert row.status == DEGRADED and "sampling failed: gpm_metrics (profiling)" in row.seen


async def test_profiling_off_is_skipped(fake_nvml):
    """Off by default (an opt-in collector group): the row says which flag turns it on."""
    for flags in (("--no-collector.profiling",), ()):
        row = rows(await check("--no-kubelet.enabled", "--path.procfs=", *flags))["gpu.0.profiling"]
        assert row.status == SKIPPED and "off: --collector.profiling not set" in row.seen


async def test_a_query_refused_or_failing_names_its_group(fake_nvml):
    fake_nvml.update_gpu(1, fail={"power_mw": 4, "clock": 999})
    report = await check(*NVML_ONLY)
    row = rows(report)["gpu.1.queries"]
    assert row.status == DEGRADED
    assert "no permission: power (thermal_power)" in row.seen
    assert "error: clock_" in row.seen and "(clocks)" in row.seen
    groups = {g["name"]: g["outcome"] for g in row.details["groups"]}
    assert groups["thermal_power"] == "no_permission" and groups["clocks"] == "error" and groups["pcie"] == "ok"
    assert rows(report)["gpu.0.queries"].status == OK
    assert report.exit_code == 0


async def test_a_lost_gpu_fails_and_its_other_rows_are_skipped(fake_nvml):
    fake_nvml.update_gpu(1, lost=1)
    report = await check(*NVML_ONLY)
    got = rows(report)
    assert got["gpu.1"].status == FAILED and "GPU_IS_LOST" in got["gpu.1"].cause
    assert "nvidia-smi -r -i 1" in got["gpu.1"].fix
    assert {got[f"gpu.1.{r}"].status for r in ("queries", "mig", "profiling")} == {SKIPPED}
    assert got["gpu.0"].status == OK and got["gpu.0.profiling"].status == OK
    assert report.exit_code == 1
    valid_json(report)


@pytest.mark.parametrize(("code", "cause", "fix"), [
    (9, "kernel driver is not loaded", "lsmod | grep nvidia"),  # NVML_ERROR_DRIVER_NOT_LOADED
    (12, "libnvidia-ml.so.1 is not in the container", "runtimeClassName: nvidia"),  # LIBRARY_NOT_FOUND
    (4, "may not open /dev/nvidiactl", "NVIDIA runtime"),  # NO_PERMISSION
])
async def test_nvml_that_cannot_start_fails_with_the_cause(fake_nvml, code, cause, fix):
    fake_nvml.set(init_error=1, init_error_code=code)
    report = await check("--no-kubelet.enabled")
    got = rows(report)
    assert got["nvml"].status == FAILED and cause in got["nvml"].cause and fix in got["nvml"].fix
    assert not any(i.startswith("gpu.") for i in got)
    assert got["pid_namespace"].status == SKIPPED and "NVML" in got["pid_namespace"].seen
    assert report.exit_code == 1


async def test_nvml_without_any_gpu_fails(fake_nvml):
    fake_nvml.set(gpu_count=0)
    row = rows(await check(*NVML_ONLY))["nvml"]
    assert row.status == FAILED and "lists no GPU" in row.cause and "NVIDIA_VISIBLE_DEVICES=all" in row.fix


@pytest.mark.parametrize(("change", "state"), [({"unsupported": ["fan", "retired_pages", "events"]}, "not_supported"),
                                               ({"fail": {"events": 999}}, "failed")])
async def test_xid_registration_refused_is_degraded(fake_nvml, change, state):
    fake_nvml.update_gpu(0, **change)
    got = rows(await check(*NVML_ONLY))
    assert got["gpu.0.xid"].status == DEGRADED and got["gpu.0.xid"].details["registration"] == state
    assert got["gpu.1.xid"].status == OK


async def test_mig_mode_without_instances_or_refused_is_degraded(fake_nvml):
    fake_nvml.update_gpu(2, mig=[])
    row = rows(await check(*NVML_ONLY))["gpu.2.mig"]
    assert row.status == DEGRADED and "no instance" in row.cause and "NVIDIA_MIG_MONITOR_DEVICES=all" in row.fix
    fake_nvml.update_gpu(2, mig=a100_mig(2)["mig"], fail={"mig": 4})
    row = rows(await check(*NVML_ONLY))["gpu.2.mig"]
    assert row.status == DEGRADED and "refused: mig (processes)" in row.seen and "/dev/nvidia-caps" in row.fix


@pytest.mark.integration
@pytest.mark.parametrize("hang", [{"gpu": {"hang_seconds": 600}}, {"system": {"init_seconds": 600}}],
                         ids=["a GPU read", "nvmlInit"])
def test_a_hung_nvml_call_costs_its_row_not_the_exit(fake_nvml, hang):
    """The call stays hung in its daemon thread for ten minutes; the command reports and exits."""
    fake_nvml.update_gpu(1, **hang.get("gpu", {}))
    fake_nvml.set(**hang.get("system", {}))
    done = command(*NVML_ONLY, "--collector.interval=2", "--output=json", env=fake_nvml.env)
    got = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1, done.stderr
    if "gpu" in hang:
        assert got["gpu.1"]["status"] == FAILED and "did not return within 1s" in got["gpu.1"]["cause"]
        assert got["gpu.0"]["status"] == OK
    else:
        assert got["nvml"]["status"] == FAILED and "nvmlInit did not return within 1s" in got["nvml"]["seen"]


@pytest.mark.integration
@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has a real NVML")
def test_no_nvml_library_at_all_names_the_runtime():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "FAKE_NVML_CONFIG")}
    done = command(*NVML_ONLY, "--output=json", env=env)
    got = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1
    assert got["nvml"]["status"] == FAILED and "runtimeClassName: nvidia" in got["nvml"]["fix"]


# -- processes -------------------------------------------------------------------------------------


def own_namespace_procfs(root: Path, *, pids: dict[int, str], shares: bool = False) -> Path:
    """A host procfs as the agent in a pid namespace of its own sees it at /host/proc: init, the
    given pids with their cgroup files, and ``self`` naming another pid (or this one: ``shares``)."""
    write_proc(root, 1, "0::/init.scope\n")
    for pid, text in pids.items():
        write_proc(root, pid, text)
    (root / "self").symlink_to(str(os.getpid() if shares else 999_999))
    return root


CONTAINER = CASES["v2-systemd-containerd-burstable"]
#: The GPU processes of the default fake node: one per H100, one per MIG instance of the A100.
NODE_PIDS = (4242, 4243, 7001, 7002)


async def test_procfs_that_cannot_be_read_fails(fake_nvml, tmp_path):
    report = await check("--no-kubelet.enabled", f"--path.procfs={tmp_path / 'not-mounted'}")
    got = rows(report)
    assert got["procfs"].status == FAILED and "--path.procfs=/host/proc" in got["procfs"].fix
    assert got["pid_namespace"].status == got["process_cgroups"].status == SKIPPED
    assert report.exit_code == 1


async def test_procfs_off_is_one_skipped_row(fake_nvml):
    got = rows(await check(*NVML_ONLY))
    assert got["procfs"].status == SKIPPED and "pid_namespace" not in got


async def test_own_pid_namespace_with_host_pids_splits_shared_gpus(fake_nvml, tmp_path):
    procfs = own_namespace_procfs(tmp_path, pids=dict.fromkeys(NODE_PIDS, CONTAINER))
    got = rows(await check("--no-kubelet.enabled", f"--path.procfs={procfs}"))
    assert got["procfs"].status == OK
    assert got["pid_namespace"].status == OK and "the driver reports host pids" in got["pid_namespace"].seen
    cgroups = got["process_cgroups"]
    assert cgroups.status == OK and "4 GPU processes in containers of 1 pod" in cgroups.seen
    assert cgroups.details["containers"]["4242"]["pod_uid"] == UID


async def test_own_pid_namespace_and_pids_procfs_does_not_show_is_degraded(fake_nvml, tmp_path):
    """What a driver that translates pids into the agent's namespace looks like."""
    procfs = own_namespace_procfs(tmp_path, pids={})
    report = await check("--no-kubelet.enabled", f"--path.procfs={procfs}")
    row = rows(report)["pid_namespace"]
    assert row.status == DEGRADED and "NVML lists pids 4242, 4243, 7001, 7002" in row.seen
    assert "hostPID: true" in row.fix and "deploy/hostpid.patch.yaml" in row.fix
    assert report.exit_code == 0


async def test_own_pid_namespace_and_a_busy_gpu_without_processes_is_degraded(fake_nvml, tmp_path):
    fake_nvml.update_gpu(0, processes=[])  # 87 % busy, nothing listed: hidden by the driver
    procfs = own_namespace_procfs(tmp_path, pids=dict.fromkeys(NODE_PIDS[1:], CONTAINER))
    row = rows(await check("--no-kubelet.enabled", f"--path.procfs={procfs}"))["pid_namespace"]
    assert row.status == DEGRADED and "GPU 0 computes with no process listed" in row.seen


async def test_the_host_pid_namespace_looks_pids_up_as_they_are(fake_nvml, tmp_path):
    procfs = own_namespace_procfs(tmp_path, pids=dict.fromkeys(NODE_PIDS, CONTAINER), shares=True)
    row = rows(await check("--no-kubelet.enabled", f"--path.procfs={procfs}"))["pid_namespace"]
    assert row.status == OK and "hostPID: true" in row.seen


async def test_an_unreadable_cgroup_is_degraded(fake_nvml, tmp_path):
    procfs = own_namespace_procfs(tmp_path, pids=dict.fromkeys(NODE_PIDS[1:], CONTAINER))
    (procfs / "4242").mkdir()
    (procfs / "4242" / "cgroup").mkdir()  # reading it fails: IsADirectoryError
    row = rows(await check("--no-kubelet.enabled", f"--path.procfs={procfs}"))["process_cgroups"]
    assert row.status == DEGRADED and "unreadable: 4242" in row.seen


# -- kubelet -------------------------------------------------------------------------------------


def kubelet_args(socket_path: str) -> tuple[str, ...]:
    return ("--path.procfs=", f"--kubelet.pod-resources-socket={socket_path}")


async def test_kubelet_rows_on_a_working_kubelet(fake_nvml, fake_kubelet):
    gpus = fake_nvml.gpus
    fake_kubelet.set_pods([
        pod("ml", "train-0", {"trainer": {"nvidia.com/gpu": [gpus[0]["uuid"]]}}),
        pod("ml", "eval-0", {"eval": {"nvidia.com/mig-1g.5gb": [gpus[2]["mig"][0]["uuid"]]}}),
        {"namespace": "dev", "name": "sandbox", "containers": [{"name": "c", "claims": [
            {"name": "gpu-claim", "devices": [{"driver": "gpu.nvidia.com", "pool": "node-a", "device": "gpu-1"}]}]}]},
    ])
    fake_kubelet.set_allocatable({"nvidia.com/gpu": [gpus[0]["uuid"]], "example.com/fpga": ["fpga0"],
                                  "nvidia.com/mig-1g.5gb": [gpus[2]["mig"][0]["uuid"]]})
    report = await check(*kubelet_args(fake_kubelet.socket_path))
    got = rows(report)
    assert got["kubelet.socket"].status == OK and "accepts connections" in got["kubelet.socket"].seen
    listed = got["kubelet.list"]
    assert listed.status == OK
    assert "3 pods holding GPUs" in listed.seen
    assert "nvidia.com/gpu 1 (GPU-<uuid>)" in listed.seen and "nvidia.com/mig-1g.5gb 1 (MIG-<uuid>)" in listed.seen
    assert "DRA claims: 1 device in 1 claim (gpu.nvidia.com)" in listed.seen
    assert "other resources: example.com/fpga" in listed.seen
    assert got["kubelet.allocatable"].status == OK and "GPU-<uuid>" in got["kubelet.allocatable"].seen
    assert got["kubelet.devices"].status == OK and "3 allocated ids -> 3 devices" in got["kubelet.devices"].seen
    assert fake_kubelet.calls["List"] == 1 and fake_kubelet.calls["GetAllocatableResources"] == 1
    assert report.exit_code == 0


async def test_kubelet_socket_missing_fails_and_names_the_mount(fake_nvml, kubelet_socket_path):
    report = await check(*kubelet_args(kubelet_socket_path))
    got = rows(report)
    assert got["kubelet.socket"].status == FAILED and "no socket at" in got["kubelet.socket"].seen
    assert "hostPath" in got["kubelet.socket"].fix
    assert {got[i].status for i in ("kubelet.list", "kubelet.allocatable", "kubelet.devices")} == {SKIPPED}
    assert report.exit_code == 1


async def test_kubelet_socket_nobody_listens_on_fails(fake_nvml, kubelet_socket_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(kubelet_socket_path)  # a socket file, no listener: as after the kubelet died
    try:
        row = rows(await check(*kubelet_args(kubelet_socket_path)))["kubelet.socket"]
    finally:
        stale.close()
    assert row.status == FAILED and "connection refused" in row.seen


async def test_kubelet_answering_garbage_fails_the_list(fake_nvml, fake_kubelet):
    fake_kubelet.garbage = True
    got = rows(await check(*kubelet_args(fake_kubelet.socket_path)))
    assert got["kubelet.socket"].status == OK
    assert got["kubelet.list"].status == FAILED and "invalid_response" in got["kubelet.list"].seen
    assert "--kubelet.pod-resources-socket" in got["kubelet.list"].fix


async def test_kubelet_refusing_allocatable_is_degraded(fake_nvml, fake_kubelet):
    fake_kubelet.set_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited", method="GetAllocatableResources")
    report = await check(*kubelet_args(fake_kubelet.socket_path))
    got = rows(report)
    assert got["kubelet.list"].status == OK
    assert got["kubelet.allocatable"].status == DEGRADED and "RESOURCE_EXHAUSTED" in got["kubelet.allocatable"].seen
    assert report.exit_code == 0


async def test_kubelet_ids_nvml_does_not_know_and_gpu_names_the_flags_miss(fake_nvml, fake_kubelet):
    fake_kubelet.set_pods([pod("ml", "a", {"c": {"nvidia.com/gpu": ["GPU-00000000-dead-beef-0000-000000000000"]}}),
                           pod("ml", "b", {"c": {"nvidia.com/gpu-h100": [fake_nvml.gpus[1]["uuid"]]}})])
    got = rows(await check(*kubelet_args(fake_kubelet.socket_path)))
    assert got["kubelet.devices"].status == DEGRADED and "GPU-00000000-dead-beef" in got["kubelet.devices"].seen
    assert got["kubelet.list"].status == DEGRADED and "nvidia.com/gpu-h100" in got["kubelet.list"].cause
    assert "--kubelet.resource-names" in got["kubelet.list"].fix


def _drop_capabilities_works() -> bool:
    setpriv = shutil.which("setpriv")
    return (os.geteuid() == 0 and setpriv is not None and subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", "true"], capture_output=True).returncode == 0)


@pytest.mark.integration
@pytest.mark.skipif(not _drop_capabilities_works(), reason="needs root and setpriv able to drop capabilities")
def test_kubelet_socket_that_uid_0_without_capabilities_may_not_open(fake_nvml, fake_kubelet):
    """The DaemonSet's constraints (uid 0, no capability) against a socket whose owner bits say no."""
    os.chmod(fake_kubelet.socket_path, 0o000)
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-all")
    done = command(*kubelet_args(fake_kubelet.socket_path), "--output=json", env=fake_nvml.env, prefix=drop)
    got = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert got["kubelet.socket"]["status"] == FAILED and "permission denied" in got["kubelet.socket"]["seen"]
    assert "runAsUser: 0" in got["kubelet.socket"]["fix"]
    assert done.returncode == 1


@pytest.mark.integration
@pytest.mark.skipif(not _drop_capabilities_works() or shutil.which("unshare") is None,
                    reason="needs root, setpriv and unshare")
def test_the_field_script_runs_both_modes_and_packs_one_file(fake_nvml, tmp_path):
    """bench/field_check.sh end to end on the fake NVML (no CUDA load here): the constrained mode
    really has no capability, its own pid namespace and a read-only root; the pack holds both."""
    env = fake_nvml.env | {"PYTHON": sys.executable, "FIELD_OUT": str(tmp_path / "field"), "FIELD_AGENT_SECONDS": "3",
                           "FIELD_AGENT_FLAGS": "--collector.interval=1", "FIELD_COST_ARGS": "--cycles 4",
                           "LOAD_PYTHON": "/nonexistent", "FIELD_PORT": str(free_port())}
    done = subprocess.run([str(ROOT / "bench" / "field_check.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=COMMAND_GUARD_SECONDS * 3)
    assert done.returncode == 0, done.stderr
    constraints = (tmp_path / "field" / "constrained" / "constraints.txt").read_text()
    assert "CapEff:\t0000000000000000" in constraints and "NoNewPrivs:\t1" in constraints
    assert "pid 1\n" in constraints and "root filesystem: read-only" in constraints
    for mode in ("constrained", "unconstrained"):
        document = json.loads((tmp_path / "field" / mode / "check.json").read_text())
        jsonschema.validate(document, SCHEMA)
        assert "nvidia_gpu_info{" in (tmp_path / "field" / mode / "metrics.prom").read_text()
        assert "VmRSS" in (tmp_path / "field" / mode / "rss.txt").read_text()
    summary = (tmp_path / "field" / "summary.md").read_text()
    assert "| pid_namespace | ok | **degraded**" in summary, "the fake's pids are no processes of the namespace"
    assert "| nvidia_gpu_sm_active_ratio |" in summary and "| 0 | processes | 4242 |" in summary
    packed = subprocess.run(["tar", "-tzf", str(tmp_path / "field.tar.gz")], capture_output=True, text=True).stdout
    assert {"field/summary.md", "field/constrained/check.json", "field/unconstrained/nvml_pids.json"} <= set(
        packed.split())


def test_id_forms():
    assert id_form("GPU-7c2e4f10-0000-4000-8000-000000000000") == "GPU-<uuid>"
    assert id_form("MIG-aaaa") == "MIG-<uuid>"
    assert id_form("GPU-7c2e4f10::3") == "GPU-<uuid>::<replica>"
    assert id_form("MIG-GPU-7c2e4f10-0000/7/0") == "MIG-GPU-<uuid>/<gi>/<ci>"
    assert id_form("nvidia0") == "nvidia<minor>" and id_form("nvidia1/vgpu3") == "nvidia<minor>/vgpu<n>"
    assert id_form("2") == "<index>" and id_form("fpga0") == "unknown form"


# -- API server ----------------------------------------------------------------------------------

#: The ResourceSlice watch needs the kubelet: the tests that see its row give them a fake one.
API = ("--no-kubelet.enabled", "--path.procfs=", "--kubernetes.enabled", "--kubernetes.node-name=node-a")


def api_args(api: FakeKubeApi, *extra: str, kubelet: Any = None) -> tuple[str, ...]:
    config = (f"--kubernetes.kubeconfig={api.kubeconfig_path}", *extra)
    if kubelet is None:
        return (*API, *config)
    return (*API[1:], f"--kubelet.pod-resources-socket={kubelet.socket_path}", *config)


async def test_api_server_rows_when_everything_is_allowed(fake_nvml, fake_kube_api):
    report = await check(*api_args(fake_kube_api, "--kubernetes.dra-drivers="))
    got = rows(report)
    assert got["api.config"].status == OK and fake_kube_api.url in got["api.config"].seen
    assert got["api.version"].status == OK and "v1.34.1-fake" in got["api.version"].seen
    assert "system:serviceaccount:kube-gpu-exporter:kube-gpu-exporter" in got["api.version"].seen
    assert [got[f"api.access.{a.resource}"].status for a in ACCESS] == [OK, OK, OK]
    assert "api.access.resourceslices" not in got, "no DRA driver, no ResourceSlice watch"
    asked = {(r["resource"], r["verb"]) for r in fake_kube_api.access_reviews}
    assert asked == {(a.resource, v) for a in ACCESS for v in a.verbs}
    assert all(method == "GET" or "review" in path for method, path in fake_kube_api.requests), "nothing written"
    assert report.exit_code == 0


@pytest.mark.parametrize(("resource", "verbs", "status", "exit_code"), [
    ("replicasets", (), DEGRADED, 0), ("jobs", ("get",), DEGRADED, 0), ("resourceslices", ("watch",), DEGRADED, 0),
    ("pods", ("watch",), FAILED, 1),
])
async def test_api_server_forbidding_one_resource(fake_nvml, fake_kube_api, fake_kubelet, resource, verbs, status,
                                                  exit_code):
    fake_kube_api.deny(resource, *verbs)
    report = await check(*api_args(fake_kube_api, kubelet=fake_kubelet))
    got = rows(report)
    row = got[f"api.access.{resource}"]
    assert row.status == status and "denied" in row.seen
    assert f'resources: ["{resource}"]' in row.fix and "ClusterRole kube-gpu-exporter" in row.fix
    assert [c.status for i, c in got.items() if i.startswith("api.access.") and i != row.id] == [OK] * 3
    assert report.exit_code == exit_code


async def test_api_server_down_fails_the_version_and_skips_the_rest(fake_nvml, fake_kube_api):
    fake_kube_api.set_down(True)
    report = await check(*api_args(fake_kube_api))
    got = rows(report)
    assert got["api.config"].status == OK
    assert got["api.version"].status == FAILED and "NetworkPolicy" in got["api.version"].fix
    assert got["api.access.pods"].status == SKIPPED
    assert report.exit_code == 1


async def test_api_server_refusing_the_credentials(fake_nvml, tmp_path):
    api = FakeKubeApi(token="right").start()
    try:
        api.write_kubeconfig(tmp_path / "kubeconfig", token="wrong")
        row = rows(await check(*api_args(api)))["api.version"]
    finally:
        api.stop()
    assert row.status == FAILED and "401" in row.seen


async def test_api_server_in_cluster_with_the_service_account(fake_nvml, tmp_path, monkeypatch):
    api = FakeKubeApi(token="sa-token", tls_dir=tmp_path / "tls").start()
    try:
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text("sa-token\n")
        (account / "namespace").write_text("kube-gpu-exporter")
        shutil.copy(api.ca_cert_path, account / "ca.crt")
        monkeypatch.setattr(api_client, "SERVICE_ACCOUNT_DIR", account)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        got = rows(await check(*API))
    finally:
        api.stop()
    assert got["api.config"].status == OK and "in-cluster" in got["api.config"].seen
    assert got["api.version"].status == OK
    assert set(api.authorizations) == {"Bearer sa-token"}


async def test_api_server_without_configuration_fails(fake_nvml, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    got = rows(await check(*API))
    assert got["api.config"].status == FAILED and "--kubernetes.kubeconfig" in got["api.config"].fix


def test_in_cluster_configuration_brackets_an_ipv6_host(tmp_path):
    (tmp_path / "token").write_text("t")
    api = FakeKubeApi(tls_dir=tmp_path / "tls")  # only for its CA file: not started
    shutil.copy(api.ca_cert_path, tmp_path / "ca.crt")
    target = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}, str(tmp_path))
    assert target.url == "https://[fd00:10:96::1]:443"
    assert asyncio.run(target.credentials.headers()) == {"Authorization": "Bearer t"}


def test_the_shipped_cluster_role_grants_everything_the_check_asks_for():
    """daemonset.yaml and the check agree on what the agent needs: a shipped DaemonSet passes."""
    role = next(d for d in yaml.safe_load_all((ROOT / "daemonset.yaml").read_text())
                if d and d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    for access in (*ACCESS, SLICES):
        for verb in access.verbs:
            assert (access.group, access.resource, verb) in granted, access


# -- Alertmanager --------------------------------------------------------------------------------


@pytest.mark.integration
async def test_alertmanager_reachable_names_its_version(fake_nvml, alertmanager):  # noqa: F811
    am = alertmanager()
    row = rows(await check(*NVML_ONLY, f"--alertmanager.url={am.url}", "--kubernetes.node-name=n"))["alertmanager.0"]
    assert row.status == OK and "API v2, Alertmanager 0." in row.seen


async def test_alertmanager_down_fails(fake_nvml):
    report = await check(*NVML_ONLY, f"--alertmanager.url=http://127.0.0.1:{free_port()}", "--kubernetes.node-name=n",
                         "--alertmanager.timeout=2")
    row = rows(report)["alertmanager.0"]
    assert row.status == FAILED and "unreachable" in row.seen and "NetworkPolicy" in row.fix
    assert report.exit_code == 1


@pytest.mark.parametrize(("answers", "seen"), [({"v2": 401}, "credentials are refused"),
                                               ({"v2": 404, "v1": 200}, "API v1 only"),
                                               ({"v2": 404, "v1": 404}, "answered HTTP 404")])
async def test_alertmanager_that_is_not_the_right_one(fake_nvml, answers, seen):
    app = web.Application()
    for version, status in answers.items():
        async def answer(request: web.Request, status: int = status) -> web.Response:
            return web.json_response({}, status=status)

        app.router.add_get(f"/api/{version}/status", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        row = rows(await check(*NVML_ONLY, f"--alertmanager.url=http://127.0.0.1:{port}",
                               "--kubernetes.node-name=n"))["alertmanager.0"]
    finally:
        await runner.cleanup()
    assert row.status == FAILED and seen in row.seen


# -- web config ----------------------------------------------------------------------------------

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def web_config(tmp_path: Path, *, before: datetime.datetime, after: datetime.datetime, ca: bool = False):
    """A web config serving a self-signed certificate valid from ``before`` to ``after``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-node-1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(before).not_valid_after(after)
            .sign(key, hashes.SHA256()))
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    tls = {"cert_file": "tls.crt", "key_file": "tls.key"}
    if ca:
        tls |= {"client_ca_file": "tls.crt", "client_auth_type": "RequireAndVerifyClientCert"}
    (tmp_path / "web.yml").write_text(yaml.safe_dump({"tls_server_config": tls}))
    return parse_config([f"--web.config.file={tmp_path / 'web.yml'}"], {})


@pytest.mark.parametrize(("before", "after", "status", "seen"), [
    (NOW - 10 * DAY, NOW + 80 * DAY, OK, "80 days left"),
    (NOW - 80 * DAY, NOW + 10 * DAY, DEGRADED, "expires in 10 days"),  # cert-manager renews at 30 days left
    (NOW - 16 * 3600 * datetime.timedelta(seconds=1), NOW + 8 * 3600 * datetime.timedelta(seconds=1), OK,
     "8 hours left"),  # a one-day certificate with a third of its life left
    (NOW - 90 * DAY, NOW - DAY, FAILED, "expired"),
    (NOW + DAY, NOW + 90 * DAY, FAILED, "not valid yet"),
])
def test_the_serving_certificate_expiry(tmp_path, before, after, status, seen):
    got = {c.id: c for c in check_web(web_config(tmp_path, before=before, after=after), NOW)}
    assert got["web.config"].status == OK and "TLS 1.2+" in got["web.config"].seen
    assert got["web.certificate"].status == status and seen in got["web.certificate"].seen


def test_the_client_ca_has_its_own_row(tmp_path):
    got = {c.id: c for c in check_web(web_config(tmp_path, before=NOW - 10 * DAY, after=NOW + DAY, ca=True), NOW)}
    assert "client certificates required" in got["web.config"].seen
    assert got["web.client_ca"].status == DEGRADED


def test_no_web_config_is_skipped():
    assert [c.status for c in check_web(parse_config([], {}))] == [SKIPPED]


# -- the command -----------------------------------------------------------------------------------


async def test_simulated_node_rows_are_marked_and_ok():
    report = await check("--simulate", "--kubernetes.enabled")
    got = rows(report)
    assert report.simulated and report.node == "gpu-node-h100-01" and report.exit_code == 0
    assert {c.status for c in report.checks} <= {OK, SKIPPED}
    simulated = {i for i, c in got.items() if c.simulated}
    assert {"nvml", "gpu.0", "gpu.2.mig", "gpu.0.profiling", "pid_namespace", "kubelet.list", "api"} <= simulated
    assert not got["web.config"].simulated and not got["alertmanager"].simulated
    assert "3g.40gb (GI 2, CI 0)" in got["gpu.2.mig"].seen
    text = output.text(report)
    assert "[simulated] " in text and "simulated node (--simulate)" in text
    valid_json(report)


@pytest.mark.integration
def test_text_has_one_line_per_check_and_the_cause_and_fix_under_what_is_not_ok(fake_nvml):
    fake_nvml.update_gpu(0, fail={"gpm_sample": 4})
    done = command(*NVML_ONLY, env=fake_nvml.env)
    lines = done.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if "gpu 0 profiling" in line)
    assert lines[row].split()[0] == DEGRADED
    assert lines[row + 1].strip().startswith("cause: ") and lines[row + 2].strip().startswith("fix: ")
    ok = next(i for i, line in enumerate(lines) if "gpu 1 profiling" in line)
    assert lines[ok].split()[0] == OK and not lines[ok + 1].strip().startswith("cause")
    assert lines[-1].endswith("exit 0 (everything required works)") and done.returncode == 0


@pytest.mark.integration
def test_exit_codes(fake_nvml):
    assert command("--simulate", env=fake_nvml.env).returncode == 0
    assert command("--collector.interval=-1", env=fake_nvml.env).returncode == 2
    assert command("--output=yaml", env=fake_nvml.env).returncode == 2
    assert command("--no-such-flag", env=fake_nvml.env).returncode == 2
    helped = command("--help", env=fake_nvml.env)
    assert helped.returncode == 0 and "--output" in helped.stdout and "--path.procfs" in helped.stdout


@pytest.mark.integration
def test_json_output_validates_against_the_schema(fake_nvml, kubelet_socket_path):
    fake_nvml.update_gpu(1, lost=1)
    done = command("--path.procfs=", f"--kubelet.pod-resources-socket={kubelet_socket_path}", "--output=json",
                   env=fake_nvml.env)
    document = json.loads(done.stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["exit_code"] == done.returncode == 1 and document["status"] == FAILED
    assert document["counts"][FAILED] == sum(c["status"] == FAILED for c in document["checks"]) >= 2


def test_the_schema_refuses_what_it_should():
    good = {"version": "0", "node": "", "time": "2026-01-01T00:00:00Z", "seconds": 0, "simulated": False,
            "flags": {"from": "command line", "args": []}, "status": OK, "exit_code": 0,
            "counts": dict.fromkeys((OK, DEGRADED, FAILED, SKIPPED), 0), "checks": []}
    jsonschema.validate(good, SCHEMA)
    for bad in ({**good, "status": "fine"}, {**good, "exit_code": 2},
                {**good, "checks": [{"id": "x", "status": OK}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


def test_the_schema_names_the_query_groups_the_agent_reads():
    from exporter.sources.nvml.cost import GROUPS

    assert SCHEMA["$defs"]["group"]["properties"]["name"]["enum"] == list(GROUPS)


async def test_a_variable_no_flag_reads_is_degraded(fake_nvml):
    report = await check(*NVML_ONLY, environ={"KUBE_GPU_EXPORTER_COLLECTOR_INTERVALL": "5"})
    row = rows(report)["config"]
    assert row.status == DEGRADED and "KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL?" in row.seen
    assert rows(await check(*NVML_ONLY))["config"].status == OK


def test_a_not_ok_row_needs_its_cause_and_fix():
    with pytest.raises(ValueError):
        Check("x", "x", DEGRADED, "seen")


def fake_process(proc: Path, pid: int, cmdline: list[str], mount_namespace: str = "mnt:[1]") -> None:
    (proc / str(pid) / "ns").mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
    (proc / str(pid) / "ns" / "mnt").symlink_to(mount_namespace)


AGENT = ["/opt/kube-gpu-exporter/bin/python", "/opt/kube-gpu-exporter/bin/kube-gpu-exporter"]


@pytest.mark.parametrize(("cmdline", "args"), [
    ([*AGENT, "--path.procfs=/host/proc", "--kubernetes.enabled", "--path.procfs", ""],
     (["--path.procfs=/host/proc", "--kubernetes.enabled", "--path.procfs", ""], 1)),
    (["kube-gpu-exporter"], ([], 1)),
    (["python3", "-m", "exporter", "--simulate"], (["--simulate"], 1)),
    (["kube-gpu-exporter", "check", "--output=json"], None),  # the check itself as pid 1
    (["/sbin/init", "splash"], None),
])
def test_the_running_agents_flags_come_from_pid_1(tmp_path, cmdline, args):
    fake_process(tmp_path, 1, cmdline)
    (tmp_path / "self").symlink_to("1")
    assert running_agent_args(str(tmp_path)) == args


def test_under_host_pid_the_agent_is_the_one_in_this_mount_namespace(tmp_path):
    """hostPID: true: pid 1 is the node's init; the agent of this container shares its mounts."""
    fake_process(tmp_path, 1, ["/sbin/init"], "mnt:[1]")
    fake_process(tmp_path, 300, [*AGENT, "--once"], "mnt:[2]")  # an agent in another container
    fake_process(tmp_path, 4000, [*AGENT, "--path.procfs=/host/proc"], "mnt:[3]")
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "ns").mkdir()
    (tmp_path / "self" / "ns" / "mnt").symlink_to("mnt:[3]")
    assert running_agent_args(str(tmp_path)) == (["--path.procfs=/host/proc"], 4000)


@pytest.mark.integration
def test_without_flags_in_the_agents_container_it_checks_the_running_configuration(fake_nvml):
    """The agent is pid 1 of a pid namespace (as in its container); the check entered into that
    namespace with no flag takes the agent's flags. Needs root, unshare and nsenter (util-linux)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare and nsenter")
    agent = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m",
                              "exporter", "--simulate", "--no-kubelet.enabled",
                              f"--web.listen-address=127.0.0.1:{free_port()}"],
                             cwd=ROOT, env=fake_nvml.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = ""
    try:
        children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children")
        pid = wait_until(lambda: children.read_text().split(), message="the agent to start")[0]
        enter = ["nsenter", "--target", pid, "--pid", "--mount", f"--wd={ROOT}"]  # this tree's exporter
        done = subprocess.run([*enter, sys.executable, "-m", "exporter", "check", "--output=json"], env=fake_nvml.env,
                              capture_output=True, text=True, timeout=COMMAND_GUARD_SECONDS)
    finally:
        if pid:
            os.kill(int(pid), signal.SIGTERM)  # the agent; unshare then exits with it
        stop_process(agent)
    document = json.loads(done.stdout)
    assert document["flags"]["from"] == "running agent" and document["flags"]["pid"] == 1, done.stderr
    assert document["simulated"] is True and "--no-kubelet.enabled" in document["flags"]["args"]
    assert {c["id"]: c["status"] for c in document["checks"]}["kubelet"] == SKIPPED
