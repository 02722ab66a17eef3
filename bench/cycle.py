"""Collection cycle cost on the fake NVML library: Python work per cycle, and concurrency.

    .venv/bin/python bench/cycle.py [--cycles 50] [--profile]

Runs the agent's own cycle (``Agent.collect_once``: NVML reads in worker threads, the kubelet,
process cgroups, attribution, rendering) in this process, against the fake libnvidia-ml.so.1
of the tests (answering at once unless told to be slow):

* ``8 GPUs``: eight H100s, one process each, NVML only;
* ``64 MIG, 200 pods``: sixteen GPUs with four MIG instances each, 200 pods holding them
  (time-sliced MIG replicas, ``MIG-<uuid>::<n>``) through a real gRPC kubelet (the test fake,
  in its own process), workloads from a static pod list, one process per pod in a fake /proc;
* ``delay``: every GPU's utilisation, memory, power, temperature and clock reads sleep 50 ms
  each in the library (``gpu.<i>.delay.<read>``); first on GPU 0 alone, then on all eight: if
  the GPUs are read concurrently the second cycle takes about as long as the first, not 8x;
* ``H200 latencies``: the per-call latencies measured on a real H200 (``bench/nvml_cost.py``:
  ``h200_delays``) on all eight GPUs: what a real 8-GPU cycle would take.

Per cycle: wall time, and CPU time of the whole process (all threads): with a fake that answers
at once, CPU time is the Python work; of it, the NVML reads, the exposition (render) and the status
page (its model, HTML and JSON). ``--profile`` prints the cProfile top of the 8-GPU case.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, save  # noqa: E402
from e2e import FakePod, write_procfs  # noqa: E402
from fakenvml import FakeNode, a100_mig, build_fake_nvml, h100, load_into_pynvml  # noqa: E402
from nvml_cost import h200_delays  # noqa: E402

from exporter import agent as agent_module  # noqa: E402
from exporter.agent import Agent  # noqa: E402
from exporter.cli import build_agent, build_sources  # noqa: E402
from exporter.config import parse_config  # noqa: E402
from exporter.model.kube import PodMeta  # noqa: E402
from exporter.sources.kubelet.client import PodResourcesClient  # noqa: E402
from exporter.sources.nvml import NvmlBackend, fields  # noqa: E402

SLOW_READS = ("utilization", "memory_v2", "memory", "power_mw", "temperature", "clock")
class StaticPods:
    """The API server's pods, fixed: what a pod watch answers (sources/watches.py), without one."""

    connected = True

    def __init__(self, pods: dict[str, PodMeta]) -> None:
        self._pods = pods

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_synced(self, timeout: float) -> bool: return True
    def pods(self): return self._pods  # noqa: ANN201
    def error_counts(self): return {}  # noqa: ANN201


class ThreadCpu:
    """Sums the CPU time of the calls of one method, in whatever thread they run."""

    def __init__(self, owner, name: str) -> None:  # noqa: ANN001
        self.total = 0.0
        original = getattr(owner, name)
        self.restore = lambda: setattr(owner, name, original)

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.total += time.thread_time() - started
        setattr(owner, name, timed)


def run_cycles(agent, cycles: int, profile: cProfile.Profile | None = None) -> dict:  # noqa: ANN001
    """Median per cycle: wall time, CPU time of the process, and that CPU split into NVML reads
    (pynvml and the fake library included), rendering the exposition, the status page, and the
    rest (attribution, kubelet client, cgroups, bookkeeping, the event loop)."""
    nvml = ThreadCpu(agent.gpus.backend, "read_gpu")
    render = ThreadCpu(agent.renderer, "render")
    page = ThreadCpu(agent_module, "render_status_page")

    async def go() -> dict:
        await agent.start_sources()
        for _ in range(3):  # warm-up: NVML init, identities, the channel
            await agent.collect_once()
        walls, cpus, nvmls, renders, pages = [], [], [], [], []
        for _ in range(cycles):
            cpu, wall, nvml0, render0, page0 = (time.process_time(), time.perf_counter(), nvml.total, render.total,
                                                page.total)
            if profile:
                profile.enable()
            await agent.collect_once()
            if profile:
                profile.disable()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            nvmls.append(nvml.total - nvml0)
            renders.append(render.total - render0)
            pages.append(page.total - page0)
        series = sum(1 for line in agent.exposition.text.decode().splitlines() if line and line[0] != "#")
        await agent.stop()
        page.restore()
        others = [c - n - r - p for c, n, r, p in zip(cpus, nvmls, renders, pages)]
        return {"wall_ms": statistics.median(walls) * 1e3, "cpu_ms": statistics.median(cpus) * 1e3,
                "nvml_cpu_ms": statistics.median(nvmls) * 1e3, "render_cpu_ms": statistics.median(renders) * 1e3,
                "page_cpu_ms": statistics.median(pages) * 1e3, "other_cpu_ms": statistics.median(others) * 1e3,
                "series": series}
    return asyncio.run(go())


