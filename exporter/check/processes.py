"""The process rows: can the pids NVML reports be found under ``--path.procfs``, which pid
namespace the agent is in and what that means for shared GPUs, are the processes' cgroups
readable (docs/deploy.md#shared-gpus-and-hostpid)."""

from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from .. import catalog
from ..config import Config
from ..model.gpu import GpuSnapshot
from ..model.kube import ProcessOwners
from ..sources.base import run_in_daemon_thread
from ..sources.procfs import Procfs
from .report import DEGRADED, FAILED, OK, SKIPPED, Check

#: Seconds procfs may take to answer (a hung network mount would never).
PROCFS_SECONDS = 2.0
#: A GPU at least this busy with no process listed: the driver hides its processes from the agent.
BUSY_RATIO = 0.05

_HOSTPID = ("hostPID: true on the nodes whose shared GPUs matter (deploy/hostpid.patch.yaml, and the trade-off in "
            "docs/deploy.md#shared-gpus-and-hostpid)")


def gpu_pids(snapshot: GpuSnapshot) -> list[int]:
    """The pids NVML listed on the GPUs that answered, full GPUs and MIG instances."""
    up = [g for g in snapshot.gpus if g.up]
    return sorted({p.pid for g in up for p in g.processes} | {p.pid for g in up for m in g.mig_devices
                                                              for p in m.processes})


def busy_without_processes(snapshot: GpuSnapshot) -> list[int]:
    """GPUs (not in MIG mode) whose list was read and is empty while they compute."""
    return [g.index for g in snapshot.gpus if g.up and not g.mig_devices and g.processes_read and not g.processes
            and (g.readings.get(catalog.UTILIZATION) or 0.0) >= BUSY_RATIO]


def _skip_all(reason: str, simulated: bool = False) -> list[Check]:
    return [Check(id_, title, SKIPPED, reason, simulated=simulated) for id_, title in (
        ("procfs", "procfs"), ("pid_namespace", "pid namespace"), ("process_cgroups", "process cgroups"))]


async def check_processes(config: Config, snapshot: GpuSnapshot | None,
                          simulated_owners: Callable[[Sequence[int]], ProcessOwners] | None = None) -> list[Check]:
    if not config.procfs:
        return [Check("procfs", "procfs", SKIPPED, "off: --path.procfs is empty (shared GPUs are not split per "
                      "container)")]
    simulated = simulated_owners is not None
    root = config.procfs
    if simulated:
        procfs_row = Check("procfs", "procfs", OK, "the scenario names each process's container",
                           simulated=True)
        shares: bool | None = True
        owners_of = simulated_owners
    else:
        procfs = Procfs(root)
        read = run_in_daemon_thread(procfs.check, name="check-procfs")
        await asyncio.wait([read], timeout=PROCFS_SECONDS)
        error = read.exception() if read.done() else TimeoutError(f"no answer within {PROCFS_SECONDS:g}s")
        if error is not None:
            rows = [Check("procfs", "procfs", FAILED, f"cannot read {root}/1/cgroup: {error}",
                          f"{root} is not the host's procfs, or not mounted",
                          "mount the host's /proc read-only at /host/proc and pass --path.procfs=/host/proc (as "
                          "daemonset.yaml does), or --path.procfs= (empty) to turn the per-container split of "
                          "shared GPUs off")]
            return rows + _skip_all("procfs cannot be read")[1:]
        shares = procfs.shares_pid_namespace
        procfs_row = Check("procfs", "procfs", OK, f"{root} readable (the host's init: {root}/1/cgroup)")
        owners_of = procfs.owners
    if snapshot is None:
        return [procfs_row, *_skip_all("NVML listed no process: see the NVML rows", simulated)[1:]]

    pids = gpu_pids(snapshot)
    owners_read = run_in_daemon_thread(owners_of, pids, name="check-procfs-owners")
    await asyncio.wait([owners_read], timeout=PROCFS_SECONDS)
    if not owners_read.done() or owners_read.exception() is not None:
        why = owners_read.exception() if owners_read.done() else f"no answer within {PROCFS_SECONDS:g}s"
        return [procfs_row, *(Check(id_, title, FAILED, f"cannot place the GPU processes: {why}",
                                    f"{root} stopped answering", "the /host/proc mount (see the procfs row)",
                                    simulated=simulated)
                              for id_, title in (("pid_namespace", "pid namespace"),
                                                 ("process_cgroups", "process cgroups")))]
    owners: ProcessOwners = owners_read.result()
    busy = busy_without_processes(snapshot)
    return [procfs_row, _namespace_check(root, shares, pids, owners, busy, simulated),
            _cgroups_check(pids, owners, simulated)]


