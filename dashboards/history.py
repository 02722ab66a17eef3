"""A day of the demo node's history, as the agent's own scrapes (dashboards/live.py backfills it).

The agent itself (``exporter.cli.build_agent``, as ``kube-gpu-exporter --simulate <demo>
--kubernetes.enabled`` builds it) plays the demo node: the built-in scenario's GPUs and pods, one
more GPU that falls off the bus, and faults placed in the last hours (``DEMO_FAULTS``). Its
simulated node reads a virtual clock, and every ``STEP_SECONDS`` of it one collection cycle is
taken as one scrape: the cycle's OpenMetrics exposition with the labels a scrape adds (``job``,
``instance``, and ``node`` as the deployment's relabelling adds it) and Prometheus' own ``up`` and
``scrape_duration_seconds`` (``Backfill``). The history is a day and an hour long; the agent
restarted 8 hours before its end (``RESTART_AGO``, a rollout: its own counters start again, the
GPUs' readings and counters go on).

Playing a day costs about 16 s of CPU, nearly all of it the cycles' rendering (the simulator's
counters are integrals in closed form, not sums over every second: that took as much again): the
agent's two runs are recorded at once in two processes (the second one's simulated node first
plays the hours before it, without cycles), and the scrapes are kept in ``HISTORY_CACHE`` for the
next run, under a digest of the agent's code and of this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import importlib.metadata
import multiprocessing
import os
import pickle
import sys
import time
from array import array
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerts.rules import Params  # noqa: E402

NODE_NAME = "gpu-node-h100-01"
MINUTE, HOUR, DAY = 60, 3600, 86400
#: A day and an hour of history: a dashboard range of a day and the 1 h windows at its start
#: both read data.
HISTORY_SECONDS = DAY + HOUR
#: One cycle, taken as one scrape, every 4 minutes: within Prometheus' 5-minute lookback, so that
#: every series has a value at every instant (the data source's scrape interval, for Grafana).
STEP_SECONDS = 240
#: The agent restarted this long before the end of the history (then the second run, which plays
#: the whole day on its simulated node but records a third of it, costs as much as the first).
RESTART_AGO = 8 * HOUR
#: The demo node's scrape target, as Prometheus labels it.
TARGET = {"job": Params().job, "instance": "gpu-node-h100-01:9400", "node": NODE_NAME}
#: Where recorded histories are kept (the tests' build directory: `make clean` empties it).
HISTORY_CACHE = ROOT / "tests" / ".build"


def ago(seconds: int) -> int:
    """History time (seconds since the history starts) ``seconds`` before its end."""
    return HISTORY_SECONDS - seconds


#: Faults of the demo node (docs/scenarios.md has the kinds), at history times (its scenario
#: times: the simulated node starts with the history): GPU 0's first XID 20 hours before the end
#: (outside the 1 h windows, inside the day), everything else in the last hours.
DEMO_FAULTS = [
    {"kind": "xid", "at": ago(20 * HOUR), "gpu": 0, "code": 13},
    {"kind": "thermal", "at": ago(2 * HOUR), "gpu": 0, "duration": 3 * HOUR, "temperature_rise": 18},
    {"kind": "power_cap", "at": ago(2 * HOUR), "gpu": 1, "duration": 3 * HOUR, "limit_watts": 450},
    {"kind": "ecc", "at": ago(50 * MINUTE), "gpu": 2, "duration": 30 * MINUTE, "corrected": 15},
    {"kind": "pcie_replay", "at": ago(50 * MINUTE), "gpu": 3, "duration": 30 * MINUTE, "count": 8},
    {"kind": "xid", "at": ago(40 * MINUTE), "gpu": 0, "code": 13},
    {"kind": "nvlink_errors", "at": ago(30 * MINUTE), "gpu": 0, "link": 3, "type": "crc_flit", "count": 6,
     "duration": 10 * MINUTE},
    {"kind": "row_remap", "at": ago(25 * MINUTE), "gpu": 2, "uncorrectable": 1, "pending": True},
    {"kind": "xid", "at": ago(20 * MINUTE), "gpu": 4, "code": 79},
    {"kind": "gpu_lost", "at": ago(19 * MINUTE), "gpu": 4, "duration": 2 * HOUR},
    # In the alerts' 10-minute event window at the end: GpuEccUncorrectableErrors fires (no for:).
    {"kind": "ecc", "at": ago(3 * MINUTE), "gpu": 2, "uncorrected": 1},
]
#: The agent's runs: (history time it started, history time of its last cycle).
RUNS = ((0, ago(RESTART_AGO) - STEP_SECONDS), (ago(RESTART_AGO), HISTORY_SECONDS))


def demo_scenario() -> dict[str, Any]:
    """The built-in scenario with a fifth GPU (unallocated: it falls off the bus 20 minutes before
    the end) and the faults above, once each."""
    scenario = yaml.safe_load((ROOT / "exporter" / "sources" / "simulate" / "default.yaml").read_text())
    scenario["gpus"].append(dict(scenario["gpus"][3]))
    scenario["faults"] = {"events": DEMO_FAULTS}
    return scenario


class Backfill:
    """Scrapes of one target, to be written as OpenMetrics for ``promtool tsdb create-blocks-from
    openmetrics``: each family once, each of its series' samples together and in time order.
    Samples are kept as arrays of floats: the recording process is the agent whose memory the
    dashboards show, and a day of samples as Python objects would be most of it."""

    def __init__(self, target: dict[str, str]) -> None:
        self._target = ",".join(f'{k}="{v}"' for k, v in sorted(target.items()))
        self.headers: dict[str, list[str]] = {}  # family -> its HELP, TYPE and UNIT lines
        self.series: dict[str, dict[str, tuple[array, array]]] = {}  # family -> series -> (times, values)

    def _sample(self, family: str, series: str, t: float, value: float) -> None:
        samples = self.series.setdefault(family, {}).get(series)
        if samples is None:
            samples = self.series[family][series] = (array("d"), array("d"))
        samples[0].append(t)
        samples[1].append(value)

    def scrape(self, exposition: str, t: float) -> None:
        """A scrape at history time ``t``: the target's labels on every series (the agent sets
        none of them, so ``honor_labels`` changes nothing), then ``up`` and
        ``scrape_duration_seconds`` as Prometheus adds them (the time this reading took)."""
        started = time.perf_counter()
        family = ""
        for line in exposition.splitlines():
            if line.startswith("#"):
                if line != "# EOF":
                    family = line.split(" ", 3)[2]
                    headers = self.headers.setdefault(family, [])
                    if line not in headers:
                        headers.append(line)
                continue
            series, _, value = line.rpartition(" ")
            name, brace, labels = series.partition("{")
            self._sample(family, f"{name}{{{self._target},{labels}" if brace else f"{name}{{{self._target}}}",
                         t, float(value))
        for name, number in (("up", 1.0), ("scrape_duration_seconds", time.perf_counter() - started)):
            self.headers.setdefault(name, [f"# TYPE {name} gauge"])
            self._sample(name, f"{name}{{{self._target}}}", t, number)

    def extend(self, later: Backfill) -> None:
        """Append the scrapes of ``later``, all after these."""
        for family, headers in later.headers.items():
            self.headers.setdefault(family, headers)
            for series, (times, values) in later.series.get(family, {}).items():
                mine = self.series.setdefault(family, {}).setdefault(series, (array("d"), array("d")))
                mine[0].extend(times)
                mine[1].extend(values)

    def write(self, directory: Path, start: float, block_seconds: int = 2 * HOUR) -> list[Path]:
        """The scrapes, timestamped from unix time ``start`` on, in one file per block of
        ``block_seconds`` as promtool aligns its blocks (it reads its whole input once per block)."""
        blocks: dict[int, dict[str, list[str]]] = {}
        for family, series in self.series.items():
            for name, (times, values) in series.items():
                for t, value in zip(times, values):
                    at = start + t
                    blocks.setdefault(int(at // block_seconds), {}).setdefault(family, []).append(
                        f"{name} {value!r} {at:.3f}\n")
        paths = []
        for block, families in sorted(blocks.items()):
            path = directory / f"history-{block}.om"
            with path.open("w") as out:
                for family, lines in families.items():
                    out.write("".join(f"{h}\n" for h in self.headers[family]) + "".join(lines))
                out.write("# EOF\n")
            paths.append(path)
        return paths


def _agent(scenario: Path, clock: Callable[[], float], flags: list[str]) -> Any:
    """The agent ``kube-gpu-exporter --simulate <scenario> --kubernetes.enabled <flags>`` runs, its
    simulated node reading ``clock`` (its scenario time, from 0 when the agent is made) instead of
    the monotonic clock."""
    from exporter.cli import build_agent
    from exporter.config import parse_config

    return build_agent(parse_config(["--simulate", str(scenario), "--kubernetes.enabled",
                                     "--kubernetes.node-name", NODE_NAME, *flags], environ={}), simulated_clock=clock)


def opt_in_flags() -> list[str]:
    """``--collector.<group>`` for the groups off by default that some panel reads: the demo has
    them on, so that every panel has its data."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import generate  # dashboards/generate.py

    return [f"--collector.{group}" for group in generate.opt_in_groups()]


