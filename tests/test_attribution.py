"""Device ids in every form -> the containers that hold each device, and per-container usage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter import catalog
from exporter.attribution import attribute, parse_device_id, sanitize_label_name
from exporter.model.kube import ProcessOwners
from exporter.model.gpu import Gpu, GpuProcess, GpuSnapshot, MigDevice, Sample
from exporter.model.kube import ContainerDevices, ContainerRef, PodMeta, PodResources

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-1111-2222-3333-444444444444"
GPU2 = "GPU-22222222-1111-2222-3333-444444444444"
MIG_A = "MIG-aaaaaaaa-1111-2222-3333-444444444444"
MIG_B = "MIG-bbbbbbbb-1111-2222-3333-444444444444"
NONE = ProcessOwners()  # procfs told nothing


def node() -> GpuSnapshot:
    return GpuSnapshot(
        gpus=(
            Gpu(index=0, uuid=GPU0, minor_number=3, processes=(GpuProcess(100, 2_000, 0.5), GpuProcess(101, 1_000, 0.25))),
            Gpu(index=1, uuid=GPU1, processes=(GpuProcess(200, 4_000, 0.3), GpuProcess(300, 8_000, 0.6))),
            Gpu(
                index=2,
                uuid=GPU2,
                mig_devices=(
                    MigDevice(MIG_A, 1, 0, "3g.40gb", processes=(GpuProcess(400, 5_000, None),)),
                    MigDevice(MIG_B, 2, 0, "2g.20gb"),
                ),
            ),
        ),
        taken=0.0,
    )


def sole(result, uuid: str):
    """The one container holding a device alone, or None (shared, or no holder)."""
    holders = result.holders.get(uuid, ())
    return holders[0] if len(holders) == 1 and not holders[0].shared else None


def row(pod: str, container: str, resource: str, *ids: str, namespace: str = "ml") -> ContainerDevices:
    return ContainerDevices(namespace, pod, container, resource, ids)


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        (GPU0, ("uuid", GPU0, False)),
        (MIG_A, ("uuid", MIG_A, False)),
        (f"{GPU0}::3", ("uuid", GPU0, True)),
        (f"{MIG_A}::0", ("uuid", MIG_A, True)),
        (f"MIG-{GPU2}/1/0", ("legacy_mig", (GPU2, 1, 0), False)),
        ("0", ("index", 0, False)),
        ("nvidia1", ("minor", 1, False)),
        ("nvidia1/vgpu2", ("minor", 1, True)),
        ("nvidiaX", None),
        ("something-else", None),
        (f"{GPU0}::x", None),
        ("GPU-", None),
    ],
)
def test_parse_device_id_forms(device_id, expected):
    assert parse_device_id(device_id) == expected


def test_exclusive_gpu_has_one_holder_and_is_not_shared():
    resources = PodResources((row("train-0", "main", "nvidia.com/gpu", GPU0),))
    result = attribute(node(), resources, {}, NONE)
    holder = sole(result, GPU0)
    assert holder is not None
    assert (holder.namespace, holder.pod, holder.container, holder.shared) == ("ml", "train-0", "main", False)
    assert sole(result, GPU1) is None


def test_time_sliced_replicas_list_every_container_and_no_sole_holder():
    resources = PodResources(
        (
            row("nb-a", "jupyter", "nvidia.com/gpu.shared", f"{GPU1}::0"),
            row("nb-b", "jupyter", "nvidia.com/gpu.shared", f"{GPU1}::1"),
        )
    )
    result = attribute(node(), resources, {}, NONE)
    holders = result.holders[GPU1]
    assert {h.pod for h in holders} == {"nb-a", "nb-b"}
    assert all(h.shared for h in holders)
    assert sole(result, GPU1) is None


def test_one_container_with_two_replicas_of_one_gpu_is_still_shared():
    # MPS / time-slicing hand out replicas; holding two of them is still sharing the GPU.
    resources = PodResources((row("mps", "c", "nvidia.com/gpu", f"{GPU0}::0", f"{GPU0}::1"),))
    result = attribute(node(), resources, {}, NONE)
    assert len(result.holders[GPU0]) == 1
    assert result.holders[GPU0][0].shared is True
    # One holder of a shared GPU is no sole holder: the next replica taken must not change the
    # label set of the GPU's series.
    assert sole(result, GPU0) is None


def test_mig_devices_in_uuid_and_legacy_forms_and_index_ids():
    resources = PodResources(
        (
            row("mig-a", "c", "nvidia.com/mig-3g.40gb", MIG_A),
            row("mig-b", "c", "nvidia.com/mig-2g.20gb", f"MIG-{GPU2}/2/0"),
            row("gke", "c", "nvidia.com/gpu", "nvidia3"),  # GKE names GPUs by /dev/nvidia minor
            row("by-index", "c", "nvidia.com/gpu", "1"),
        )
    )
    result = attribute(node(), resources, {}, NONE)
    assert sole(result, MIG_A).pod == "mig-a"
    assert sole(result, MIG_B).pod == "mig-b"
    assert sole(result, GPU0).pod == "gke"
    assert sole(result, GPU1).pod == "by-index"
    assert result.allocated == {"nvidia.com/mig-3g.40gb": 1, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/gpu": 2}


def test_one_container_with_two_gpus_holds_both():
    resources = PodResources((row("big", "trainer", "nvidia.com/gpu", GPU0, GPU1),))
    result = attribute(node(), resources, {}, NONE)
    assert sole(result, GPU0).pod == sole(result, GPU1).pod == "big"


def test_unknown_ids_are_reported_not_fatal():
    resources = PodResources((row("odd", "c", "nvidia.com/gpu", "weird-id", GPU0, "GPU-99999999-dead"),))
    result = attribute(node(), resources, {}, NONE)
    assert result.unknown_ids == ("weird-id", "GPU-99999999-dead")
    assert sole(result, GPU0).pod == "odd"


def test_allocatable_and_allocated_counts():
    resources = PodResources(
        (row("a", "c", "nvidia.com/gpu.shared", f"{GPU1}::0"), row("b", "c", "nvidia.com/gpu.shared", f"{GPU1}::1")),
        allocatable={"nvidia.com/gpu": (GPU0,), "nvidia.com/gpu.shared": tuple(f"{GPU1}::{i}" for i in range(4))},
    )
    result = attribute(node(), resources, {}, NONE)
    assert result.allocatable == {"nvidia.com/gpu": 1, "nvidia.com/gpu.shared": 4}
    assert result.allocated == {"nvidia.com/gpu.shared": 2}


def test_workload_and_allowlisted_labels_come_from_pod_metadata():
    meta = PodMeta("ml", "train-0", "uid-1", "CronJob", "nightly", {"team": "vision", "secret": "x"})
    resources = PodResources((row("train-0", "main", "nvidia.com/gpu", GPU0),))
    result = attribute(node(), resources, {"uid-1": meta}, NONE, pod_labels=("team", "app.kubernetes.io/name"))
    holder = sole(result, GPU0)
    assert (holder.workload_kind, holder.workload) == ("CronJob", "nightly")
    assert holder.pod_labels == (("label_team", "vision"), ("label_app_kubernetes_io_name", ""))


def test_usage_of_a_device_held_alone_is_the_devices_own_reading_without_procfs_or_metadata():
    readings = (Sample(catalog.MEMORY_USED, 30_000), Sample(catalog.UTILIZATION, 0.9))
    snapshot = GpuSnapshot(gpus=(replace(node().gpus[0], samples=readings, processes=()),), taken=0.0)
    resources = PodResources((row("train-0", "main", "nvidia.com/gpu", GPU0),))
    result = attribute(snapshot, resources, {}, NONE)
    (usage,) = result.usage[GPU0]
    assert (usage.pod, usage.container, usage.memory_used_bytes, usage.utilization_ratio) == (
        "train-0", "main", 30_000, 0.9)


def test_usage_of_a_mig_instance_held_alone_is_its_memory_and_has_no_utilization():
    mig = MigDevice(MIG_A, 1, 0, "3g.40gb", samples=(Sample(catalog.MIG_MEMORY_USED, 5_000),))
    snapshot = GpuSnapshot(gpus=(Gpu(index=2, uuid=GPU2, mig_devices=(mig,)),), taken=0.0)
    resources = PodResources((row("mig-a", "c", "nvidia.com/mig-3g.40gb", MIG_A),))
    (usage,) = attribute(snapshot, resources, {}, NONE).usage[MIG_A]
    assert (usage.pod, usage.memory_used_bytes, usage.utilization_ratio) == ("mig-a", 5_000, None)


def test_a_device_held_alone_without_readings_has_no_usage():
    resources = PodResources((row("train-0", "main", "nvidia.com/gpu", GPU0),))
    down = GpuSnapshot(gpus=(Gpu(index=0, uuid=GPU0, up=False),), taken=0.0)
    assert GPU0 not in attribute(down, resources, {}, NONE).usage


def test_usage_on_shared_gpu_is_split_by_container_through_metadata():
    resources = PodResources(
        (row("nb-a", "jupyter", "nvidia.com/gpu.shared", f"{GPU1}::0"),
         row("nb-b", "jupyter", "nvidia.com/gpu.shared", f"{GPU1}::1"))
    )
    pods = {
        "uid-a": PodMeta("ml", "nb-a", "uid-a", "Deployment", "nb", container_ids={"ca": "jupyter"}),
        "uid-b": PodMeta("ml", "nb-b", "uid-b", "Deployment", "nb", container_ids={"cb": "jupyter"}),
    }
    owners = ProcessOwners({200: ContainerRef("uid-a", "ca"), 300: ContainerRef("uid-b", "cb")})
    result = attribute(node(), resources, pods, owners)
    by_pod = {u.pod: u for u in result.usage[GPU1]}
    assert by_pod["nb-a"].memory_used_bytes == 4_000
    assert by_pod["nb-b"].memory_used_bytes == 8_000
    assert by_pod["nb-b"].utilization_ratio == pytest.approx(0.6)


def test_usage_on_shared_gpu_without_metadata_is_left_out_and_host_processes_ignored():
    resources = PodResources(
        (row("nb-a", "j", "nvidia.com/gpu.shared", f"{GPU1}::0"), row("nb-b", "j", "nvidia.com/gpu.shared", f"{GPU1}::1"))
    )
    owners = ProcessOwners({200: ContainerRef("uid-a", "ca")}, host=frozenset({300}))  # 300: a host process
    result = attribute(node(), resources, {}, owners)
    assert GPU1 not in result.usage


def test_label_names_are_sanitised():
    assert sanitize_label_name("app.kubernetes.io/name") == "label_app_kubernetes_io_name"


def test_finished_pods_hold_nothing_even_if_the_kubelet_still_lists_them():
    resources = PodResources(
        (row("done", "c", "nvidia.com/gpu", GPU0), row("next", "c", "nvidia.com/gpu", GPU0))
    )
    pods = {
        "u1": PodMeta("ml", "done", "u1", "Job", "j", phase="Succeeded"),
        "u2": PodMeta("ml", "next", "u2", "Job", "k", phase="Running"),
    }
    result = attribute(node(), resources, pods, NONE)
    assert sole(result, GPU0).pod == "next"
    assert not result.holders[GPU0][0].shared


# -- Idle holders of a shared device (issue 17, item 5) ---------------------------------------

SHARED_PODS = {
    "uid-a": PodMeta("ml", "nb-a", "uid-a", "Deployment", "nb", container_ids={"ca": "jupyter"}),
    "uid-b": PodMeta("ml", "nb-b", "uid-b", "Deployment", "nb", container_ids={"cb": "jupyter"}),
}


def shared(resource: str = "nvidia.com/gpu.shared", device: str = GPU1) -> PodResources:
    """nb-a and nb-b each hold a replica of ``device``."""
    return PodResources((row("nb-a", "jupyter", resource, f"{device}::0"),
                         row("nb-b", "jupyter", resource, f"{device}::1")))


def busy_and_idle(*processes: GpuProcess, read: bool = True, up: bool = True) -> GpuSnapshot:
    """GPU 1 runs ``processes`` (default: nb-a's pid 200, busy); nb-b runs nothing."""
    gpu = Gpu(index=1, uuid=GPU1, up=up, processes=processes or (GpuProcess(200, 4_000, 0.3),), processes_read=read)
    return GpuSnapshot(gpus=(gpu,), taken=0.0)


def usage_by_pod(result, device: str = GPU1) -> dict[str, tuple[float | None, float | None]]:
    return {u.pod: (u.memory_used_bytes, u.utilization_ratio) for u in result.usage.get(device, ())}


A_IN_CONTAINER = ProcessOwners({200: ContainerRef("uid-a", "ca")}, lists_complete=True)


def test_an_idle_holder_of_a_time_sliced_gpu_uses_none_of_it():
    """A notebook holding a replica with no kernel running: usage 0, so that the idle alerts see it."""
    result = attribute(busy_and_idle(), shared(), SHARED_PODS, A_IN_CONTAINER)
    assert usage_by_pod(result) == {"nb-a": (4_000, pytest.approx(0.3)), "nb-b": (0, 0.0)}


def test_an_idle_mps_client_beside_a_busy_one_uses_none_of_it():
    """MPS: the busy client is in the MPS list, the MPS server (the control daemon's) runs on the host."""
    snapshot = busy_and_idle(GpuProcess(50, 512, 0.0), GpuProcess(200, 3_000, 0.4))
    owners = ProcessOwners({200: ContainerRef("uid-a", "ca")}, host=frozenset({50}), lists_complete=True)
    result = attribute(snapshot, shared("nvidia.com/gpu"), SHARED_PODS, owners)
    assert usage_by_pod(result) == {"nb-a": (3_000, pytest.approx(0.4)), "nb-b": (0, 0.0)}


def test_a_process_without_a_utilization_sample_counts_as_idle_not_unknown():
    """NVML samples only processes that used the SMs: a process with memory and no sample (0.0
    from the backend) is an idle container, and its idle neighbour is idle too."""
    result = attribute(busy_and_idle(GpuProcess(200, 4_000, 0.0)), shared(), SHARED_PODS, A_IN_CONTAINER)
    assert usage_by_pod(result) == {"nb-a": (4_000, 0.0), "nb-b": (0, 0.0)}


def test_every_holder_of_a_shared_gpu_without_processes_is_idle():
    snapshot = GpuSnapshot(gpus=(Gpu(index=1, uuid=GPU1, processes_read=True),), taken=0.0)
    result = attribute(snapshot, shared(), SHARED_PODS, ProcessOwners(lists_complete=True))
    assert usage_by_pod(result) == {"nb-a": (0, 0.0), "nb-b": (0, 0.0)}


def test_an_idle_holder_of_a_shared_mig_instance_uses_none_of_it():
    mig = MigDevice(MIG_A, 1, 0, "3g.40gb", processes=(GpuProcess(200, 5_000, None),), processes_read=True)
    snapshot = GpuSnapshot(gpus=(Gpu(index=2, uuid=GPU2, mig_devices=(mig,)),), taken=0.0)
    result = attribute(snapshot, shared("nvidia.com/mig-3g.40gb", MIG_A), SHARED_PODS, A_IN_CONTAINER)
    assert usage_by_pod(result, MIG_A) == {"nb-a": (5_000, None), "nb-b": (0, 0.0)}


@pytest.mark.parametrize(
    ("why", "snapshot", "owners"),
    [
        ("process list not read", busy_and_idle(read=False), A_IN_CONTAINER),
        ("GPU down: its readings are not this cycle's", busy_and_idle(up=False), A_IN_CONTAINER),
        ("lists may hide other pid namespaces' processes", busy_and_idle(),
         ProcessOwners({200: ContainerRef("uid-a", "ca")}, lists_complete=False)),
        ("a pid procfs does not show", busy_and_idle(GpuProcess(200, 4_000, 0.3), GpuProcess(0, 2_000, 0.5)),
         replace(A_IN_CONTAINER, missing=frozenset({0}))),
        ("a cgroup file that cannot be read", busy_and_idle(GpuProcess(200, 4_000, 0.3), GpuProcess(300, 2_000, 0.5)),
         replace(A_IN_CONTAINER, unreadable={300: "Permission denied"})),
        ("a container no one can name", busy_and_idle(GpuProcess(200, 4_000, 0.3), GpuProcess(300, 2_000, 0.5)),
         ProcessOwners({200: ContainerRef("uid-a", "ca"), 300: ContainerRef("uid-x", "cx")}, lists_complete=True)),
    ],
    ids=["unread", "down", "incomplete", "unresolved-pid", "unreadable", "unnamed-container"],
)
def test_an_idle_holder_is_not_reported_idle_when_that_is_not_known(why, snapshot, owners):
    """Unknown is not idle: the busy holder keeps its own usage, the other holder has none."""
    result = attribute(snapshot, shared(), SHARED_PODS, owners)
    assert "nb-b" not in usage_by_pod(result), why
    if snapshot.gpus[0].processes_read and snapshot.gpus[0].up:
        assert usage_by_pod(result)["nb-a"][0] == 4_000


def test_a_device_held_alone_gets_no_zero_from_an_empty_process_list():
    """A sole holder's usage is the device's own reading; nothing is made up when there is none."""
    snapshot = GpuSnapshot(gpus=(Gpu(index=0, uuid=GPU0, processes_read=True),), taken=0.0)
    resources = PodResources((row("train-0", "main", "nvidia.com/gpu", GPU0),))
    assert GPU0 not in attribute(snapshot, resources, {}, ProcessOwners(lists_complete=True)).usage
