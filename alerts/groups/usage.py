"""Usage alerts: GPUs held but idle, batch jobs stuck, container memory near full, GPUs busy without a pod.

GpuAllocatedIdle, GpuBatchJobStuck and GpuContainerMemoryNearFull are about a container and keep
``namespace, pod, container``; GpuBusyWithoutPod is about the device."""

from __future__ import annotations

from alerts.alert import Alert
from alerts.cases import NODE, Case, agent, allocation, container, expect_gpu, gpu, series
from alerts.params import Params
from alerts.promql import BY_GPU, last_value
from exporter.push.definitions import GPU_DESCRIPTION


#: The labels of one container on one GPU (the idle rules judge each holder on its own).
_HOLDER = "node, namespace, pod, container, uuid"
#: The description of a container alert, up to its node; each alert says the rest.
CONTAINER_DESCRIPTION = ("Container {{ $labels.namespace }}/{{ $labels.pod }}/{{ $labels.container }} "
                         "({{ $labels.workload_kind }} {{ $labels.workload }}) holds GPU {{ $labels.gpu }} "
                         "({{ $labels.uuid }}) on node {{ $labels.node }}")


def idle_expr(kind_matcher: str, ratio: float, p: Params) -> str:
    """Containers of the workload kinds ``kind_matcher`` selects whose utilisation is below
    ``ratio`` now (whole GPUs only: MIG instances report no utilisation); the alert's ``for:``
    makes it every scrape of a stretch, and ``last_value`` keeps a missed scrape from restarting it."""
    util = 'nvidia_gpu_container_utilization_ratio{gpu_instance_id=""}'
    return (f"(\n  max by (node, namespace, pod, container, gpu, uuid) (\n"
            f"    {last_value(util, p)}\n"
            f"  ) < {ratio}\n)\n* on ({_HOLDER}) group_left (workload_kind, workload)\n"
            f"  max by ({_HOLDER}, workload_kind, workload) (\n"
            f"    nvidia_gpu_allocation_info{{{kind_matcher}}}\n  )")


def idle_cases(kind: str, workload: str, busy_kind: str) -> tuple[Case, ...]:
    """An exclusive holder idle after busy; idle holders of a time-sliced and of an MPS-shared GPU
    beside a busy one (the agent exports utilisation 0 for a holder without a process once it
    has read the device's process list; a holder with no usage series is unknown, not idle)."""
    def holder(i: int, pod: str, *, on: str = kind, **kw: str) -> str:
        return allocation(i, "lab", pod, container="jupyter", kind=on, workload=workload, **kw)

    def used(i: int, pod: str) -> str:
        return series("nvidia_gpu_container_utilization_ratio", container(i, "lab", pod, "jupyter"))

    def labels(i: int, pod: str) -> dict[str, str]:
        return {"node": NODE, "namespace": "lab", "pod": pod, "container": "jupyter", "gpu": str(i),
                "uuid": f"GPU-{i}", "workload_kind": kind, "workload": workload}

    sliced = {"shared": "true", "resource": "nvidia.com/gpu.shared"}
    mps = {"shared": "true", "resource": "nvidia.com/gpu"}
    return (
        Case({holder(0, "nb-0"): "1x400", holder(1, "nb-1", on=busy_kind): "1x400",
              used(0, "nb-0"): "0.6x10 0x100 stale 0x289", used(1, "nb-1"): "0.6x10 0x390"},
             11, labels(0, "nb-0"),
             name="idle after busy, a failed scrape in between does not restart the for:; "
                  "the other tier's holder is silent"),
        Case({holder(2, "nb-a", **sliced): "1x400", holder(2, "nb-b", **sliced): "1x400",
              holder(2, "nb-c", **sliced): "1x400", used(2, "nb-a"): "0x400", used(2, "nb-b"): "0.6x400"},
             0, labels(2, "nb-a"),
             name="an idle holder of a time-sliced GPU beside a busy one; a holder without usage is unknown"),
        Case({holder(3, "nb-a", **mps): "1x400", holder(3, "nb-b", **mps): "1x400",
              used(3, "nb-a"): "0x400", used(3, "nb-b"): "0.3x400"},
             0, labels(3, "nb-a"), name="an idle holder of an MPS-shared GPU beside a busy one"),
    )


