"""DRA claims: read from the kubelet, named through ResourceSlices, attributed like device-plugin ids.

The kubelet is the real gRPC fake (tests/fakekubelet.py), the API server the aiohttp fake
(tests/fakekubeapi.py) talked to by the real ``kubernetes`` client; attribution is pure.
"""

from __future__ import annotations

import asyncio

import pytest

from exporter.attribution import attribute
from exporter.model.kube import ProcessOwners
from exporter.sources.kube import SliceWatcher, slice_devices
from exporter.sources.kubelet.client import KubeletError, PodResourcesClient
from exporter.model.gpu import Gpu, GpuSnapshot, MigDevice
from exporter.model.kube import ClaimDevice, PodMeta, PodResources, SliceDevices
from conftest import wait_until_async
from fakekubeapi import make_resource_slice
from fakekubelet import Container, Pod, claim, claim_device

NO_OWNERS = ProcessOwners()

NODE = "node-a"
DRIVER = "gpu.nvidia.com"
GPU_0 = "GPU-0a000000-0000-4000-8000-000000000000"
GPU_1 = "GPU-0a000000-0000-4000-8000-000000000001"
GPU_2 = "GPU-0a000000-0000-4000-8000-000000000002"  # MIG-enabled, minor 5
MIG_1G = "MIG-0b000000-0000-4000-8000-000000000021"
MIG_3G = "MIG-0b000000-0000-4000-8000-000000000022"
MIG_1G_NAME, MIG_3G_NAME = "gpu-5-mig-19-6-1", "gpu-5-mig-9-0-4"  # NVIDIA's gpu-<minor>-mig-<profile>-<start>-<size>

SNAPSHOT = GpuSnapshot(gpus=(
    Gpu(0, GPU_0, minor_number=0),
    Gpu(1, GPU_1, minor_number=1),
    Gpu(2, GPU_2, minor_number=5, mig_devices=(MigDevice(MIG_1G, 7, 0, "1g.10gb"), MigDevice(MIG_3G, 2, 0, "3g.40gb"))),
), taken=0.0)
SLICES = SliceDevices(
    {(DRIVER, NODE, "gpu-0"): GPU_0, (DRIVER, NODE, "gpu-1"): GPU_1,
     (DRIVER, NODE, MIG_1G_NAME): MIG_1G, (DRIVER, NODE, MIG_3G_NAME): MIG_3G},
    frozenset({(DRIVER, NODE)}),
)


def dra(pod: str, container: str, claim_name: str, device: str, namespace: str = "ml", pool: str = NODE,
        driver: str = DRIVER) -> ClaimDevice:
    return ClaimDevice(namespace, pod, container, namespace, claim_name, driver, pool, device)


def holders(attribution, uuid: str) -> list[tuple[str, str, str, bool]]:
    return [(h.pod, h.container, h.claim_name, h.shared) for h in attribution.holders.get(uuid, ())]


# -- the kubelet's dynamic_resources ------------------------------------------------------------


