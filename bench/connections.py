"""New TCP connections per scrape: the agent scraped by a real Prometheus at 15 s and at 30 s.

    .venv/bin/python bench/connections.py [--seconds 150] [--before DIR]

Two agents on the same simulated 8-GPU node (``bench/common.py: simulated_node``), each scraped by
its own job of one Prometheus (the Debian package, /usr/bin/prometheus): every 15 s, and every
30 s; with ``--before``, two more from that checkout (an earlier version), scraped alike at once.
The connections are counted on the agents' side, from the kernel's socket tables (/proc/net/tcp
and tcp6, sampled every 0.2 s: each connection by its peer's address and port); the scrapes from
Prometheus (samples of ``up``). Each new connection is a TCP handshake, and with TLS a TLS
handshake too.
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

INTERVALS = (15, 30)


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
    trees = {"this": None, **({"before": args.before.resolve()} if args.before else {})}
    agents = {(tree, interval): Agent(["--simulate", str(scenario), "--kubernetes.enabled"], interval=10, tree=path)
              for tree, path in trees.items() for interval in INTERVALS}
    prom_port = free_port()
    config = {"scrape_configs": [
        {"job_name": f"{tree}-every-{interval}s", "scrape_interval": f"{interval}s", "scrape_timeout": "10s",
         "static_configs": [{"targets": [f"127.0.0.1:{agent.port}"]}]} for (tree, interval), agent in agents.items()]}
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    prometheus = None
    seen: dict[tuple[str, int], set[tuple[str, str]]] = {key: set() for key in agents}
    try:
        for agent in agents.values():
            agent.ready_after()
            agent.scraper.close()  # our readiness poll's connection is not counted
        time.sleep(0.5)
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
        for tree, interval in agents:
            scrapes = scalar(prom_port, f'count_over_time(up{{job="{tree}-every-{interval}s"}}[1h])') or 0
            connections = len(seen[tree, interval])
            rows.append({"tree": tree, "interval_s": interval, "scrapes": int(scrapes), "connections": connections,
                         "connections_per_scrape": connections / scrapes if scrapes else None})
            print(f"{tree:6s} scraped every {interval:2d} s: {int(scrapes):3d} scrapes, {connections:3d} connections, "
                  f"{connections / max(scrapes, 1):.2f} per scrape", flush=True)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        for agent in agents.values():
            agent.stop()
    save("connections", {"seconds": args.seconds, "intervals": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
