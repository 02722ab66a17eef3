"""What NVML reports as GPU process ids, seen from this process's pid namespace (issue 17).

Run it on a GPU node while a CUDA process runs, once in the host's pid namespace and once in a
pid namespace of its own (docs/deploy.md#shared-gpus-and-hostpid says how, and what to record):

    python3 bench/nvml_pids.py                                      # the host's pid namespace
    sudo unshare --pid --fork --mount-proc python3 bench/nvml_pids.py --host-proc /mnt/hostproc

Prints one JSON object: the driver, this process's pid and pid namespace, and per GPU the plain
and MPS lists of compute processes (pid, memory) and the process utilisation samples since 0
(pid, SM %), each pid marked with whether this process's ``/proc`` and ``--host-proc`` (a bind
mount of the host's ``/proc``) show it. Needs ``nvidia-ml-py`` (pynvml), nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import pynvml


def _shows(procfs: str, pid: int) -> bool:
    return pid > 0 and os.path.exists(os.path.join(procfs, str(pid)))


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except pynvml.NVMLError as e:
        return f"error: {e}"


def probe(host_proc: str) -> dict[str, Any]:
    def pid_entry(pid: int, **extra: Any) -> dict[str, Any]:
        return {"pid": pid, "in_own_proc": _shows("/proc", pid), "in_host_proc": _shows(host_proc, pid), **extra}

    pynvml.nvmlInit()
    try:
        out: dict[str, Any] = {
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "pid": os.getpid(),
            "pid_namespace": os.readlink("/proc/self/ns/pid"),
            "host_proc": host_proc,
            "host_proc_self": _call(lambda: os.readlink(os.path.join(host_proc, "self"))),
            "gpus": [],
        }
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpu: dict[str, Any] = {"index": index}
            for name, fn in (("processes", pynvml.nvmlDeviceGetComputeRunningProcesses_v3),
                             ("mps_processes", pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3)):
                listed = _call(fn, handle)
                gpu[name] = listed if isinstance(listed, str) else [
                    pid_entry(int(p.pid), used_bytes=p.usedGpuMemory) for p in listed]
            samples = _call(pynvml.nvmlDeviceGetProcessUtilization, handle, 0)
            gpu["utilization_samples"] = samples if isinstance(samples, str) else [
                pid_entry(int(s.pid), sm_percent=s.smUtil) for s in samples]
            out["gpus"].append(gpu)
        return out
    finally:
        pynvml.nvmlShutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host-proc", default="/proc", help="the host's procfs (default %(default)s)")
    print(json.dumps(probe(parser.parse_args().host_proc), indent=2))


if __name__ == "__main__":
    main()
