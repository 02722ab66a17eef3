"""Interconnect alerts: NVLink errors and links down, PCIe replays and degraded links.

They are evaluated in the ``gpu-interconnect`` rule group, every ``Params.alert_interval``."""

from __future__ import annotations

from alerts.alert import Alert
from alerts.cases import Case, expect_gpu, gpu, one_faulty_gpu, series
from alerts.params import Params
from alerts.promql import BY_GPU, last_value
from exporter.push.definitions import GPU_DESCRIPTION


def alerts(p: Params) -> list[Alert]:
    rules: list[Alert] = []
    rules.append(Alert(
        device_alert=True, name="GpuNvlinkErrorsRising", severity="warning", for_=p.nvlink_for,
        summary="NVLink errors are rising on a GPU.",
        description=f"{GPU_DESCRIPTION} counts more than {p.nvlink_errors} NVLink errors per {p.nvlink_window}.",
        expr=f"sum by ({BY_GPU}) (\n  increase(nvidia_gpu_nvlink_errors_total[{p.nvlink_window}])\n"
             f") > {p.nvlink_errors}",
        threshold=f"> {p.nvlink_errors} errors (all links and types) per {p.nvlink_window}",
        why="A few CRC errors are corrected by replays and are normal; a sustained rate points at a bad "
            "link, cable or bridge. Read from the GPU's totals over its links (4 series, one per type), not "
            "from the per-link counters of --collector.nvlink.links: the runbook says how to find the link.",
        cases=(one_faulty_gpu("nvidia_gpu_nvlink_errors_total", "0x4 0+10x40", "0+1x45", 11, {"type": "crc_flit"}),
               Case({series("nvidia_gpu_nvlink_errors_total", gpu(0, type=t)): "0x4 0+4x40"
                     for t in ("replay", "crc_flit", "crc_data")}, 10, expect_gpu(0),
                    name="errors of several types add up"))))

    links_up = f"max by ({BY_GPU}) ({last_value('nvidia_gpu_nvlink_links_up', p)})"
    rules.append(Alert(
        device_alert=True, name="GpuNvlinkLinkDown", severity="warning", for_=p.nvlink_down_for,
        summary="A GPU has fewer NVLink links up than it has, some still up.",
        description=GPU_DESCRIPTION + " has NVLink links down while others are up.",
        expr=f"({links_up} > 0)\n  < on (node, uuid) group_left () max by (node, uuid) (nvidia_gpu_nvlink_links)",
        threshold="0 < nvidia_gpu_nvlink_links_up < nvidia_gpu_nvlink_links",
        why="A GPU with no link up is not using NVLink (a board without its bridge, or a lost GPU): only a "
            "partial loss is a fault. Per GPU from two gauges; which link is down: the runbook, or "
            "--collector.nvlink.links.",
        cases=(Case({series("nvidia_gpu_nvlink_links_up", gpu(0)): "18x4 17x40",
                     series("nvidia_gpu_nvlink_links", gpu(0)): "18x45",
                     series("nvidia_gpu_nvlink_links_up", gpu(1)): "0x45",
                     series("nvidia_gpu_nvlink_links", gpu(1)): "12x45",
                     series("nvidia_gpu_nvlink_links_up", gpu(2)): "12x45",
                     series("nvidia_gpu_nvlink_links", gpu(2)): "12x45"},
                    5, expect_gpu(0)),)))

    rules.append(Alert(
        device_alert=True, name="GpuPcieReplaysRising", severity="warning", for_=p.pcie_replay_for,
        summary="PCIe replays are rising on a GPU.",
        description=f"{GPU_DESCRIPTION} counts more than {p.pcie_replays} PCIe replays per "
                    f"{p.pcie_replay_window}: the link retransmits.",
        expr=f"sum by ({BY_GPU}) (increase(nvidia_gpu_pcie_replays_total[{p.pcie_replay_window}])) "
             f"> {p.pcie_replays}",
        threshold=f"> {p.pcie_replays} replays per {p.pcie_replay_window}",
        why="Replays are the link correcting itself; a steady stream is a marginal riser, slot or cable "
            "before it fails (XID 79).",
        cases=(one_faulty_gpu("nvidia_gpu_pcie_replays_total", "0x4 0+3x40", "0+0.5x45", 9),
               Case({series("nvidia_gpu_pcie_replays_total", gpu(0)): "500x10 0x20"}, 0,
                    checks=((11, False), (15, False)), boundary_checks=False,
                    name="a counter reset (driver reload) fires nothing"))))

    busy = f"max by ({BY_GPU}) (nvidia_gpu_utilization_ratio) > {p.pcie_busy_ratio}"
    rules.append(Alert(
        device_alert=True, name="GpuPcieLinkDegraded", severity="warning", for_=p.pcie_degraded_for,
        summary="A busy GPU's PCIe link runs below its maximum generation or width.",
        description=GPU_DESCRIPTION + " is busy but its PCIe link runs below its maximum generation or width.",
        expr=f"(\n  max by ({BY_GPU}) (nvidia_gpu_pcie_link_generation)\n"
             f"    < max by ({BY_GPU}) (nvidia_gpu_pcie_link_max_generation)\n"
             f"  or\n  max by ({BY_GPU}) (nvidia_gpu_pcie_link_width)\n"
             f"    < max by ({BY_GPU}) (nvidia_gpu_pcie_link_max_width)\n"
             f")\nand on (node, uuid) ({busy})",
        threshold=f"generation or width below the maximum while utilisation > {p.pcie_busy_ratio}",
        why="An idle GPU drops its link to Gen1 to save power, so only a busy one is judged.",
        cases=(Case({series("nvidia_gpu_pcie_link_generation", gpu(0)): "5x4 4x40",
                     series("nvidia_gpu_pcie_link_max_generation", gpu(0)): "5x45",
                     series("nvidia_gpu_pcie_link_width", gpu(0)): "16x45",
                     series("nvidia_gpu_pcie_link_max_width", gpu(0)): "16x45",
                     series("nvidia_gpu_utilization_ratio", gpu(0)): "0.9x45",
                     series("nvidia_gpu_pcie_link_generation", gpu(1)): "1x45",
                     series("nvidia_gpu_pcie_link_max_generation", gpu(1)): "5x45",
                     series("nvidia_gpu_pcie_link_width", gpu(1)): "16x45",
                     series("nvidia_gpu_pcie_link_max_width", gpu(1)): "16x45",
                     series("nvidia_gpu_utilization_ratio", gpu(1)): "0x45"},
                    5, expect_gpu(0)),)))
    return rules
