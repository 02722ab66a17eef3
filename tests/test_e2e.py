"""End to end: the real CLI on the fake NVML library, the fake kubelet and the fake API server.

``UPDATE_GOLDEN=1`` (``make golden``) rewrites tests/fixtures/e2e-output.txt from this run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e import (GIB, GPU, MIG_1G, MIG_3G, NODE, OWNERS, PODS, AgentProcess, FakePod, kubelet_pods, samples, value,
                 write_procfs)
from fakekubeapi import make_pod
from fakekubelet import FakeKubelet

from exporter import catalog

pytestmark = pytest.mark.integration  # the agent as a process, every test

GOLDEN = Path(__file__).parent / "fixtures" / "e2e-output.txt"
# Values that change from run to run; their label sets are still compared.
VOLATILE = (
    "kube_gpu_exporter_cycle_duration_seconds",
    "kube_gpu_exporter_collector_duration_seconds",
    "kube_gpu_exporter_collector_last_success_timestamp_seconds",
    "kube_gpu_exporter_last_cycle_timestamp_seconds",
    "kube_gpu_exporter_gpu_snapshot_age_seconds",
    "kube_gpu_exporter_collector_errors_total",
    "kube_gpu_exporter_nvml_query_duration_seconds",
)


@pytest.fixture
def cluster(fake_nvml, fake_kube_api, tmp_path):
    """The fixed fake node, its kubelet, API server and procfs; yields a function starting the CLI."""
    fake_nvml.update_gpu(1, processes=[(5001, 4 * GIB, 30), (5002, 8 * GIB, 50)])
    kubelet = FakeKubelet().start()
    kubelet.set_pods(kubelet_pods(PODS) + [
        {"namespace": "ml", "name": "odd", "containers": [
            {"name": "c", "devices": [{"resource": "nvidia.com/gpu", "ids": ["weird-device-0"]}]}]},
    ])
    kubelet.set_allocatable({
        "nvidia.com/gpu": [GPU[0]],
        "nvidia.com/gpu.shared": [f"{GPU[1]}::{i}" for i in range(4)],
        "nvidia.com/mig-1g.5gb": [MIG_1G],
        "nvidia.com/mig-3g.20gb": [MIG_3G],
    })
    for (namespace, kind, name), owner in OWNERS.items():
        if kind == "Job":
            fake_kube_api.add_job(namespace, name, owner=owner)
        else:
            fake_kube_api.add_replicaset(namespace, name, owner=owner)
    for p in PODS:
        fake_kube_api.add_pod(make_pod(p.namespace, p.name, uid=p.uid, node=NODE, owner=p.owner, labels=p.labels,
                                       containers={p.container: p.container_id}))
    fake_kube_api.add_pod(make_pod("ml", "elsewhere", node="node-b", owner=("Job", "other")))
    procfs = write_procfs(tmp_path / "proc", PODS)
    agents: list[AgentProcess] = []

    def start(*extra: str, kubernetes: bool = True, env: dict[str, str] | None = None) -> AgentProcess:
        args = ["--kubelet.pod-resources-socket", kubelet.socket_path, "--path.procfs", str(procfs),
                "--collector.timeout", "0.3", *extra]
        if kubernetes:
            args += ["--kubernetes.enabled", "--kubernetes.node-name", NODE,
                     "--kubernetes.kubeconfig", str(fake_kube_api.kubeconfig_path),
                     "--kubernetes.pod-labels", "team"]
        agent = AgentProcess(args, env or fake_nvml.env)
        agents.append(agent)
        return agent

    start.nvml, start.kubelet, start.api = fake_nvml, kubelet, fake_kube_api
    yield start
    for agent in agents:
        agent.stop()
    kubelet.close()


def settled(body: str) -> bool:
    """The API server's workloads have arrived."""
    return (
        value(body, "kube_gpu_exporter_collector_success", collector="kubernetes") == 1
        and len(samples(body, "nvidia_gpu_allocation_info", workload_kind="CronJob")) == 1
        and len(samples(body, "nvidia_gpu_allocation_info", workload_kind="Deployment")) == 2
    )


