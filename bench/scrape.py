"""Scrape latency, RSS and collection time of the agent on a simulated node.

    .venv/bin/python bench/scrape.py [--scrapes 2000] [--scenario FILE] [--interval 1]

Starts the real CLI as a separate process on a loopback port, waits for the first collection,
then scrapes /metrics sequentially over one keep-alive connection the way Prometheus does
(gzip, OpenMetrics first) and reports latency percentiles, the agent's RSS and its own
collection-duration metric. Numbers, not assertions: compare runs, do not gate tests on them.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def metric(body: str, name: str) -> float | None:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)", body, re.M)
    return float(match[1]) if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--scenario", default="")
    parser.add_argument("--interval", default="1")
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "-m", "exporter", "--simulate", *([args.scenario] if args.scenario else []),
               "--web.listen-address", f"127.0.0.1:{port}", "--collector.interval", args.interval,
               "--log.level", "warning"]
    agent = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    break
            except OSError:
                connection.close()
            if time.monotonic() > deadline:
                raise SystemExit("agent did not serve /metrics within 30 s")
            time.sleep(0.1)

        rss_start = rss_bytes(agent.pid)
        latencies = []
        size = 0
        headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
        for _ in range(args.scrapes):
            started = time.perf_counter()
            connection.request("GET", "/metrics", headers=headers)
            response = connection.getresponse()
            size = len(response.read())
            latencies.append(time.perf_counter() - started)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
        rss_end = rss_bytes(agent.pid)
    finally:
        agent.terminate()
        agent.wait(timeout=10)

    latencies.sort()
    quantile = statistics.quantiles(latencies, n=100)
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    print(f"scrapes              {len(latencies)} sequential, keep-alive, gzip OpenMetrics")
    print(f"response             {size} bytes gzip, {len(body)} bytes plain, {series} series")
    print(f"scrape latency       p50 {quantile[49] * 1e3:.3f} ms   p99 {quantile[98] * 1e3:.3f} ms   "
          f"max {latencies[-1] * 1e3:.3f} ms")
    print(f"agent RSS            {rss_start / 2**20:.1f} MiB after start, {rss_end / 2**20:.1f} MiB after scrapes")
    duration = metric(body, "kube_gpu_exporter_cycle_duration_seconds")
    print(f"collection duration  {duration * 1e3:.2f} ms (the agent's own last cycle)" if duration else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