async def test_client_reads_claim_devices_of_the_gpu_driver_only(fake_kubelet):
    fake_kubelet.set_pods([
        Pod("ml", "train", (Container("trainer", claims=(claim("train-gpu", claim_device("gpu-0")),)),)),
        Pod("ml", "eval", (Container("eval", claims=(claim("eval-mig", claim_device(MIG_1G_NAME)),)),)),
        # one claim shared by two pods
        Pod("ml", "nb-a", (Container("jupyter", claims=(claim("shared-gpu", claim_device("gpu-1")),)),)),
        Pod("ml", "nb-b", (Container("jupyter", claims=(claim("shared-gpu", claim_device("gpu-1")),)),)),
        # a NIC from another DRA driver in the same claim as a GPU: only the GPU is kept
        Pod("ml", "net", (Container("c", claims=(claim(
            "mixed", claim_device("eth1", driver="dra.net.example.com"), claim_device("gpu-9")),)),)),
    ])
    async with PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=5.0) as client:
        resources = await client.list_resources()
    assert resources.containers == ()  # no device-plugin devices
    assert [(d.pod, d.container, d.claim_namespace, d.claim_name, d.driver, d.pool, d.device)
            for d in resources.claim_devices] == [
        ("eval", "eval", "ml", "eval-mig", DRIVER, NODE, MIG_1G_NAME),
        ("nb-a", "jupyter", "ml", "shared-gpu", DRIVER, NODE, "gpu-1"),
        ("nb-b", "jupyter", "ml", "shared-gpu", DRIVER, NODE, "gpu-1"),
        ("net", "c", "ml", "mixed", DRIVER, NODE, "gpu-9"),
        ("train", "trainer", "ml", "train-gpu", DRIVER, NODE, "gpu-0"),
    ]
    assert resources.claim_devices[-1].cdi_devices == ("k8s.gpu.nvidia.com/device=gpu-0",)


async def test_client_without_dra_drivers_ignores_claims(fake_kubelet):
    fake_kubelet.set_pods([Pod("ml", "train", (Container("c", claims=(claim("g", claim_device("gpu-0")),)),))])
    async with PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=5.0, dra_drivers=()) as client:
        assert (await client.list_resources()).claim_devices == ()


async def test_a_claim_device_without_a_pool_is_an_invalid_answer(fake_kubelet):
    fake_kubelet.set_pods([Pod("ml", "p", (Container("c", claims=(claim("g", claim_device("gpu-0", pool="")),)),))])
    async with PodResourcesClient(fake_kubelet.socket_path, timeout_seconds=5.0) as client:
        with pytest.raises(KubeletError) as raised:
            await client.list_resources()
    assert raised.value.kind == "invalid_response"


# -- attribution ------------------------------------------------------------------------------


def test_claim_devices_are_attributed_through_the_slices_like_device_plugin_ids():
    resources = PodResources(
        containers=(),
        claim_devices=(dra("train", "trainer", "train-gpu", "gpu-0"), dra("eval", "eval", "eval-mig", MIG_1G_NAME),
                       dra("nb-a", "jupyter", "shared-gpu", "gpu-1"), dra("nb-b", "jupyter", "shared-gpu", "gpu-1")),
    )
    pods = {"u1": PodMeta("ml", "train", "u1", "Job", "train", phase="Running")}
    result = attribute(SNAPSHOT, resources, pods, NO_OWNERS, slices=SLICES)
    assert holders(result, GPU_0) == [("train", "trainer", "train-gpu", False)]
    assert holders(result, MIG_1G) == [("eval", "eval", "eval-mig", False)]
    # a claim shared by two pods: both hold the GPU, shared, as with time-slicing
    assert holders(result, GPU_1) == [("nb-a", "jupyter", "shared-gpu", True), ("nb-b", "jupyter", "shared-gpu", True)]
    trainer = result.holders[GPU_0][0]
    assert (trainer.resource, trainer.driver, trainer.pool, trainer.device, trainer.claim_namespace) == (
        DRIVER, DRIVER, NODE, "gpu-0", "ml")
    assert (trainer.workload_kind, trainer.workload) == ("Job", "train")
    assert result.allocated == {DRIVER: 3}  # devices, not holders
    assert result.allocatable == {DRIVER: 4}
    assert result.unknown_ids == () and result.unresolved == ()


