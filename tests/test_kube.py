"""exporter.sources.kube.PodWatcher and its client against the fake API server (tests/fakekubeapi.py)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from exporter.sources.kube import POD_WATCH_ERROR_KINDS, KubeApi, PodWatcher, pod_meta_from_dict, strip_runtime_prefix
from exporter.sources.kube.api import InCluster, in_cluster_server
from conftest import wait_until_async
from fakekubeapi import FakeKubeApi, make_pod

NODE = "gpu-node-1"
ROOT = Path(__file__).resolve().parent.parent
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


# Short backoffs and watches for tests; owner lookups retried only after a minute unless a test
# says otherwise, so that their failures can be counted exactly.
FAST = dict(backoff_initial=0.05, backoff_max=0.3, request_timeout=2.0, watch_timeout_seconds=(30, 30),
            owner_backoff_initial=60)


@pytest.fixture
async def start_watcher():
    """Starts a PodWatcher on ``NODE`` with short timeouts; every one is stopped at the end."""
    started: list[PodWatcher] = []

    async def start(kubeconfig: str | None = None, **kwargs) -> PodWatcher:
        w = PodWatcher(NODE, kubeconfig=kubeconfig, **{**FAST, **kwargs})
        await w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        await w.stop()


@pytest.fixture
def make_watcher(fake_kube_api: FakeKubeApi, start_watcher):
    """Starts a PodWatcher on the ``fake_kube_api`` server (through its kubeconfig file)."""
    return lambda **kwargs: start_watcher(str(fake_kube_api.kubeconfig_path), **kwargs)


def relisted(api: FakeKubeApi) -> Callable[[], bool]:
    """A condition: the watcher has finished a list made from now on (it watches from there)."""
    since = api.resource_version
    return lambda: api.watching_since(since)


def watch_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"pod-watch-{NODE}"]


def by_name(w: PodWatcher) -> dict[str, tuple[str, str]]:
    return {p.name: (p.workload_kind, p.workload) for p in w.pods().values()}


def pod_calls(api: FakeKubeApi, verb: str) -> list:
    return [c for c in list(api.calls) if c.verb == verb and c.resource == "pods"]


def test_import_does_not_import_kubernetes() -> None:
    code = "import sys, exporter.sources.kube; assert 'kubernetes' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


async def test_owners_resolved(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_replicaset("ml", "trainer-7d9f8c6b5", owner=("Deployment", "trainer"))
    api.add_replicaset("ml", "orphan-rs", owner=None)
    api.add_job("ml", "nightly-28000000", owner=("CronJob", "nightly"))
    api.add_job("ml", "one-off", owner=None)
    pods = [
        make_pod("ml", "trainer-7d9f8c6b5-abcde", node=NODE, owner=("ReplicaSet", "trainer-7d9f8c6b5")),
        make_pod("ml", "orphan-rs-xyz", node=NODE, owner=("ReplicaSet", "orphan-rs")),
        make_pod("ml", "nightly-28000000-q1", node=NODE, owner=("Job", "nightly-28000000")),
        make_pod("ml", "one-off-q2", node=NODE, owner=("Job", "one-off")),
        make_pod("ml", "db-0", node=NODE, owner=("StatefulSet", "db")),
        make_pod("kube-system", "dcgm-abc", node=NODE, owner=("DaemonSet", "dcgm")),
        make_pod("ml", "nb-0", node=NODE, owner=("Notebook", "alice"),
                 owner_api_version="kubeflow.org/v1"),
        make_pod("ml", "bare", node=NODE, owner=None),
        make_pod("ml", "elsewhere", node="gpu-node-2", owner=("StatefulSet", "db")),
    ]
    for p in pods:
        api.add_pod(p)
    w = await make_watcher()
    # Synced only once the first list's owners are in: an agent that starts shows them at once.
    assert await w.wait_synced(10) and w.connected
    assert by_name(w) == {
        "trainer-7d9f8c6b5-abcde": ("Deployment", "trainer"),
        "orphan-rs-xyz": ("ReplicaSet", "orphan-rs"),
        "nightly-28000000-q1": ("CronJob", "nightly"),
        "one-off-q2": ("Job", "one-off"),
        "db-0": ("StatefulSet", "db"),
        "dcgm-abc": ("DaemonSet", "dcgm"),
        "nb-0": ("Notebook", "alice"),
        "bare": ("Pod", "bare"),
    }  # "elsewhere" is on another node: not listed
    assert all(meta.uid == uid for uid, meta in w.pods().items())
    assert w.error_counts()["owner_lookup"] == 0
    # Owners are read from the watch cache, one GET each.
    gets = [c for c in api.calls if c.verb == "get"]
    assert sorted(c.resource for c in gets) == ["jobs", "jobs", "replicasets", "replicasets"]
    assert {c.resource_version for c in gets} == {"0"}


async def test_every_request_is_one_the_cluster_role_allows(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    """Least privilege, checked against what the client really sends: the ClusterRole of
    daemonset.yaml allows every request, and nothing more is in it."""
    import yaml

    role = next(d for d in yaml.safe_load_all((ROOT / "daemonset.yaml").read_text()) if d and d["kind"] == "ClusterRole")
    allowed = {(verb, resource) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    api = fake_kube_api
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "web-5f6d7c-a", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    api.add_pod(make_pod("ml", "nightly-1-a", node=NODE, owner=("Job", "nightly-1")))
    w = await make_watcher(watch_timeout_seconds=(1, 1), relist_seconds=0.5)
    from exporter.sources.kube import SliceWatcher

    slices = SliceWatcher(NODE, ("gpu.nvidia.com",), api=w.api, backoff_initial=0.05)
    await slices.start()
    try:
        await wait_until_async(lambda: len(pod_calls(api, "list")) >= 2 and api.count("watch", "resourceslices") >= 1)
        api.expire_watches()  # and a list after a 410
        await wait_until_async(lambda: w.error_counts()["gone"] >= 1 and w.connected)
    finally:
        await slices.stop()
    used = {(c.verb, c.resource) for c in api.calls}
    assert used == allowed == {("list", "pods"), ("watch", "pods"), ("get", "replicasets"), ("get", "jobs"),
                               ("list", "resourceslices"), ("watch", "resourceslices")}


async def test_one_owner_lookup_per_replicaset_or_job_not_per_pod(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    for i in range(5):
        api.add_pod(make_pod("ml", f"web-5f6d7c-{i}", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    w = await make_watcher()
    await wait_until_async(lambda: len(w.pods()) == 5)
    for i in range(5, 10):  # churn through the watch
        api.add_pod(make_pod("ml", f"web-5f6d7c-{i}", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    await wait_until_async(lambda: len(w.pods()) == 10)
    for i in range(10):  # every pod replaced: the answer outlives them (owner_linger)
        api.delete_pod("ml", f"web-5f6d7c-{i}")
    api.add_pod(make_pod("ml", "web-5f6d7c-new", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    await wait_until_async(lambda: set(by_name(w)) == {"web-5f6d7c-new"})
    api.expire_watches()  # and a list again (410)
    await wait_until_async(relisted(api))
    assert set(by_name(w).values()) == {("Deployment", "web")}
    assert api.request_count("/apis/apps/v1/namespaces/ml/replicasets/web-5f6d7c") == 1


async def test_labels_and_container_ids(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    pod = make_pod(
        "ml", "p", uid="11111111-2222-3333-4444-555555555555", node=NODE,
        labels={"app": "trainer", "team": "vision", "secret-ish": "x"},
        containers={"main": "abc123", "sidecar": "cri-o://def456", "pending": None},
        init_containers={"init": "containerd://0a0b"},
        ephemeral_containers={"debug": "containerd://dbg1"},
    )
    fake_kube_api.add_pod(pod)
    w = await make_watcher(label_allowlist=("app", "team", "absent"))
    meta = await wait_until_async(lambda: w.pods().get("11111111-2222-3333-4444-555555555555"))
    assert dict(meta.labels) == {"app": "trainer", "team": "vision"}
    assert dict(meta.container_ids) == {
        "abc123": "main", "def456": "sidecar", "0a0b": "init", "dbg1": "debug",
    }
    assert (meta.namespace, meta.name) == ("ml", "p")


async def test_watch_adds_modifies_and_deletes(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "first", uid="u-first", node=NODE))
    w = await make_watcher(label_allowlist=("v",))
    await wait_until_async(lambda: w.connected and "u-first" in w.pods())
    before = w.pods()

    api.add_pod(make_pod("ml", "second", uid="u-second", node=NODE, owner=("DaemonSet", "ds")))
    api.add_pod(make_pod("ml", "other-node", uid="u-other", node="gpu-node-2"))
    await wait_until_async(lambda: "u-second" in w.pods())
    assert w.pods()["u-second"].workload_kind == "DaemonSet"
    assert "u-first" in before and "u-second" not in before  # earlier views are not changed

    api.update_pod(make_pod("ml", "second", uid="u-second", node=NODE, owner=("DaemonSet", "ds"),
                            labels={"v": "2"}))
    await wait_until_async(lambda: w.pods()["u-second"].labels.get("v") == "2")

    api.delete_pod("ml", "first")
    await wait_until_async(lambda: "u-first" not in w.pods())
    assert set(w.pods()) == {"u-second"}
    assert sum(w.error_counts().values()) == 0


# -- list once, then watch ---------------------------------------------------------------------

async def test_lists_once_from_the_watch_cache_then_watches_with_bookmarks(fake_kube_api: FakeKubeApi,
                                                                           make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher()
    await wait_until_async(relisted(api))
    (listed,) = pod_calls(api, "list")
    assert listed.resource_version == "0"  # from the API server's cache, no quorum read of etcd
    assert listed.query["fieldSelector"] == f"spec.nodeName={NODE}"
    (watch,) = pod_calls(api, "watch")
    assert watch.query["allowWatchBookmarks"] == "true"
    assert watch.query["fieldSelector"] == f"spec.nodeName={NODE}"
    assert int(watch.resource_version) >= int(api.resource_version) - 1
    assert watch.query["timeoutSeconds"] == "30"
    # Bookmarks move the watcher's resourceVersion on, even when no event of this node comes.
    api.add_pod(make_pod("ml", "elsewhere", node="gpu-node-2"))
    newest = str(api.resource_version)
    await wait_until_async(lambda: w.resource_version == newest)
    assert api.bookmarks_sent >= 1 and set(w.pods()) == {"u-a"}


async def test_a_cut_watch_resumes_from_the_last_bookmark_without_a_list(fake_kube_api: FakeKubeApi,
                                                                         make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher()
    await wait_until_async(relisted(api))
    for i in range(3):  # other nodes' pods: no event here, but bookmarks
        api.add_pod(make_pod("ml", f"elsewhere-{i}", node="gpu-node-2"))
    bookmark = str(api.resource_version)
    await wait_until_async(lambda: w.resource_version == bookmark)

    api.drop_watches()  # a disconnect (an API server restarting, a load balancer)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))  # meanwhile
    await wait_until_async(lambda: "u-b" in w.pods())
    assert len(pod_calls(api, "list")) == 1
    assert [c.resource_version for c in pod_calls(api, "watch")][1] == bookmark
    assert w.connected


@pytest.mark.integration
async def test_watches_the_server_ends_are_renewed_without_a_list(fake_kube_api: FakeKubeApi,
                                                                  make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher(watch_timeout_seconds=(1, 1))
    await wait_until_async(lambda: len(pod_calls(api, "watch")) >= 4)  # each ended by timeoutSeconds=1
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    await wait_until_async(lambda: "u-b" in w.pods())
    assert len(pod_calls(api, "list")) == 1
    assert sum(w.error_counts().values()) == 0 and w.connected


async def test_watch_timeouts_are_spread(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    """Default timeoutSeconds: 5-10 minutes at random, so that a fleet's watches do not end in
    step and spread over the API servers again after one restarts."""
    from exporter.sources.kube.listwatch import WATCH_TIMEOUT_SECONDS

    assert WATCH_TIMEOUT_SECONDS == (300.0, 600.0)
    timeouts = set()
    for _ in range(3):
        w = PodWatcher(NODE, kubeconfig=str(fake_kube_api.kubeconfig_path))
        await w.start()
        await wait_until_async(lambda: len(pod_calls(fake_kube_api, "watch")) > len(timeouts))
        await w.stop()
        timeouts = {int(c.query["timeoutSeconds"]) for c in pod_calls(fake_kube_api, "watch")}
    assert all(300 <= t <= 600 for t in timeouts)


@pytest.mark.integration
async def test_a_silent_watch_is_cut_after_the_read_timeout_and_resumed(fake_kube_api: FakeKubeApi,
                                                                        make_watcher) -> None:
    api = fake_kube_api
    api.bookmark_seconds = 0.1
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher(read_timeout=0.5)
    await wait_until_async(relisted(api))
    await asyncio.sleep(1.5)
    assert w.error_counts()["unavailable"] == 0  # bookmarks keep a quiet watch alive
    api.stall_watches(True)  # a connection that died without a word
    await wait_until_async(lambda: w.error_counts()["unavailable"] >= 1)
    api.stall_watches(False)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    await wait_until_async(lambda: w.connected and "u-b" in w.pods())
    assert len(pod_calls(api, "list")) == 1


@pytest.mark.integration
async def test_watches_that_end_at_once_are_backed_off(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    """A proxy that ends every stream at once must not make the agent spin: such a watch counts as
    an error and the next one waits a backoff."""
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher(backoff_initial=0.2, backoff_max=0.4)
    await wait_until_async(relisted(api))
    api.end_watches_at_once(True)
    api.drop_watches()
    await asyncio.sleep(2)
    assert 2 <= w.error_counts()["unavailable"] <= 12  # a backoff of 0.1-0.6 s each, not thousands
    assert len(pod_calls(api, "watch")) <= 14 and len(pod_calls(api, "list")) == 1
    api.end_watches_at_once(False)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    await wait_until_async(lambda: w.connected and "u-b" in w.pods())


async def test_gone_relists_from_the_last_version(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher()
    await wait_until_async(lambda: w.connected and "u-a" in w.pods() and api.bookmarks_sent >= 1)  # a watch well on
    known = w.resource_version
    api.expire_watches()  # history compacted; the watch ends; re-watch from old rv -> 410
    await wait_until_async(lambda: w.error_counts()["gone"] >= 1)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    await wait_until_async(lambda: "u-b" in w.pods())
    assert w.connected
    assert w.error_counts()["unavailable"] == 0
    # The list again is from the cache too, not older than what the watcher knew.
    assert [c.resource_version for c in pod_calls(api, "list")] == ["0", known]


async def test_the_safety_list_is_from_the_cache_and_not_older_than_what_is_known(fake_kube_api: FakeKubeApi,
                                                                                   make_watcher) -> None:
    from exporter.sources.kube.listwatch import RELIST_SECONDS

    assert RELIST_SECONDS >= 12 * 3600  # by default: hours
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher(relist_seconds=0.5, watch_timeout_seconds=(1, 1))
    await wait_until_async(lambda: len(pod_calls(api, "list")) >= 2)
    first, second = pod_calls(api, "list")[:2]
    assert first.resource_version == "0" and int(second.resource_version) >= 1000
    assert set(w.pods()) == {"u-a"} and sum(w.error_counts().values()) == 0


async def test_api_server_down_and_back(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE, owner=("StatefulSet", "s")))
    w = await make_watcher()
    await wait_until_async(lambda: w.connected and "u-a" in w.pods())

    api.set_down(True)  # connections dropped, the open watch cut
    await wait_until_async(lambda: not w.connected)
    await wait_until_async(lambda: w.error_counts()["unavailable"] >= 2)  # retried, still failing
    assert set(w.pods()) == {"u-a"}  # last known metadata kept
    assert w.pods()["u-a"].workload == "s"

    api.set_down(False)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    await wait_until_async(lambda: w.connected and "u-b" in w.pods())
    assert set(w.pods()) == {"u-a", "u-b"}

    # pods deleted while the watcher was cut off go away when its watch resumes
    api.set_down(True, status=500)
    await wait_until_async(lambda: not w.connected)
    api.delete_pod("ml", "a")
    api.set_down(False)
    await wait_until_async(lambda: w.connected and set(w.pods()) == {"u-b"})
    assert len(pod_calls(api, "list")) == 1  # resumed twice, never listed again


@pytest.mark.parametrize("status,kind", [(403, "forbidden"), (401, "forbidden"),
                                         (500, "unavailable"), (503, "unavailable")])
async def test_error_statuses_counted(fake_kube_api: FakeKubeApi, make_watcher, status, kind) -> None:
    api = fake_kube_api
    api.set_down(True, status=status)
    w = await make_watcher()
    await wait_until_async(lambda: w.error_counts()[kind] >= 2)
    assert not w.connected
    assert w.pods() == {}
    api.set_down(False)
    await wait_until_async(lambda: w.connected)


# -- owners, without holding up the watch ------------------------------------------------------

async def test_pods_are_published_while_their_owner_is_looked_up(fake_kube_api: FakeKubeApi,
                                                                 make_watcher) -> None:
    api = fake_kube_api
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    w = await make_watcher()
    await wait_until_async(relisted(api))
    api.hold("jobs")  # the Job's GET waits
    api.add_pod(make_pod("ml", "nightly-1-a", uid="u-a", node=NODE, owner=("Job", "nightly-1")))
    await wait_until_async(lambda: "u-a" in w.pods())
    assert by_name(w) == {"nightly-1-a": ("Job", "nightly-1")}  # at once, with its direct owner
    api.add_pod(make_pod("ml", "db-0", uid="u-db", node=NODE, owner=("StatefulSet", "db")))
    await wait_until_async(lambda: "u-db" in w.pods())  # the watch goes on meanwhile
    api.release("jobs")
    await wait_until_async(lambda: by_name(w)["nightly-1-a"] == ("CronJob", "nightly"))
    assert api.request_count("/apis/batch/v1/namespaces/ml/jobs/nightly-1") == 1


async def test_owner_lookups_run_a_few_at_a_time(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    w = await make_watcher(owner_concurrency=2)
    await wait_until_async(relisted(api))
    api.hold("jobs")
    for i in range(8):
        api.add_job("ml", f"nightly-{i}", owner=("CronJob", "nightly"))
        api.add_pod(make_pod("ml", f"nightly-{i}-a", node=NODE, owner=("Job", f"nightly-{i}")))
    await wait_until_async(lambda: len(w.pods()) == 8)
    await asyncio.sleep(0.2)
    assert api.max_in_flight["jobs"] == 2
    api.release("jobs")
    await wait_until_async(lambda: set(by_name(w).values()) == {("CronJob", "nightly")})
    assert api.max_in_flight["jobs"] == 2 and api.count("get", "jobs") == 8


async def test_a_failed_owner_lookup_is_retried_and_the_workload_changes_once(fake_kube_api: FakeKubeApi,
                                                                             make_watcher) -> None:
    api = fake_kube_api
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.set_resource_error("jobs", 500)
    w = await make_watcher(owner_backoff_initial=0.1, owner_backoff_max=0.2)
    api.add_pod(make_pod("ml", "nightly-1-a", uid="u-a", node=NODE, owner=("Job", "nightly-1")))
    seen: list[tuple[str, str]] = []

    def record() -> bool:
        if "u-a" in w.pods():
            workload = by_name(w)["nightly-1-a"]
            if not seen or seen[-1] != workload:
                seen.append(workload)
        return bool(seen) and seen[-1] == ("CronJob", "nightly")

    await wait_until_async(lambda: record() or w.error_counts()["owner_lookup"] >= 3, interval=0.005)
    assert seen == [("Job", "nightly-1")]  # failing: the direct owner, steadily
    api.set_resource_error("jobs", None)
    await wait_until_async(record, interval=0.005)
    await asyncio.sleep(0.5)
    record()
    assert seen == [("Job", "nightly-1"), ("CronJob", "nightly")]  # one change
    failures = w.error_counts()["owner_lookup"]
    assert failures >= 3 and api.count("get", "jobs") == failures + 1  # no lookup after the answer


async def test_owner_lookup_failure_falls_back(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.set_resource_error("replicasets", 403)
    api.set_resource_error("jobs", 500)
    api.add_pod(make_pod("ml", "web-5f6d7c-a", node=NODE, owner=("ReplicaSet", "web-5f6d7c"),
                         labels={"pod-template-hash": "5f6d7c"}))
    api.add_pod(make_pod("ml", "odd-a", node=NODE, owner=("ReplicaSet", "odd")))
    api.add_pod(make_pod("ml", "nightly-1-x", node=NODE, owner=("Job", "nightly-1")))
    w = await make_watcher()
    assert await w.wait_synced(10)  # failed lookups do not hold up the first list
    assert by_name(w) == {
        "web-5f6d7c-a": ("Deployment", "web"),  # pod-template-hash heuristic
        "odd-a": ("ReplicaSet", "odd"),
        "nightly-1-x": ("Job", "nightly-1"),
    }
    assert w.error_counts()["owner_lookup"] == 3
    assert w.connected  # the pods themselves are fine


async def test_an_answered_owner_is_not_asked_again_whatever_fails_later(fake_kube_api: FakeKubeApi,
                                                                         make_watcher) -> None:
    """Once a ReplicaSet's or Job's owner is known it stays, through lookups that would fail
    (API hiccup, 429, 403), pod changes and lists: the workload never flips to the Job."""
    api = fake_kube_api
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    api.add_replicaset("ml", "canary-8b9c", owner=("Rollout", "canary"))
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "web-a", uid="u-web", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    # pod-template-hash would say Deployment/canary: the answer wins
    api.add_pod(make_pod("ml", "canary-a", uid="u-canary", node=NODE,
                         owner=("ReplicaSet", "canary-8b9c"), labels={"pod-template-hash": "8b9c"}))
    api.add_pod(make_pod("ml", "nightly-a", uid="u-job", node=NODE, owner=("Job", "nightly-1")))
    expected = {"web-a": ("Deployment", "web"), "canary-a": ("Rollout", "canary"),
                "nightly-a": ("CronJob", "nightly")}
    w = await make_watcher()
    assert await w.wait_synced(10)
    assert by_name(w) == expected

    api.set_resource_error("replicasets", 429)
    api.set_resource_error("jobs", 403)
    api.update_pod(make_pod("ml", "web-a", uid="u-web", node=NODE,
                            owner=("ReplicaSet", "web-5f6d7c"), phase="Succeeded"))
    api.update_pod(make_pod("ml", "nightly-a", uid="u-job", node=NODE,
                            owner=("Job", "nightly-1"), phase="Succeeded"))
    await wait_until_async(lambda: w.pods()["u-web"].phase == "Succeeded" and w.pods()["u-job"].phase == "Succeeded")
    api.expire_watches()  # -> 410 -> a list
    await wait_until_async(relisted(api))
    api.add_pod(make_pod("ml", "web-b", uid="u-web-b", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    await wait_until_async(lambda: "u-web-b" in w.pods())
    assert by_name(w) == {**expected, "web-b": ("Deployment", "web")}
    assert w.error_counts()["owner_lookup"] == 0
    assert api.count("get") == 3


async def test_an_owner_is_forgotten_after_its_pods(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    """An answer is kept while pods use it (and owner_linger after): once the Job's pods are gone
    and that time has passed, the Job is looked up again, and a failing lookup shows the Job."""
    api = fake_kube_api
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "nightly-a", uid="u-a", node=NODE, owner=("Job", "nightly-1")))
    w = await make_watcher(owner_linger=0)
    assert await w.wait_synced(10)
    api.set_resource_error("jobs", 403)
    api.add_pod(make_pod("ml", "nightly-b", uid="u-b", node=NODE, owner=("Job", "nightly-1")))
    await wait_until_async(lambda: "u-b" in w.pods())
    assert by_name(w) == {"nightly-a": ("CronJob", "nightly"), "nightly-b": ("CronJob", "nightly")}
    api.delete_pod("ml", "nightly-a")
    api.delete_pod("ml", "nightly-b")
    await wait_until_async(lambda: not w.pods())
    api.add_pod(make_pod("ml", "nightly-c", uid="u-c", node=NODE, owner=("Job", "nightly-1")))
    await wait_until_async(lambda: "u-c" in w.pods())
    assert by_name(w) == {"nightly-c": ("Job", "nightly-1")}
    await wait_until_async(lambda: w.error_counts()["owner_lookup"] == 1)


async def test_missing_owner_object_falls_back(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "p", node=NODE, owner=("Job", "gone-job")))
    w = await make_watcher()
    assert await w.wait_synced(10)
    assert by_name(w) == {"p": ("Job", "gone-job")}
    assert w.error_counts()["owner_lookup"] == 1


# -- lifecycle ---------------------------------------------------------------------------------

async def test_stop_ends_a_waiting_watch(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher(watch_timeout_seconds=(300, 300))
    await wait_until_async(relisted(fake_kube_api))  # the watch waits for events (for up to 300 s)
    await asyncio.wait_for(w.stop(), 2)
    assert not watch_tasks()
    assert not w.connected
    assert set(w.pods()) == {"u-a"}  # still readable


async def test_stop_ends_a_backoff(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.set_down(True)
    w = await make_watcher(backoff_initial=20, backoff_max=30)
    await wait_until_async(lambda: w.error_counts()["unavailable"] >= 1)  # now in a backoff of 10 s or more
    await asyncio.wait_for(w.stop(), 2)
    assert not watch_tasks()


async def test_errors_logged_once_per_kind(fake_kube_api: FakeKubeApi, make_watcher, caplog) -> None:
    fake_kube_api.set_down(True)
    with caplog.at_level("DEBUG", logger="exporter.sources.kube"):
        w = await make_watcher()
        await wait_until_async(lambda: w.error_counts()["unavailable"] >= 4)
        await w.stop()
    warnings = [r for r in caplog.records
                if r.levelname == "WARNING" and r.name.startswith("exporter.sources.kube")]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()


async def test_wait_synced_after_the_first_list(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = await make_watcher()
    assert await w.wait_synced(10)
    assert set(w.pods()) == {"u-a"}
    assert await w.wait_synced(0)  # and stays so


@pytest.mark.parametrize("status", [None, 403])
async def test_wait_synced_times_out_while_the_api_server_fails(fake_kube_api: FakeKubeApi,
                                                                make_watcher, status) -> None:
    fake_kube_api.set_down(True, status=status)
    w = await make_watcher()
    assert not await w.wait_synced(0.3)
    assert w.pods() == {}
    fake_kube_api.set_down(False)
    assert await w.wait_synced(10)


def test_error_counts_start_at_zero() -> None:
    assert PodWatcher(NODE).error_counts() == dict.fromkeys(POD_WATCH_ERROR_KINDS, 0)


async def test_bad_kubeconfig_raises_at_start(tmp_path) -> None:
    w = PodWatcher(NODE, kubeconfig=str(tmp_path / "missing"))
    with pytest.raises(Exception):
        await w.start()


async def test_no_service_account_raises_at_start(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RuntimeError, match="KUBERNETES_SERVICE_HOST"):
        await PodWatcher(NODE).start()


def test_helpers() -> None:
    assert strip_runtime_prefix("containerd://abc") == "abc"
    assert strip_runtime_prefix("abc") == "abc"
    meta = pod_meta_from_dict(make_pod("n", "p", uid="u", containers={"c": "x"}), ("Pod", "p"))
    assert (meta.uid, dict(meta.container_ids), dict(meta.labels)) == ("u", {"x": "c"}, {})


@pytest.mark.parametrize("phase", ["Pending", "Running", "Succeeded", "Failed", "Unknown"])
def test_pod_meta_phase(phase: str) -> None:
    meta = pod_meta_from_dict(make_pod("n", "p", uid="u", phase=phase), ("Pod", "p"))
    assert meta.phase == phase


def test_pod_meta_phase_missing() -> None:
    pod = make_pod("n", "p", uid="u")
    del pod["status"]["phase"]
    assert pod_meta_from_dict(pod, ("Pod", "p")).phase == ""
    del pod["status"]
    assert pod_meta_from_dict(pod, ("Pod", "p")).phase == ""


async def test_phase_follows_the_watch(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE, phase="Pending"))
    w = await make_watcher()
    await wait_until_async(lambda: "u-a" in w.pods())
    assert w.pods()["u-a"].phase == "Pending"
    api.update_pod(make_pod("ml", "a", uid="u-a", node=NODE, phase="Running"))
    await wait_until_async(lambda: w.pods()["u-a"].phase == "Running")
    api.update_pod(make_pod("ml", "a", uid="u-a", node=NODE, phase="Succeeded"))
    await wait_until_async(lambda: w.pods()["u-a"].finished)


# -- authentication, and the client --------------------------------------------------------------

def _auth_pods(api: FakeKubeApi) -> None:
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "web-5f6d7c-a", uid="u-a", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    api.add_pod(make_pod("ml", "nightly-1-b", uid="u-b", node=NODE, owner=("Job", "nightly-1")))


async def _check_authenticated(api: FakeKubeApi, w: PodWatcher, token: str) -> None:
    await wait_until_async(lambda: w.connected and len(w.pods()) == 2)
    api.add_pod(make_pod("ml", "c", uid="u-c", node=NODE))  # through the watch
    await wait_until_async(lambda: "u-c" in w.pods())
    assert by_name(w) == {"web-5f6d7c-a": ("Deployment", "web"),
                          "nightly-1-b": ("CronJob", "nightly"), "c": ("Pod", "c")}
    assert sum(w.error_counts().values()) == 0
    assert api.request_count("/apis/apps/v1/namespaces/ml/replicasets/web-5f6d7c") == 1
    assert api.request_count("/apis/batch/v1/namespaces/ml/jobs/nightly-1") == 1
    assert any("watch=true" in p for _, p in api.requests)
    assert {a.lower() for a in api.authorizations} == {f"bearer {token}"}


async def test_kubeconfig_bearer_token(tmp_path, start_watcher) -> None:
    api = FakeKubeApi(token="s3cret").start()
    try:
        _auth_pods(api)
        w = await start_watcher(str(api.write_kubeconfig(tmp_path / "good", token="s3cret")))
        await _check_authenticated(api, w, "s3cret")
        w = await start_watcher(str(api.write_kubeconfig(tmp_path / "bad", token="wrong")))
        await wait_until_async(lambda: w.error_counts()["forbidden"] >= 2)  # 401
        assert not w.connected and w.pods() == {}
    finally:
        api.stop()


def _service_account(directory: Path, api: FakeKubeApi, token: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(api.ca_cert_path.read_bytes())
    return directory


def _in_cluster_env(api: FakeKubeApi, host: str = "127.0.0.1") -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(api.port)}


@needs_openssl
async def test_in_cluster_service_account(tmp_path, start_watcher) -> None:
    """In-cluster: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, the service
    account's CA certificate and bearer token."""
    api = FakeKubeApi(token="sa-token", tls_dir=tmp_path / "tls").start()
    try:
        _auth_pods(api)
        account = _service_account(tmp_path / "sa", api, "sa-token")
        client = KubeApi(credentials=InCluster(_in_cluster_env(api), account), request_timeout=2)
        assert api.url.startswith("https://")
        await _check_authenticated(api, await start_watcher(api=client), "sa-token")
    finally:
        api.stop()


