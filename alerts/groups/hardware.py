"""Hardware alerts: a GPU lost or missing, memory errors (ECC, row remapping, page retirement)."""

from __future__ import annotations

from alerts.alert import Alert, pushed_text
from alerts.cases import (EXCLUSIVE, EXCLUSIVE_UNTIL_20, NODE, ONE_POD_TWO_MIG, Case, allocation, expect_gpu, gpu,
                          nvml_up, one_faulty_gpu, series)
from alerts.params import Params
from alerts.promql import BY_GPU, last_value
from exporter.push import definitions
from exporter.push.definitions import GPU_DESCRIPTION


def alerts(p: Params) -> list[Alert]:
    rules: list[Alert] = []
    rules.append(Alert(
        **pushed_text(definitions.ECC_UNCORRECTABLE), device_alert=True, for_=p.ecc_for,
        expr=f"sum by ({BY_GPU}) (\n  increase(nvidia_gpu_ecc_errors_total{{type=\"uncorrected\"}}"
             f"[{p.event_window}])\n) > 0",
        threshold=f"any increase of the volatile uncorrected count in {p.event_window}",
        why="The volatile count is there from the GPU's first reading (at 0 after a driver load), so "
            "increase() sees the first error; a driver reload resets it to 0, which increase() reads as "
            "a reset, not as errors. The aggregate (lifetime) count is not used: it never decreases but "
            "carries old errors. Also pushed by the agent.",
        cases=(
            Case({series("nvidia_gpu_ecc_errors_total", gpu(2, type="uncorrected")): "0x4 1x40",
                  series("nvidia_gpu_ecc_errors_total", gpu(2, type="corrected")): "0x4 5x40",
                  series("nvidia_gpu_ecc_errors_total", gpu(1, type="uncorrected")): "0x45",
                  series("nvidia_gpu_ecc_errors_total", gpu(1, type="corrected")): "0+3x45",
                  **ONE_POD_TWO_MIG},
                 5, expect_gpu(2), checks=((15, False),),
                 name="the first error, on a GPU whose two MIG instances one pod holds"),
            Case({series("nvidia_gpu_ecc_errors_total", gpu(0, type="uncorrected")): "2x10 0x20"}, 0,
                 checks=((5, False), (11, False), (15, False)), boundary_checks=False,
                 name="a driver reload resets the count: no alert"),
        )))

    rules.append(Alert(
        **pushed_text(definitions.GPU_LOST), device_alert=True, for_=p.gpu_lost_for,
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_up', p)}) == 0\n"
             f"  unless on (node) max by (node) ({last_value('kube_gpu_exporter_nvml_up', p)}) == 0",
        threshold="nvidia_gpu_up == 0 while NVML as a whole is up",
        why=f"`for: {p.gpu_lost_for}` skips a hung read or two; a GPU that is really lost stays lost. The "
            "last sample is carried over missed scrapes, so a scrape that fails (the agent restarting) does "
            "not resolve it. While NVML as a whole is down (`kube_gpu_exporter_nvml_up` 0: the driver, or "
            "the agent restarting NVML) every GPU reads as down: that is one problem, "
            "KubeGpuExporterNvmlDown's, not one GpuLost per GPU. Also pushed by the agent: at once when "
            "NVML says the GPU is lost, after the same minute for any other failed read.",
        cases=(
            Case({series("nvidia_gpu_up", gpu(0)): "1x4 0x40", series("nvidia_gpu_up", gpu(1)): "1x45",
                  **nvml_up("1x45"), **EXCLUSIVE},
                 5, expect_gpu(0), name="held by one pod"),
            Case({series("nvidia_gpu_up", gpu(0)): "1x4 0x10 stale stale 0x20", **nvml_up("1x15 stale stale 1x20")},
                 5, expect_gpu(0), checks=((15, True), (16, True), (17, True)),
                 name="two failed scrapes do not resolve it"),
            Case({series("nvidia_gpu_up", gpu(0)): "1x4 0x40", series("nvidia_gpu_up", gpu(1)): "1x4 0x40",
                  **nvml_up("1x4 0x40")}, 0, checks=((5, False), (6, False), (10, False), (30, False)),
                 boundary_checks=False, name="NVML down on the node (every GPU down): KubeGpuExporterNvmlDown's job"),
            Case({series("nvidia_gpu_up", gpu(0)): "1x10 0 0 1x60", series("nvidia_gpu_up", gpu(1)): "1x10 0 1x60",
                  **nvml_up("1x72")}, 0, checks=((5, False), (6, False), (7, False), (10, False)),
                 boundary_checks=False, interval="30s", name="a hung read or two (30 s scrapes) pages nobody"),
        )))

    rules.append(Alert(
        name="GpuMissingFromNode", severity="critical", for_=p.gpu_missing_for,
        summary="A node has fewer GPUs than it had in the last day.",
        description="Node {{ $labels.node }} shows fewer GPUs than it had in the last "
                    + p.gpu_missing_window + ": a GPU is gone from the bus or from the driver.",
        expr="(\n  count by (node) (max by (node, uuid) (nvidia_gpu_info))\n"
             "  or max by (node) (kube_gpu_exporter_nvml_up == 1) * 0\n)\n"
             f"  < on (node) max_over_time(node:nvidia_gpu_gpus:count[{p.gpu_missing_window}])",
        threshold=f"fewer GPUs than the maximum of the last {p.gpu_missing_window}",
        why="A GPU that vanished has no series at all, so nvidia_gpu_up cannot say it is down; the "
            "count per node can. Counted per node (a replaced GPU brings the count back). A node left "
            "with no GPU at all has no series to count: while NVML is up there, its count is 0 (a node "
            "whose NVML is down is KubeGpuExporterNvmlDown's). The count now is computed in the rule, not "
            "read from its recording rule: rule groups run independently, and the recorded value may be "
            "one evaluation late.",
        cases=(Case({series("nvidia_gpu_info", gpu(0)): "1x60", series("nvidia_gpu_info", gpu(1)): "1x30 stale",
                     **nvml_up("1x60")}, 31, {"node": NODE}, name="2 GPUs -> 1"),
               Case({series("nvidia_gpu_info", gpu(0)): "1x30 stale", **nvml_up("1x60"),
                     series("nvidia_gpu_info", gpu(0, node="gpu-node-2")): "1x30 stale",
                     **nvml_up("1x30 0x30", node="gpu-node-2")}, 31, {"node": NODE},
                    name="1 GPU -> 0 while NVML is up; a node whose NVML is down is not judged"))))

    rules.append(Alert(
        device_alert=True, name="GpuRowRemapFailure", severity="critical", for_=p.row_remap_failure_for,
        summary="A GPU failed to remap a memory row: it needs service.",
        description=f"{GPU_DESCRIPTION} failed to remap a faulty memory row; it is out of spare rows and must "
                    "be replaced.",
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_remapped_rows_failure', p)}) == 1",
        threshold="nvidia_gpu_remapped_rows_failure == 1",
        why="A state, not an event: it stays 1 until the GPU is serviced.",
        cases=(one_faulty_gpu("nvidia_gpu_remapped_rows_failure", "0x4 1x40", "0x45", 5),)))

    rules.append(Alert(
        device_alert=True, name="GpuRowRemapPending", severity="warning", for_=p.pending_for,
        summary="A GPU has a memory row remap waiting for a reset.",
        description=f"{GPU_DESCRIPTION} has a row remap pending: it takes effect at the next GPU reset.",
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_remapped_rows_pending', p)}) == 1",
        threshold="nvidia_gpu_remapped_rows_pending == 1",
        why=f"Not urgent, but the faulty row stays in use until a reset: `for: {p.pending_for}` lets a "
            "planned reset happen first.",
        cases=(one_faulty_gpu("nvidia_gpu_remapped_rows_pending", "0x4 1x40", "0x45", 5),
               Case({series("nvidia_gpu_remapped_rows_pending", gpu(0)): "1x40",
                     allocation(0, "ml", "train-0", kind="Job", workload="train"): "1x9 stale",
                     allocation(0, "ml", "train-1", kind="Job", workload="train"): "_x10 1x30"},
                    0, expect_gpu(0), checks=((9, False), (16, True)),
                    name="the sole holder replaced during for: (a Job's next pod): on time, the same labels"),
               Case({series("nvidia_gpu_remapped_rows_pending", gpu(0)): "1x40", **EXCLUSIVE_UNTIL_20},
                    0, expect_gpu(0), checks=((25, True), (35, True)),
                    name="a kubelet outage past the grace period (the allocations vanish at 20): the same alert, "
                         "holders empty"))))

    rules.append(Alert(
        device_alert=True, name="GpuRetiredPagesPending", severity="warning", for_=p.pending_for,
        summary="A GPU has memory pages waiting to be retired at the next reboot.",
        description=f"{GPU_DESCRIPTION} has memory pages pending retirement (older GPUs' equivalent of row "
                    "remapping).",
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_retired_pages_pending', p)}) == 1",
        threshold="nvidia_gpu_retired_pages_pending == 1",
        why="As GpuRowRemapPending, for GPUs before Ampere.",
        cases=(one_faulty_gpu("nvidia_gpu_retired_pages_pending", "0x4 1x40", "0x45", 5),)))
    return rules
