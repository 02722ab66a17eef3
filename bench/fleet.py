"""The rule set and the series at fleet scale: one Prometheus on one core scraping N simulated nodes
with every rule file of alerts/ loaded.

    .venv/bin/python bench/fleet.py [--nodes 200] [--gpus 8] [--warmup 960] [--seconds 300]
                                    [--interval 10] [--everything] [--as default]

N agents as N Python processes would take this machine's cores from Prometheus. So one real agent
(``python -m exporter --simulate``, on its own simulated node: ``bench/common.py: simulated_node``,
with pods and workloads) collects every interval, and one process serves its latest exposition
(gzip OpenMetrics, as the agent answers Prometheus) on N loopback ports: N targets, each with its
own ``node`` label as the DaemonSet's service discovery gives it. Ingestion, memory and rule cost
are those of N nodes; the values repeat from node to node.

Prometheus (the Debian package, /usr/bin/prometheus) runs with ``GOMAXPROCS=1``, scrapes and
evaluates every ``--interval``. After every target is up and ``--warmup`` seconds have passed (the
rules' windows fill up to that long; a window longer than the run reads less than it would in
production: ``longest_window_covered_s`` says how much), for ``--seconds``:

* rule evaluation by group and by rule (``/api/v1/rules``: ``evaluationTime``), the median of the
  window's evaluations; per round of ``--interval`` (a group with a longer interval amortised over
  its rounds) and per node. That is wall time: on a busy core it includes waiting for it;
* Prometheus' CPU per round, everything included (scrapes, ingestion, rules), then again after a
  reload without the rule files: the difference is the rules' CPU (``rule_cpu_ms_per_node``);
* head series, and Prometheus' RSS and Go heap per node (against the same Prometheus without
  targets);
* series per GPU of the node served and of the built-in node (its own and its MIG instances'; the
  allocation join and the agent's own series left out).

Results go to ``bench/results/fleet.json`` under ``--as`` (default, everything, before), beside
the others; the figures of the file found there first are kept as ``previous``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (PROMETHEUS_HEADERS, RESULTS, ROOT, Agent, Scraper, free_port, machine, mib,  # noqa: E402
                    proc_status, simulated_node, write_scenario)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB = "kube-gpu-exporter"
#: Series that join pods to devices (the holders'), not a GPU's own.
JOIN = re.compile(r"^(nvidia_gpu_allocation_info|nvidia_gpu_container_\w+)$")
_SERIES = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? ')
_UUID = re.compile(r'(?:^|,)uuid="([^"]*)"')


# -- Prometheus -----------------------------------------------------------------------------------

def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)["data"]["result"]


def scalar(port: int, expr: str) -> float | None:
    result = query(port, expr)
    return float(result[0]["value"][1]) if result else None


def rule_groups(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=60) as response:
        return json.load(response)["data"]["groups"]


#: Rule files a user installs on purpose (the dcgm-exporter compat records): left out of the shipped
#: rule set's figures, loaded with --opt-in-rules.
OPT_IN_RULES = ("dcgm-compat.rules.yaml",)


def rule_files(opt_in: bool = False) -> list[str]:
    good = []
    for path in sorted(str(p) for p in (ROOT / "alerts").glob("*.rules.yaml")
                       if opt_in or p.name not in OPT_IN_RULES):
        # only files promtool accepts: a broken one would stop Prometheus
        if subprocess.run(["promtool", "check", "rules", path], capture_output=True).returncode == 0:
            good.append(path)
    return good


_WINDOW = re.compile(r"\[(\d+)([smhdw])(?::[^\]]*)?\]")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def longest_window_s(paths: list[str]) -> int:
    """The longest range window (``[1d]``, ``[24h]``) or offset any rule reads."""
    text = "".join(Path(p).read_text() for p in paths)
    found = [int(n) * _UNITS[u] for n, u in _WINDOW.findall(text)]
    found += [int(n) * _UNITS[u] for n, u in re.findall(r"offset (\d+)([smhdw])", text)]
    return max(found, default=0)


def reserve_ports(n: int) -> list[socket.socket]:
    """``n`` loopback sockets bound to free ports, to close right before the ports are used."""
    held = []
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    return held


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- N targets from one exposition ----------------------------------------------------------------

class Fanout:
    """Serves the agent's latest exposition on every port of ``ports``, refreshed every interval
    (in a thread with its own event loop)."""

    def __init__(self, source: int, ports: list[int], interval: float) -> None:
        self.source, self.ports, self.interval = source, ports, interval
        self.body = b""
        self.headers: dict[str, str] = {}
        self.served = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fanout", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("fan-out server did not start")

    def stop(self) -> None:
        async def close() -> None:
            for task in asyncio.all_tasks(self._loop):
                if task is not asyncio.current_task():
                    task.cancel()
            await self._session.close()
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(close(), self._loop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        from aiohttp import ClientSession, web

        async def metrics(_: web.Request) -> web.Response:
            self.served += 1
            return web.Response(body=self.body, headers=self.headers)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in self.ports:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        self._session = ClientSession(auto_decompress=False)
        await self._refresh()
        self._loop.create_task(self._refresh_forever())
        self._ready.set()

    async def _refresh(self) -> None:
        async with self._session.get(f"http://127.0.0.1:{self.source}/metrics", headers=PROMETHEUS_HEADERS) as r:
            body = await r.read()
            if r.status == 200:
                self.body = body
                self.headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "content-encoding")}

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._refresh()
            except Exception as e:  # noqa: BLE001 - the last body stays served
                print(f"fleet: refresh failed: {e}", flush=True)


# -- series per GPU ------------------------------------------------------------------------------

def series_per_gpu(text: str) -> dict[str, float]:
    """Series carrying each GPU's uuid (its MIG instances' included), the holders' left out."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SERIES.match(line)
        if not m or JOIN.match(m.group("name")):
            continue
        uuid = _UUID.search(m.group("labels") or "")
        if uuid:
            counts[uuid.group(1)] += 1
    values = list(counts.values()) or [0]
    return {"gpus": len(counts), "max": max(values), "mean": round(statistics.mean(values), 1),
            "total": sum(values)}