def test_in_cluster_server_address() -> None:
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}) \
        == "https://10.96.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}) \
        == "https://[fd00:10:96::1]:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "kubernetes.default.svc", "KUBERNETES_SERVICE_PORT": "6443"}) \
        == "https://kubernetes.default.svc:6443"
    with pytest.raises(RuntimeError):
        in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1"})


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@needs_openssl
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_in_cluster_over_ipv6(tmp_path, start_watcher) -> None:
    """An IPv6-only cluster: KUBERNETES_SERVICE_HOST is an IPv6 address (in brackets in the URL),
    and the API server's certificate names it."""
    api = FakeKubeApi(token="sa-token", tls_dir=tmp_path / "tls", host="::1").start()
    try:
        _auth_pods(api)
        account = _service_account(tmp_path / "sa", api, "sa-token")
        client = KubeApi(credentials=InCluster(_in_cluster_env(api, "::1"), account), request_timeout=2)
        await _check_authenticated(api, await start_watcher(api=client), "sa-token")
    finally:
        api.stop()


@needs_openssl
async def test_in_cluster_token_is_read_again_as_it_rotates(tmp_path, start_watcher) -> None:
    api = FakeKubeApi(token="token-1", tls_dir=tmp_path / "tls").start()
    try:
        account = _service_account(tmp_path / "sa", api, "token-1")
        client = KubeApi(credentials=InCluster(_in_cluster_env(api), account, refresh_seconds=0.2),
                         request_timeout=2)
        w = await start_watcher(api=client, watch_timeout_seconds=(1, 1))
        await wait_until_async(lambda: w.connected)
        # The kubelet writes the next token; both are valid for a while, as bound tokens are.
        api.accept_tokens("token-1", "token-2")
        (account / "token").write_text("token-2")
        await wait_until_async(lambda: "Bearer token-2" in api.authorizations)  # at the next watch, after 0.2 s
        api.accept_tokens("token-2")
        api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
        await wait_until_async(lambda: "u-a" in w.pods())
        assert sum(w.error_counts().values()) == 0
    finally:
        api.stop()


