"""exporter.sources.kube.PodWatcher with the real kubernetes client against the fake API server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest

from exporter.sources.kube import POD_WATCH_ERROR_KINDS, PodWatcher, pod_meta_from_dict, strip_runtime_prefix
from fakekubeapi import FakeKubeApi, make_pod

NODE = "gpu-node-1"


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


FAST = dict(backoff_initial=0.05, backoff_max=0.3, request_timeout=2.0, watch_timeout_seconds=30)


@pytest.fixture
def start_watcher():
    """Starts a PodWatcher on ``NODE`` with short timeouts; every one is stopped at the end."""
    started: list[PodWatcher] = []

    def start(kubeconfig: str | None, **kwargs) -> PodWatcher:
        w = PodWatcher(NODE, kubeconfig=kubeconfig, **{**FAST, **kwargs})
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def make_watcher(fake_kube_api: FakeKubeApi, start_watcher):
    """Starts a PodWatcher on the ``fake_kube_api`` server."""
    return lambda **kwargs: start_watcher(str(fake_kube_api.kubeconfig_path), **kwargs)


def relisted(api: FakeKubeApi) -> Callable[[], bool]:
    """A condition: the watcher has finished a list made from now on (it watches from there)."""
    since = api.resource_version
    return lambda: api.watching_since(since)


def watcher_thread_alive() -> bool:
    return any(t.name == f"pod-watcher-{NODE}" for t in threading.enumerate())


def by_name(w: PodWatcher) -> dict[str, tuple[str, str]]:
    return {p.name: (p.workload_kind, p.workload) for p in w.pods().values()}


def test_import_does_not_import_kubernetes() -> None:
    code = "import sys, exporter.sources.kube; assert 'kubernetes' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_owners_resolved(fake_kube_api: FakeKubeApi, make_watcher) -> None:
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
    w = make_watcher()
    wait_for(lambda: w.connected)
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


def test_owner_lookups_are_cached(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    for i in range(5):
        api.add_pod(make_pod("ml", f"web-5f6d7c-{i}", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    w = make_watcher()
    wait_for(lambda: len(w.pods()) == 5)
    for i in range(5, 10):  # churn through the watch
        api.add_pod(make_pod("ml", f"web-5f6d7c-{i}", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    wait_for(lambda: len(w.pods()) == 10)
    assert set(by_name(w).values()) == {("Deployment", "web")}
    assert api.request_count("/apis/apps/v1/namespaces/ml/replicasets/web-5f6d7c") == 1


def test_labels_and_container_ids(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    pod = make_pod(
        "ml", "p", uid="11111111-2222-3333-4444-555555555555", node=NODE,
        labels={"app": "trainer", "team": "vision", "secret-ish": "x"},
        containers={"main": "abc123", "sidecar": "cri-o://def456", "pending": None},
        init_containers={"init": "containerd://0a0b"},
        ephemeral_containers={"debug": "containerd://dbg1"},
    )
    fake_kube_api.add_pod(pod)
    w = make_watcher(label_allowlist=("app", "team", "absent"))
    meta = wait_for(lambda: w.pods().get("11111111-2222-3333-4444-555555555555"))
    assert dict(meta.labels) == {"app": "trainer", "team": "vision"}
    assert dict(meta.container_ids) == {
        "abc123": "main", "def456": "sidecar", "0a0b": "init", "dbg1": "debug",
    }
    assert (meta.namespace, meta.name) == ("ml", "p")


def test_watch_adds_modifies_and_deletes(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "first", uid="u-first", node=NODE))
    w = make_watcher(label_allowlist=("v",))
    wait_for(lambda: w.connected and "u-first" in w.pods())
    before = w.pods()

    api.add_pod(make_pod("ml", "second", uid="u-second", node=NODE, owner=("DaemonSet", "ds")))
    api.add_pod(make_pod("ml", "other-node", uid="u-other", node="gpu-node-2"))
    wait_for(lambda: "u-second" in w.pods())
    assert w.pods()["u-second"].workload_kind == "DaemonSet"
    assert "u-first" in before and "u-second" not in before  # earlier views are not changed

    api.update_pod(make_pod("ml", "second", uid="u-second", node=NODE, owner=("DaemonSet", "ds"),
                            labels={"v": "2"}))
    wait_for(lambda: w.pods()["u-second"].labels.get("v") == "2")

    api.delete_pod("ml", "first")
    wait_for(lambda: "u-first" not in w.pods())
    assert set(w.pods()) == {"u-second"}
    assert sum(w.error_counts().values()) == 0


def test_api_server_down_and_back(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE, owner=("StatefulSet", "s")))
    w = make_watcher()
    wait_for(lambda: w.connected and "u-a" in w.pods())

    api.set_down(True)  # connections dropped, the open watch cut
    wait_for(lambda: not w.connected)
    wait_for(lambda: w.error_counts()["unavailable"] >= 2)  # retried, still failing
    assert set(w.pods()) == {"u-a"}  # last known metadata kept
    assert w.pods()["u-a"].workload == "s"

    api.set_down(False)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    wait_for(lambda: w.connected and "u-b" in w.pods())
    assert set(w.pods()) == {"u-a", "u-b"}

    # pods deleted while the watcher was cut off go away with the next list
    api.set_down(True, status=500)
    wait_for(lambda: not w.connected)
    api.delete_pod("ml", "a")
    api.set_down(False)
    wait_for(lambda: w.connected and set(w.pods()) == {"u-b"})


@pytest.mark.parametrize("status,kind", [(403, "forbidden"), (401, "forbidden"),
                                         (500, "unavailable"), (503, "unavailable")])
def test_error_statuses_counted(fake_kube_api: FakeKubeApi, make_watcher, status, kind) -> None:
    api = fake_kube_api
    api.set_down(True, status=status)
    w = make_watcher()
    wait_for(lambda: w.error_counts()[kind] >= 2)
    assert not w.connected
    assert w.pods() == {}
    api.set_down(False)
    wait_for(lambda: w.connected)


def test_gone_relists(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = make_watcher()
    wait_for(lambda: w.connected and "u-a" in w.pods())
    api.expire_watches()  # history compacted; the watch ends; re-watch from old rv -> 410
    wait_for(lambda: w.error_counts()["gone"] >= 1)
    api.add_pod(make_pod("ml", "b", uid="u-b", node=NODE))
    wait_for(lambda: "u-b" in w.pods())
    assert w.connected
    assert w.error_counts()["unavailable"] == 0


def test_owner_lookup_failure_falls_back(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.set_resource_error("replicasets", 403)
    api.set_resource_error("jobs", 500)
    api.add_pod(make_pod("ml", "web-5f6d7c-a", node=NODE, owner=("ReplicaSet", "web-5f6d7c"),
                         labels={"pod-template-hash": "5f6d7c"}))
    api.add_pod(make_pod("ml", "odd-a", node=NODE, owner=("ReplicaSet", "odd")))
    api.add_pod(make_pod("ml", "nightly-1-x", node=NODE, owner=("Job", "nightly-1")))
    w = make_watcher()
    wait_for(lambda: len(w.pods()) == 3)
    assert by_name(w) == {
        "web-5f6d7c-a": ("Deployment", "web"),  # pod-template-hash heuristic
        "odd-a": ("ReplicaSet", "odd"),
        "nightly-1-x": ("Job", "nightly-1"),
    }
    assert w.error_counts()["owner_lookup"] == 3
    assert w.connected  # the pods themselves are fine


def test_owner_lookup_failure_keeps_last_good_owner(fake_kube_api: FakeKubeApi,
                                                    make_watcher) -> None:
    """A lookup that fails after one succeeded (API hiccup, 429, 403) reports the last good
    result again, even past its TTL: the workload does not flip to the Job/ReplicaSet."""
    api = fake_kube_api
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    api.add_replicaset("ml", "canary-8b9c", owner=("Rollout", "canary"))
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "web-a", uid="u-web", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    # pod-template-hash would make the fallback say Deployment/canary: the last good result wins
    api.add_pod(make_pod("ml", "canary-a", uid="u-canary", node=NODE,
                         owner=("ReplicaSet", "canary-8b9c"), labels={"pod-template-hash": "8b9c"}))
    api.add_pod(make_pod("ml", "nightly-a", uid="u-job", node=NODE, owner=("Job", "nightly-1")))
    expected = {"web-a": ("Deployment", "web"), "canary-a": ("Rollout", "canary"),
                "nightly-a": ("CronJob", "nightly")}
    w = make_watcher(owner_cache_ttl=0, owner_failure_ttl=0)  # every resolution looks up
    wait_for(lambda: w.connected and len(w.pods()) == 3)
    assert by_name(w) == expected
    assert w.error_counts()["owner_lookup"] == 0

    api.set_resource_error("replicasets", 429)
    api.set_resource_error("jobs", 403)
    # through the watch: MODIFIED pods resolve their owners again, and the lookups fail
    api.update_pod(make_pod("ml", "web-a", uid="u-web", node=NODE,
                            owner=("ReplicaSet", "web-5f6d7c"), phase="Succeeded"))
    api.update_pod(make_pod("ml", "nightly-a", uid="u-job", node=NODE,
                            owner=("Job", "nightly-1"), phase="Succeeded"))
    wait_for(lambda: w.pods()["u-web"].phase == "Succeeded" and w.pods()["u-job"].phase == "Succeeded")
    assert w.error_counts()["owner_lookup"] == 2
    assert by_name(w) == expected
    # through a fresh list (history compacted -> 410 -> list)
    api.expire_watches()
    wait_for(relisted(api))
    assert w.error_counts()["owner_lookup"] == 5
    assert by_name(w) == expected
    # a new pod of the same ReplicaSet gets the last good result too
    api.add_pod(make_pod("ml", "web-b", uid="u-web-b", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    wait_for(lambda: "u-web-b" in w.pods())
    assert by_name(w)["web-b"] == ("Deployment", "web")
    assert w.error_counts()["owner_lookup"] == 6
    assert w.connected  # the pods themselves are fine


def test_owner_last_good_forgotten_with_its_pods(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    """Last good owners are kept only while listed pods use them: once the Job's pods are gone
    and a list has happened, a failing lookup of the Job reports the Job itself."""
    api = fake_kube_api
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "nightly-a", uid="u-a", node=NODE, owner=("Job", "nightly-1")))
    w = make_watcher(owner_cache_ttl=0, owner_failure_ttl=0)  # every resolution looks up
    wait_for(lambda: w.connected and "u-a" in w.pods())
    api.set_resource_error("jobs", 403)
    # while a pod of the Job is listed, its last good owner answers for a failing lookup
    api.add_pod(make_pod("ml", "nightly-b", uid="u-b", node=NODE, owner=("Job", "nightly-1")))
    wait_for(lambda: "u-b" in w.pods())
    assert by_name(w) == {"nightly-a": ("CronJob", "nightly"), "nightly-b": ("CronJob", "nightly")}
    api.delete_pod("ml", "nightly-a")
    api.delete_pod("ml", "nightly-b")
    wait_for(lambda: not w.pods())
    api.expire_watches()  # -> 410 -> a list without the Job's pods
    wait_for(relisted(api))
    api.add_pod(make_pod("ml", "nightly-c", uid="u-c", node=NODE, owner=("Job", "nightly-1")))
    wait_for(lambda: "u-c" in w.pods())
    assert by_name(w) == {"nightly-c": ("Job", "nightly-1")}


def test_missing_owner_object_falls_back(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "p", node=NODE, owner=("Job", "gone-job")))
    w = make_watcher()
    wait_for(lambda: w.pods())
    assert by_name(w) == {"p": ("Job", "gone-job")}
    assert w.error_counts()["owner_lookup"] == 1


def test_stop_ends_a_waiting_watch(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = make_watcher(watch_timeout_seconds=300)
    wait_for(relisted(fake_kube_api))  # the watch waits for events (for up to 300 s)
    w.stop()  # waits for the thread 2 s at most
    assert not watcher_thread_alive()
    assert not w.connected
    assert set(w.pods()) == {"u-a"}  # still readable


def test_stop_ends_a_backoff(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.set_down(True)
    w = make_watcher(backoff_initial=20, backoff_max=30)
    wait_for(lambda: w.error_counts()["unavailable"] >= 1)  # now in a backoff of 16 s or more
    w.stop()  # waits for the thread 2 s at most
    assert not watcher_thread_alive()


def test_errors_logged_once_per_kind(fake_kube_api: FakeKubeApi, make_watcher, caplog) -> None:
    fake_kube_api.set_down(True)
    with caplog.at_level("DEBUG", logger="exporter.sources.kube"):
        w = make_watcher()
        wait_for(lambda: w.error_counts()["unavailable"] >= 4)
        w.stop()
    warnings = [r for r in caplog.records
                if r.levelname == "WARNING" and r.name.startswith("exporter.sources.kube")]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()


def test_wait_synced_after_the_first_list(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = make_watcher()
    assert w.wait_synced(10)
    assert set(w.pods()) == {"u-a"}
    assert w.wait_synced(0)  # and stays so


@pytest.mark.parametrize("status", [None, 403])
def test_wait_synced_times_out_while_the_api_server_fails(fake_kube_api: FakeKubeApi,
                                                          make_watcher, status) -> None:
    fake_kube_api.set_down(True, status=status)
    w = make_watcher()
    assert not w.wait_synced(0.3)
    assert w.pods() == {}
    fake_kube_api.set_down(False)
    assert w.wait_synced(10)


def test_error_counts_start_at_zero() -> None:
    assert PodWatcher(NODE).error_counts() == dict.fromkeys(POD_WATCH_ERROR_KINDS, 0)


def test_bad_kubeconfig_raises_at_start(tmp_path) -> None:
    w = PodWatcher(NODE, kubeconfig=str(tmp_path / "missing"))
    with pytest.raises(Exception):
        w.start()


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


def test_phase_follows_the_watch(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    api = fake_kube_api
    api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE, phase="Pending"))
    w = make_watcher()
    wait_for(lambda: "u-a" in w.pods())
    assert w.pods()["u-a"].phase == "Pending"
    api.update_pod(make_pod("ml", "a", uid="u-a", node=NODE, phase="Running"))
    wait_for(lambda: w.pods()["u-a"].phase == "Running")
    api.update_pod(make_pod("ml", "a", uid="u-a", node=NODE, phase="Succeeded"))
    wait_for(lambda: w.pods()["u-a"].finished)


def test_periodic_resync_lists_again(fake_kube_api: FakeKubeApi, make_watcher) -> None:
    fake_kube_api.add_pod(make_pod("ml", "a", uid="u-a", node=NODE))
    w = make_watcher(resync_seconds=1)
    wait_for(lambda: w.connected)
    plain_lists = lambda: sum(  # noqa: E731
        1 for _, p in list(fake_kube_api.requests)
        if p.startswith("/api/v1/pods?") and "watch=" not in p
    )
    wait_for(lambda: plain_lists() >= 2)
    assert w.connected and set(w.pods()) == {"u-a"}
    assert sum(w.error_counts().values()) == 0


# -- authentication, and the request path ----------------------------------------------------

def _auth_pods(api: FakeKubeApi) -> None:
    api.add_replicaset("ml", "web-5f6d7c", owner=("Deployment", "web"))
    api.add_job("ml", "nightly-1", owner=("CronJob", "nightly"))
    api.add_pod(make_pod("ml", "web-5f6d7c-a", uid="u-a", node=NODE, owner=("ReplicaSet", "web-5f6d7c")))
    api.add_pod(make_pod("ml", "nightly-1-b", uid="u-b", node=NODE, owner=("Job", "nightly-1")))


def _check_authenticated(api: FakeKubeApi, w: PodWatcher, token: str) -> None:
    wait_for(lambda: w.connected and len(w.pods()) == 2)
    api.add_pod(make_pod("ml", "c", uid="u-c", node=NODE))  # through the watch
    wait_for(lambda: "u-c" in w.pods())
    assert by_name(w) == {"web-5f6d7c-a": ("Deployment", "web"),
                          "nightly-1-b": ("CronJob", "nightly"), "c": ("Pod", "c")}
    assert sum(w.error_counts().values()) == 0
    assert api.request_count("/apis/apps/v1/namespaces/ml/replicasets/web-5f6d7c") == 1
    assert api.request_count("/apis/batch/v1/namespaces/ml/jobs/nightly-1") == 1
    assert any("watch=true" in p for _, p in api.requests)
    # the in-cluster loader writes "bearer <token>", kubeconfig "Bearer <token>"
    assert {a.lower() for a in api.authorizations} == {f"bearer {token}"}


def test_kubeconfig_bearer_token(tmp_path, start_watcher) -> None:
    api = FakeKubeApi(token="s3cret").start()
    try:
        _auth_pods(api)
        w = start_watcher(str(api.write_kubeconfig(tmp_path / "good", token="s3cret")))
        _check_authenticated(api, w, "s3cret")
        w = start_watcher(str(api.write_kubeconfig(tmp_path / "bad", token="wrong")))
        wait_for(lambda: w.error_counts()["forbidden"] >= 2)  # 401
        assert not w.connected and w.pods() == {}
    finally:
        api.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_in_cluster_service_account(tmp_path, monkeypatch, start_watcher) -> None:
    """In-cluster config: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, the service
    account's CA certificate and bearer token."""
    from kubernetes.config import incluster_config

    api = FakeKubeApi(token="sa-token", tls_dir=tmp_path / "tls").start()
    try:
        _auth_pods(api)
        token_file = tmp_path / "token"
        token_file.write_text("sa-token")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token_file))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(api.ca_cert_path))
        assert api.url.startswith("https://")
        _check_authenticated(api, start_watcher(None), "sa-token")
    finally:
        api.stop()


def test_generated_api_methods_not_used(fake_kube_api: FakeKubeApi, make_watcher,
                                        monkeypatch) -> None:
    """Since kubernetes 37 the generated API methods are pydantic validate_call functions whose
    schemas cost ~20 MB on the first call: requests go through ApiClient.param_serialize and
    call_api instead."""
    from kubernetes import client

    def boom(*args, **kwargs):
        raise AssertionError("generated API class used")

    for name in ("CoreV1Api", "AppsV1Api", "BatchV1Api"):
        monkeypatch.setattr(client, name, boom)
    _auth_pods(fake_kube_api)
    w = make_watcher()
    wait_for(lambda: w.connected and len(w.pods()) == 2)
    assert set(by_name(w).values()) == {("Deployment", "web"), ("CronJob", "nightly")}
    assert sum(w.error_counts().values()) == 0
