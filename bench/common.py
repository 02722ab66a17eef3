"""What the benchmarks share: nodes to measure on, a process to measure, a scraper, results.

Every benchmark writes its figures to ``bench/results/<name>.json`` (``save``); ``bench/run.py``
(``make bench``) runs them all and prints one table from those files. Numbers, never assertions:
the development machines are shared and noisy, so comparisons run side by side in one run.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLOTS = ROOT / "docs" / "perf"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

#: What Prometheus sends: OpenMetrics first, gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


# -- results ----------------------------------------------------------------------------------

def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# -- a process, seen from /proc --------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes) and threads of a process."""
    out = {"rss": 0, "threads": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1]) * 1024
        elif line.startswith("Threads:"):
            out["threads"] = int(line.split()[1])
    return out


def thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return sorted(names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantiles(values: list[float]) -> dict[str, float]:
    """p50, p99, max in milliseconds of values in seconds."""
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "max_ms": ordered[-1] * 1e3}


def mib(n: float) -> float:
    return n / 2**20


# -- scraping ----------------------------------------------------------------------------------

class Scraper:
    """Sequential scrapes of one target the way Prometheus does: gzip OpenMetrics, keep-alive
    when the server keeps the connection (http.client reconnects when it does not)."""

    def __init__(self, port: int, path: str = "/metrics") -> None:
        self.port, self.path = port, path
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        for attempt in (1, 2):
            try:
                self.connection.request("GET", self.path, headers=headers or {})
                response = self.connection.getresponse()
                return response.status, response.read(), dict(response.getheaders())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the server closed an idle keep-alive connection: once more on a new one
                self.connection.close()
                if attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                self.connection.close()
                raise
        raise AssertionError("unreachable")

    def timed(self) -> tuple[float, int]:
        """One Prometheus-like scrape: (seconds, bytes on the wire)."""
        started = time.perf_counter()
        status, body, _ = self.get(PROMETHEUS_HEADERS)
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"scrape of :{self.port} answered {status}")
        return elapsed, len(body)

    def text(self) -> str:
        """The plain-text exposition (no gzip)."""
        status, body, headers = self.get({"Accept": "text/plain"})
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body.decode()

    def wait_ready(self, timeout: float = 60, process: subprocess.Popen | None = None) -> float:
        """Seconds until /metrics answers 200."""
        started = time.monotonic()
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode}")
            try:
                if self.get()[0] == 200:
                    return time.monotonic() - started
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f":{self.port} did not serve within {timeout:g}s")
            time.sleep(0.02)

    def close(self) -> None:
        self.connection.close()


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# -- nodes ---------------------------------------------------------------------------------------

def simulated_node(gpus: int, *, mig_every: int = 4, pods_per_shared: int = 4, name: str = "bench-node") -> dict:
    """A scenario for ``--simulate`` with ``gpus`` H100s: every ``mig_every``-th GPU MIG-split
    (3g + 2g + 1g + 1g, each held by a pod), every other one time-sliced between
    ``pods_per_shared`` notebook pods, the rest each held by one training pod."""
    scenario: dict[str, Any] = {"seed": 1, "node": {"name": name}, "gpus": [], "pods": []}
    for i in range(gpus):
        gpu: dict[str, Any] = {"model": "NVIDIA H100 80GB HBM3", "load": {"pattern": "sine", "period": 120 + i}}
        if mig_every and i % mig_every == mig_every - 1:
            gpu["mig"] = [
                {"profile": "3g.40gb", "gpu_instance_id": 2},
                {"profile": "2g.20gb", "gpu_instance_id": 3},
                {"profile": "1g.10gb", "gpu_instance_id": 9},
                {"profile": "1g.10gb", "gpu_instance_id": 10},
            ]
            for j, mig in enumerate(gpu["mig"]):
                scenario["pods"].append(_pod(f"infer-{i}-{j}", "Deployment", f"nvidia.com/mig-{mig['profile']}",
                                             {"gpu": i, "mig": mig["gpu_instance_id"]}, "6GiB", 0.5))
        elif i % 2 == 1:
            gpu["sharing"] = {"strategy": "time-slicing", "replicas": pods_per_shared,
                              "resource": "nvidia.com/gpu.shared"}
            for r in range(pods_per_shared):
                scenario["pods"].append(_pod(f"notebook-{i}-{r}", "Deployment", "nvidia.com/gpu.shared",
                                             {"gpu": i, "replica": r}, "8GiB", round(0.9 / pods_per_shared, 3)))
        else:
            scenario["pods"].append(_pod(f"train-{i}", "Job", "nvidia.com/gpu", {"gpu": i}, "60GiB", 1.0))
        scenario["gpus"].append(gpu)
    return scenario