@needs_openssl
async def test_a_401_reads_the_token_again_at_once(tmp_path, start_watcher) -> None:
    api = FakeKubeApi(token="token-1", tls_dir=tmp_path / "tls").start()
    try:
        account = _service_account(tmp_path / "sa", api, "token-1")
        client = KubeApi(credentials=InCluster(_in_cluster_env(api), account, refresh_seconds=3600),
                         request_timeout=2)
        w = await start_watcher(api=client)
        await wait_until_async(lambda: w.connected)
        (account / "token").write_text("token-2")
        api.accept_tokens("token-2")  # the old one expired before the minute was up
        api.drop_watches()
        api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
        await wait_until_async(lambda: "u-a" in w.pods())
        assert api.authorizations.count("Bearer token-1") >= 2  # the list, the first watch; then one 401
        assert api.authorizations[-1] == "Bearer token-2"
        assert w.error_counts()["forbidden"] == 0  # retried at once with the new token
    finally:
        api.stop()


@needs_openssl
def test_in_cluster_works_without_the_kubernetes_package(tmp_path) -> None:
    """The agent's own client: nothing of the kubernetes package is needed (or imported) in-cluster."""
    api = FakeKubeApi(token="sa-token", tls_dir=tmp_path / "tls").start()
    try:
        _auth_pods(api)
        account = _service_account(tmp_path / "sa", api, "sa-token")
        code = f"""
            import asyncio, sys
            sys.modules["kubernetes"] = None  # not installed
            from exporter.sources.kube import api as kube_api
            from exporter.sources.kube import PodWatcher
            kube_api.SERVICE_ACCOUNT_DIR = kube_api.Path({str(account)!r})
            async def main():
                w = PodWatcher({NODE!r}, request_timeout=2)
                await w.start()
                assert await w.wait_synced(10)
                print(sorted((p.name, p.workload_kind, p.workload) for p in w.pods().values()))
                await w.stop()
            asyncio.run(main())
            assert sys.modules["kubernetes"] is None
        """
        env = {"PATH": "/usr/bin:/bin", **_in_cluster_env(api)}
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == ("[('nightly-1-b', 'CronJob', 'nightly'), "
                                         "('web-5f6d7c-a', 'Deployment', 'web')]")
    finally:
        api.stop()