def normalise(body: str) -> str:
    lines = []
    for line in body.splitlines():
        if line.startswith(("process_", "python_", "# HELP process_", "# TYPE process_", "# HELP python_",
                            "# TYPE python_")):
            continue
        if line.startswith(VOLATILE):
            line = re.sub(r" \S+$", " <volatile>", line)
        line = re.sub(r'python_version="[^"]*"', 'python_version="<python>"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_golden_exposition_and_promtool(cluster, tmp_path):
    agent = cluster()
    agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="0") == 1, what="GPU 0 watched for XIDs")
    cluster.nvml.add_xid(0, 79)
    body = agent.wait_for(
        lambda b: settled(b) and value(b, "nvidia_gpu_xid_errors_total", gpu="0", xid="79") == 1,
        what="workloads and XID",
    )
    got = normalise(body)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "exposition differs from the golden file: review, then `make golden`"

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    names = {f.name for f in __import__("prometheus_client.parser").parser.text_string_to_metric_families(body)}
    ours = {re.sub(r"_total$", "", s.name) for s in catalog.all_metrics()}
    undocumented = {n for n in names if not n.startswith(("process_", "python_"))} - ours
    assert not undocumented, f"metrics missing from the catalog (and docs/metrics.md): {undocumented}"


def test_labels_in_every_allocation_mode(cluster):
    agent = cluster()
    body = agent.wait_for(settled, what="workloads")

    # Device series carry the device's identity only, whoever holds it.
    for labels, _ in samples(body, ""):
        if not labels["__name__"].startswith(("nvidia_gpu_allocation", "nvidia_gpu_container")):
            assert not {"namespace", "pod", "container"} & set(labels), labels

    # Exclusive GPU: the holder gets the device's own readings; workload through Job -> CronJob.
    assert value(body, "nvidia_gpu_utilization_ratio", gpu="0") == pytest.approx(0.87)
    assert value(body, "nvidia_gpu_container_utilization_ratio", gpu="0", namespace="ml", pod="train-0",
                 container="trainer") == pytest.approx(0.87)
    (labels, _), = samples(body, "nvidia_gpu_allocation_info", uuid=GPU[0])
    assert (labels["workload_kind"], labels["workload"], labels["shared"]) == ("CronJob", "train", "false")
    assert labels["label_team"] == "vision" and labels["resource"] == "nvidia.com/gpu"

    # Time-sliced GPU: two holders, shared.
    holders = samples(body, "nvidia_gpu_allocation_info", uuid=GPU[1])
    assert {(l["pod"], l["workload"], l["shared"]) for l, _ in holders} == {
        ("nb-a-7d9f-x1", "nb-a", "true"), ("nb-b-5c4d-y2", "nb-b", "true")}
    # ... and its use split per container through cgroups and the API server's container ids.
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod="nb-a-7d9f-x1") == 4 * GIB
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod="nb-b-5c4d-y2") == 8 * GIB
    assert value(body, "nvidia_gpu_container_utilization_ratio", pod="nb-b-5c4d-y2") == pytest.approx(0.5)

    # MIG, mixed strategy: each instance has its holder, in the MIG-uuid and the legacy id form.
    assert value(body, "nvidia_gpu_container_memory_used_bytes", gpu_instance_id="7", pod="eval-0") == 2 * GIB
    assert value(body, "nvidia_gpu_container_memory_used_bytes", gpu_instance_id="2", pod="embed") == 6 * GIB
    (mig_labels, _), = samples(body, "nvidia_gpu_allocation_info", pod="embed")
    assert (mig_labels["gpu_instance_id"], mig_labels["workload_kind"], mig_labels["workload"]) == ("2", "Pod", "embed")
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod="eval-0", gpu_instance_id="7") == 2 * GIB

    # Counts per resource, and the unknown id counted, not fatal.
    assert value(body, "nvidia_gpu_allocatable_devices", resource="nvidia.com/gpu.shared") == 4
    assert value(body, "nvidia_gpu_allocated_devices", resource="nvidia.com/gpu.shared") == 2
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="unknown_device_id") >= 1
    assert "elsewhere" not in body  # another node's pod

    # MPS replicas, pods that end (gone within one cycle) and one that stays (labels unchanged).
    staying = sorted(str(sorted(labels.items())) for labels, _ in samples(body, "", pod="train-0"))
    kubelet = cluster.kubelet
    kubelet.set_pods(kubelet_pods(PODS[:1]) + [
        {"namespace": "ml", "name": "mps-0", "containers": [
            {"name": "a", "devices": [{"resource": "nvidia.com/gpu", "ids": [f"{GPU[1]}::2", f"{GPU[1]}::3"]}]}]},
    ])
    body = agent.after_cycles(2)
    assert len(samples(body, "nvidia_gpu_allocation_info")) == 2
    assert sorted(str(sorted(labels.items())) for labels, _ in samples(body, "", pod="train-0")) == staying
    (mps, _), = samples(body, "nvidia_gpu_allocation_info", uuid=GPU[1])
    assert (mps["pod"], mps["shared"]) == ("mps-0", "true")
    assert not samples(body, "nvidia_gpu_allocation_info", pod="eval-0")
    assert not samples(body, "nvidia_gpu_container_memory_used_bytes", pod="eval-0")
    assert value(body, "nvidia_gpu_mig_memory_used_bytes", gpu_instance_id="7") == 2 * GIB  # device stays

    kubelet.set_pods([{"namespace": "ml", "name": "big", "containers": [
        {"name": "t", "devices": [{"resource": "nvidia.com/gpu", "ids": [GPU[0], GPU[1]]}]}]}])
    body = agent.wait_for(lambda b: len(samples(b, "nvidia_gpu_allocation_info", pod="big")) == 2, what="2 GPUs")
    assert {labels["gpu"] for labels, _ in samples(body, "nvidia_gpu_allocation_info", pod="big")} == {"0", "1"}
    assert value(body, "nvidia_gpu_container_utilization_ratio", gpu="1", pod="big") == pytest.approx(
        value(body, "nvidia_gpu_utilization_ratio", gpu="1"))


