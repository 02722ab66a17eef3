"""The dashboards against a live Prometheus: the demo node, variables, and every panel's queries.

``DemoNode`` runs the agent on a simulated node (the built-in scenario's GPUs and pods, with its
faults brought forward to the first seconds and one more GPU that is lost) and a real Prometheus
(Debian's ``prometheus``) that scrapes it every second, adds the ``node`` label as the deployment's
relabelling does, and evaluates the rule set of ``alerts/`` (recording rules and alerts). ``Queries`` resolves a dashboard's
variables the way Grafana does (its ``label_values`` queries, through the Prometheus API) and
substitutes them, with Grafana's time macros, into every target.

Used by ``dashboards/render_png.py`` (the pictures of docs/dashboards.md) and by
``tests/test_dashboards.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # generate.py, beside this file

from alerts.generate import rule_groups  # noqa: E402
import generate  # noqa: E402 - dashboards/generate.py, beside this file
from alerts.rules import Params  # noqa: E402

NODE_NAME = "gpu-node-h100-01"
SCRAPE_SECONDS = 1
#: Variable values to pick when they exist (the first value otherwise): a namespace with a
#: time-sliced GPU and an idle one shows the most.
PREFERRED = {"namespace": "research"}

#: Faults of the demo node, all within its first seconds (docs/scenarios.md has the kinds).
DEMO_FAULTS = [
    {"kind": "thermal", "at": 0, "gpu": 0, "duration": 3600, "temperature_rise": 18},
    {"kind": "power_cap", "at": 0, "gpu": 1, "duration": 3600, "limit_watts": 450},
    {"kind": "nvlink_errors", "at": 1, "gpu": 0, "link": 3, "type": "crc_flit", "count": 6, "duration": 20},
    {"kind": "ecc", "at": 0, "gpu": 2, "duration": 30, "corrected": 15},
    {"kind": "pcie_replay", "at": 0, "gpu": 3, "duration": 30, "count": 8},
    {"kind": "row_remap", "at": 5, "gpu": 2, "uncorrectable": 1, "pending": True},
    {"kind": "ecc", "at": 6, "gpu": 2, "uncorrected": 1},
    # XIDs once Prometheus scrapes (increase() sees the per-GPU total from 0, not a new code's first event).
    {"kind": "xid", "at": 10, "gpu": 0, "code": 13},
    {"kind": "xid", "at": 12, "gpu": 0, "code": 13},
    {"kind": "xid", "at": 13, "gpu": 4, "code": 79},
    {"kind": "gpu_lost", "at": 14, "gpu": 4, "duration": 3600},
]


def demo_scenario() -> dict[str, Any]:
    """The built-in scenario with its faults brought forward and a fifth GPU, unallocated, that
    falls off the bus (XID 79) after 14 seconds."""
    scenario = yaml.safe_load((ROOT / "exporter" / "sources" / "simulate" / "default.yaml").read_text())
    scenario["gpus"].append(dict(scenario["gpus"][3]))
    scenario["faults"] = {"events": DEMO_FAULTS}
    return scenario


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A client of the Prometheus HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: the query did not parse or evaluate
            try:
                body = json.load(error)
            except ValueError:  # 503 while starting: plain text
                raise QueryError(f"HTTP {error.code}") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr, time=at or time.time())["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return sorted(self.get(f"/api/v1/label/{label}/values", **{"match[]": match}))


class QueryError(Exception):
    pass


class DemoNode:
    """The agent on the demo node, scraped by a real Prometheus; a context manager."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="gpu-dashboards-") if workdir is None else None
        self.dir = Path(self._tmp.name) if self._tmp else workdir
        self._processes: list[tuple[subprocess.Popen, Any]] = []
        self.started = 0.0
        self.prometheus = Prometheus("")

    def __enter__(self) -> "DemoNode":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "w+")  # a file, not a pipe nobody reads
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self._processes.append((process, log))
        return process

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text()[-3000:]

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: `make test` installs the Debian package prometheus")
        scenario = self.dir / "scenario.yaml"
        scenario.write_text(yaml.safe_dump(demo_scenario(), sort_keys=False))
        agent_port, prometheus_port = free_port(), free_port()
        # The groups some panel reads that are off by default: on, so that every panel has its data.
        opt_in = [f"--collector.{group}" for group in generate.opt_in_groups()]
        self._spawn("agent", [sys.executable, "-m", "exporter", "--simulate", str(scenario), "--kubernetes.enabled",
                              "--kubernetes.node-name", NODE_NAME, "--collector.interval", str(SCRAPE_SECONDS),
                              "--web.listen-address", f"127.0.0.1:{agent_port}", *opt_in])
        self.started = time.time()
        # Every group at the scrape interval, not the shipped 30 s and 1 m: the demo lasts seconds.
        fast = Params(**dict.fromkeys(("recording_interval", "urgent_interval", "alert_interval"),
                                      f"{SCRAPE_SECONDS}s"))
        (self.dir / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(fast)}, sort_keys=False))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(self.dir / "rules.yaml")],
            "scrape_configs": [{
                "job_name": Params().job, "honor_labels": True,
                # The node label, as deploy/prometheus-scrape-config.yaml relabels it.
                "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"], "labels": {"node": NODE_NAME}}],
            }],
        }))
        self._spawn("prometheus", [
            binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn",
        ])
        self.prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")

    def wait(self, seconds_of_data: float, timeout: float = 90.0) -> float:
        """Wait until Prometheus holds ``seconds_of_data`` of the agent's series, every GPU seen
        and the recording rules evaluated; returns the time range of the data (seconds)."""
        deadline = time.monotonic() + timeout
        want = 1 + len(demo_scenario()["gpus"])
        while True:
            for process, _ in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited: {self.log('agent')}\n{self.log('prometheus')}")
            try:
                gpus = self.prometheus.query("count(nvidia_gpu_info)")
                rules = self.prometheus.query("count(node:nvidia_gpu_gpus:count)")
                span = self.prometheus.query(
                    f"max(count_over_time(kube_gpu_exporter_build_info[1h])) * {SCRAPE_SECONDS}")
                if gpus and rules and span and int(float(gpus[0]["value"][1])) + 1 >= want \
                        and float(span[0]["value"][1]) >= seconds_of_data:
                    return time.time() - self.started
            except (OSError, QueryError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {seconds_of_data}s of data in time\n{self.log('agent')}\n"
                                   f"{self.log('prometheus')}")
            time.sleep(0.5)

    def stop(self) -> None:
        for process, log in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
        self._processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()


