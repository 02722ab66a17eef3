"""What one agent costs the API server: requests per node-hour, this tree against the code before
it, in steady state and under pod churn: ``kube_requests.py [--speed 60] [--hours 1] [--before REV]``.

Each side is one agent's API-server client (the pod watch with its owner lookups, and the
ResourceSlice watch) against a fake API server of its own (tests/fakekubeapi.py), which counts
every request by verb and resource and the watches it holds. Time runs ``speed`` times faster
than on a node: every period of both clients (watch timeouts, relists, owner caches) and the
fake's bookmark period (a minute on a real API server) are divided by it, so one simulated hour
takes 3600/speed seconds; counts are per simulated hour.

* **before**: the code of ``--before`` (default: the main branch this work started from), taken
  with ``git archive`` and run in a process of its own with its defaults: a full list of the
  node's pods and of its ResourceSlices every 5 minutes without ``resourceVersion`` (a quorum
  read of etcd before Kubernetes 1.31), 5-minute watches between, owners looked up inside the
  list and cached for 10 minutes.
* **after**: this tree with its defaults: one list from the watch cache, watches of 5-10 minutes
  resumed from their last bookmark, one GET per ReplicaSet or Job; its safety list (every 12-18
  hours) falls outside an hour and is added to the totals as its average (1/15 per hour).

The node: 8 GPU pods (2 of a Deployment, 2 of a StatefulSet, 4 of CronJobs' Jobs) and the DRA
driver's ResourceSlice. Steady state: nothing changes. Churn: every 3 minutes a CronJob's Job
ends and its next Job starts a pod (ADDED, then MODIFIED to Running, then the old pod DELETED),
every 6 minutes a Deployment pod is replaced, every 30 minutes the Deployment rolls out (a new
ReplicaSet, both pods replaced). Counting starts 2 simulated minutes after both watches of the
client are open; what came before (the first lists and owner lookups) is start-up. Writes bench/results/kube_requests.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# Not bench/common.py at the top: it puts this tree first on sys.path, and the client process of
# the "before" side must import the older ``exporter``.
ROOT = Path(__file__).resolve().parent.parent

#: The main branch before the API-server work (issue 22): the "before" of docs/scaling.md.
BEFORE = "9624696561df249741b57a43eb6e7757fc902170"
NODE = "bench-node"
FLEET = 5000
#: Simulated minutes after every client watches, before the count starts: the first lookups.
WARMUP_MINUTES = 2
#: The safety list of this tree, every 12-18 hours: 1/15 of a list per hour on average, per watch.
SAFETY_LISTS_PER_HOUR = 1 / 15


# -- the client side, in its own process ------------------------------------------------------

def drive(kubeconfig: str, speed: float, seconds: float) -> None:
    """Run the pod and ResourceSlice watchers of whatever ``exporter`` is on sys.path, with their
    default periods divided by ``speed``, for ``seconds``."""
    from exporter.sources.kube import PodWatcher, SliceWatcher

    if inspect.iscoroutinefunction(PodWatcher.start):  # this tree: tasks on the event loop
        from exporter.sources.kube.api import KubeApi
        from exporter.sources.kube.listwatch import RELIST_SECONDS, WATCH_READ_TIMEOUT_SECONDS, WATCH_TIMEOUT_SECONDS

        async def main() -> None:
            api = KubeApi(kubeconfig)
            loop = dict(relist_seconds=RELIST_SECONDS / speed, read_timeout=WATCH_READ_TIMEOUT_SECONDS / speed,
                        watch_timeout_seconds=tuple(t / speed for t in WATCH_TIMEOUT_SECONDS), api=api)
            watchers = [PodWatcher(NODE, owner_linger=600 / speed, owner_backoff_initial=1 / speed,
                                   owner_backoff_max=600 / speed, **loop),
                        SliceWatcher(NODE, ("gpu.nvidia.com",), **loop)]
            for w in watchers:
                await w.start()
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            for w in watchers:
                await w.stop()
                print(f"{type(w).__name__} errors: {w.error_counts()}", file=sys.stderr)

        asyncio.run(main())
    else:  # before: threads, a list every resync_seconds
        periods = dict(kubeconfig=kubeconfig, resync_seconds=300 / speed, watch_timeout_seconds=max(1, round(300 / speed)))
        watchers = [PodWatcher(NODE, owner_cache_ttl=600 / speed, owner_failure_ttl=30 / speed, **periods),
                    SliceWatcher(NODE, ("gpu.nvidia.com",), **periods)]
        for w in watchers:
            w.start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait(seconds)
        for w in watchers:
            w.stop()
            print(f"{type(w).__name__} errors: {w.error_counts()}", file=sys.stderr)


# -- the node, and its churn ------------------------------------------------------------------

class Node:
    """The same node on every fake API server given, changed on all of them at once."""

    def __init__(self, apis: list) -> None:  # noqa: ANN001 - FakeKubeApi
        from fakekubeapi import make_resource_slice

        self.apis = apis
        self.jobs = {c: 0 for c in "abcd"}  # CronJob train-<c> -> its current Job's number
        self.rollout = 0
        self.replaced = 0
        for api in apis:
            api.add_replicaset("ml", self.rs(), owner=("Deployment", "web"))
            api.add_object(make_resource_slice(NODE, {f"gpu-{i}": f"GPU-{i:08d}-0000-4000-8000-000000000000"
                                                      for i in range(8)}))
        for i in range(2):
            self._each("add_pod", self.web_pod(i))
            self._each("add_pod", self.pod(f"db-{i}", ("StatefulSet", "db")))
        for c in self.jobs:
            self._start_job(c)

    def rs(self) -> str:
        return f"web-{self.rollout:04d}abcd"

    def web_pod(self, i: int) -> dict:
        return self.pod(f"{self.rs()}-{i}-{self.replaced}", ("ReplicaSet", self.rs()),
                        labels={"pod-template-hash": f"{self.rollout:04d}abcd"})

    @staticmethod
    def pod(name: str, owner: tuple[str, str], phase: str = "Running", labels: dict | None = None) -> dict:
        from fakekubeapi import make_pod

        return make_pod("ml", name, uid=f"uid-{name}", node=NODE, owner=owner, phase=phase, labels=labels,
                        containers={"main": hashlib.sha256(name.encode()).hexdigest()})

    def _each(self, method: str, *args) -> None:  # noqa: ANN002
        for api in self.apis:
            getattr(api, method)(*args)

    def _start_job(self, c: str) -> None:
        job = f"train-{c}-{self.jobs[c]}"
        self._each("add_job", "ml", job, ("CronJob", f"train-{c}"))
        self._each("add_pod", self.pod(f"{job}-x", ("Job", job), phase="Pending"))
        self._each("update_pod", self.pod(f"{job}-x", ("Job", job)))

    def next_job(self, c: str) -> None:
        old = f"train-{c}-{self.jobs[c]}"
        self.jobs[c] += 1
        self._start_job(c)
        self._each("delete_pod", "ml", f"{old}-x")
        self._each("delete_object", "Job", "ml", old)

    def replace_web_pod(self, i: int) -> None:
        old = self.web_pod(i)["metadata"]["name"]
        self.replaced += 1
        self._each("add_pod", self.web_pod(i))
        self._each("delete_pod", "ml", old)

    def roll_out(self) -> None:
        old = [self.web_pod(i)["metadata"]["name"] for i in range(2)]
        self.rollout += 1
        self._each("add_replicaset", "ml", self.rs(), ("Deployment", "web"))
        for i in range(2):
            self._each("add_pod", self.web_pod(i))
        for name in old:
            self._each("delete_pod", "ml", name)


def churn_events(minutes: float) -> list[tuple[float, str, tuple]]:
    """(simulated minute, Node method, args) of an hour of churn."""
    events: list[tuple[float, str, tuple]] = []
    for k, m in enumerate(range(3, int(minutes) + 1, 3)):
        events.append((m, "next_job", ("abcd"[k % 4],)))
    for k, m in enumerate(range(6, int(minutes) + 1, 6)):
        events.append((m + 0.5, "replace_web_pod", (k % 2,)))
    for m in range(30, int(minutes) + 1, 30):
        events.append((m + 1, "roll_out", ()))
    return sorted(events)


# -- one measurement --------------------------------------------------------------------------

def measure(sides: dict[str, Path | None], churn: bool, speed: float, hours: float, work: Path) -> dict[str, dict]:
    """Run every side (name -> the directory to import ``exporter`` from; None: this tree) against
    a fake of its own, the same node and churn on each; their counts by (verb, resource)."""
    from fakekubeapi import FakeKubeApi

    names = list(sides)
    apis = [FakeKubeApi(bookmark_seconds=60 / speed).start() for _ in names]
    procs: list[subprocess.Popen] = []
    try:
        node = Node(apis)
        for name, api in zip(names, apis):
            kubeconfig = api.write_kubeconfig(work / f"kubeconfig-{name}-{churn}")
            path = str(sides[name] or ROOT)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, str(ROOT / "tests")])}
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--drive", str(kubeconfig), "--speed", str(speed), "--seconds", "86400"],
                cwd=path, env=env))
        # The clock starts once every client has listed and watches both kinds (however long the
        # processes took to start on a loaded machine); what came before is start-up.
        deadline = time.monotonic() + 120
        while not all(api.open_watches() >= 2 for api in apis):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a client did not start")
            time.sleep(0.05)
        warmup = WARMUP_MINUTES * 60 / speed
        seconds = warmup + hours * 3600 / speed
        started = time.monotonic()
        warm: list[int] | None = None  # the number of requests each fake had at the end of the warm-up
        events = churn_events(hours * 60) if churn else []
        open_samples: list[list[int]] = [[] for _ in apis]
        while (elapsed := time.monotonic() - started) < seconds:
            if warm is None and elapsed >= warmup:
                warm = [len(api.calls) for api in apis]
            minute = (elapsed - warmup) * speed / 60
            while events and elapsed >= warmup and events[0][0] <= minute:
                _, method, args = events.pop(0)
                getattr(node, method)(*args)
            if elapsed >= warmup:
                for samples, api in zip(open_samples, apis):
                    samples.append(api.open_watches())
            time.sleep(0.05)
        ended = [len(api.calls) for api in apis]
        out = {}
        for name, api, first, last, samples in zip(names, apis, warm or [0] * len(apis), ended, open_samples):
            startup, measured = api.calls[:first], api.calls[first:last]
            counted = Counter((c.verb, c.resource) for c in measured)
            out[name] = {
                "startup": {f"{v} {r}": n for (v, r), n in sorted(Counter((c.verb, c.resource) for c in startup).items())},
                "per_hour": {f"{v} {r}": round(n / hours, 2) for (v, r), n in sorted(counted.items())},
                "quorum_lists_per_hour": round(sum(1 for c in measured if c.verb == "list" and not c.resource_version)
                                               / hours, 2),
                "watches_held": round(sum(samples) / max(1, len(samples)), 2),
            }
        return out
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        for api in apis:
            api.stop()


def summarize(side: dict, safety: bool) -> dict:
    per_hour = dict(side["per_hour"])
    if safety:  # the safety lists of the pod and the ResourceSlice watch, on average
        for resource in ("pods", "resourceslices"):
            key = f"list {resource}"
            per_hour[key] = round(per_hour.get(key, 0) + SAFETY_LISTS_PER_HOUR, 2)
    total = sum(per_hour.values())
    lists = sum(v for k, v in per_hour.items() if k.startswith("list "))
    gets = sum(v for k, v in per_hour.items() if k.startswith("get "))
    return {
        **side, "per_hour": per_hour, "total_per_hour": round(total, 2),
        "fleet": {"agents": FLEET, "requests_per_second": round(total * FLEET / 3600, 1),
                  "lists_per_second": round(lists * FLEET / 3600, 1),
                  "quorum_lists_per_second": round(side["quorum_lists_per_hour"] * FLEET / 3600, 1),
                  "gets_per_second": round(gets * FLEET / 3600, 1),
                  "watches_held": round(side["watches_held"] * FLEET)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=60)
    parser.add_argument("--hours", type=float, default=1)
    parser.add_argument("--before", default=BEFORE, help="git revision of the code to compare with; '' for none")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.speed, args.seconds)
        return 0
    sys.path.insert(0, str(ROOT / "bench"))
    from common import save

    work = Path(tempfile.mkdtemp(prefix="kge-kube-"))
    sides: dict[str, Path | None] = {}
    if args.before:
        old = work / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "exporter"], capture_output=True)
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            sides["before"] = old
        else:
            print(f"no revision {args.before} here: measuring this tree only", file=sys.stderr)
    sides["after"] = None
    results = {}
    try:
        for scenario, churn in (("steady", False), ("churn", True)):
            print(f"== {scenario}: {args.hours:g} simulated hour(s) in {args.hours * 3600 / args.speed:.0f} s",
                  flush=True)
            measured = measure(sides, churn, args.speed, args.hours, work)
            results[scenario] = {name: summarize(side, safety=name == "after") for name, side in measured.items()}
            for name, side in results[scenario].items():
                fleet = side["fleet"]
                print(f"  {name:6} {side['total_per_hour']:6.1f} requests/node-hour {side['per_hour']}; "
                      f"{FLEET} agents: {fleet['requests_per_second']} requests/s, {fleet['lists_per_second']} lists/s "
                      f"({fleet['quorum_lists_per_second']} quorum), {fleet['watches_held']} watches held", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save("kube_requests", {"speed": args.speed, "hours": args.hours, "before": args.before or None,
                           "node": "8 GPU pods: 2 Deployment, 2 StatefulSet, 4 CronJob; 1 ResourceSlice",
                           "scenarios": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