def alerts(p: Params) -> list[Alert]:
    rules: list[Alert] = []
    rules.append(Alert(
        name="GpuAllocatedIdle", severity="info", for_=p.idle_interactive_for,
        summary="An interactive or serving pod holds a GPU it has not used for hours.",
        description=CONTAINER_DESCRIPTION + " and has not used it for " + p.idle_interactive_for + ".",
        expr=idle_expr(f'workload_kind!~"{p.batch_kinds}"', p.idle_ratio, p),
        threshold=f"utilisation < {p.idle_ratio} at every scrape for {p.idle_interactive_for}",
        why="A notebook or dev pod that sits on a GPU costs as much as a busy one. Judged on the "
            "container's own utilisation, per holder: on a shared GPU (time-slicing, MPS, a shared DRA "
            "claim) a holder with no process gets utilisation 0 from the agent, and a busy neighbour "
            "does not hide it; a holder whose usage is unknown (the process list could not be read) has "
            "no series and is not judged. MIG instances report no utilisation and are not judged. Each "
            "evaluation reads the last scrape (a missed one does not restart the for:), and the for: "
            "makes it every scrape of the stretch: the peak over hours at the cost of one sample per "
            "holder, where max_over_time() over the window read every sample of it at each evaluation. "
            "Info: a cost signal for the namespace owner, not a page.",
        cases=idle_cases("Deployment", "notebook", "Job")))

    rules.append(Alert(
        name="GpuBatchJobStuck", severity="warning", for_=p.idle_batch_for,
        summary="A batch Job holds a GPU at zero utilisation.",
        description=CONTAINER_DESCRIPTION + " and has computed nothing on it for " + p.idle_batch_for
                    + ": the job is probably stuck.",
        expr=idle_expr(f'workload_kind=~"{p.batch_kinds}"', p.idle_batch_ratio, p),
        threshold=f"utilisation < {p.idle_batch_ratio} at every scrape for {p.idle_batch_for}",
        why="A Job exists to compute: one at zero for an hour is usually hung (a dead NCCL peer, a "
            "deadlock, waiting on storage) and burns GPU-hours. Judged as GpuAllocatedIdle is.",
        cases=idle_cases("Job", "train", "Deployment")))

    container_memory = ("max by (node, namespace, pod, container, gpu, uuid, gpu_instance_id, compute_instance_id) "
                        f"({last_value('nvidia_gpu_container_memory_used_bytes', p)})")
    totals = ("max by (node, uuid, gpu_instance_id, compute_instance_id) "
              "(nvidia_gpu_memory_total_bytes or nvidia_gpu_mig_memory_total_bytes)")
    mig = {"gpu_instance_id": "1", "compute_instance_id": "0"}  # the case's container holds MIG instance 1 of GPU 2
    rules.append(Alert(
        name="GpuContainerMemoryNearFull", severity="warning", for_=p.memory_full_for,
        summary="A container uses nearly all the memory of its GPU or MIG instance.",
        description="Container {{ $labels.namespace }}/{{ $labels.pod }}/{{ $labels.container }} uses more "
                    f"than {p.memory_full_ratio:.0%} of the memory of GPU {{{{ $labels.gpu }}}} "
                    "({{ $labels.uuid }}){{ if $labels.gpu_instance_id }}, MIG instance "
                    "{{ $labels.gpu_instance_id }}{{ end }} on node {{ $labels.node }}.",
        expr=f"{container_memory}\n  / on (node, uuid, gpu_instance_id, compute_instance_id) group_left ()\n"
             f"    {totals}\n> {p.memory_full_ratio}",
        threshold=f"container memory > {p.memory_full_ratio:.0%} of the device's (or MIG instance's) total",
        why="The next allocation fails with out-of-memory. MIG containers are compared with their instance.",
        cases=(Case({
            series("nvidia_gpu_container_memory_used_bytes",
                   container(2, "ml", "eval-0", "eval", **mig)): "1e9x4 9.8e9x40",
            series("nvidia_gpu_mig_memory_total_bytes", gpu(2, **mig)): "1e10x45",
            series("nvidia_gpu_memory_total_bytes", gpu(2)): "8e10x45",
            series("nvidia_gpu_container_memory_used_bytes", container(0, "ml", "train-0", "main")): "7e10x45",
            series("nvidia_gpu_memory_total_bytes", gpu(0)): "8e10x45",
        }, 5, {"node": NODE, "namespace": "ml", "pod": "eval-0", "container": "eval", "gpu": "2", "uuid": "GPU-2",
               **mig}),)))

    rules.append(Alert(
        device_alert=True, name="GpuBusyWithoutPod", severity="warning", for_=p.busy_unallocated_for,
        summary="A GPU is busy but no pod holds it.",
        description=f"{GPU_DESCRIPTION} is busy but the kubelet has allocated it to no pod: something outside "
                    "Kubernetes uses it.",
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_utilization_ratio', p)}) > {p.busy_unallocated_ratio}\n"
             f"  unless on (node, uuid) nvidia_gpu_allocation_info\n"
             f"  and on (node) max by (node) (\n    max_over_time(kube_gpu_exporter_collector_success"
             f"{{collector=\"kubelet\"}}[10m])\n  ) == 1",
        threshold=f"utilisation > {p.busy_unallocated_ratio} with no allocation, while the kubelet answered "
                  "in the last 10m",
        why="Needs the pod-resources API: without it every GPU looks unallocated, so the rule asks that the "
            "kubelet collector succeeded recently (shorter than the for:, so that a kubelet outage cannot "
            "make it fire).",
        cases=(Case({series("nvidia_gpu_utilization_ratio", gpu(3)): "0x4 0.8x40",
                     series("nvidia_gpu_utilization_ratio", gpu(0)): "0.8x45",
                     allocation(0, "ml", "train-0", kind="Job", workload="train"): "1x45",
                     series("kube_gpu_exporter_collector_success", agent(collector="kubelet")): "1x45"},
                    5, expect_gpu(3)),
               Case({series("nvidia_gpu_utilization_ratio", gpu(3)): "0.8x60",
                     series("kube_gpu_exporter_collector_success", agent(collector="kubelet")): "1x4 0x55"}, 0,
                    checks=((10, False), (20, False), (30, False)), boundary_checks=False,
                    name="the kubelet down: allocations unknown, no alert"))))
    return rules