def test_an_idle_holder_of_a_shared_gpu_reads_zero_until_a_gpu_process_cannot_be_placed(cluster):
    """Issue 17, items 5 and 7, on the running agent. A third notebook holds a replica of the
    time-sliced GPU 1 and runs nothing: usage 0, which the idle alerts need. Then NVML lists a
    process procfs does not show (pid 0: the agent in a pid namespace of its own): it is counted,
    the fix is named once, and the idle notebook is no longer reported idle (unknown is not idle)."""
    idle = FakePod("research", "nb-c-9e8d-z3", "66666666-0000-4000-8000-000000000001", None, "jupyter",
                   "c0ffee06" * 8, "nvidia.com/gpu.shared", (f"{GPU[1]}::2",))
    cluster.api.add_pod(make_pod(idle.namespace, idle.name, uid=idle.uid, node=NODE,
                                 containers={idle.container: idle.container_id}))
    cluster.kubelet.set_pods(kubelet_pods(PODS + (idle,)))
    agent = cluster()
    body = agent.wait_for(
        lambda b: settled(b) and value(b, "nvidia_gpu_container_utilization_ratio", pod=idle.name) == 0,
        what="the idle holder at 0")
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod=idle.name) == 0
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod="nb-a-7d9f-x1") == 4 * GIB
    assert value(body, "kube_gpu_exporter_collector_success", collector="procfs") == 1
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="procfs", kind="unresolved_pid") == 0
    assert value(body, "kube_gpu_exporter_unresolved_gpu_processes") == 0

    cluster.nvml.update_gpu(1, processes=[(5001, 4 * GIB, 30), (5002, 8 * GIB, 50), (0, GIB, 10)])
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_unresolved_gpu_processes") == 1,
                          what="the unresolved process counted")
    assert not samples(body, "nvidia_gpu_container_utilization_ratio", pod=idle.name)
    assert not samples(body, "nvidia_gpu_container_memory_used_bytes", pod=idle.name)
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod="nb-a-7d9f-x1") == 4 * GIB  # still placed
    assert value(body, "kube_gpu_exporter_collector_success", collector="procfs") == 0
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="procfs", kind="unresolved_pid") >= 1
    agent.after_cycles(2)
    assert agent.stderr().count("hostPID: true") == 1