def _pod(name: str, kind: str, resource: str, device: dict, memory: str, utilization: float) -> dict:
    return {
        "namespace": "ml", "name": name, "workload": {"kind": kind, "name": name.rsplit("-", 1)[0]},
        "labels": {"team": "research"},
        "containers": [{"name": "main", "resource": resource, "devices": [device],
                        "processes": [{"memory": memory, "utilization": utilization}]}],
    }


def write_scenario(scenario: dict, directory: Path) -> Path:
    import yaml

    path = directory / f"node-{len(scenario['gpus'])}.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


# -- the agent as a process ---------------------------------------------------------------------

FAKE_CPUS_SRC = ROOT / "bench" / "fakecpus.c"


def fake_cpus_env(cpus: int, work: Path) -> dict[str, str]:
    """Variables that make the agent believe the host has ``cpus`` cores, everywhere it asks:

    * ``bench/fakecpus.c`` (LD_PRELOAD) answers ``sysconf(_SC_NPROCESSORS_*)``, ``get_nprocs``
      and ``sched_getaffinity`` with ``cpus`` cores: what C libraries read (grpc core, glibc's
      malloc arena limit 8 x cores, OpenBLAS, ...);
    * ``bench/wrap.py`` runs the CLI with ``os.cpu_count``/``os.process_cpu_count`` raised:
      what Python reads (ThreadPoolExecutor's default size).

    It fakes only what the process is told, not the cores it runs on: thread counts and memory
    that follow the reported count show up, CPU contention does not."""
    lib = work / "libfakecpus.so"
    if not lib.exists():
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(FAKE_CPUS_SRC), "-ldl"], check=True)
    return {"LD_PRELOAD": str(lib), "FAKE_CPUS": str(cpus), "KGE_BENCH_CPUS": str(cpus)}


_WORK = Path(tempfile.mkdtemp(prefix="kge-bench-"))


class Agent:
    """``python -m exporter`` (or a wrapper) on a loopback port."""

    def __init__(self, args: Iterable[str], *, env: dict[str, str] | None = None, fake_cpus: int = 0,
                 interval: float = 1.0, command: list[str] | None = None, port: int | None = None,
                 tree: Path | None = None) -> None:
        """``tree``: another checkout whose agent to run (an earlier version, to compare with)."""
        self.port = port or free_port()
        self.started = time.monotonic()
        base = command or [sys.executable, "-m", "exporter"]
        if fake_cpus:
            env = {**(env or os.environ), **fake_cpus_env(fake_cpus, _WORK)}
        if env and ("KGE_BENCH_CPUS" in env or "KGE_BENCH_SA_DIR" in env) and command is None:
            base = [sys.executable, str(ROOT / "bench" / "wrap.py")]
        argv = [*base, "--web.listen-address", f"127.0.0.1:{self.port}",
                "--collector.interval", str(interval), "--log.level", "warning", *args]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        if tree is not None:
            env = {**(env or os.environ), "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen(argv, cwd=tree or ROOT, env=env, stderr=self._stderr, stdout=subprocess.DEVNULL)
        self.scraper = Scraper(self.port)

    def listening_after(self, timeout: float = 30) -> float:
        """Seconds from spawn until the port accepts a connection."""
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return time.monotonic() - self.started
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"agent exited: {self.stderr()[-2000:]}")
                if time.monotonic() - self.started > timeout:
                    raise RuntimeError("agent did not listen")
                time.sleep(0.005)

    def ready_after(self, timeout: float = 60) -> float:
        """Seconds from spawn until /metrics serves a snapshot."""
        self.scraper.wait_ready(timeout, self.process)
        return time.monotonic() - self.started

    def status(self) -> dict[str, int]:
        return proc_status(self.process.pid)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self) -> None:
        self.scraper.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