def test_both_allocation_paths_on_one_node():
    from exporter.model.kube import ContainerDevices

    resources = PodResources(
        containers=(ContainerDevices("ml", "dp", "c", "nvidia.com/gpu", (GPU_0,)),
                    ContainerDevices("ml", "dp-mig", "c", "nvidia.com/mig-3g.40gb", (MIG_3G,))),
        allocatable={"nvidia.com/gpu": (GPU_0,)},
        claim_devices=(dra("dra", "c", "g", "gpu-1"), dra("dra-mig", "c", "m", MIG_1G_NAME)),
    )
    result = attribute(SNAPSHOT, resources, {}, NO_OWNERS, slices=SLICES)
    assert {uuid: [h.pod for h in hs] for uuid, hs in result.holders.items()} == {
        GPU_0: ["dp"], MIG_3G: ["dp-mig"], GPU_1: ["dra"], MIG_1G: ["dra-mig"]}
    assert result.allocated == {"nvidia.com/gpu": 1, "nvidia.com/mig-3g.40gb": 1, DRIVER: 2}


def test_devices_that_match_nothing_are_unknown_never_a_wrong_gpu():
    slices = SliceDevices({**SLICES.uuids, (DRIVER, NODE, "gpu-7"): "GPU-not-on-this-node"}, SLICES.pools)
    resources = PodResources(containers=(), claim_devices=(
        dra("a", "c", "g", "gpu-7"),        # its slice names a GPU this node does not have
        dra("b", "c", "g", "gpu-8"),        # its pool is published but lists no such device
    ))
    result = attribute(SNAPSHOT, resources, {}, NO_OWNERS, slices=slices)
    assert result.holders == {}
    assert result.unknown_ids == (f"{DRIVER}/{NODE}/gpu-7", f"{DRIVER}/{NODE}/gpu-8")
    assert result.unresolved == ()


def test_without_slices_a_gpu_is_named_by_its_minor_and_a_mig_instance_stays_unresolved():
    resources = PodResources(containers=(), claim_devices=(
        dra("a", "c", "g", "gpu-5"),   # minor 5: GPU 2, not GPU 5 by index (there is none)
        dra("b", "c", "m", MIG_1G_NAME),
        dra("x", "c", "o", "gpu-0", pool="other", driver="example.com/gpu"),  # not NVIDIA's names
    ))
    result = attribute(SNAPSHOT, resources, {}, NO_OWNERS, slices=None)
    assert holders(result, GPU_2) == [("a", "c", "g", False)]
    assert [d.claim_name for d in result.unresolved] == ["m", "o"]
    assert result.unknown_ids == ()


def test_a_device_without_a_uuid_attribute_is_unresolved():
    slices = SliceDevices({(DRIVER, NODE, "gpu-5-mig-14-0-2"): ""}, frozenset({(DRIVER, NODE)}))
    resources = PodResources(containers=(), claim_devices=(dra("a", "c", "g", "gpu-5-mig-14-0-2"),))
    result = attribute(SNAPSHOT, resources, {}, NO_OWNERS, slices=slices)
    assert result.holders == {} and [d.device for d in result.unresolved] == ["gpu-5-mig-14-0-2"]


def test_a_finished_pod_holds_no_claim_device():
    pods = {"u": PodMeta("ml", "done", "u", "Job", "j", phase="Succeeded")}
    resources = PodResources(containers=(), claim_devices=(dra("done", "c", "g", "gpu-0"),))
    assert attribute(SNAPSHOT, resources, pods, NO_OWNERS, slices=SLICES).holders == {}


def test_only_the_newest_generation_of_a_pool_counts():
    old = (DRIVER, NODE, 1, {"gpu-0": GPU_1})
    new = (DRIVER, NODE, 2, {"gpu-0": GPU_0})
    other = (DRIVER, "other-pool", 1, {"gpu-0": GPU_2})
    published = slice_devices([old, new, other])
    assert published.uuids == {(DRIVER, NODE, "gpu-0"): GPU_0, (DRIVER, "other-pool", "gpu-0"): GPU_2}
    assert published.pools == {(DRIVER, NODE), (DRIVER, "other-pool")}


# -- the ResourceSlice watch --------------------------------------------------------------------


