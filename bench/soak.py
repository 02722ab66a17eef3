"""Soak: memory, threads and open files of the agent over a long run with heavy churn.

    .venv/bin/python bench/soak.py [--seconds 3600] [--interval 1] [--pods 64] [--png docs/perf/soak.png]

The real CLI runs as a separate process on the fake libnvidia-ml.so.1 of the tests (eight H100s),
with the test fakes as its kubelet (a real gRPC server) and API server, and a procfs tree of its
own. Every interval, the whole node churns:

- every pod is replaced by new ones (``--pods`` pods, time-sliced over the GPUs, new names, uids,
  container ids and a churning label value copied through ``--kubernetes.pod-labels``): over an
  hour at 1 s, hundreds of thousands of pods come and go;
- every GPU runs new processes (new pids, each with a cgroup file in the procfs tree);
- an XID event with a random code (1 to ``--xid-codes``) lands on a random GPU;
- 20 scrapes of /metrics.

Sampled from /proc every ``--sample`` seconds: RSS, threads, open fds, and the series count of a
scrape. Printed as it goes; at the end the growth from the first to the last quarter of the run,
a JSON result (``bench/results/soak.json``) and, when matplotlib is installed, a PNG of the three
over time. Numbers, not assertions: flat lines are the pass mark, read by a human.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PLOTS, Agent, mib, proc_status, save, series_count  # noqa: E402
from fakekubeapi import FakeKubeApi, make_pod  # noqa: E402
from fakekubelet import FakeKubelet  # noqa: E402
from fakenvml import FakeNode, build_fake_nvml, h100  # noqa: E402

NODE = "gpu-node-soak"
GPUS = 8
PROCESSES_PER_GPU = 4


class Churn:
    """Replaces every pod, process and pid of the node at each ``step``."""

    def __init__(self, node: FakeNode, kubelet: FakeKubelet, api: FakeKubeApi, procfs: Path, pods: int,
                 xid_codes: int) -> None:
        self.node, self.kubelet, self.api, self.procfs, self.pods = node, kubelet, api, procfs, pods
        self.xid_codes = xid_codes
        self.live: list[tuple[str, int]] = []  # (pod name, pid) of the current generation
        self.random = random.Random(7)
        self.next_pid = 10_000

    def step(self, generation: int) -> None:
        old = self.live
        self.live, kubelet_pods, per_gpu = [], [], {i: [] for i in range(GPUS)}
        for n in range(self.pods):
            gpu = n % GPUS
            name, uid, container_id = f"job-{generation}-{n}", str(uuid.uuid4()), uuid.uuid4().hex * 2
            pid = self.next_pid
            self.next_pid = self.next_pid + 1 if self.next_pid < 4_000_000 else 10_000
            self.live.append((name, pid))
            kubelet_pods.append({"namespace": "ml", "name": name, "containers": [{"name": "c", "devices": [
                {"resource": "nvidia.com/gpu.shared", "ids": [f"{self.node.gpus[gpu]['uuid']}::{n // GPUS}"]}]}]})
            self.api.add_pod(make_pod("ml", name, uid=uid, node=NODE, owner=("Job", f"job-{generation}"),
                                      labels={"team": f"team-{generation % 1000}"}, containers={"c": container_id}))
            (self.procfs / str(pid)).mkdir(parents=True, exist_ok=True)
            (self.procfs / str(pid) / "cgroup").write_text(
                f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-{container_id}.scope\n")
            if len(per_gpu[gpu]) < PROCESSES_PER_GPU:
                per_gpu[gpu].append((pid, (1 + n % 7) << 30, 10 + n % 80))
        self.kubelet.set_pods(kubelet_pods)
        for gpu, processes in per_gpu.items():
            self.node.update_gpu(gpu, processes=processes)
        self.node.add_xid(self.random.randrange(GPUS), self.random.randint(1, self.xid_codes))
        for name, pid in old:
            self.api.delete_pod("ml", name)
            shutil.rmtree(self.procfs / str(pid), ignore_errors=True)


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def quarter_growth(values: list[float]) -> tuple[float, float]:
    """Median of the first and of the last quarter of the samples."""
    q = max(1, len(values) // 4)
    return statistics.median(values[:q]), statistics.median(values[-q:])


def plot(timeline: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
        return None
    minutes = [s["t"] / 60 for s in timeline]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, key, label in ((axes[0], "rss_mib", "RSS (MiB)"), (axes[1], "threads", "threads"),
                           (axes[2], "fds", "open fds")):
        ax.plot(minutes, [s[key] for s in timeline])
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("kube-gpu-exporter soak: every pod, pid and process replaced each interval")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--interval", type=float, default=1.0, help="collection interval and churn period")
    parser.add_argument("--pods", type=int, default=64, help="pods on the node at any time")
    parser.add_argument("--xid-codes", type=int, default=160,
                        help="XID codes drawn from (each new code on a GPU is a new counter series)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--png", type=Path, default=PLOTS / "soak.png")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kge-soak-"))
    node = FakeNode(work / "fake_nvml.conf", lib_path=build_fake_nvml(work), gpus=[h100(i) for i in range(GPUS)])
    kubelet = FakeKubelet().start()
    api = FakeKubeApi().start()
    api.write_kubeconfig(work / "kubeconfig")
    (work / "proc" / "1").mkdir(parents=True)  # init on the host: the agent checks procfs by it
    (work / "proc" / "1" / "cgroup").write_text("0::/init.scope\n")
    churn = Churn(node, kubelet, api, work / "proc", args.pods, args.xid_codes)
    churn.step(0)
    agent = Agent(["--kubelet.pod-resources-socket", kubelet.socket_path, "--path.procfs", str(work / "proc"),
                   "--kubernetes.enabled", "--kubernetes.node-name", NODE,
                   "--kubernetes.kubeconfig", str(work / "kubeconfig"), "--kubernetes.pod-labels", "team"],
                  env=node.env, interval=args.interval)
    timeline: list[dict] = []
    generation = 0
    try:
        agent.ready_after()
        started = next_sample = time.monotonic()
        print(f"{'t (s)':>7} {'RSS MiB':>8} {'threads':>7} {'fds':>4} {'series':>7} {'pods so far':>11}", flush=True)
        while time.monotonic() - started < args.seconds:
            generation += 1
            churn.step(generation)
            for _ in range(20):
                agent.scraper.get()
            if time.monotonic() >= next_sample:
                status = proc_status(agent.process.pid)
                sample = {"t": round(time.monotonic() - started, 1), "rss_mib": mib(status["rss"]),
                          "threads": status["threads"], "fds": open_fds(agent.process.pid),
                          "series": series_count(agent.scraper.text()), "pods_seen": generation * args.pods}
                timeline.append(sample)
                print(f"{sample['t']:7.0f} {sample['rss_mib']:8.1f} {sample['threads']:7d} {sample['fds']:4d} "
                      f"{sample['series']:7d} {sample['pods_seen']:11d}", flush=True)
                next_sample += args.sample
            time.sleep(max(0.0, started + generation * args.interval - time.monotonic()))
        if agent.process.poll() is not None:
            print(f"the agent exited: {agent.stderr()[-2000:]}", file=sys.stderr)
            return 1
    finally:
        agent.stop()
        kubelet.close()
        api.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for key in ("rss_mib", "threads", "fds", "series"):
        first, last = quarter_growth([s[key] for s in timeline])
        summary[key] = {"first_quarter": first, "last_quarter": last}
        print(f"{key:8s} first quarter {first:8.1f}  last quarter {last:8.1f}  ({last - first:+.1f})")
    png = plot(timeline, args.png)
    if png:
        print(f"plot: {png}")
    save("soak", {"seconds": args.seconds, "interval": args.interval, "pods": args.pods,
                  "pods_seen": generation * args.pods, "summary": summary, "timeline": timeline})
    return 0


if __name__ == "__main__":
    sys.exit(main())
