"""The fault suite: every fault the hardware, the kubelet or the API server can produce, end to end
through the real pieces (the CLI as a process, the fake NVML library under the real pynvml, a real
gRPC server as the kubelet, the aiohttp fake API server, real HTTP).

For each fault the test shows which series survive, which self-metric and log line report it, the
state of /readyz, and that the agent recovers once the fault ends (within a deadline: the time to
recover is in docs/reliability.md). The invariant checked everywhere: nothing of a healthy GPU is
ever lost.

Faults already shown by tests/test_e2e.py (not repeated here): a GPU lost while its neighbours
stay (``test_a_lost_gpu_keeps_every_other_gpus_series``), one GPU hanging
(``test_a_hung_gpu_is_down_with_its_last_readings_for_a_bounded_time``), NVML that cannot load at
start then can (``test_nvml_init_failure_is_503_on_readyz_then_recovers``), the kubelet lost past
the grace period while the API server is away
(``test_losing_kubelet_or_api_server_costs_only_attribution_after_a_grace_period``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
from e2e import GPU, PODS, kubelet_pods, samples, value
from fakekubeapi import make_pod
from test_e2e import cluster, settled  # noqa: F401 - the shared fixture of the fake node

pytestmark = pytest.mark.integration  # the agent as a process, every test

#: How long the concurrent scrapers run (the issue's 30 s: ``FAULT_SCRAPE_SECONDS=30``).
SCRAPE_SECONDS = float(os.environ.get("FAULT_SCRAPE_SECONDS", "8"))
SCRAPERS = 100


def healthy_series(body: str, gpu: str) -> dict[str, float]:
    """Every series of one GPU, by its full line name, with its value."""
    return {
        str(sorted(labels.items())): v for labels, v in samples(body, "")
        if labels.get("gpu") == gpu and not labels["__name__"].startswith("nvidia_gpu_allocation")
        and not labels["__name__"].startswith("nvidia_gpu_container")
    }


def same_series(before: dict[str, float], after: dict[str, float]) -> bool:
    """Nothing lost (rates, e.g. GPM profiling, may appear once a second reading exists)."""
    assert before.keys() <= after.keys(), sorted(before.keys() - after.keys())[:5]
    return True


def counters(body: str, gpu: str) -> dict[str, float]:
    return {str(sorted(l.items())): v for l, v in samples(body, "") if l.get("gpu") == gpu
            and l["__name__"].endswith("_total")}


def test_a_gpu_that_falls_off_the_bus_and_comes_back_with_the_same_uuid_continues(cluster):
    agent = cluster(kubernetes=False)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 1, what="GPU 1 up")
    cluster.nvml.add_xid(1, 79)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_xid_errors_total", gpu="1", xid="79") == 1, what="XID 79")
    healthy = {g: healthy_series(body, g) for g in "02"}
    before = counters(body, "1")

    cluster.nvml.update_gpu(1, lost=1)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 0, what="GPU 1 lost")
    assert all(same_series(healthy[g], healthy_series(body, g)) for g in "02")
    assert value(body, "kube_gpu_exporter_collector_success", collector="nvml") == 0
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="nvml", kind="gpu_is_lost") >= 1
    assert agent.get("/readyz") == (200, "ok\n")

    # A reset: the same board back, its counters still counting (the driver's own since-load values).
    cluster.nvml.update_gpu(1, lost=None, pcie_replay=7)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 1, what="GPU 1 back")
    after = counters(body, "1")
    assert before.keys() <= after.keys() and all(after[k] >= v for k, v in before.items())
    assert len(samples(body, "nvidia_gpu_info", uuid=GPU[1])) == 1  # one GPU, not two
    assert len(samples(body, "nvidia_gpu_up")) == 3
    assert all(same_series(healthy[g], healthy_series(body, g)) for g in "02")
    assert value(body, "kube_gpu_exporter_collector_success", collector="nvml") == 1
    stderr = agent.stop()
    assert f"GPU 1 ({GPU[1]}) is down" in stderr and f"GPU 1 ({GPU[1]}) is back" in stderr


def test_nvml_hanging_on_every_gpu_keeps_the_agent_serving_and_sigterm_ends_it_mid_collection(cluster):
    agent = cluster("--collector.timeout", "0.3", "--collector.interval", "1", kubernetes=False)
    body = agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="2") == 1, what="GPUs up")
    identities = {l["uuid"] for l, _ in samples(body, "nvidia_gpu_info")}
    for i in range(3):
        cluster.nvml.update_gpu(i, hang_seconds=60)
    body = agent.wait_for(lambda b: all(v == 0 for _, v in samples(b, "nvidia_gpu_up")), what="all down")
    assert value(body, "kube_gpu_exporter_gpu_snapshot_stale") == 1
    assert {l["uuid"] for l, _ in samples(body, "nvidia_gpu_info")} == identities  # who they are stays
    assert agent.get("/healthz")[0] == 200  # the loop is alive: the reads are abandoned, not waited for
    assert agent.get("/metrics")[0] == 200

    # SIGTERM while every collection hangs in NVML: a clean exit all the same.
    started = time.monotonic()
    stderr = agent.stop()
    assert agent.process.returncode == 0, stderr
    assert "shutting down" in stderr and "Traceback" not in stderr
    assert time.monotonic() - started < 5  # stop() kills after 5 s; a clean exit came before
    for i in range(3):
        cluster.nvml.update_gpu(i, hang_seconds=None)


def wait_kubelet(agent, ok: bool, kind: str | None = None, timeout: float = 15.0) -> str:
    def condition(body: str) -> bool:
        good = value(body, "kube_gpu_exporter_collector_success", collector="kubelet") == (1 if ok else 0)
        return good and (kind is None or (value(body, "kube_gpu_exporter_collector_errors_total",
                                                 collector="kubelet", kind=kind) or 0) >= 1)
    return agent.wait_for(condition, timeout=timeout, what=f"kubelet {'up' if ok else kind}")


def test_every_kubelet_fault_costs_at_most_attribution_and_is_counted_by_kind(cluster):
    # NVML's timeout at the interval: on a loaded machine a 0.3 s read may time out, which is not
    # what this test is about.
    agent = cluster("--attribution.grace-period", "30", "--kubelet.timeout", "0.5", "--collector.interval", "0.5",
                    "--collector.timeout", "0.5", kubernetes=False)
    body = agent.wait_for(lambda b: len(samples(b, "nvidia_gpu_allocation_info")) == len(PODS), what="allocations")
    allocations = samples(body, "nvidia_gpu_allocation_info")
    healthy = {g: healthy_series(body, g) for g in "012"}
    kubelet = cluster.kubelet

    def faulted(kind: str) -> None:
        body = wait_kubelet(agent, False, kind)
        assert samples(body, "nvidia_gpu_allocation_info") == allocations  # kept within the grace period
        assert all(same_series(healthy[g], healthy_series(body, g)) for g in "012")
        assert agent.get("/readyz") == (200, "ok\n")

    kubelet.garbage = True  # answers bytes that do not decode
    faulted("invalid_response")
    kubelet.garbage = False
    wait_kubelet(agent, True)

    kubelet.set_error(grpc.StatusCode.INTERNAL, "boom")
    faulted("rpc_error")
    kubelet.clear_errors()
    wait_kubelet(agent, True)

    kubelet.delay = 2.0  # slower than --kubelet.timeout
    faulted("timeout")
    assert agent.get("/metrics")[0] == 200  # a slow kubelet never makes a slow scrape
    kubelet.delay = 0.0
    wait_kubelet(agent, True)

    # The socket goes away (kubelet restart); a pod ends meanwhile; the socket comes back.
    kubelet.stop()
    assert not os.path.exists(kubelet.socket_path)
    faulted("unavailable")
    kubelet.set_pods(kubelet_pods(PODS[1:]))
    kubelet.start()
    body = wait_kubelet(agent, True)
    body = agent.after_cycles(1)
    assert not samples(body, "nvidia_gpu_allocation_info", pod=PODS[0].name)  # gone at the first good answer
    assert len(samples(body, "nvidia_gpu_allocation_info")) == len(PODS) - 1
    stderr = agent.stop()
    assert stderr.count("pod-resources API lost") >= 1 and "pod-resources API answers again" in stderr
    assert "Traceback" not in stderr


def test_api_server_down_then_back_with_changed_pods_and_a_410_relist(cluster):
    agent = cluster("--attribution.grace-period", "1")
    body = agent.wait_for(settled, what="workloads")
    healthy = {g: healthy_series(body, g) for g in "012"}
    allocations = samples(body, "nvidia_gpu_allocation_info")
    api = cluster.api

    api.set_down(True)
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_collector_success", collector="kubernetes") == 0,
                          what="API down")
    # An outage far past the grace period (a control-plane upgrade) changes no allocation label:
    # every pod the kubelet lists keeps its workload and labels; the devices stay.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        body = agent.after_cycles(1)
        assert value(body, "kube_gpu_exporter_collector_success", collector="kubernetes") == 0
        assert samples(body, "nvidia_gpu_allocation_info") == allocations
        assert all(same_series(healthy[g], healthy_series(body, g)) for g in "012")
    assert agent.get("/readyz") == (200, "ok\n")

    # While it is down, a pod changes its labels.
    train = PODS[0]
    api.add_pod(make_pod(train.namespace, train.name, uid=train.uid, node="node-a", owner=train.owner,
                         labels={"team": "audio"}, containers={train.container: train.container_id}))
    time.sleep(3)  # an outage of several backoff steps (1, 2 s ...): the agent must come back from it
    api.set_down(False)
    api.expire_watches()  # and the watch it resumes is too old: 410 Gone, a fresh list
    body = agent.wait_for(lambda b: value(b, "kube_gpu_exporter_collector_success", collector="kubernetes") == 1
                          and any(l.get("label_team") == "audio"
                                  for l, _ in samples(b, "nvidia_gpu_allocation_info", pod=train.name)),
                          timeout=40, what="the changed pod after the API server's return")
    assert settled(body)
    assert sum(v for _, v in samples(body, "kube_gpu_exporter_collector_errors_total", collector="kubernetes")) >= 1
    stderr = agent.stop()
    assert "further" in stderr and "errors logged at debug" in stderr  # one warning per kind, not per retry
    assert "API server pod watch lost; keeping the last workloads until it answers again" in stderr
    assert "Traceback" not in stderr


def test_sigterm_in_the_middle_of_slow_scrapes_exits_cleanly(cluster):
    agent = cluster(kubernetes=False)
    agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="0") == 1)
    clients = []
    for _ in range(8):  # responses asked for and not read, and requests still arriving
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.connect(("127.0.0.1", agent.port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n")
        clients.append(s)
        half = socket.create_connection(("127.0.0.1", agent.port))
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: no")
        clients.append(half)
    started = time.monotonic()
    stderr = agent.stop()
    assert agent.process.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert "Traceback" not in stderr
    for s in clients:
        s.close()


def test_a_hundred_concurrent_scrapers_while_faults_happen(cluster):
    # A hundred threads on a small machine: NVML's timeout at the interval, so that a healthy GPU's
    # read is not cut short by CPU starvation (a timeout is another test's fault).
    agent = cluster("--attribution.grace-period", "60", "--collector.interval", "0.5", "--collector.timeout", "0.5")
    body = agent.wait_for(settled, what="workloads")
    healthy_line = f'nvidia_gpu_up{{gpu="0",uuid="{GPU[0]}"}} 1.0'
    assert healthy_line in body
    stop = threading.Event()
    failures: list[str] = []
    bodies: dict[str, str] = {}
    counts = [0] * SCRAPERS

    def scrape(n: int) -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(agent.url + "/metrics", timeout=10) as response:
                    text = response.read().decode()
                if healthy_line not in text or "nvidia_gpu_temperature_celsius{gpu=\"0\"" not in text:
                    failures.append("healthy GPU 0 missing from a scrape")
                digest = hashlib.sha1(text.encode()).hexdigest()
                if len(bodies) < 40:
                    bodies.setdefault(digest, text)
                counts[n] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=scrape, args=(n,), daemon=True) for n in range(SCRAPERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + SCRAPE_SECONDS
    faults = [
        lambda: cluster.nvml.update_gpu(1, lost=1),
        lambda: cluster.kubelet.stop(),
        lambda: cluster.api.set_down(True),
        lambda: cluster.nvml.update_gpu(2, hang_seconds=30),
        lambda: cluster.nvml.update_gpu(1, lost=None),
        lambda: cluster.kubelet.start(),
        lambda: cluster.api.set_down(False),
        lambda: cluster.nvml.update_gpu(2, hang_seconds=None),
    ]
    for fault in faults:
        fault()
        time.sleep(SCRAPE_SECONDS / len(faults))
    while time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert not failures, failures[:5]
    assert all(c >= 1 for c in counts), "a scraper was starved"
    promtool = shutil.which("promtool")
    assert promtool
    for text in bodies.values():
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # And after the faults, everything is back.
    body = agent.wait_for(lambda b: all(v == 1 for _, v in samples(b, "nvidia_gpu_up"))
                          and value(b, "kube_gpu_exporter_collector_success", collector="kubelet") == 1
                          and settled(b), timeout=40, what="recovery")
    assert "Traceback" not in agent.stop()