def test_losing_kubelet_or_api_server_costs_only_attribution_after_a_grace_period(cluster):
    agent = cluster("--attribution.grace-period", "3")
    body = agent.wait_for(settled, what="workloads")
    device_series = len(samples(body, "nvidia_gpu_temperature_celsius"))
    allocations = samples(body, "nvidia_gpu_allocation_info")

    cluster.api.set_down(True)
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_collector_success", collector="kubernetes") == 0,
                          what="API down")
    assert samples(body, "nvidia_gpu_allocation_info") == allocations  # the workloads stay (all outage long)

    cluster.kubelet.stop()
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_collector_success", collector="kubelet") == 0,
                          what="kubelet down")
    # A kubelet restart of a few seconds resolves nothing: the allocations stay for the grace period ...
    assert samples(body, "nvidia_gpu_allocation_info") == allocations
    # ... then go, and the device series never depended on them.
    body = agent.wait_for(lambda b: not samples(b, "nvidia_gpu_allocation_info"), what="grace period over")
    assert len(samples(body, "nvidia_gpu_temperature_celsius")) == device_series
    assert all(v == 1 for _, v in samples(body, "nvidia_gpu_up"))
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="unavailable") >= 1
    assert agent.get("/readyz")[0] == 200

    cluster.kubelet.start()
    cluster.api.set_down(False)
    agent.wait_for(lambda b: value(b, "kube_gpu_exporter_collector_success", collector="kubelet") == 1
                   and value(b, "kube_gpu_exporter_collector_success", collector="kubernetes") == 1
                   and len(samples(b, "nvidia_gpu_allocation_info")) == len(PODS), timeout=30, what="recovery")
    stderr = agent.stop()
    assert "pod-resources API lost" in stderr and "pod-resources API answers again" in stderr


def test_a_lost_gpu_keeps_every_other_gpus_series(cluster):
    agent = cluster("--collector.profiling", kubernetes=False)
    # GPM profiling series come from the second cycle on (two samples): wait for them too.
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="2") == 1
                          and value(b, "nvidia_gpu_sm_active_ratio", gpu="0") is not None)
    before = {gpu: len([1 for line in body.splitlines() if f'gpu="{gpu}"' in line]) for gpu in "02"}

    cluster.nvml.add_xid(1, 79)
    agent.wait_for(lambda b: value(b, "nvidia_gpu_xid_errors_total", gpu="1", xid="79") == 1, what="XID 79")
    cluster.nvml.update_gpu(1, lost=1)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 0, what="GPU 1 down")
    # The XID that came before the loss stays visible while the GPU is down.
    assert value(body, "nvidia_gpu_xid_errors_total", gpu="1", xid="79") == 1
    after = {gpu: len([1 for line in body.splitlines() if f'gpu="{gpu}"' in line]) for gpu in "02"}
    assert after == before
    assert not samples(body, "nvidia_gpu_temperature_celsius", gpu="1")
    assert value(body, "kube_gpu_exporter_collector_success", collector="nvml") == 0
    assert agent.get("/readyz")[0] == 200  # the agent serves; the lost GPU is an alert, not unreadiness

    cluster.nvml.update_gpu(1, lost=None)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 1, what="GPU 1 back")
    assert value(body, "nvidia_gpu_temperature_celsius", gpu="1") == 52

    # SIGTERM: a clean exit (stop() kills it after 5 s), the XID thread blocked in nvmlEventSetWait included.
    stderr = agent.stop()
    assert agent.process.returncode == 0, stderr
    assert "shutting down" in stderr
    assert stderr.count("GPU 1 (" + GPU[1] + ") is down") == 1 and "is back" in stderr