# -- Variables and macros -----------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def _regex_escape(value: str) -> str:
    return re.sub(r"([\\.*+?^${}()|\[\]])", r"\\\\\1", value)


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel_id: int
    panel: str
    kind: str
    ref: str
    expr: str  # variables and macros substituted
    legend: str
    instant: bool


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def resolve_variables(dashboard: dict[str, Any], prometheus: Prometheus,
                      preferred: dict[str, str] | None = None) -> dict[str, str]:
    """Values for the dashboard's query variables, as Grafana would pick them: all values of a
    multi-value variable (a regex alternation; ``.*`` for All when there are none), the preferred
    or first value of a single-value one."""
    preferred = PREFERRED if preferred is None else preferred
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, f"variable {variable['name']}: not a label_values() query"
        found = prometheus.label_values(match["label"], substitute(match["match"], values))
        name = variable["name"]
        if variable.get("multi") or (variable.get("includeAll") and not found):
            values[name] = "|".join(_regex_escape(v) for v in found) if found else variable["allValue"]
        else:
            assert found, f"variable {name}: no value in Prometheus"
            values[name] = preferred.get(name) if preferred.get(name) in found else found[0]
    return values


def substitute(expr: str, values: dict[str, str], range_seconds: float = 60.0) -> str:
    """Grafana's macros and the dashboard's variables substituted into a query."""
    macros = {
        "__range": f"{int(range_seconds)}s", "__range_s": str(int(range_seconds)),
        "__rate_interval": f"{4 * SCRAPE_SECONDS}s", "__interval": f"{SCRAPE_SECONDS}s",
    }
    every = macros | values

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in every:
            raise KeyError(f"unknown variable ${name} in {expr}")
        return every[name]

    return _VARIABLE.sub(one, expr)


def targets(dashboard: dict[str, Any], values: dict[str, str], range_seconds: float = 60.0) -> list[Target]:
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", ()):
            out.append(Target(dashboard["uid"], panel["id"], panel["title"], panel["type"], target["refId"],
                              substitute(target["expr"], values, range_seconds), target.get("legendFormat", ""),
                              bool(target.get("instant"))))
    return out


def dashboards() -> dict[str, dict[str, Any]]:
    """The generated dashboards by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(HERE.glob("*.json"))}
