"""The efficiency rules: per workload and GPU model, the GPUs it held, used and left idle, and the
power it drew, recorded in a group of their own at a fixed interval so that a range's integral is
a sum (docs/efficiency.md).

A GPU-hour figure over a range is ``sum_over_time(<record>[range]) * interval / 3600`` with the
group's interval (``Params.efficiency_interval``): each evaluation adds what was held for one
interval, and an evaluation where a workload held nothing has no series and adds nothing.
(``avg_over_time`` would average over the evaluations where the series exists, so a CronJob that
holds a GPU an hour a day would count as holding it all day.) ``kube-gpu-exporter report`` and
the efficiency dashboard read them so.

How much of a GPU each holder counts for (``ALLOCATED_SHARE``): a whole GPU 1; a time-sliced, MPS
or shared-claim GPU 1/n for each of its n holders; a MIG instance its compute slices over the
GPU's (``3g.40gb``: 3/7, ``Params.mig_slices``), shared by its holders as a GPU is. Compute slices,
not memory: a full split of a GPU into instances then adds up to one GPU whatever the profiles
(1g.10gb x 7 is 7/8 of the memory, 7/7 of the slices).

How busy a holder is (``BUSY``): its container's utilisation (on a shared GPU, its processes'
share of the GPU, so the holders of one GPU add up to the GPU's reading); on a MIG instance, for
which NVML reports no utilisation, its GPU instance's graphics activity where the profiling
group is on, else 1 while the instance runs a process and 0 while it runs none.
"""

from __future__ import annotations

from typing import Mapping

from alerts.params import Params
from alerts.recording import SHARE

GROUP = "kube-gpu-exporter.efficiency"

_DEVICE = "node, uuid, gpu_instance_id, compute_instance_id"
_CONTAINER_ON_DEVICE = "node, namespace, pod, container, uuid, gpu_instance_id, compute_instance_id"
_KEY = "namespace, workload_kind, workload, model"

#: Per container and device it holds, with its workload: the GPUs it holds.
ALLOCATED_SHARE = "node_device_holder:nvidia_gpu_allocated_gpus:share"
#: Per container and device it holds: how busy the device is for it (0..1).
BUSY = "node_device_holder:nvidia_gpu_busy:ratio"
#: Per namespace, workload kind, workload and GPU model, in GPUs (integrate with sum_over_time).
ALLOCATED = "namespace_workload_model:nvidia_gpu_allocated_gpus:sum"
USED = "namespace_workload_model:nvidia_gpu_used_gpus:sum"
SM_ACTIVE = "namespace_workload_model:nvidia_gpu_sm_active_gpus:sum"
IDLE = "namespace_workload_model:nvidia_gpu_idle_gpus:sum"
POWER = "namespace_workload_model:nvidia_gpu_power_watts:sum"
#: The per-workload records, in the order of the report's columns.
INTEGRALS = (ALLOCATED, USED, SM_ACTIVE, IDLE, POWER)
#: Records that read a series of a collector group that is off by default (profiling), where it
#: is on: without it SM_ACTIVE has no series, and BUSY on a MIG instance falls back to its
#: processes (docs/efficiency.md).
READS_OPT_IN = {BUSY: ("nvidia_gpu_graphics_active_ratio",), SM_ACTIVE: ("nvidia_gpu_sm_active_ratio",)}

#: The compute slices of the MIG profiles (``<n>g.<memory>``; a compute instance ``<n>c.<...>``).
MIG_PROFILE_SLICES = (1, 2, 3, 4, 7)


def _per_workload(expr: str) -> str:
    """``expr`` (per holder and device, with the model of the device's GPU) summed per workload
    and model."""
    return f"sum by ({_KEY}) (\n  {expr}\n)"


def mig_fraction(p: Params) -> str:
    """Per MIG instance, its compute slices over the GPU's (from ``nvidia_gpu_mig_info{profile}``)."""
    return "\n    or ".join(
        f'max by ({_DEVICE}) (nvidia_gpu_mig_info{{profile=~"{n}g[.].*|{n}c[.].*"}}) * {n} / {p.mig_slices}'
        for n in MIG_PROFILE_SLICES)


