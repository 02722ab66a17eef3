"""End to end: the CLI on the fake NVML, with GPUs held through DRA claims and device plugins at once.

The kubelet (gRPC fake) lists both kinds of allocation; the API server (aiohttp fake) serves the
pods and the DRA driver's ResourceSlice, which names each claim device's uuid.
"""

from __future__ import annotations

import time

import pytest
from e2e import GIB, GPU, MIG_1G, MIG_3G, NODE, AgentProcess, FakePod, samples, value, write_procfs
from fakekubeapi import make_pod, make_resource_slice
from fakekubelet import FakeKubelet
from fakenvml import h100

pytestmark = pytest.mark.integration  # the agent as a process, every test

DRIVER = "gpu.nvidia.com"
GPU_3 = "GPU-7c2e4f10-0000-4000-8000-000000000003"
MIG_1G_NAME = "gpu-2-mig-19-6-1"  # NVIDIA's name of the A100's 1g.5gb instance (gpu-<minor>-mig-...)

# (pod, claim or device-plugin resource, DRA device or device-plugin id)
DEVICE_PLUGIN = (
    FakePod("ml", "train-0", "11111111-0000-4000-8000-000000000001", ("StatefulSet", "train"), "trainer",
            "c0ffee01" * 8, "nvidia.com/gpu", (GPU[0],), (4242,)),
    FakePod("ml", "embed-0", "11111111-0000-4000-8000-000000000002", ("StatefulSet", "embed"), "server",
            "c0ffee02" * 8, "nvidia.com/mig-3g.20gb", (MIG_3G,), (7002,)),
)
# For these, ``resource`` is the claim name and ``device_ids`` the DRA device names.
CLAIMS = (
    FakePod("ml", "dra-train-0", "22222222-0000-4000-8000-000000000001", ("StatefulSet", "dra-train"), "trainer",
            "c0ffee03" * 8, "train-gpu", ("gpu-3",), (4245,)),
    FakePod("ml", "dra-eval-0", "22222222-0000-4000-8000-000000000002", ("StatefulSet", "dra-eval"), "eval",
            "c0ffee04" * 8, "eval-mig", (MIG_1G_NAME,), (7001,)),
    # one claim shared by two notebooks
    FakePod("research", "nb-a", "22222222-0000-4000-8000-000000000003", ("StatefulSet", "nb-a"), "jupyter",
            "c0ffee05" * 8, "shared-gpu", ("gpu-1",), (5001,)),
    FakePod("research", "nb-b", "22222222-0000-4000-8000-000000000004", ("StatefulSet", "nb-b"), "jupyter",
            "c0ffee06" * 8, "shared-gpu", ("gpu-1",), (5002,)),
)


def kubelet_pods() -> list[dict]:
    device_plugin = [
        {"namespace": p.namespace, "name": p.name,
         "containers": [{"name": p.container, "devices": [{"resource": p.resource, "ids": list(p.device_ids)}]}]}
        for p in DEVICE_PLUGIN
    ]
    claims = [
        {"namespace": p.namespace, "name": p.name, "containers": [{"name": p.container, "claims": [
            {"name": p.resource, "devices": [{"driver": DRIVER, "pool": NODE, "device": d} for d in p.device_ids]}]}]}
        for p in CLAIMS
    ]
    odd = {"namespace": "ml", "name": "odd", "containers": [{"name": "c", "claims": [{"name": "odd", "devices": [
        {"driver": DRIVER, "pool": NODE, "device": "gpu-9"},                # in no slice: unknown
        {"driver": "dra.net.example.com", "pool": NODE, "device": "eth1"},  # another driver: ignored
    ]}]}]}
    return device_plugin + claims + [odd]


@pytest.fixture
def node(fake_nvml, fake_kube_api, tmp_path):
    """The fake node plus a fourth GPU; yields a function starting the CLI against it."""
    fake_nvml.gpus.append(h100(3, processes=[(4245, 20 * GIB, 75)]))
    fake_nvml.update_gpu(1, processes=[(5001, 4 * GIB, 30), (5002, 8 * GIB, 50)])
    kubelet = FakeKubelet().start()
    kubelet.set_pods(kubelet_pods())
    kubelet.set_allocatable({"nvidia.com/gpu": [GPU[0]], "nvidia.com/mig-3g.20gb": [MIG_3G]})
    for p in DEVICE_PLUGIN + CLAIMS:
        fake_kube_api.add_pod(make_pod(p.namespace, p.name, uid=p.uid, node=NODE, owner=p.owner,
                                       containers={p.container: p.container_id}))
    fake_kube_api.add_object(make_resource_slice(NODE, {"gpu-1": GPU[1], "gpu-3": GPU_3, MIG_1G_NAME: MIG_1G}))
    fake_kube_api.add_object(make_resource_slice("node-b", {"gpu-9": "GPU-of-another-node"}))
    procfs = write_procfs(tmp_path / "proc", DEVICE_PLUGIN + CLAIMS)
    agents: list[AgentProcess] = []

    def start(*extra: str) -> AgentProcess:
        agent = AgentProcess(["--kubelet.pod-resources-socket", kubelet.socket_path, "--path.procfs", str(procfs),
                              "--collector.timeout", "0.3", "--kubernetes.enabled", "--kubernetes.node-name", NODE,
                              "--kubernetes.kubeconfig", str(fake_kube_api.kubeconfig_path), *extra], fake_nvml.env)
        agents.append(agent)
        return agent

    start.api = fake_kube_api
    yield start
    for agent in agents:
        agent.stop()
    kubelet.close()