def nvml_agent(node: FakeNode, *args: str):  # noqa: ANN201
    node.write()
    return build_agent(parse_config(["--collector.interval", "10", *args]))


def mig_node(work: Path, node: FakeNode):  # noqa: ANN201
    """16 GPUs x 4 MIG instances, 200 pods on time-sliced replicas of them."""
    gpus, pods, kubelet_pods, metas = [], [], [], {}
    migs = []
    for i in range(16):
        gpu = a100_mig(i, mig=[
            {"uuid": f"MIG-{i:08x}-0000-4000-8000-{j:012x}", "gi": 1 + j, "ci": 0, "profile": "1g.10gb",
             "mem_total": 10 << 30, "mem_used": 2 << 30, "processes": []} for j in range(4)])
        gpus.append(gpu)
        migs += [(i, j, m["uuid"]) for j, m in enumerate(gpu["mig"])]
    for n in range(200):
        i, j, uuid = migs[n % len(migs)]
        pid = 100000 + n
        gpus[i]["mig"][j]["processes"].append((pid, 1 << 30, 0))
        name = f"infer-{n:03d}"
        uid = f"{n:08x}-0000-4000-8000-000000000000"
        cid = f"{n:064x}"
        device = f"{uuid}::{n // len(migs)}"
        pods.append(FakePod("serving", name, uid, ("Deployment", "infer"), "server", cid,
                            "nvidia.com/gpu", (device,), (pid,)))
        kubelet_pods.append({"namespace": "serving", "name": name, "containers": [
            {"name": "server", "devices": [{"resource": "nvidia.com/gpu", "ids": [device]}]}]})
        metas[uid] = PodMeta("serving", name, uid, "Deployment", "infer", {}, {cid: "server"}, "Running")
    node.gpus = gpus
    node.write()
    procfs = write_procfs(work / "proc", pods)
    pods_file = work / "pods.json"
    pods_file.write_text(json.dumps({"pods": kubelet_pods}))
    socket_path = tempfile.mkdtemp(prefix="kl", dir="/tmp") + "/kubelet.sock"
    kubelet = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakekubelet.py"), "--socket", socket_path,
                                "--pods", str(pods_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(socket_path):
            break
        time.sleep(0.05)
    config = parse_config(["--collector.interval", "10", "--path.procfs", str(procfs),
                           "--kubelet.pod-resources-socket", socket_path])
    kubelet_client = PodResourcesClient(socket_path, timeout_seconds=config.kubelet_timeout)
    agent = Agent(config, *build_sources(config, NvmlBackend(), kubelet=kubelet_client, pods=StaticPods(metas)))
    return agent, kubelet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kge-cycle-"))
    lib = build_fake_nvml(work)
    node = FakeNode(work / "fake_nvml.conf", lib_path=lib, gpus=[h100(i) for i in range(8)])
    os.environ["FAKE_NVML_CONFIG"] = str(node.path)
    load_into_pynvml(lib)
    results = {}

    profile = cProfile.Profile() if args.profile else None
    results["8 GPUs"] = run_cycles(nvml_agent(node, "--no-kubelet.enabled"), args.cycles, profile)
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)

    delay = 0.05
    node.gpus[0]["delay"] = dict.fromkeys(SLOW_READS, delay)
    results["delay on GPU 0"] = run_cycles(nvml_agent(node, "--no-kubelet.enabled"), max(5, args.cycles // 5))
    for gpu in node.gpus:
        gpu["delay"] = dict.fromkeys(SLOW_READS, delay)
    results["delay on 8 GPUs"] = run_cycles(nvml_agent(node, "--no-kubelet.enabled"), max(5, args.cycles // 5))
    results["concurrency"] = {"ratio_all_to_one": results["delay on 8 GPUs"]["wall_ms"]
                              / results["delay on GPU 0"]["wall_ms"], "sequential_would_be": 8.0}
    for gpu in node.gpus:
        gpu["delay"] = h200_delays([f.field_id for f in fields.GPU_FIELDS])
    results["8 GPUs, H200 call latencies"] = run_cycles(nvml_agent(node, "--no-kubelet.enabled"),
                                                        max(5, args.cycles // 5))
    for gpu in node.gpus:
        gpu.pop("delay")

    agent, kubelet = mig_node(work, node)
    try:
        results["64 MIG, 200 pods"] = run_cycles(agent, args.cycles)
    finally:
        kubelet.terminate()
        kubelet.wait()

    for name, row in results.items():
        print(f"{name:30s} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    save("cycle", {"cases": results, "delay_seconds": delay})
    return 0


if __name__ == "__main__":
    sys.exit(main())