def record_run(start: int, end: int, workdir: Path, flags: list[str]) -> Backfill:
    """The cycles of an agent that starts at history time ``start``, to ``end``, one every
    ``STEP_SECONDS``, as scrapes. Its simulated node's time is the history's: the GPUs' counters
    go on from the hours before ``start``."""
    from exporter.sources.simulate import SimulatedGpuLost

    scenario = workdir / f"scenario-{start}.yaml"
    scenario.write_text(yaml.safe_dump(demo_scenario(), sort_keys=False))
    backfill = Backfill(TARGET)

    async def run() -> None:
        now = [0.0]
        agent = _agent(scenario, lambda: now[0], flags)
        node = agent.gpus.backend
        await agent.start_sources(sync_timeout=5.0)
        try:
            for t in range(start, end + 1, STEP_SECONDS):
                now[0] = float(t)
                # The simulated node plays the time up to t here, as a real node's time passes by
                # itself: not in the agent's reads, which are timed and have a timeout (the first
                # read of the second run would play 17 hours). Readings are a function of the
                # time alone (exporter/sources/simulate/backend.py): the same either way.
                for index in range(node.device_count()):
                    with contextlib.suppress(SimulatedGpuLost):
                        node.read_gpu(index)
                exposition = await agent.collect_once()
                backfill.scrape(exposition.openmetrics.decode(), t)
        finally:
            await agent.stop()

    asyncio.run(run())
    return backfill


