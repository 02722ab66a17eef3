"""Interconnect alerts: NVLink errors and links down, PCIe replays and degraded links.

They are evaluated in the ``gpu-hardware`` rule group (alerts/rules.py says why)."""

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
            "link, cable or bridge.",
        cases=(one_faulty_gpu("nvidia_gpu_nvlink_errors_total", "0x4 0+10x40", "0+1x45", 11,
                              {"link": "3", "type": "crc_flit"}),)))

    rules.append(Alert(
        device_alert=True, name="GpuNvlinkLinkDown", severity="warning", for_=p.nvlink_down_for,
        summary="An NVLink link of a GPU is down while its other links are up.",
        description=GPU_DESCRIPTION + " has NVLink link {{ $labels.link }} down while its other links are up.",
        expr=f"max by ({BY_GPU}, link) ({last_value('nvidia_gpu_nvlink_up', p)}) == 0\n"
             f"  and on (node, uuid) max by (node, uuid) (nvidia_gpu_nvlink_up) == 1",
        threshold="nvidia_gpu_nvlink_up == 0 on one link, 1 on another",
        why="A GPU with all links down is not using NVLink (or is lost): only a partial loss is a fault.",
        cases=(Case({series("nvidia_gpu_nvlink_up", gpu(0, link="0")): "1x45",
                     series("nvidia_gpu_nvlink_up", gpu(0, link="1")): "1x4 0x40",
                     series("nvidia_gpu_nvlink_up", gpu(1, link="0")): "0x45",
                     series("nvidia_gpu_nvlink_up", gpu(1, link="1")): "0x45"},
                    5, expect_gpu(0, link="1")),)))

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