def test_xid_events_increment_the_counter_per_code(cluster):
    agent = cluster(kubernetes=False)
    agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="0") == 1)
    cluster.nvml.add_xid(0, 79, 79, 13)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_xid_errors_total", gpu="0", xid="79") == 2, what="XID")
    assert value(body, "nvidia_gpu_xid_errors_total", gpu="0", xid="13") == 1
    assert value(body, "nvidia_gpu_xid_events_total", gpu="0", tier="reboot") == 2
    assert value(body, "nvidia_gpu_xid_events_total", gpu="0", tier="application") == 1
    # GPU 1 has had none: its tiers and the codes the alerts judge at 0, no other code's series.
    assert {labels["xid"]: v for labels, v in samples(body, "nvidia_gpu_xid_errors_total", gpu="1")} == {
        "48": 0, "64": 0, "74": 0, "95": 0}
    assert {v for _, v in samples(body, "nvidia_gpu_xid_events_total", gpu="1")} == {0}
    cluster.nvml.add_xid(1, 13)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_xid_errors_total", gpu="1", xid="13") == 1)
    assert value(body, "nvidia_gpu_xid_errors_total", gpu="0", xid="79") == 2  # a counter, not a gauge


def test_nvml_init_failure_is_503_on_readyz_then_recovers(cluster):
    cluster.nvml.set(init_error=1)
    agent = cluster(kubernetes=False)
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_nvml_up") == 0, what="nvml down")
    assert not samples(body, "nvidia_gpu_up")
    status, reason = agent.get("/readyz")
    assert status == 503 and "NVML is not initialised" in reason
    assert agent.get("/healthz")[0] == 200

    cluster.nvml.set(init_error=None)
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_nvml_up") == 1, timeout=20, what="nvml up")
    assert len(samples(body, "nvidia_gpu_up")) == 3
    assert agent.get("/readyz")[0] == 200
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="nvml", kind="init") >= 1


def test_a_hung_gpu_is_down_with_its_last_readings_for_a_bounded_time(cluster):
    # interval 1 s: the readings of a GPU whose reads hang are held for 3 intervals, then dropped.
    agent = cluster("--collector.timeout", "0.3", "--collector.interval", "1", kubernetes=False)
    agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 1)
    cluster.nvml.update_gpu(1, hang_seconds=60, temperature=70)
    try:
        body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_gpu_snapshot_stale") == 1, what="stale")
        # The hung GPU is down but keeps its last readings for now; the others are fresh.
        assert value(body, "nvidia_gpu_up", gpu="1") == 0
        assert value(body, "nvidia_gpu_up", gpu="0") == 1
        assert value(body, "nvidia_gpu_temperature_celsius", gpu="1") == 52
        # Then its readings go (an alert on them resolves), its identity stays; the agent is alive.
        body = agent.wait_for(lambda b: not samples(b, "nvidia_gpu_temperature_celsius", gpu="1"), what="dropped")
        assert value(body, "nvidia_gpu_up", gpu="1", uuid=GPU[1]) == 0
        assert samples(body, "nvidia_gpu_info", uuid=GPU[1])
        assert agent.get("/healthz")[0] == 200
    finally:
        cluster.nvml.update_gpu(1, hang_seconds=None)
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_gpu_snapshot_stale") == 0, what="fresh again")
    assert value(body, "nvidia_gpu_temperature_celsius", gpu="1") == 70


