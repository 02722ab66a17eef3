"""The dashboards against a real Prometheus: a day of the demo node's history, variables, queries.

``DemoNode`` gives a real Prometheus (Debian's ``prometheus``) a day of the demo node's history
through a backfill, instead of scraping the agent for as long:

1. The agent's own scrapes over the day (dashboards/history.py: the demo node, its faults and
   the agent's restart; the history ends now).
2. ``promtool tsdb create-blocks-from openmetrics`` turns them into TSDB blocks (one file per
   2-hour block: promtool reads its whole input once per block).
3. Recording rules do not evaluate over history by themselves: ``promtool tsdb create-blocks-from
   rules`` evaluates the recording rules of ``alerts/`` over the day, against a Prometheus serving
   the blocks, at ``STEP_SECONDS``; one pass per level (a rule reading another rule's series waits
   for the pass that wrote them), each pass's blocks added to the data directory, each pass
   evaluating at the same instants; the efficiency rules, whose samples are summed over time,
   at their own interval (a minute).
4. Prometheus serves the data directory with the whole rule set of ``alerts/`` loaded: it
   evaluates the recording rules and the alerts from now on (``ALERTS``: an alert with a ``for:``
   is pending, as after any restart of Prometheus; one without fires at once).

The 1 h windows of the panels and rules, the rules' 1 d windows and a dashboard time range of a
day (``$__range`` = 1d) read that history. ``resolve_variables`` resolves a dashboard's variables
the way Grafana does (its ``label_values`` queries, through the Prometheus API) and ``substitute``
puts them, with Grafana's time macros, into a target.

Used by ``dashboards/render_png.py`` (the pictures of docs/dashboards.md) and by
``tests/test_dashboards.py``.
"""

from __future__ import annotations

import concurrent.futures
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
from typing import Any, Callable, Iterator

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # history.py, beside this file

from alerts.efficiency import GROUP as EFFICIENCY_GROUP  # noqa: E402
from alerts.generate import rule_groups  # noqa: E402
from alerts.params import minutes  # noqa: E402
from alerts.rules import Params  # noqa: E402
from history import DAY, HISTORY_SECONDS, HOUR, NODE_NAME, STEP_SECONDS, record_history  # noqa: E402,F401

#: Variable values to pick when they exist (the first value otherwise): a namespace with a
#: time-sliced GPU and an idle one shows the most.
PREFERRED = {"namespace": "research"}


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