def efficiency_rules(p: Params) -> list[tuple[str, str]]:
    """(record, expr), in evaluation order."""
    busy_whole = (f'max by ({_CONTAINER_ON_DEVICE}) (nvidia_gpu_container_utilization_ratio{{gpu_instance_id=""}})\n'
                  f"  * on ({_CONTAINER_ON_DEVICE}) group_left (workload_kind, workload, model) ({ALLOCATED_SHARE} > bool 0)")
    mig_holders = f'({ALLOCATED_SHARE}{{gpu_instance_id!=""}} > bool 0)'
    busy_mig_gpm = (f"{mig_holders}\n  * on (node, uuid, gpu_instance_id) group_left ()\n"
                    f'    max by (node, uuid, gpu_instance_id) (nvidia_gpu_graphics_active_ratio{{gpu_instance_id!=""}})')
    busy_mig_processes = (f"{mig_holders}\n  * on ({_DEVICE}) group_left ()\n"
                          f"    (max by ({_DEVICE}) (nvidia_gpu_mig_processes) > bool 0)")
    # Used GPUs: on a whole or shared GPU the container's utilisation is already its part of the
    # whole GPU; on a MIG instance its busy ratio is of the instance, so it is scaled by the share.
    used = f'{BUSY}{{gpu_instance_id=""}}\n  or {BUSY}{{gpu_instance_id!=""}} * {ALLOCATED_SHARE}'
    idle = f"{ALLOCATED_SHARE}\n  and on ({_CONTAINER_ON_DEVICE}) ({BUSY} < {p.idle_ratio})"
    # SM activity per GPU, or per GPU instance on a MIG GPU, times the holder's share of it.
    sm = (f"{ALLOCATED_SHARE}\n  * on (node, uuid, gpu_instance_id) group_left ()\n"
          "    max by (node, uuid, gpu_instance_id) (nvidia_gpu_sm_active_ratio)")
    power = (f"{ALLOCATED_SHARE}\n  * on (node, uuid) group_left ()\n"
             "    max by (node, uuid) (nvidia_gpu_power_watts)")
    return [
        # The GPU's model joined here once, so that the sums below need no join of their own.
        (ALLOCATED_SHARE,
         f"(\n  {SHARE}\n  * on ({_DEVICE}) group_left ()\n    (\n    {mig_fraction(p)}\n    )\n"
         f'  or {SHARE}{{gpu_instance_id=""}}\n)\n'
         "* on (node, uuid) group_left (model)\n  max by (node, uuid, model) (nvidia_gpu_info)"),
        (BUSY, f"{busy_whole}\nor\n{busy_mig_gpm}\nor\n{busy_mig_processes}"),
        (ALLOCATED, _per_workload(ALLOCATED_SHARE)),
        (USED, _per_workload(f"(\n  {used}\n  )")),
        (SM_ACTIVE, _per_workload(f"(\n  {sm}\n  )")),
        (IDLE, _per_workload(f"(\n  {idle}\n  )")),
        (POWER, _per_workload(f"(\n  {power}\n  )")),
    ]


EFFICIENCY_DOCS: Mapping[str, str] = {
    ALLOCATED_SHARE: "Per container and device it holds, with its workload and the GPU's `model`: the GPUs it holds "
                     "(a whole GPU 1, a shared GPU 1/n, a MIG instance its compute slices / `mig_slices`, divided by "
                     "its holders). Group "
                     f"`{GROUP}`, like the rows below.",
    BUSY: "Per container and device it holds: the container's utilisation; on a MIG instance its GPU instance's "
          "graphics activity with `--collector.profiling`, else 1 while the instance runs a process.",
    ALLOCATED: "Per `namespace, workload_kind, workload, model`: GPUs held. `sum_over_time([range]) * interval / "
               "3600` is GPU-hours ([efficiency.md](efficiency.md)).",
    USED: "The same, GPUs used: held GPUs weighted by their busy ratio (on a shared GPU, the container's part of it).",
    SM_ACTIVE: "The same, held GPUs weighted by SM activity (only where `--collector.profiling` is on).",
    IDLE: "The same, GPUs held by containers busy below `idle_ratio` (the threshold of GpuAllocatedIdle).",
    POWER: "The same, board power times the holder's share of the board, in watts (integrate: energy).",
}