def test_once_with_kubernetes_shows_workloads(cluster):
    run = [sys.executable, "-m", "exporter", "--once", "--kubelet.pod-resources-socket", cluster.kubelet.socket_path,
           "--kubernetes.enabled", "--kubernetes.node-name", NODE,
           "--kubernetes.kubeconfig", str(cluster.api.kubeconfig_path)]
    result = subprocess.run(run, env=cluster.nvml.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (labels, _), = samples(result.stdout, "nvidia_gpu_allocation_info", uuid=GPU[0])
    assert (labels["workload_kind"], labels["workload"]) == ("CronJob", "train")


def test_a_gpu_failing_from_the_start_keeps_its_identity_and_a_failing_mig_gpu_its_holders(cluster):
    # GPU 0 answers its identity but is lost on its first reading; the MIG GPU 2 is lost after one.
    cluster.nvml.update_gpu(0, fail={"temperature": 15})  # NVML_ERROR_GPU_IS_LOST
    cluster.kubelet.set_pods(kubelet_pods(PODS))  # no pod with an unknown device id this time
    agent = cluster()
    body = agent.wait_for(settled, what="workloads")
    assert value(body, "nvidia_gpu_up", gpu="0", uuid=GPU[0]) == 0
    assert samples(body, "nvidia_gpu_info", uuid=GPU[0])

    cluster.nvml.update_gpu(2, lost=1)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="2") == 0, what="GPU 2 down")
    body = agent.after_cycles(2)
    # Its MIG instances and their holders stay: who was on the GPU is what the operator needs now.
    assert {l["pod"] for l, _ in samples(body, "nvidia_gpu_allocation_info", uuid=GPU[2])} == {"eval-0", "embed"}
    assert len(samples(body, "nvidia_gpu_mig_info", uuid=GPU[2])) == 2
    assert not samples(body, "nvidia_gpu_mig_memory_used_bytes", uuid=GPU[2])
    # ... and the kubelet is not blamed for ids of a GPU that is merely down.
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="unknown_device_id") == 0


def test_once_counts_an_xid_that_a_gpu_raises_during_its_first_read(cluster):
    """A failing GPU raises its XID while it is read: NVML records it only for a GPU registered
    for events before, and --once prints it only if it waits for the events of its reads."""
    cluster.nvml.update_gpu(0, xid_on={"temperature": 48})
    run = [sys.executable, "-m", "exporter", "--once", "--no-kubelet.enabled"]
    result = subprocess.run(run, env=cluster.nvml.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert value(result.stdout, "nvidia_gpu_xid_errors_total", gpu="0", xid="48") == 1
    assert "unregistered device" not in result.stderr


def test_once_prints_then_fails_clearly_without_nvml(cluster):
    run = [sys.executable, "-m", "exporter", "--once", "--no-kubelet.enabled"]
    result = subprocess.run(run, env=cluster.nvml.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'nvidia_gpu_temperature_celsius{gpu="0",uuid="' + GPU[0] + '"} 52.0' in result.stdout

    cluster.nvml.set(init_error=1)
    result = subprocess.run(run, env=cluster.nvml.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "NVML could not start" in result.stderr and "Driver Not Loaded" in result.stderr

    no_library = {k: v for k, v in cluster.nvml.env.items() if k != "LD_LIBRARY_PATH"}
    result = subprocess.run(run, env=no_library, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "NVML could not start" in result.stderr


def _groups(body: str) -> set[str]:
    """The collector groups of the catalog metrics in an exposition."""
    group_of = {re.sub(r"_total$", "", m.name): m.group for m in catalog.all_metrics()}
    families = __import__("prometheus_client.parser").parser.text_string_to_metric_families(body)
    return {group_of[f.name] for f in families if f.name in group_of and f.samples}


def test_the_collector_groups_on_the_fake_nvml_node(cluster):
    """The default flags give exactly the default groups; every group on gives every group, the
    per-link NVLink series and GPM included (the agent, not the backend fixture, decides)."""
    run = [sys.executable, "-m", "exporter", "--once", "--kubelet.pod-resources-socket", cluster.kubelet.socket_path]
    result = subprocess.run(run, env=cluster.nvml.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert _groups(result.stdout) == catalog.default_collectors()
    assert 'nvidia_gpu_nvlink_links_up{gpu="0",uuid="' + GPU[0] + '"} 18.0' in result.stdout

    agent = cluster(*(g.flag for g in catalog.switchable_groups()), kubernetes=False)
    body = agent.wait_for(lambda b: "nvidia_gpu_sm_active_ratio{" in b, what="GPM's second sample")
    assert _groups(body) == catalog.all_collectors()
    assert len(samples(body, "nvidia_gpu_nvlink_link_up", uuid=GPU[0])) == 18