@pytest.fixture
async def slice_watcher(fake_kube_api):
    watchers: list[SliceWatcher] = []

    async def start(**kwargs) -> SliceWatcher:
        w = SliceWatcher(NODE, (DRIVER,), kubeconfig=str(fake_kube_api.kubeconfig_path),
                         backoff_initial=0.05, backoff_max=0.2, **kwargs)
        await w.start()
        watchers.append(w)
        return w

    yield start
    for w in watchers:
        await w.stop()


def slice_calls(api, verb: str) -> list:
    return [c for c in list(api.calls) if c.verb == verb and c.resource == "resourceslices"]


async def test_slices_of_this_node_and_driver_are_listed_once_then_watched(fake_kube_api, slice_watcher):
    fake_kube_api.add_object(make_resource_slice(NODE, {"gpu-0": GPU_0, MIG_1G_NAME: MIG_1G}))
    fake_kube_api.add_object(make_resource_slice("node-b", {"gpu-0": GPU_2}))
    fake_kube_api.add_object(make_resource_slice(NODE, {"eth0": None}, driver="dra.net.example.com"))
    watcher = await slice_watcher()
    assert await watcher.wait_synced(10)
    assert watcher.connected
    assert watcher.devices().uuids == {(DRIVER, NODE, "gpu-0"): GPU_0, (DRIVER, NODE, MIG_1G_NAME): MIG_1G}
    (listed,) = slice_calls(fake_kube_api, "list")
    assert listed.query["fieldSelector"] == f"spec.nodeName={NODE},spec.driver={DRIVER}"
    assert listed.resource_version == "0"  # from the watch cache

    # a slice that changes (the driver re-publishes after a MIG reconfiguration) ...
    fake_kube_api.add_object(make_resource_slice(NODE, {"gpu-0": GPU_0, MIG_3G_NAME: MIG_3G}))
    await wait_until_async(lambda: (DRIVER, NODE, MIG_3G_NAME) in watcher.devices().uuids, message="the changed slice")
    assert (DRIVER, NODE, MIG_1G_NAME) not in watcher.devices().uuids
    # ... and one that goes
    fake_kube_api.delete_object("ResourceSlice", "", make_resource_slice(NODE, {})["metadata"]["name"])
    await wait_until_async(lambda: not watcher.devices().uuids, message="the deleted slice")
    assert len(slice_calls(fake_kube_api, "list")) == 1
    assert all(c.query["allowWatchBookmarks"] == "true" for c in slice_calls(fake_kube_api, "watch"))


async def test_a_410_relists_and_an_outage_keeps_the_last_slices(fake_kube_api, slice_watcher):
    fake_kube_api.add_object(make_resource_slice(NODE, {"gpu-0": GPU_0}))
    watcher = await slice_watcher()
    assert await watcher.wait_synced(10)
    await wait_until_async(lambda: fake_kube_api.watching_slices_since(fake_kube_api.resource_version), message="the watch")

    fake_kube_api.expire_watches()  # the history is compacted: the next watch gets 410 Gone
    fake_kube_api.add_object(make_resource_slice(NODE, {"gpu-0": GPU_1}))
    await wait_until_async(lambda: watcher.devices().uuids.get((DRIVER, NODE, "gpu-0")) == GPU_1, message="the relist")
    assert watcher.error_counts()["gone"] >= 1
    assert len(slice_calls(fake_kube_api, "list")) == 2

    fake_kube_api.set_down(True)
    await wait_until_async(lambda: not watcher.connected, message="the outage")
    assert watcher.devices().uuids == {(DRIVER, NODE, "gpu-0"): GPU_1}  # kept
    assert watcher.error_counts()["unavailable"] >= 1
    fake_kube_api.set_down(False)
    await wait_until_async(lambda: watcher.connected, message="the recovery")
    assert len(slice_calls(fake_kube_api, "list")) == 2  # the watch resumed: no list


