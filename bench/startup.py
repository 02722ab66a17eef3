"""Start-up: seconds from exec until the port listens, /healthz answers 200, and /metrics 200.

    .venv/bin/python bench/startup.py [--runs 7] [--before DIR]

The real CLI on the fake libnvidia-ml.so.1 of the tests (eight H100s), with the fake kubelet (a
real gRPC server on a unix socket), in three configurations: the flags' defaults; the DaemonSet's
(the API server too, in-cluster, over HTTPS with a token); and everything the agent can load
besides (basic auth from a web config, an Alertmanager to push to). Each is started ``--runs``
times one after the other and polled from here every 5 ms: a TCP connect (listening), then
``GET /healthz`` until 200, then ``GET /metrics`` until 200 (the first cycle's bytes). With
``--before``, the agent of that checkout (an earlier version) is started too, alternately with
this one's, so that both see the same load. Beside each wall time, the CPU time the agent had
used by then (all its threads, from /proc/<pid>/task/*/schedstat): on a busy machine the wall
time grows with the load, the CPU time hardly, and on an idle one the two are close.

Bytecode is compiled first (one run of each configuration writes it under a cache prefix), as in
the image, where ``pip install --compile`` did it: what is measured is importing and starting, not
compiling the agent's modules from source.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, free_port, save  # noqa: E402
from fakekubeapi import FakeKubeApi, make_pod  # noqa: E402
from fakekubelet import FakeKubelet  # noqa: E402
from fakenvml import FakeNode, build_fake_nvml, h100  # noqa: E402

NODE = "gpu-node-bench"
GPUS = 8
POLL_SECONDS = 0.005
#: basic auth as docs/security.md shows it (the password "changeme", cost 10)
WEB_CONFIG = "basic_auth_users:\n  prometheus: $2b$10$.ZGHAGrsT4TlDK1twQE4Yu.eOxIYRmbNYIgQ74W6nyRcUSWWMbrUS\n"
CREDENTIALS = {"Authorization": "Basic " + base64.b64encode(b"prometheus:changeme").decode()}  # ignored without


def status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=CREDENTIALS)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (threads that ended are not counted)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def start_once(argv: list[str], env: dict[str, str], port: int, *, cwd: Path, timeout: float = 60) -> dict[str, float]:
    """Seconds from exec to listening, to /healthz 200 and to /metrics 200."""
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marks: dict[str, float] = {}
    try:
        for mark, ready in (("listening_s", lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True),
                            ("healthz_s", lambda: status(port, "/healthz") == 200),
                            ("metrics_s", lambda: status(port, "/metrics") == 200)):
            while True:
                try:
                    if ready():
                        break
                except OSError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"agent exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"no {mark} within {timeout:g} s")
                time.sleep(POLL_SECONDS)
            marks[mark] = time.monotonic() - started
            marks[mark.replace("_s", "_cpu_s")] = cpu_seconds(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", type=Path, help="a checkout of an earlier version, measured beside this one")
    args = parser.parse_args()
    trees = {"this": ROOT, **({"before": args.before.resolve()} if args.before else {})}

    work = Path(tempfile.mkdtemp(prefix="kge-startup-"))
    node = FakeNode(work / "fake_nvml.conf", lib_path=build_fake_nvml(work), gpus=[h100(i) for i in range(GPUS)])
    kubelet = FakeKubelet().start()
    api = FakeKubeApi(token="sa-token", tls_dir=work / "tls").start()
    (work / "token").write_text("sa-token")
    (work / "web.yml").write_text(WEB_CONFIG)
    pods = []
    for i, gpu in enumerate(node.gpus):
        pods.append({"namespace": "ml", "name": f"job-{i}",
                     "containers": [{"name": "c", "devices": [{"resource": "nvidia.com/gpu", "ids": [gpu["uuid"]]}]}]})
        api.add_pod(make_pod("ml", f"job-{i}", node=NODE, owner=("Job", "job")))
    kubelet.set_pods(pods)

    # Compiled bytecode, as in the image: written by the first run of each configuration.
    base_env = {k: v for k, v in node.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    base_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    in_cluster = {**base_env, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port),
                  "KGE_BENCH_SA_TOKEN": str(work / "token"), "KGE_BENCH_SA_CA": str(api.ca_cert_path)}
    kubelet_args = ["--kubelet.pod-resources-socket", kubelet.socket_path, "--log.level", "warning"]
    kube_args = ["--kubernetes.enabled", "--kubernetes.node-name", NODE]
    configs = [  # wrap.py: the in-cluster token and CA files
        ("defaults: NVML + kubelet", "-m exporter", kubelet_args, base_env),
        ("DaemonSet: + API server (in-cluster)", "bench/wrap.py", kubelet_args + kube_args, in_cluster),
        ("+ basic auth, Alertmanager", "bench/wrap.py",
         kubelet_args + kube_args + ["--web.config.file", str(work / "web.yml"),
                                     "--alertmanager.url", "http://127.0.0.1:9"], in_cluster),
    ]
    rows = []
    try:
        for label, entry, flags, env in configs:
            runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
            for i in range(args.runs + 1):
                for tree, path in trees.items():
                    port = free_port()
                    command = [sys.executable, *(["-m", "exporter"] if entry == "-m exporter" else [str(path / entry)])]
                    marks = start_once([*command, "--web.listen-address", f"127.0.0.1:{port}", *flags],
                                       {**env, "PYTHONPATH": str(path)}, port, cwd=path)
                    if i:  # the first run compiled the bytecode
                        runs[tree].append(marks)
            for tree in trees:
                row = {"label": label, "tree": tree, "runs": runs[tree], "load_1m": round(os.getloadavg()[0], 2)}
                for mark in ("listening_s", "healthz_s", "metrics_s", "listening_cpu_s", "healthz_cpu_s",
                             "metrics_cpu_s"):
                    values = [r[mark] for r in runs[tree]]
                    row[mark] = {"median": statistics.median(values), "max": max(values), "min": min(values)}
                rows.append(row)
                print(f"{label:38s} {tree:6s} " + "  ".join(
                    f"{what} {row[mark + '_s']['median']:.2f} s (CPU {row[mark + '_cpu_s']['median']:.2f})"
                    for what, mark in (("listening", "listening"), ("/healthz", "healthz"), ("/metrics", "metrics")))
                    + f"  load {row['load_1m']}", flush=True)
    finally:
        kubelet.close()
        api.stop()
    save("startup", {"gpus": GPUS, "runs": args.runs, "configs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
