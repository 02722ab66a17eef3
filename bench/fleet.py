"""A fleet on loopback: N agents on simulated nodes, scraped by one real Prometheus with our rules.

    .venv/bin/python bench/fleet.py [--agents 50] [--gpus 8] [--seconds 120] [--interval 10]

Each agent is the real CLI on its own simulated 8-GPU node (``bench/common.py:
simulated_node``, with pods and workloads), on its own loopback port. Prometheus (the Debian
package, /usr/bin/prometheus) scrapes every agent at ``--interval`` with a ``node`` target label,
as the DaemonSet's service discovery would, loads every rule file in ``alerts/`` (recording and
alerting rules, evaluated at the same interval), and scrapes itself. After ``--seconds``, read
from Prometheus: samples ingested per second, head series, rule group evaluation time, scrape
duration; and from /proc: Prometheus's RSS before the agents started and at the end, so the
memory each node costs it. ``docs/scaling.md`` extrapolates these figures to 5,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, Agent, free_port, mib, proc_status, save, simulated_node, write_scenario  # noqa: E402

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)["data"]["result"]


def scalar(port: int, expr: str) -> float | None:
    result = query(port, expr)
    return float(result[0]["value"][1]) if result else None


def rule_files() -> list[str]:
    files = sorted(str(p) for p in (ROOT / "alerts").glob("*.rules.yaml"))
    good = []
    for path in files:  # only files promtool accepts: a broken one would stop Prometheus
        if subprocess.run(["promtool", "check", "rules", path], capture_output=True).returncode == 0:
            good.append(path)
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--interval", type=int, default=10)
    args = parser.parse_args()
    if not Path(PROMETHEUS).exists():
        print("fleet: no prometheus binary (apt-get install prometheus); skipped")
        return 0

    work = Path(tempfile.mkdtemp(prefix="kge-fleet-"))
    scenario = write_scenario(simulated_node(args.gpus), work)
    ports = [free_port() for _ in range(args.agents)]
    rules = rule_files()
    config = {
        "global": {"scrape_interval": f"{args.interval}s", "scrape_timeout": f"{args.interval}s",
                   "evaluation_interval": f"{args.interval}s"},
        "rule_files": rules,
        "scrape_configs": [
            {"job_name": "kube-gpu-exporter", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"node": f"bench-node-{i:03d}"}}
                                for i, port in enumerate(ports)]},
        ],
    }
    prom_port = free_port()
    config["scrape_configs"].append({"job_name": "prometheus",
                                     "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]})
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
    agents: list[Agent] = []
    try:
        time.sleep(3 * args.interval)  # Prometheus up, targets down: its own footprint
        rss_alone = proc_status(prometheus.pid)["rss"]
        for port in ports:
            agents.append(Agent(["--simulate", str(scenario), "--kubernetes.enabled"], interval=args.interval,
                                port=port))
        started = time.monotonic()
        for agent in agents:
            agent.ready_after(120)
        print(f"fleet: {len(agents)} agents serving after {time.monotonic() - started:.0f} s", flush=True)
        time.sleep(args.seconds)
        up = scalar(prom_port, 'sum(up{job="kube-gpu-exporter"})')
        result = {
            "agents": args.agents, "gpus_per_node": args.gpus, "interval_s": args.interval,
            "rule_files": [Path(r).name for r in rules],
            "targets_up": up,
            "series_per_node": scalar(prom_port, 'avg(scrape_samples_scraped{job="kube-gpu-exporter"})'),
            "head_series": scalar(prom_port, "prometheus_tsdb_head_series"),
            "samples_per_second": scalar(prom_port, "rate(prometheus_tsdb_head_samples_appended_total[1m])"),
            "scrape_duration_avg_ms": 1e3 * (scalar(
                prom_port, 'avg(scrape_duration_seconds{job="kube-gpu-exporter"})') or 0),
            "scrape_duration_max_ms": 1e3 * (scalar(
                prom_port, 'max(scrape_duration_seconds{job="kube-gpu-exporter"})') or 0),
            "rule_groups": {r["metric"].get("rule_group", "").rsplit(";", 1)[-1]: float(r["value"][1]) * 1e3
                            for r in query(prom_port, "prometheus_rule_group_last_duration_seconds")},
            "rules_loaded": scalar(prom_port, "sum(prometheus_rule_group_rules)"),
            "prometheus_rss_alone_mib": mib(rss_alone),
            "prometheus_rss_mib": mib(proc_status(prometheus.pid)["rss"]),
            "prometheus_heap_inuse_mib": mib(scalar(prom_port, 'go_memstats_heap_inuse_bytes{job="prometheus"}') or 0),
        }
        # The agents share this machine's cores with Prometheus: rule evaluation time measured
        # under their load, then again with the agents stopped (the series stay queryable for
        # the 5-minute lookback) and Prometheus alone on the machine.
        for agent in agents:
            agent.stop()
        time.sleep(3 * args.interval)
        result["rule_groups_agents_stopped"] = {
            r["metric"].get("rule_group", "").rsplit(";", 1)[-1]: float(r["value"][1]) * 1e3
            for r in query(prom_port, "prometheus_rule_group_last_duration_seconds")}
        result["rss_per_node_mib"] = (result["prometheus_rss_mib"] - result["prometheus_rss_alone_mib"]) / args.agents
        result["bytes_per_series"] = ((result["prometheus_rss_mib"] - result["prometheus_rss_alone_mib"]) * 2**20
                                      / max(1.0, result["head_series"] or 1))
    finally:
        for agent in agents:
            agent.stop()
        prometheus.terminate()
        prometheus.wait(timeout=30)
    print(json.dumps(result, indent=1))
    save("fleet", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