def _history_key(flags: list[str]) -> str:
    """A digest of what a recorded history depends on: the agent (its code and built-in
    scenario, its flags), this module (the demo and its recording), Python and client_python."""
    digest = hashlib.sha256(f"{sys.version} {importlib.metadata.version('prometheus-client')} {flags}".encode())
    for path in sorted([*(ROOT / "exporter").rglob("*.py"), *(ROOT / "exporter").rglob("*.yaml"), Path(__file__)]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def record_history(workdir: Path) -> Backfill:
    """The scrapes of the agent's runs (history times), recorded at once in processes of their
    own; kept in ``HISTORY_CACHE`` for as long as nothing they depend on changes."""
    flags = opt_in_flags()  # once here, not in each recording process
    cached = HISTORY_CACHE / f"dashboards-history-{_history_key(flags)}.pickle"
    backfill = Backfill(TARGET)
    if cached.exists():
        backfill.headers, backfill.series = pickle.loads(cached.read_bytes())
        return backfill
    spawn = multiprocessing.get_context("spawn")  # not fork: the caller may run threads
    with concurrent.futures.ProcessPoolExecutor(len(RUNS) - 1, mp_context=spawn) as pool:
        earlier = [pool.submit(record_run, start, end, workdir, flags) for start, end in RUNS[:-1]]
        last = record_run(*RUNS[-1], workdir, flags)
        for part in [*(f.result() for f in earlier), last]:
            backfill.extend(part)
    HISTORY_CACHE.mkdir(parents=True, exist_ok=True)
    for old in HISTORY_CACHE.glob("dashboards-history-*.pickle"):
        old.unlink(missing_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}")
    partial.write_bytes(pickle.dumps((backfill.headers, backfill.series)))
    partial.replace(cached)
    return backfill
