"""PodResourcesClient against a real grpc.aio pod-resources server (tests/fakekubelet.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from exporter.sources.kubelet.client import KubeletError, PodResourcesClient
from exporter.sources.kubelet.podresources.v1 import api_pb2
from exporter.sources.kubelet.podresources.v1.api_grpc import PodResourcesListerStub
from exporter.model.kube import ContainerDevices, PodResources
from fakekubelet import Container, Device, FakeKubelet, Pod, pod

GPU_A = "GPU-1f0e6b5c-1a2b-4c3d-8e9f-000000000001"
GPU_B = "GPU-2a7c0d4e-1a2b-4c3d-8e9f-000000000002"
GPU_C = "GPU-3b9d1e5f-1a2b-4c3d-8e9f-000000000003"
MIG_1 = "MIG-4c0e2f60-1a2b-4c3d-8e9f-000000000011"
MIG_2 = "MIG-5d1f3071-1a2b-4c3d-8e9f-000000000012"


@pytest.fixture
async def client(fake_kubelet):
    c = PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=5.0)  # roomy for slow CI
    try:
        yield c
    finally:
        await c.close()


# -- what the client reports ----------------------------------------------------------------------


async def test_exclusive_gpus(fake_kubelet, client):
    fake_kubelet.set_pods(
        [
            pod("ml", "train-0", {"trainer": {"nvidia.com/gpu": [GPU_A]}}),
            pod("ml", "train-1", {"trainer": {"nvidia.com/gpu": [GPU_B]}}),
        ]
    )
    res = await client.list_resources()
    assert res == PodResources(
        containers=(
            ContainerDevices("ml", "train-0", "trainer", "nvidia.com/gpu", (GPU_A,)),
            ContainerDevices("ml", "train-1", "trainer", "nvidia.com/gpu", (GPU_B,)),
        ),
        allocatable={},
    )


async def test_mig_mixed_strategy(fake_kubelet, client):
    fake_kubelet.set_pods(
        [
            pod("inf", "small", {"srv": {"nvidia.com/mig-1g.10gb": [MIG_1]}}),
            pod("inf", "big", {"srv": {"nvidia.com/mig-3g.40gb": [MIG_2]}}),
        ]
    )
    res = await client.list_resources()
    assert res.containers == (
        ContainerDevices("inf", "big", "srv", "nvidia.com/mig-3g.40gb", (MIG_2,)),
        ContainerDevices("inf", "small", "srv", "nvidia.com/mig-1g.10gb", (MIG_1,)),
    )


async def test_time_slicing_replicas_across_pods(fake_kubelet, client):
    fake_kubelet.set_pods(
        [
            pod("a", "nb-0", {"jupyter": {"nvidia.com/gpu.shared": [f"{GPU_A}::0"]}}),
            pod("b", "nb-1", {"jupyter": {"nvidia.com/gpu.shared": [f"{GPU_A}::1"]}}),
        ]
    )
    res = await client.list_resources()
    assert res.containers == (
        ContainerDevices("a", "nb-0", "jupyter", "nvidia.com/gpu.shared", (f"{GPU_A}::0",)),
        ContainerDevices("b", "nb-1", "jupyter", "nvidia.com/gpu.shared", (f"{GPU_A}::1",)),
    )


async def test_mps_replicas(fake_kubelet, client):
    # MPS without renaming: replicas stay under nvidia.com/gpu with <id>::<n> ids.
    fake_kubelet.set_pods(
        [pod("mps", "w", {"c": {"nvidia.com/gpu": [f"{GPU_C}::3", f"{GPU_C}::2"]}})]
    )
    res = await client.list_resources()
    assert res.containers == (
        ContainerDevices("mps", "w", "c", "nvidia.com/gpu", (f"{GPU_C}::2", f"{GPU_C}::3")),
    )


async def test_container_with_two_gpus_one_entry(fake_kubelet, client):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_B, GPU_A]}})])
    res = await client.list_resources()
    assert res.containers == (ContainerDevices("ml", "p", "c", "nvidia.com/gpu", (GPU_A, GPU_B)),)


async def test_container_with_two_gpus_kubelet_style(fake_kubelet, client):
    # The kubelet sends one ContainerDevices per device and NUMA node: merged, de-duplicated.
    fake_kubelet.set_pods(
        [
            Pod(
                "ml",
                "p",
                (
                    Container(
                        "c",
                        (
                            Device("nvidia.com/gpu", (GPU_B,)),
                            Device("nvidia.com/gpu", (GPU_A,)),
                            Device("nvidia.com/gpu", (GPU_A,)),  # same GPU, second NUMA node
                        ),
                    ),
                ),
            )
        ]
    )
    res = await client.list_resources()
    assert res.containers == (ContainerDevices("ml", "p", "c", "nvidia.com/gpu", (GPU_A, GPU_B)),)


async def test_non_gpu_resources_filtered_out(fake_kubelet, client):
    fake_kubelet.set_pods(
        [
            pod(
                "ml",
                "mixed",
                {
                    "gpu": {"nvidia.com/gpu": [GPU_A], "example.com/nic": ["nic0"]},
                    "nic-only": {"example.com/nic": ["nic1"]},
                    "nothing": {},
                },
            ),
            pod("net", "sriov", {"c": {"intel.com/sriov": ["0000:3b:02.0"], "amd.com/gpu": ["0"]}}),
            Pod("empty", "no-containers"),
            pod("x", "near-miss", {"c": {"nvidia.com/gpux": ["g"], "nvidia.com/mig": ["m"]}}),
        ]
    )
    res = await client.list_resources()
    assert res.containers == (ContainerDevices("ml", "mixed", "gpu", "nvidia.com/gpu", (GPU_A,)),)


async def test_unknown_ids_passed_through(fake_kubelet, client):
    ids = ["nvidia0", "nvidia1/vgpu0", "MIG-GPU-abc/1/0", "weird id ✓", f"{GPU_A}::x"]
    fake_kubelet.set_pods([pod("gke", "p", {"c": {"nvidia.com/gpu": ids}})])
    res = await client.list_resources()
    assert res.containers[0].device_ids == tuple(sorted(ids))


async def test_configurable_resource_names(fake_kubelet):
    fake_kubelet.set_pods(
        [pod("n", "p", {"c": {"nvidia.com/gpu": [GPU_A], "vendor.io/accel": ["acc0"], "vendor.io/x-1": ["x"]}})]
    )
    c = PodResourcesClient(
        fake_kubelet.socket_path, resource_names=("vendor.io/accel",), resource_prefixes=("vendor.io/x-",)
    )
    try:
        res = await c.list_resources()
    finally:
        await c.close()
    assert [(r.resource, r.device_ids) for r in res.containers] == [
        ("vendor.io/accel", ("acc0",)),
        ("vendor.io/x-1", ("x",)),
    ]


async def test_allocatable(fake_kubelet, client):
    fake_kubelet.set_allocatable(
        {
            "nvidia.com/gpu": [GPU_A, GPU_B, GPU_C],
            "nvidia.com/mig-1g.10gb": [MIG_1, MIG_2],
            "nvidia.com/gpu.shared": [f"{GPU_A}::{i}" for i in range(4)],
            "example.com/nic": ["nic0", "nic1"],
        }
    )
    res = await client.list_resources()
    assert res.containers == ()
    assert {k: len(v) for k, v in res.allocatable.items()} == {
        "nvidia.com/gpu": 3,
        "nvidia.com/mig-1g.10gb": 2,
        "nvidia.com/gpu.shared": 4,
    }
    assert res.allocatable["nvidia.com/gpu"] == (GPU_A, GPU_B, GPU_C)


@pytest.mark.parametrize(
    "code,details",
    [
        (grpc.StatusCode.UNIMPLEMENTED, "unknown method GetAllocatableResources"),
        (grpc.StatusCode.UNKNOWN, "PodResources API GetAllocatableResources disabled"),
    ],
)
async def test_allocatable_unsupported_is_not_an_error(fake_kubelet, client, caplog, code, details):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    fake_kubelet.set_error(code, details, method="GetAllocatableResources")
    with caplog.at_level(logging.DEBUG, logger="exporter.sources.kubelet"):
        for _ in range(3):
            res = await client.list_resources()
            assert res.allocatable == {}
            assert len(res.containers) == 1
    assert len([r for r in caplog.records if "GetAllocatableResources" in r.getMessage()]) == 1


async def test_one_list_and_one_allocatable_per_cycle_on_one_channel(fake_kubelet, client):
    await client.list_resources()
    channel = client._channel
    await client.list_resources()
    await client.list_resources()
    assert client._channel is channel
    assert fake_kubelet.calls == {"List": 3, "GetAllocatableResources": 3, "Get": 0}


async def test_changes_between_cycles_are_seen(fake_kubelet, client):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    assert len((await client.list_resources()).containers) == 1
    fake_kubelet.set_pods([])
    assert (await client.list_resources()).containers == ()


# -- failures -----------------------------------------------------------------------------------


async def test_socket_absent_is_unavailable(kubelet_socket_path):
    # Fails at once, not at the deadline (bounds generous for a loaded CI machine).
    c = PodResourcesClient(kubelet_socket_path, timeout_seconds=8.0)
    t0 = time.monotonic()
    with pytest.raises(KubeletError) as ei:
        await c.list_resources()
    await c.close()
    assert ei.value.kind == "unavailable"
    assert kubelet_socket_path in str(ei.value)
    assert time.monotonic() - t0 < 3.0


async def test_server_restart_mid_run(fake_kubelet, client):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    assert len((await client.list_resources()).containers) == 1
    for _ in range(3):
        fake_kubelet.stop()
        assert not os.path.exists(fake_kubelet.socket_path)
        for _ in range(2):
            with pytest.raises(KubeletError) as ei:
                await client.list_resources()
            assert ei.value.kind == "unavailable"
        fake_kubelet.start()
        assert len((await client.list_resources()).containers) == 1


async def test_server_restart_between_cycles_costs_no_cycle(fake_kubelet, client):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    await client.list_resources()
    # Failures first (each drops the channel), then a good cycle on a fresh one.
    fake_kubelet.stop()
    for _ in range(2):
        with pytest.raises(KubeletError):
            await client.list_resources()
    fake_kubelet.start()
    await client.list_resources()
    for _ in range(3):
        fake_kubelet.stop()
        fake_kubelet.start()
        assert len((await client.list_resources()).containers) == 1


async def test_slow_server_times_out_promptly(fake_kubelet):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    # The server would answer after 6 s; the call returns on its 0.3 s deadline (the upper
    # bound is generous for a loaded CI machine and still far below the server's delay).
    fake_kubelet.delay = 6.0
    c = PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(KubeletError) as ei:
            await c.list_resources()
        elapsed = time.monotonic() - t0
        assert ei.value.kind == "timeout"
        assert fake_kubelet.socket_path in str(ei.value)
        assert 0.25 <= elapsed < 3.0
        fake_kubelet.delay = 0.0
        assert len((await c.list_resources()).containers) == 1
    finally:
        await c.close()


@pytest.mark.integration
async def test_both_calls_share_one_deadline(fake_kubelet):
    # 2 s per call, 3 s for the cycle: List fits (1 s to spare), GetAllocatableResources does
    # not; with a deadline of its own it would succeed at 4 s. The call returns at the shared
    # deadline (3 s), well before the server would answer (4 s), with the List it has.
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    fake_kubelet.delay = 2.0
    c = PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=3.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(KubeletError) as ei:
            await c.list_resources()
        elapsed = time.monotonic() - t0
        assert ei.value.kind == "allocatable" and "no answer within 3s" in str(ei.value)
        assert "GetAllocatableResources" in str(ei.value)
        assert [r.pod for r in ei.value.resources.containers] == ["p"]
        assert 2.5 <= elapsed < 3.9
    finally:
        await c.close()


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.PERMISSION_DENIED]
)
async def test_other_status_is_rpc_error(fake_kubelet, client, code):
    fake_kubelet.set_error(code, "rejected by rate limit", method="List")
    with pytest.raises(KubeletError) as ei:
        await client.list_resources()
    assert ei.value.kind == "rpc_error"
    assert code.name in str(ei.value) and "rejected by rate limit" in str(ei.value)
    assert fake_kubelet.socket_path in str(ei.value)
    fake_kubelet.clear_errors()
    await client.list_resources()


async def test_unavailable_status_from_server(fake_kubelet, client):
    fake_kubelet.set_error(grpc.StatusCode.UNAVAILABLE, "shutting down")
    with pytest.raises(KubeletError) as ei:
        await client.list_resources()
    assert ei.value.kind == "unavailable"


async def test_a_failed_allocatable_call_keeps_the_good_list(fake_kubelet, client):
    """GetAllocatableResources rejected (the kubelet's rate limit) after a good List: the List
    stands, with the allocatable devices of the last good answer, under its own error kind."""
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    fake_kubelet.set_allocatable({"nvidia.com/gpu": [GPU_A, GPU_B]})
    good = await client.list_resources()
    fake_kubelet.set_pods([pod("ml", "q", {"c": {"nvidia.com/gpu": [GPU_B]}})])
    fake_kubelet.set_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit",
                           method="GetAllocatableResources")
    with pytest.raises(KubeletError) as ei:
        await client.list_resources()
    assert ei.value.kind == "allocatable"
    assert "GetAllocatableResources" in str(ei.value) and "RESOURCE_EXHAUSTED" in str(ei.value)
    assert [r.pod for r in ei.value.resources.containers] == ["q"]  # this cycle's List
    assert ei.value.resources.allocatable == good.allocatable == {"nvidia.com/gpu": (GPU_A, GPU_B)}
    assert "allocatable" in PodResourcesClient.error_kinds  # present at 0 from the start
    fake_kubelet.clear_errors()
    assert [r.pod for r in (await client.list_resources()).containers] == ["q"]


async def test_a_failed_list_is_no_allocatable_error(fake_kubelet, client):
    fake_kubelet.set_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit", method="List")
    with pytest.raises(KubeletError) as ei:
        await client.list_resources()
    assert ei.value.kind == "rpc_error" and ei.value.resources is None
    assert fake_kubelet.calls["GetAllocatableResources"] == 0


async def test_undecodable_response_is_invalid_response(fake_kubelet, client):
    fake_kubelet.garbage = True
    with pytest.raises(KubeletError) as ei:
        await client.list_resources()
    assert ei.value.kind == "invalid_response"
    fake_kubelet.garbage = False
    await client.list_resources()


async def test_gpu_on_nameless_container_is_invalid_response(fake_kubelet, client):
    fake_kubelet.set_pods([pod("ml", "p", {"": {"nvidia.com/gpu": [GPU_A]}})])
    with pytest.raises(KubeletError) as ei:
        await client.list_resources()
    assert ei.value.kind == "invalid_response"


def test_error_kinds_are_fixed():
    assert KubeletError.KINDS == {"unavailable", "timeout", "rpc_error", "invalid_response", "allocatable"}
    with pytest.raises(ValueError):
        KubeletError("oops", "x")
    e = KubeletError("timeout", "slow")
    assert e.kind == "timeout" and str(e) == "slow"


async def test_close_then_reuse(fake_kubelet, client):
    await client.list_resources()
    await client.close()
    await client.close()
    await client.list_resources()


# -- the proto and the fake ------------------------------------------------------------------------


def test_method_paths_and_field_numbers():
    svc = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert svc.full_name == "v1.PodResourcesLister"
    assert set(svc.methods_by_name) == {"List", "GetAllocatableResources", "Get"}
    fields = {f.name: f.number for f in api_pb2.ContainerResources.DESCRIPTOR.fields}
    assert fields == {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5}
    assert {f.name: f.number for f in api_pb2.ContainerDevices.DESCRIPTOR.fields} == {
        "resource_name": 1,
        "device_ids": 2,
        "topology": 3,
    }


async def test_fake_serves_get(fake_kubelet):
    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    channel = Channel(path=fake_kubelet.socket_path)
    try:
        stub = PodResourcesListerStub(channel)
        got = await stub.Get(api_pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ml"), timeout=10)
        assert got.pod_resources.containers[0].devices[0].device_ids == [GPU_A]
        with pytest.raises(GRPCError) as ei:
            await stub.Get(api_pb2.GetPodResourcesRequest(pod_name="nope", pod_namespace="ml"), timeout=10)
        assert ei.value.status == Status.UNKNOWN
    finally:
        channel.close()


def test_fake_usable_from_sync_code(fake_kubelet):
    # The fake serves from its own thread and loop: a test without a running loop starts one.
    async def list_pods() -> api_pb2.ListPodResourcesResponse:
        channel = Channel(path=fake_kubelet.socket_path)
        try:
            return await PodResourcesListerStub(channel).List(api_pb2.ListPodResourcesRequest(), timeout=10)
        finally:
            channel.close()

    fake_kubelet.set_pods([pod("ml", "p", {"c": {"nvidia.com/gpu": [GPU_A]}})])
    assert asyncio.run(list_pods()).pod_resources[0].name == "p"


def test_the_client_imports_no_grpcio():
    """grpcio is no runtime dependency (the image lacks it): the client, its generated stubs and
    the CLI that builds it import without it."""
    code = (
        "import importlib.abc, sys\n"
        "class NoGrpcio(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'grpc' or name.startswith(('grpc.', 'grpc_')):\n"
        "            raise ModuleNotFoundError(f'no grpcio in this test: {name}', name=name)\n"
        "sys.meta_path.insert(0, NoGrpcio())\n"
        "import exporter.sources.kubelet.client, exporter.cli\n"
        "from exporter.sources.kubelet.podresources.v1 import api_grpc\n"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'grpc_'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_standalone_fake_in_a_subprocess(kubelet_socket_path):
    spec = Path(kubelet_socket_path).parent / "pods.json"
    data = {
        "pods": [
            {
                "namespace": "ml",
                "name": "train-0",
                "containers": [{"name": "t", "devices": [{"resource": "nvidia.com/gpu", "ids": [GPU_A]}]}],
            }
        ],
        "allocatable": {"nvidia.com/gpu": [GPU_A, GPU_B]},
    }
    spec.write_text(json.dumps(data))
    script = Path(__file__).with_name("fakekubelet.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--socket", kubelet_socket_path, "--pods", str(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    c = PodResourcesClient(kubelet_socket_path, timeout_seconds=10.0)
    try:
        assert proc.stdout.readline().strip() == f"READY {kubelet_socket_path}"
        res = await c.list_resources()
        assert res.containers == (ContainerDevices("ml", "train-0", "t", "nvidia.com/gpu", (GPU_A,)),)
        assert res.allocatable == {"nvidia.com/gpu": (GPU_A, GPU_B)}
        # Rewrite the file: the next call sees it.
        data["pods"][0]["name"] = "train-1"
        tmp = spec.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.utime(tmp, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        os.replace(tmp, spec)
        assert (await c.list_resources()).containers[0].pod == "train-1"
    finally:
        await c.close()
        proc.terminate()
        rc = proc.wait(10)
        proc.stdout.close()
    assert rc == 0
    assert not os.path.exists(kubelet_socket_path)


def test_fake_parses_bare_list():
    from fakekubelet import load_spec

    pods, alloc = load_spec([{"namespace": "a", "name": "b", "containers": []}])
    assert pods == [Pod("a", "b")] and alloc is None


def test_fake_stop_start_same_path():
    with FakeKubelet() as fake:
        path = fake.socket_path
        assert os.path.exists(path) and len(path) < 107
        fake.stop()
        assert not os.path.exists(path) and not fake.running
        fake.start()
        assert os.path.exists(path) and fake.running
    assert not os.path.exists(path)


async def test_the_agent_counts_a_failed_allocatable_call_apart_and_keeps_the_allocations(fake_kubelet):
    from e2e import samples, value
    from test_agent import GPU, OneGpu

    from exporter.agent import Agent
    from exporter.cli import build_sources
    from exporter.config import parse_config
    from exporter.model.kube import ProcessOwners

    fake_kubelet.set_pods([pod("ml", "train-0", {"c": {"nvidia.com/gpu": [GPU]}})])
    fake_kubelet.set_allocatable({"nvidia.com/gpu": [GPU]})
    client = PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=5.0)
    config = parse_config([], environ={})
    agent = Agent(config, *build_sources(config, OneGpu(), kubelet=client, process_owners=lambda pids: ProcessOwners()))
    try:
        body = (await agent.collect_once()).text.decode()
        assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="allocatable") == 0
        fake_kubelet.set_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected", method="GetAllocatableResources")
        body = (await agent.collect_once()).text.decode()
    finally:
        await client.close()
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="allocatable") == 1
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="rpc_error") == 0
    assert value(body, "kube_gpu_exporter_collector_success", collector="kubelet") == 0
    assert [labels["pod"] for labels, _ in samples(body, "nvidia_gpu_allocation_info")] == ["train-0"]
    assert value(body, "nvidia_gpu_allocatable_devices", resource="nvidia.com/gpu") == 1  # the last good count
    assert value(body, "nvidia_gpu_container_utilization_ratio", pod="train-0") == 0.5