def built_in_node(flags: list[str]) -> dict[str, float]:
    """Series per GPU of the built-in simulated node (``--simulate --once``) with ``flags``."""
    out = subprocess.run([sys.executable, "-m", "exporter", "--simulate", "--once", "--kubernetes.enabled",
                          "--log.level", "error", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return series_per_gpu(out.stdout)


def every_group_flags() -> list[str]:
    """``--collector.<group>`` for every group the agent of this tree knows (none before them)."""
    help_text = subprocess.run([sys.executable, "-m", "exporter", "--help"], cwd=ROOT, capture_output=True,
                               text=True).stdout
    return [f"--{flag}" for flag in sorted(set(re.findall(r"--no-(collector\.[a-z.]+)", help_text)))]


# -- the run ----------------------------------------------------------------------------------------

def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kge-fleet-"))
    flags = every_group_flags() if args.everything else []
    scenario = write_scenario(simulated_node(args.gpus), work)
    agent = Agent(["--simulate", str(scenario), "--kubernetes.enabled", *flags], interval=args.interval)
    held = reserve_ports(args.nodes + 1)  # held until just before they are bound: no other taker
    ports, prom_port = [s.getsockname()[1] for s in held[:-1]], held[-1].getsockname()[1]
    rules = rule_files(args.opt_in_rules)
    config = {
        "global": {"scrape_interval": f"{args.interval}s", "scrape_timeout": f"{args.interval}s",
                   "evaluation_interval": f"{args.interval}s"},
        "rule_files": rules,
        "scrape_configs": [
            {"job_name": JOB, "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"node": f"bench-node-{i:04d}"}}
                                for i, port in enumerate(ports)]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]},
        ],
    }
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    agent.ready_after(120)
    time.sleep(args.interval)  # a cycle with the API server's workloads
    node_text = Scraper(agent.port).text()
    for sock in held:
        sock.close()
    fanout = Fanout(agent.port, ports, args.interval)
    fanout.start()
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"),
        env={**os.environ, "GOMAXPROCS": str(args.gomaxprocs)})
    try:
        # Its own footprint first: every target is up from the start, so Prometheus alone is
        # measured by a second instance with no target (same binary, same flags).
        alone = prometheus_alone(work, args)
        started = time.monotonic()
        while (scalar(prom_port, f'count(up{{job="{JOB}"}} == 1)') or 0) < args.nodes:
            if time.monotonic() - started > 600:
                raise RuntimeError("targets not all up after 10 minutes")
            time.sleep(args.interval)
        print(f"fleet: {args.nodes} targets up after {time.monotonic() - started:.0f} s; warming up "
              f"{args.warmup:.0f} s", flush=True)
        time.sleep(args.warmup)
        evaluations: dict[str, list[float]] = defaultdict(list)
        per_rule: dict[tuple[str, str], list[float]] = defaultdict(list)
        intervals: dict[str, float] = {}
        seen: dict[str, str] = {}
        cpu_start, wall_start = cpu_seconds(prometheus.pid), time.monotonic()
        while time.monotonic() - wall_start < args.seconds:
            for group in rule_groups(prom_port):
                name = group["name"]
                intervals[name] = float(group["interval"])
                if seen.get(name) == group["lastEvaluation"]:
                    continue
                seen[name] = group["lastEvaluation"]
                evaluations[name].append(float(group["evaluationTime"]) * 1e3)
                for r in group["rules"]:
                    per_rule[name, r["name"]].append(float(r.get("evaluationTime", 0)) * 1e3)
            time.sleep(args.interval / 4)
        cpu = cpu_seconds(prometheus.pid) - cpu_start
        rounds = (time.monotonic() - wall_start) / args.interval
        rss = proc_status(prometheus.pid)["rss"]
        head = scalar(prom_port, "prometheus_tsdb_head_series") or 0
        heap = scalar(prom_port, 'go_memstats_heap_inuse_bytes{job="prometheus"}') or 0
        # The same Prometheus without the rules (a reload): its CPU is the rest (scrapes, ingestion).
        config["rule_files"] = []
        (work / "prometheus.yml").write_text(json.dumps(config))
        prometheus.send_signal(signal.SIGHUP)
        time.sleep(3 * args.interval)
        bare_start, bare_wall = cpu_seconds(prometheus.pid), time.monotonic()
        time.sleep(min(args.seconds, 180))
        bare = (cpu_seconds(prometheus.pid) - bare_start) / ((time.monotonic() - bare_wall) / args.interval)
        groups = {name: statistics.median(v) for name, v in evaluations.items()}
        per_round = {name: ms * args.interval / intervals[name] for name, ms in groups.items()}
        rules_ms: dict[str, float] = defaultdict(float)
        for (group, rule), v in per_rule.items():
            rules_ms[f"{group.rsplit('.', 1)[-1]}/{rule}"] += statistics.median(v) * args.interval / intervals[group]
        result = {
            "nodes": args.nodes, "gpus_per_node": args.gpus, "interval_s": args.interval,
            "gomaxprocs": args.gomaxprocs, "flags": flags,
            "rule_files": [Path(r).name for r in rules], "rules_loaded": len(per_rule),
            "warmup_s": args.warmup, "measured_s": args.seconds,
            "longest_window_s": longest_window_s(rules),
            "longest_window_covered_s": args.warmup + args.seconds,
            "series_per_node": round(head / args.nodes),
            "series_per_gpu": {"fleet_node": series_per_gpu(node_text), "built_in_node": built_in_node(flags)},
            "head_series": head,
            "rule_ms_per_round": round(sum(per_round.values()), 2),
            "rule_ms_per_node": round(sum(per_round.values()) / args.nodes, 3),
            "rule_groups_ms_per_round": {k.rsplit(".", 1)[-1]: round(v, 2) for k, v in sorted(per_round.items())},
            "rule_groups_interval_s": {k.rsplit(".", 1)[-1]: v for k, v in sorted(intervals.items())},
            "rules_ms_per_node_top": {k: round(v / args.nodes, 4) for k, v in
                                      sorted(rules_ms.items(), key=lambda kv: -kv[1])[:40]},
            "evaluations_measured": min((len(v) for v in evaluations.values()), default=0),
            "prometheus_cpu_ms_per_round": round(1e3 * cpu / rounds, 1),
            "prometheus_cpu_ms_per_round_without_rules": round(1e3 * bare, 1),
            "rule_cpu_ms_per_node": round(1e3 * (cpu / rounds - bare) / args.nodes, 3),
            "prometheus_rss_alone_mib": round(mib(alone["rss"]), 1),
            "prometheus_rss_mib": round(mib(rss), 1),
            "rss_per_node_mib": round(mib(rss - alone["rss"]) / args.nodes, 3),
            "heap_inuse_per_node_mib": round(mib(heap - alone["heap"]) / args.nodes, 3),
            "bytes_per_series": round((rss - alone["rss"]) / max(1.0, head)),
            "scrapes_served": fanout.served,
        }
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=60)
        fanout.stop()
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def prometheus_alone(work: Path, args: argparse.Namespace) -> dict[str, float]:
    """RSS and heap of the same Prometheus with no agent target, after three intervals."""
    port = free_port()
    config = {"global": {"scrape_interval": f"{args.interval}s", "evaluation_interval": f"{args.interval}s"},
              "rule_files": rule_files(),
              "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}
    (work / "alone.yml").write_text(json.dumps(config))
    p = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'alone.yml'}", f"--storage.tsdb.path={work / 'alone'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "GOMAXPROCS": str(args.gomaxprocs)})
    try:
        time.sleep(3 * args.interval)
        return {"rss": proc_status(p.pid)["rss"],
                "heap": scalar(port, 'go_memstats_heap_inuse_bytes{job="prometheus"}') or 0}
    finally:
        p.terminate()
        p.wait(timeout=60)


def save_as(key: str, result: dict[str, Any], path: Path) -> None:
    """``result`` under ``key`` of the results file; an older file's figures become ``previous``."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if data and "runs" not in data:  # the previous release's file: one run, before collector groups
        data = {"previous": data, "runs": {}}
    data.setdefault("runs", {})[key] = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "machine": machine(), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=960, help="seconds after every target is up")
    parser.add_argument("--seconds", type=float, default=300, help="seconds measured")
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--gomaxprocs", type=int, default=1)
    parser.add_argument("--everything", action="store_true", help="every collector group on")
    parser.add_argument("--opt-in-rules", action="store_true", help="also the opt-in rule files (dcgm-exporter compat)")
    parser.add_argument("--as", dest="key", default=None, help="key in the results (default: default or everything)")
    parser.add_argument("--results", type=Path, default=RESULTS / "fleet.json")
    args = parser.parse_args()
    if not Path(PROMETHEUS).exists():
        print("fleet: no prometheus binary (apt-get install prometheus); skipped")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop Prometheus and the agent on the way out
    result = measure(args)
    print(json.dumps(result, indent=1))
    save_as(args.key or ("everything" if args.everything else "default"), result, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
