"""The agent's memory, threads and start-up on an 8-GPU fake NVML node, as the host's core count changes.

    .venv/bin/python bench/agent_rss.py [--seconds 20] [--interval 1] [--cpus 0,128]

The real CLI runs as a separate process on the fake libnvidia-ml.so.1 of the tests (eight H100s,
one process each), with the test fakes as its kubelet (a real gRPC server on a unix socket, one
pod per GPU) and API server (tests/fakekubeapi.py over HTTPS with a token: the agent's own
in-cluster client as in a DaemonSet, and a kubeconfig file through the ``kubernetes`` package). Each
configuration runs once with the core count as it is and once with the agent told the host has
128 cores (``bench/common.py: fake_cpus_env``: LD_PRELOAD for C libraries, ``os.cpu_count``
raised for Python). Sampled from /proc every second: RSS and threads. Also: seconds from spawn
until the port listens and until the first snapshot is served, and the wire size per series.

The last configuration replaces every pod each second (pod churn); the hour-long soak is
``bench/soak.py``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Agent, mib, save, series_count, thread_names  # noqa: E402
from fakekubeapi import FakeKubeApi, make_pod  # noqa: E402
from fakekubelet import FakeKubelet  # noqa: E402
from fakenvml import FakeNode, build_fake_nvml, h100  # noqa: E402

NODE = "gpu-node-bench"
GPUS = 8


def place_pods(generation: int, node: FakeNode, kubelet: FakeKubelet, api: FakeKubeApi) -> None:
    """One pod per GPU, all named after the generation (a churn replaces every one)."""
    pods = []
    for i, gpu in enumerate(node.gpus):
        name = f"job-{generation}-{i}"
        pods.append({"namespace": "ml", "name": name,
                     "containers": [{"name": "c", "devices": [{"resource": "nvidia.com/gpu", "ids": [gpu["uuid"]]}]}]})
        api.add_pod(make_pod("ml", name, node=NODE, owner=("Job", f"job-{generation}")))
        if generation:
            api.delete_pod("ml", f"job-{generation - 1}-{i}")
    kubelet.set_pods(pods)


def run(label: str, args: list[str], env: dict[str, str], seconds: float, churn, interval: float,  # noqa: ANN001
        cpus: int) -> dict:
    agent = Agent(args, env=env, fake_cpus=cpus, interval=interval)
    try:
        listening = agent.listening_after()
        ready = agent.ready_after()
        timeline, generation = [], itertools.count(1)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if churn:
                churn(next(generation))
            time.sleep(1)
            timeline.append({"t": round(time.monotonic() - started, 1), **agent.status()})
        text = agent.scraper.text()
        _, wire = agent.scraper.timed()
        names = thread_names(agent.process.pid)
    finally:
        agent.stop()
    series = series_count(text)
    row = {"label": label, "cpus": cpus or None, "listening_s": listening, "first_snapshot_s": ready,
           "rss_start_mib": mib(timeline[0]["rss"]), "rss_end_mib": mib(timeline[-1]["rss"]),
           "rss_peak_mib": mib(max(s["rss"] for s in timeline)), "threads": max(s["threads"] for s in timeline),
           "thread_names": names, "series": series, "gzip_bytes_per_series": wire / series,
           "timeline": timeline}
    print(f"{label:38s} cpus {cpus or 'as is':>5}  RSS {row['rss_start_mib']:5.1f} -> {row['rss_end_mib']:5.1f} MiB"
          f"  threads {row['threads']:2d}  listening {listening:.2f} s  first snapshot {ready:.2f} s"
          f"  {row['gzip_bytes_per_series']:.1f} B/series", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--cpus", default="0,128", help="reported core counts; 0: as it is")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kge-rss-"))
    node = FakeNode(work / "fake_nvml.conf", lib_path=build_fake_nvml(work), gpus=[h100(i) for i in range(GPUS)])
    kubelet = FakeKubelet().start()
    # HTTPS with a service-account token, as the API server is seen from a DaemonSet pod
    api = FakeKubeApi(token="sa-token", tls_dir=work / "tls").start()
    api.write_kubeconfig(work / "kubeconfig", token="sa-token")
    account = work / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token")
    (account / "ca.crt").write_bytes(api.ca_cert_path.read_bytes())
    in_cluster = {**node.env, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port),
                  "KGE_BENCH_SA_DIR": str(account)}
    place_pods(0, node, kubelet, api)
    kubelet_args = ["--kubelet.pod-resources-socket", kubelet.socket_path]
    kube_args = ["--kubernetes.enabled", "--kubernetes.node-name", NODE]
    kubeconfig_args = [*kube_args, "--kubernetes.kubeconfig", str(work / "kubeconfig")]
    configs = [
        ("NVML", ["--no-kubelet.enabled"], node.env, None),
        ("NVML + kubelet", kubelet_args, node.env, None),
        ("NVML + kubelet + API server", kubelet_args + kube_args, in_cluster, None),
        ("the same, kubeconfig file (development)", kubelet_args + kubeconfig_args, node.env, None),
        ("the same in-cluster, pods replaced each second", kubelet_args + kube_args, in_cluster,
         lambda g: place_pods(g, node, kubelet, api)),
    ]
    rows = []
    try:
        for cpus in [int(c) for c in args.cpus.split(",")]:
            for label, agent_args, env, churn in configs:
                rows.append(run(label, agent_args, env, args.seconds, churn, args.interval, cpus))
    finally:
        kubelet.close()
        api.stop()
    save("agent_rss", {"gpus": GPUS, "seconds": args.seconds, "interval": args.interval, "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