async def test_forbidden_is_counted_and_retried(fake_kube_api, slice_watcher):
    fake_kube_api.set_resource_error("resourceslices", 403)
    watcher = await slice_watcher()
    await wait_until_async(lambda: watcher.error_counts()["forbidden"] >= 2, message="retries")
    assert not watcher.connected
    fake_kube_api.set_resource_error("resourceslices", None)
    assert await watcher.wait_synced(10)


async def test_an_api_server_without_resource_slices_publishes_nothing_without_errors(fake_kube_api,
                                                                                      slice_watcher):
    fake_kube_api.set_resource_error("resourceslices", 404)  # resource.k8s.io/v1 not served
    watcher = await slice_watcher()
    assert await watcher.wait_synced(10)
    assert watcher.connected and watcher.devices() == SliceDevices()
    assert sum(watcher.error_counts().values()) == 0
    await asyncio.sleep(0.3)
    assert len(slice_calls(fake_kube_api, "list")) == 1  # asked again only an hour or so later


# -- the scenario format ------------------------------------------------------------------------


SCENARIO = """
node: {name: sim-node}
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - model: NVIDIA A100-SXM4-40GB
    mig: [{profile: 3g.20gb, gpu_instance_id: 2}]
pods:
  - namespace: ml
    name: a
    containers: [{name: c, claim: shared, devices: [{gpu: 0}]}]
  - namespace: ml
    name: b
    containers: [{name: c, claim: shared, devices: [{gpu: 0}]}]
  - namespace: ml
    name: m
    containers: [{name: c, claim: mig, devices: [{gpu: 1, mig: 2}]}]
"""


def test_scenario_claims_flow_through_attribution():
    from exporter.sources.simulate import SimulatedBackend, load_scenario_text

    backend = SimulatedBackend(load_scenario_text(SCENARIO))
    cluster = backend.cluster
    snapshot = GpuSnapshot(gpus=tuple(backend.read_gpu(i) for i in range(backend.device_count())), taken=0.0)
    result = attribute(snapshot, cluster.pod_resources(), cluster.pod_meta(), NO_OWNERS,
                       slices=cluster.slice_devices())
    gpu0, mig = snapshot.gpus[0].uuid, snapshot.gpus[1].mig_devices[0].uuid
    assert holders(result, gpu0) == [("a", "c", "shared", True), ("b", "c", "shared", True)]
    assert holders(result, mig) == [("m", "c", "mig", False)]
    assert cluster.pod_resources().allocatable == {}  # the DRA driver's GPUs, not the device plugin's
    assert result.allocatable == {DRIVER: 2}


@pytest.mark.parametrize("containers, problem", [
    ("[{name: c, claim: g, resource: nvidia.com/gpu, devices: [0]}]", "no resource"),
    ("[{name: c, claim: g, devices: [0]}, {name: d, claim: h, devices: [0]}]", "already held"),
    ("[{name: c, claim: g, devices: [0]}, {name: d, claim: g, devices: [1]}]", "holds other devices"),
])
def test_scenario_claim_mistakes_are_problems(containers, problem):
    from exporter.sources.simulate import ScenarioError, load_scenario_text

    text = ("node: {name: n}\ngpus: [{model: H100}, {model: H100}]\n"
            f"pods:\n  - {{namespace: ml, name: p, containers: {containers}}}\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario_text(text)
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_dra_drivers_flag():
    from exporter.config import ConfigError, parse_config

    assert parse_config([], environ={}).dra_drivers == (DRIVER,)
    assert parse_config(["--kubernetes.dra-drivers", ""], environ={}).dra_drivers == ()
    assert parse_config([], environ={"KUBE_GPU_EXPORTER_KUBERNETES_DRA_DRIVERS": "a.example.com, gpu.nvidia.com"}
                        ).dra_drivers == ("a.example.com", DRIVER)
    with pytest.raises(ConfigError) as raised:
        parse_config(["--kubernetes.dra-drivers", "Not A Driver"], environ={})
    assert "--kubernetes.dra-drivers" in str(raised.value)
