"""Helpers for end-to-end tests: the real CLI as a process, scraped over HTTP.

A fixed fake node: the fake NVML's default GPUs (two H100, one A100 in MIG mode), pods held in
every allocation mode through the fake kubelet, their owners in the fake API server, and a
procfs tree that puts each GPU process in its container's cgroup.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from conftest import wait_until
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
NODE = "node-a"
GIB = 1 << 30

# The fake NVML's default node (tests/fakenvml.py): GPU i has uuid GPU-7c2e4f10-...-<i>.
GPU = [f"GPU-7c2e4f10-0000-4000-8000-{i:012x}" for i in range(3)]
MIG_1G = "MIG-aaaaaaaa-0000-4000-8000-000000000201"  # gi 7, ci 0, 1g.5gb, process 7001
MIG_3G = "MIG-bbbbbbbb-0000-4000-8000-000000000202"  # gi 2, ci 0, 3g.20gb, process 7002


@dataclass(frozen=True)
class FakePod:
    namespace: str
    name: str
    uid: str
    owner: tuple[str, str] | None
    container: str
    container_id: str
    resource: str
    device_ids: tuple[str, ...]
    pids: tuple[int, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


# Every allocation mode at once: exclusive, time-sliced (two pods on GPU 1), MIG in both id forms.
PODS = (
    FakePod("ml", "train-0", "11111111-0000-4000-8000-000000000001", ("Job", "train-28805"), "trainer",
            "c0ffee01" * 8, "nvidia.com/gpu", (GPU[0],), (4242,), {"team": "vision"}),
    FakePod("research", "nb-a-7d9f-x1", "22222222-0000-4000-8000-000000000001", ("ReplicaSet", "nb-a-7d9f"),
            "jupyter", "c0ffee02" * 8, "nvidia.com/gpu.shared", (f"{GPU[1]}::0",), (5001,), {"team": "nlp"}),
    FakePod("research", "nb-b-5c4d-y2", "33333333-0000-4000-8000-000000000001", ("ReplicaSet", "nb-b-5c4d"),
            "jupyter", "c0ffee03" * 8, "nvidia.com/gpu.shared", (f"{GPU[1]}::1",), (5002,)),
    FakePod("ml", "eval-0", "44444444-0000-4000-8000-000000000001", ("StatefulSet", "eval"), "eval",
            "c0ffee04" * 8, "nvidia.com/mig-1g.5gb", (MIG_1G,), (7001,)),
    FakePod("ml", "embed", "55555555-0000-4000-8000-000000000001", None, "server",
            "c0ffee05" * 8, "nvidia.com/mig-3g.20gb", (f"MIG-{GPU[2]}/2/0",), (7002,)),
)
OWNERS = {  # the controllers above their pods' owners
    ("ml", "Job", "train-28805"): ("CronJob", "train"),
    ("research", "ReplicaSet", "nb-a-7d9f"): ("Deployment", "nb-a"),
    ("research", "ReplicaSet", "nb-b-5c4d"): ("Deployment", "nb-b"),
}


def kubelet_pods(pods: Iterable[FakePod]) -> list[dict]:
    return [
        {"namespace": p.namespace, "name": p.name,
         "containers": [{"name": p.container, "devices": [{"resource": p.resource, "ids": list(p.device_ids)}]}]}
        for p in pods
    ]


def write_procfs(root: Path, pods: Iterable[FakePod]) -> Path:
    """A /proc with init on the host and one cgroup v2 file per GPU process (systemd driver,
    containerd). No ``self``: whose pid namespace it shows is not known."""
    (root / "1").mkdir(parents=True, exist_ok=True)
    (root / "1" / "cgroup").write_text("0::/init.scope\n")
    for p in pods:
        slice_uid = p.uid.replace("-", "_")
        for pid in p.pids:
            (root / str(pid)).mkdir(parents=True, exist_ok=True)
            (root / str(pid) / "cgroup").write_text(
                f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/"
                f"cri-containerd-{p.container_id}.scope\n"
            )
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name`` ("" = any metric) whose labels include ``match``."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if name in ("", sample.name) and all(sample.labels.get(k) == v for k, v in match.items()):
                found.append((sample.labels | {"__name__": sample.name}, sample.value))
    return found


def value(text: str, name: str, **match: str) -> float | None:
    found = samples(text, name, **match)
    return found[0][1] if len(found) == 1 else None


class AgentProcess:
    """``python -m exporter`` on a loopback port, with helpers to scrape it."""

    def __init__(self, args: list[str], env: dict[str, str], interval: float = 0.3) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{self.port}",
                   "--collector.interval", str(interval), *args]
        # stderr to a file, not a pipe: nobody reads a pipe until the end, and a full one blocks the agent.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=self._stderr, text=True)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def scrape(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def wait_for(self, condition: Callable[[str], bool], timeout: float = 15.0, what: str = "") -> str:
        """Scrape until ``condition(body)`` holds; fail with the last body if it never does."""
        last = [""]

        def scraped() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited: {self.process.returncode}\n{self.stderr()}")
            status, last[0] = self.get("/metrics")
            return last[0] if status == 200 and condition(last[0]) else None

        return wait_until(scraped, timeout=timeout, interval=0.1, ignore=(OSError,),
                          message=lambda: f"{what or condition}; last scrape:\n{last[0][-3000:]}")

    def after_cycles(self, n: int = 2) -> str:
        """The first scrape from the n-th cycle that started after this call.

        The cycle running now may have read its sources before a change the test just made;
        the one after it cannot have, so n=2 is "within one cycle" of the change.
        """
        seen = value(self.scrape(), "kube_gpu_exporter_last_cycle_timestamp_seconds")
        for _ in range(n):
            body = self.wait_for(
                lambda b, seen=seen: value(b, "kube_gpu_exporter_last_cycle_timestamp_seconds") != seen,
                what="a new cycle",
            )
            seen = value(body, "kube_gpu_exporter_last_cycle_timestamp_seconds")
        return body

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.stderr()



__all__ = ["AgentProcess", "FakePod", "PODS", "OWNERS", "GPU", "MIG_1G", "MIG_3G", "NODE", "GIB",
           "kubelet_pods", "write_procfs", "samples", "value"]