def rule_levels(groups: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The recording rules by level: level 0 reads the agent's series only, level n + 1 reads a
    rule of level n (promtool backfills a level from the blocks of the levels before it)."""
    level: dict[str, int] = {}
    levels: list[list[dict[str, Any]]] = []
    for rule in (r for g in groups for r in g["rules"] if "record" in r):
        reads = [n for n in level if re.search(rf"(?<![\w:]){re.escape(n)}(?![\w:])", rule["expr"])]
        level[rule["record"]] = n = 1 + max((level[r] for r in reads), default=-1)
        levels += [[] for _ in range(n + 1 - len(levels))]
        levels[n].append({"record": rule["record"], "expr": rule["expr"]})
    return levels


class DemoNode:
    """A real Prometheus holding a day of the demo node's history; a context manager. The history
    ends at ``end``, once it is recorded: queries at the current time see its last samples for
    Prometheus' lookback, five minutes, and so does the evaluation of the alerts."""

    def __init__(self, workdir: Path | None = None, *, history: Callable[[Path], Any] = record_history,
                 span: float = HISTORY_SECONDS, step: float = STEP_SECONDS, end: float | None = None,
                 groups: list[dict[str, Any]] | None = None, lookback: str | None = None,
                 live_rules: bool = True) -> None:
        """The demo node's day by default. Another history: ``history(workdir)`` gives its
        ``Backfill`` (``span`` seconds of it, ending at ``end``, now by default), the recording
        rules of ``groups`` (all of alerts/ by default) are backfilled every ``step`` seconds by a
        Prometheus whose lookback is ``lookback`` (its default, 5m, by default), and the rule
        set is loaded from now on unless ``live_rules`` is false (dashboards/week.py)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="gpu-dashboards-") if workdir is None else None
        self.dir = Path(self._tmp.name) if self._tmp else workdir
        self.data = self.dir / "data"
        self._processes: list[tuple[subprocess.Popen, Any]] = []
        self.prometheus = Prometheus("")
        self.end = 0.0  # unix time of the last cycle
        self.span = float(span)
        self._history, self._step, self._end, self._groups = history, step, end, groups
        self._lookback, self._live_rules = lookback, live_rules

    def __enter__(self) -> "DemoNode":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def _run(self, name: str, commands: list[list[str]]) -> None:
        """Run ``commands``, as many at a time as there are CPUs (up to 4)."""
        def run(numbered: tuple[int, list[str]]) -> None:
            n, command = numbered
            with open(self.dir / f"{name}-{n}.log", "w") as log:
                if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
                    raise RuntimeError(f"{' '.join(command[:4])} failed:\n{self.log(f'{name}-{n}')}")

        with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(run, enumerate(commands)))

    def start(self) -> None:
        promtool = shutil.which("promtool")
        if promtool is None or shutil.which("prometheus") is None:
            raise RuntimeError("prometheus or promtool is missing: `make test` installs the Debian package prometheus")
        backfill = self._history(self.dir)
        self.end = time.time() if self._end is None else self._end  # the last cycle is now
        start = self.end - self.span
        self._run("promtool-openmetrics", [
            [promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(path), str(self.data)]
            for path in backfill.write(self.dir, start)])
        groups = rule_groups(Params()) if self._groups is None else self._groups
        # The efficiency rules are summed over time (docs/efficiency.md): they are backfilled at
        # their own interval, the others every step.
        steps = {r["record"]: 60.0 * minutes(g["interval"]) if g["name"] == EFFICIENCY_GROUP else float(self._step)
                 for g in groups for r in g["rules"] if "record" in r}
        for level, rules in enumerate(rule_levels(groups)):
            by_step: dict[float, list[dict[str, Any]]] = {}
            for r in rules:
                by_step.setdefault(steps[r["record"]], []).append(r)
            commands = []
            for step, some in by_step.items():
                # One file and group name for every level: promtool evaluates a group at the times
                # Prometheus would, offset within the interval by a hash of the two, so that each
                # level reads the samples the level before wrote at the same instants (not an
                # interval earlier).
                rule_file = self.dir / f"rules-backfill-{step:g}.yaml"
                rule_file.write_text(yaml.safe_dump({"groups": [{"name": "backfill", "rules": some}]}))
                commands.append([
                    promtool, "tsdb", "create-blocks-from", "rules", "--quiet", "--url={url}",
                    f"--start={int(start)}", f"--end={int(self.end)}", f"--eval-interval={step:g}s",
                    f"--output-dir={self.dir / 'rules' / f'{step:g}'}", str(rule_file)])
            prometheus = self._start_prometheus(f"prometheus-{level}", [], self._lookback)  # the data so far
            try:
                self._run(f"promtool-rules-{level}", [[a.format(url=prometheus.url) for a in c] for c in commands])
            finally:
                self._stop_processes()
            for blocks in (self.dir / "rules").iterdir():
                for block in blocks.iterdir():
                    block.rename(self.data / block.name)
        # The whole rule set from now on, each group every second: the first evaluations come at
        # once (subqueries keep the global evaluation interval, 1m, as their resolution).
        if not self._live_rules:
            self.prometheus = self._start_prometheus("prometheus", [])
            return
        rules_file = self.dir / "rules.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": [dict(g, interval="1s") for g in groups]}, sort_keys=False))
        self.prometheus = self._start_prometheus("prometheus", [rules_file])
        self._wait_for_rules(len(groups))

    def _start_prometheus(self, name: str, rule_files: list[Path], lookback: str | None = None) -> Prometheus:
        """Prometheus on the data directory (no scrape: the data is there), once it is ready."""
        port = free_port()
        config = self.dir / f"{name}.yml"
        config.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1m"},
                                          "rule_files": [str(f) for f in rule_files]}))
        log = open(self.dir / f"{name}.log", "w+")  # a file, not a pipe nobody reads
        process = subprocess.Popen([
            shutil.which("prometheus") or "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            *([f"--query.lookback-delta={lookback}"] if lookback else []),
        ], stdout=log, stderr=subprocess.STDOUT)
        self._processes.append((process, log))
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        self._until(lambda: urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=5).status == 200,
                    f"{name} ready", name)
        return prometheus

    def _until(self, ready: Callable[[], bool], what: str, log: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for process, _ in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited:\n{self.log(log)}")
            try:
                if ready():
                    return
            except (OSError, QueryError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {what} in {timeout:.0f}s\n{self.log(log)}")
            time.sleep(0.1)

    def _stop_processes(self) -> None:
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

    def _wait_for_rules(self, count: int) -> None:
        """Until each of the ``count`` rule groups has been evaluated three times: Prometheus
        restores the alerts' ``for:`` state after the second evaluation and writes ``ALERTS``
        from the next one on."""
        seen: dict[str, set[str]] = {}

        def evaluated() -> bool:
            for group in self.prometheus.get("/api/v1/rules")["groups"]:
                if not group["lastEvaluation"].startswith("0001"):
                    seen.setdefault(group["name"], set()).add(group["lastEvaluation"])
            return len(seen) == count and all(len(times) >= 3 for times in seen.values())

        self._until(evaluated, "every rule group evaluated", "prometheus")

    def stop(self) -> None:
        self._stop_processes()
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


def substitute(expr: str, values: dict[str, str], range_seconds: float = DAY, step: float = 0.0) -> str:
    """Grafana's macros and the dashboard's variables substituted into a query: the time range is
    ``range_seconds`` long, a range query steps by ``step`` (0: an instant query), and the data
    source's scrape interval is ``STEP_SECONDS`` (``$__rate_interval`` is Grafana's: the larger
    of four scrape intervals and the step plus one)."""
    interval = max(step, STEP_SECONDS)
    macros = {
        "__range": f"{int(range_seconds)}s", "__range_s": str(int(range_seconds)),
        "__rate_interval": f"{int(max(4 * STEP_SECONDS, step + STEP_SECONDS))}s", "__interval": f"{int(interval)}s",
    }
    every = macros | values

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in every:
            raise KeyError(f"unknown variable ${name} in {expr}")
        return every[name]

    return _VARIABLE.sub(one, expr)


def targets(dashboard: dict[str, Any], values: dict[str, str], range_seconds: float = DAY) -> list[Target]:
    """Every target of the dashboard, as an instant query over a time range of ``range_seconds``."""
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
