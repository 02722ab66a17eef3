"""The agent's memory and cycle time on the fake NVML node, with and without pod churn.

    .venv/bin/python bench/agent_rss.py [--seconds 30] [--interval 1]

Uses the test fakes (tests/fakenvml.py, fakekubelet.py, fakekubeapi.py): the real CLI runs
as a separate process on the fake libnvidia-ml.so.1, talks to a real gRPC kubelet on a unix
socket and to the fake API server through the real `kubernetes` client. RSS is sampled from
/proc every second. Four configurations run one after the other: NVML alone, with the kubelet,
with the API server too, and the last one with every pod replaced by a new one every second.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e import GPU, NODE, AgentProcess, value  # noqa: E402
from fakekubeapi import FakeKubeApi, make_pod  # noqa: E402
from fakekubelet import FakeKubelet  # noqa: E402
from fakenvml import FakeNode, build_fake_nvml  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def place_pods(generation: int, kubelet: FakeKubelet, api: FakeKubeApi) -> None:
    """One pod per GPU, all named after the generation (a churn replaces every one)."""
    pods = []
    for i, uuid in enumerate(GPU):
        name = f"job-{generation}-{i}"
        pods.append({"namespace": "ml", "name": name,
                     "containers": [{"name": "c", "devices": [{"resource": "nvidia.com/gpu", "ids": [uuid]}]}]})
        api.add_pod(make_pod("ml", name, node=NODE, owner=("Job", f"job-{generation}")))
        if generation:
            api.delete_pod("ml", f"job-{generation - 1}-{i}")
    kubelet.set_pods(pods)


def run(label: str, args: list[str], node: FakeNode, seconds: float, churn, interval: float) -> None:
    agent = AgentProcess(args, node.env, interval=interval)
    try:
        body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_nvml_up") == 1, timeout=30)
        start = rss_kib(agent.process.pid)
        peak, samples, generation = start, [], itertools.count(1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if churn:
                churn(next(generation))
            time.sleep(1)
            peak = max(peak, rss_kib(agent.process.pid))
            samples.append(rss_kib(agent.process.pid))
        body = agent.scrape()
        cycle = value(body, "kube_gpu_exporter_cycle_duration_seconds") or 0
        print(f"{label:42s} RSS {start / 1024:6.1f} MiB at start, {samples[-1] / 1024:6.1f} MiB after "
              f"{seconds:.0f} s (peak {peak / 1024:.1f}); last cycle {cycle * 1e3:.1f} ms")
    finally:
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kge-bench-"))
    node = FakeNode(work / "fake_nvml.conf", lib_path=build_fake_nvml(work))
    kubelet = FakeKubelet().start()
    api = FakeKubeApi().start()
    api.write_kubeconfig(work / "kubeconfig")
    place_pods(0, kubelet, api)
    kubelet_args = ["--kubelet.pod-resources-socket", kubelet.socket_path]
    kube_args = ["--kubernetes.enabled", "--kubernetes.node-name", NODE,
                 "--kubernetes.kubeconfig", str(work / "kubeconfig")]
    try:
        run("NVML", ["--no-kubelet.enabled"], node, args.seconds, None, args.interval)
        run("NVML + kubelet", kubelet_args, node, args.seconds, None, args.interval)
        run("NVML + kubelet + API server", kubelet_args + kube_args, node, args.seconds, None, args.interval)
        run("NVML + kubelet + API server, pod churn 1/s", kubelet_args + kube_args, node, args.seconds,
            lambda g: place_pods(g, kubelet, api), args.interval)
    finally:
        kubelet.close()
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