def _namespace_check(root: str, shares: bool | None, pids: list[int], owners: ProcessOwners, busy: list[int],
                     simulated: bool) -> Check:
    id_, title = "pid_namespace", "pid namespace"
    missing = sorted(owners.missing)
    details = {"shares_procfs_pid_namespace": shares, "gpu_pids": pids, "missing": missing,
               "in_containers": sorted(owners.containers), "on_host": sorted(owners.host),
               "busy_gpus_without_processes": busy}
    if simulated:
        return Check(id_, title, OK, f"as with hostPID: true; {len(pids)} GPU processes listed",
                     simulated=True, details=details)
    if shares:
        return Check(id_, title, OK, f"the agent shares {root}'s pid namespace (hostPID: true, or run on the "
                     f"host): NVML's {len(pids)} pids are looked up as they are", details=details)
    where = ("the agent's own (hostPID: false)" if shares is False
             else f"unknown ({root}/self cannot be read)")
    if missing or busy:
        seen = f"{where}; " + "; ".join(filter(None, (
            f"NVML lists pids {', '.join(map(str, missing[:10]))} that {root} does not show" if missing else "",
            f"GPU {', '.join(map(str, busy))} compute{'s' if len(busy) == 1 else ''} with no process listed"
            if busy else "")))
        return Check(id_, title, DEGRADED, seen,
                     "the driver translates GPU pids into the agent's pid namespace and leaves out the processes "
                     "it cannot translate: shared GPUs (time-slicing, MPS) are not split per container and their "
                     "idle holders are not reported", _HOSTPID, details=details)
    if owners.containers or owners.host:
        return Check(id_, title, OK, f"{where}; the driver reports host pids ({len(pids)} of {len(pids)} found in "
                     f"{root}): shared GPUs are split per container", details=details)
    return Check(id_, title, OK, f"{where}; NVML lists no GPU process now, so whether this driver reports host pids "
                 "is not known yet: run the check again while a GPU process runs if shared GPUs matter",
                 details=details)


def _cgroups_check(pids: list[int], owners: ProcessOwners, simulated: bool) -> Check:
    id_, title = "process_cgroups", "process cgroups"
    if not pids:
        return Check(id_, title, SKIPPED, "no GPU process listed now", simulated=simulated)
    pods = {ref.pod_uid for ref in owners.containers.values()}
    seen = (f"{len(owners.containers)} GPU process{'es' if len(owners.containers) != 1 else ''} in containers of "
            f"{len(pods)} pod{'s' if len(pods) != 1 else ''}, {len(owners.host)} on the host, "
            f"{len(owners.missing)} not found")
    details = {"containers": {str(pid): {"pod_uid": ref.pod_uid, "container_id": ref.container_id}
                              for pid, ref in sorted(owners.containers.items())},
               "unreadable": {str(pid): why for pid, why in sorted(owners.unreadable.items())}}
    if owners.unreadable:
        shown = "; ".join(f"{pid}: {why}" for pid, why in sorted(owners.unreadable.items())[:5])
        return Check(id_, title, DEGRADED, f"{seen}; unreadable: {shown}",
                     "the cgroup files of these processes cannot be read",
                     "the /host/proc mount (read-only is enough) and any AppArmor or SELinux policy that denies "
                     "reading /proc/<pid>/cgroup", simulated=simulated, details=details)
    return Check(id_, title, OK, seen, simulated=simulated, details=details)
