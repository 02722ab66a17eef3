"""New TCP connections per scrape: the agent scraped by a real Prometheus every 15 s and 30 s.

    .venv/bin/python bench/connections.py [--seconds 150] [--before DIR]

Three agents on the same simulated 8-GPU node (``bench/common.py: simulated_node``), each scraped
by its own job of one Prometheus (the Debian package, /usr/bin/prometheus): every 15 s, every 30 s,
and every 15 s over TLS (``--web.config.file``, an RSA 2048 certificate as cert-manager issues by
default); with ``--before``, three more from that checkout (an earlier version), scraped alike at
the same time. The connections are counted on the agents' side, from the kernel's socket tables
(/proc/net/tcp and tcp6, sampled every 0.2 s: each connection by its peer's address and port); the
scrapes, and their duration as Prometheus measures it (``scrape_duration_seconds``), from
Prometheus. Each new connection is a TCP handshake, and with TLS a TLS handshake too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Agent, free_port, save, simulated_node, write_scenario  # noqa: E402
from fleet import PROMETHEUS, scalar  # noqa: E402

#: (job, scrape interval in seconds, TLS)
JOBS = (("every-15s", 15, False), ("every-30s", 30, False), ("every-15s-tls", 15, True))


def peers(port: int) -> set[tuple[str, str]]:
    """The peers (address, port) of every TCP socket on local port ``port`` but the listener."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state != "0A":  # 0A: LISTEN
                found.add(tuple(remote.rsplit(":", 1)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--before", type=Path, help="a checkout of an earlier version, measured beside this one")
    args = parser.parse_args()
    if not Path(PROMETHEUS).exists():
        print("connections: no prometheus binary (apt-get install prometheus); skipped")
        return 0

    work = Path(tempfile.mkdtemp(prefix="kge-connections-"))
    scenario = write_scenario(simulated_node(8), work)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt"), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    (work / "web.yml").write_text("tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n")
    trees = {"this": None, **({"before": args.before.resolve()} if args.before else {})}
    agents = {}
    for tree, path in trees.items():
        for job, _, tls in JOBS:
            flags = ["--simulate", str(scenario), "--kubernetes.enabled"]
            agents[tree, job] = Agent(flags + (["--web.config.file", str(work / "web.yml")] if tls else []),
                                      interval=10, tree=path)
    prom_port = free_port()
    config = {"scrape_configs": [
        {"job_name": f"{tree}-{job}", "scrape_interval": f"{interval}s", "scrape_timeout": "10s",
         **({"scheme": "https", "tls_config": {"ca_file": str(work / "tls.crt")}} if tls else {}),
         "static_configs": [{"targets": [f"127.0.0.1:{agents[tree, job].port}"]}]}
        for tree in trees for job, interval, tls in JOBS]}
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    prometheus = None
    seen: dict[tuple[str, str], set[tuple[str, str]]] = {key: set() for key in agents}
    try:
        for (tree, job), agent in agents.items():
            if job.endswith("tls"):
                agent.listening_after()
            else:
                agent.ready_after()
                agent.scraper.close()  # our readiness poll's connection is not counted
        time.sleep(1)  # those readiness connections closed
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            for key, agent in agents.items():
                seen[key] |= peers(agent.port)
            time.sleep(0.2)
        rows = []
        for tree in trees:
            for job, interval, tls in JOBS:
                name = f"{tree}-{job}"
                scrapes = scalar(prom_port, f'count_over_time(up{{job="{name}"}}[1h])') or 0
                up = scalar(prom_port, f'sum_over_time(up{{job="{name}"}}[1h])') or 0
                duration = scalar(prom_port, f'quantile_over_time(0.5, scrape_duration_seconds{{job="{name}"}}[1h])')
                connections = len(seen[tree, job])
                rows.append({"tree": tree, "job": job, "interval_s": interval, "tls": tls, "scrapes": int(scrapes),
                             "scrapes_up": int(up), "connections": connections,
                             "connections_per_scrape": connections / scrapes if scrapes else None,
                             "scrape_duration_p50_ms": duration * 1e3 if duration is not None else None})
                print(f"{tree:6s} {job:14s} {int(scrapes):3d} scrapes ({int(up)} up), {connections:3d} connections, "
                      f"{connections / max(scrapes, 1):.2f} per scrape, scrape duration p50 "
                      f"{(duration or 0) * 1e3:.2f} ms", flush=True)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        for agent in agents.values():
            agent.stop()
    save("connections", {"seconds": args.seconds, "jobs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