def holders(body: str, **match: str) -> dict[tuple[str, str], dict[str, str]]:
    """allocation_info labels by (pod, uuid / gi)."""
    return {(labels["pod"], labels["uuid"] + "/" + labels.get("gpu_instance_id", "")): labels
            for labels, _ in samples(body, "nvidia_gpu_allocation_info", **match)}


def settled(body: str) -> bool:
    return (value(body, "kube_gpu_exporter_collector_success", collector="resourceslices") == 1
            and len(samples(body, "nvidia_gpu_allocation_info", workload_kind="StatefulSet")) == 6)


def test_dra_and_device_plugin_allocations_side_by_side(node):
    body = node().wait_for(settled, what="pods and slices")
    by_pod = {labels["pod"]: labels for labels, _ in samples(body, "nvidia_gpu_allocation_info")}
    assert set(by_pod) == {"train-0", "embed-0", "dra-train-0", "dra-eval-0", "nb-a", "nb-b"}

    # A DRA-held GPU: the same series as a device-plugin one, plus the claim.
    dra, dp = by_pod["dra-train-0"], by_pod["train-0"]
    assert {k: v for k, v in dra.items() if k in ("gpu", "uuid", "shared", "workload_kind", "workload")} == {
        "gpu": "3", "uuid": GPU_3, "shared": "false", "workload_kind": "StatefulSet", "workload": "dra-train"}
    assert (dra["resource"], dra["claim_namespace"], dra["claim_name"], dra["driver"], dra["pool"], dra["device"]) == (
        DRIVER, "ml", "train-gpu", DRIVER, NODE, "gpu-3")
    assert (dp["resource"], dp["claim_name"], dp["driver"], dp["device"]) == ("nvidia.com/gpu", "", "", "")
    for pod, gpu in (("dra-train-0", "3"), ("train-0", "0")):  # sole holder: the GPU's own readings
        assert value(body, "nvidia_gpu_container_memory_used_bytes", pod=pod) == value(
            body, "nvidia_gpu_memory_used_bytes", gpu=gpu)
        assert value(body, "nvidia_gpu_container_utilization_ratio", pod=pod) == value(
            body, "nvidia_gpu_utilization_ratio", gpu=gpu)

    # A DRA-held MIG instance, like the device-plugin one next to it.
    for pod, gi in (("dra-eval-0", "7"), ("embed-0", "2")):
        assert (by_pod[pod]["gpu"], by_pod[pod]["gpu_instance_id"], by_pod[pod]["shared"]) == ("2", gi, "false")
        assert value(body, "nvidia_gpu_container_memory_used_bytes", pod=pod) == value(
            body, "nvidia_gpu_mig_memory_used_bytes", gpu="2", gpu_instance_id=gi)

    # One claim, two pods: both hold GPU 1, shared, each with its own processes' memory.
    for pod, memory in (("nb-a", 4 * GIB), ("nb-b", 8 * GIB)):
        assert (by_pod[pod]["uuid"], by_pod[pod]["shared"], by_pod[pod]["claim_name"]) == (GPU[1], "true", "shared-gpu")
        assert value(body, "nvidia_gpu_container_memory_used_bytes", pod=pod) == memory

    # The device in no slice is counted as unknown; the other driver's device is not seen at all.
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="unknown_device_id") >= 1
    assert value(body, "nvidia_gpu_allocated_devices", resource=DRIVER) == 4  # gpu-1, gpu-3, the MIG, gpu-9
    assert value(body, "nvidia_gpu_allocatable_devices", resource=DRIVER) == 3  # this node's slice
    assert not samples(body, "kube_gpu_exporter_unresolved_claim_devices")


def test_api_server_down_keeps_dra_devices_for_the_whole_outage(node):
    agent = node("--attribution.grace-period", "1")
    body = agent.wait_for(settled, what="pods and slices")
    allocations = holders(body)

    node.api.set_down(True)
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_collector_success", collector="resourceslices") == 0,
                          what="slice watch down")
    # Far past the grace period (the kubelet's): the slices' devices still name every claim's GPU
    # or MIG instance, so every holder stays, unchanged.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        body = agent.after_cycles(1)
        assert holders(body) == allocations
        assert not samples(body, "kube_gpu_exporter_unresolved_claim_devices")
        assert value(body, "kube_gpu_exporter_collector_success", collector="resourceslices") == 0

    node.api.set_down(False)
    body = agent.wait_for(lambda b: settled(b) and not samples(b, "kube_gpu_exporter_unresolved_claim_devices"),
                          timeout=30, what="recovery")
    assert holders(body) == allocations
    stderr = agent.stop()
    assert "ResourceSlice watch lost; keeping the last DRA devices until it answers again" in stderr


def test_an_agent_that_starts_without_the_api_server_reports_the_unnamed_mig_claim_then_names_it(node):
    node.api.set_down(True)
    agent = node()
    body = agent.wait_for(lambda b: samples(b, "kube_gpu_exporter_unresolved_claim_devices"), what="unresolved")
    # Whole GPUs are still named by NVIDIA's gpu-<minor>; the MIG instance cannot be, and says so.
    assert {k[0] for k in holders(body)} == {"train-0", "embed-0", "dra-train-0", "nb-a", "nb-b"}
    assert value(body, "kube_gpu_exporter_unresolved_claim_devices",
                 claim_namespace="ml", claim_name="eval-mig", driver=DRIVER) == 1
    assert len(samples(body, "kube_gpu_exporter_unresolved_claim_devices")) == 1

    node.api.set_down(False)
    body = agent.wait_for(lambda b: settled(b) and not samples(b, "kube_gpu_exporter_unresolved_claim_devices"),
                          timeout=30, what="recovery")
    assert "dra-eval-0" in {k[0] for k in holders(body)}
    assert "claim ml/eval-mig" in agent.stop()
