"""Workload owners of this node's pods, from the Kubernetes API server.

:class:`PodWatcher` lists the pods of one node (``fieldSelector=spec.nodeName=<node>``), then
watches them from the list's resourceVersion, in a daemon thread, and keeps a
``pod uid -> PodMeta`` map that the collection cycle reads with :meth:`PodWatcher.pods`.

Owner resolution follows the controller ``ownerReference`` one level further where the direct
owner is an implementation detail::

    Pod -> ReplicaSet -> Deployment        reported as Deployment/<name>
    Pod -> Job -> CronJob                  reported as CronJob/<name>
    Pod -> ReplicaSet (no owner)           ReplicaSet/<name>
    Pod -> Job (no owner)                  Job/<name>
    Pod -> StatefulSet, DaemonSet, Notebook, RayCluster, ...   as given
    Pod (no controller)                    Pod/<pod name>

A ReplicaSet or Job owned by another controller (an Argo ``Rollout``, a ``JobSet``) reports that
controller. Lookups of ReplicaSets and Jobs are cached per namespace/kind/name with a TTL. When
a lookup fails (403, 404, 429, API server down) the last good result for that ReplicaSet or Job
is reported again, however old (a brief outage must not turn a CronJob's pods into a Job's);
only when there never was one is the direct owner reported, except that a ReplicaSet whose name
ends in ``-<pod-template-hash>`` of the pod is taken to be a Deployment's (the Deployment
controller names them so). Either way the failure is counted as ``owner_lookup``.

The ``kubernetes`` package is imported only by :meth:`PodWatcher.start`: importing this module
costs nothing when the feature is off. Of that package only the configuration loading, the
``ApiClient``'s low-level request path (``param_serialize`` + ``call_api``, kubernetes >= 37) and
``watch.Watch`` are used, never the generated ``CoreV1Api``/``AppsV1Api``/``BatchV1Api``
methods: since kubernetes 37 those are pydantic ``@validate_call`` functions whose validation
schemas, built on the first call, cost about 20 MB of memory. Responses are read as plain JSON.

Failures never stop the thread: each one is counted by kind (:meth:`PodWatcher.error_counts`),
logged at warning the first time a kind is seen (then at debug), and followed by a capped
exponential backoff and a fresh list. Meanwhile the last known pods are kept and
:attr:`PodWatcher.connected` is False.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from types import MappingProxyType
from typing import Any, Mapping

from .snapshot import PodMeta

__all__ = ["PodWatcher", "ERROR_KINDS", "pod_meta_from_dict", "strip_runtime_prefix"]

# Kinds of error counted by PodWatcher.error_counts().
ERROR_KINDS = ("unavailable", "forbidden", "gone", "invalid_response", "owner_lookup")

_log = logging.getLogger(__name__)


class _InvalidResponse(Exception):
    """The API server answered something that is not what the API promises."""


def strip_runtime_prefix(container_id: str) -> str:
    """``"containerd://abc"`` -> ``"abc"``; ids without a prefix are returned unchanged."""
    return container_id.split("://", 1)[1] if "://" in container_id else container_id


def _controller_ref(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") and ref.get("name"):
            return ref
    return None


def pod_meta_from_dict(
    pod: Mapping[str, Any],
    workload: tuple[str, str],
    label_allowlist: tuple[str, ...] | frozenset[str] = (),
) -> PodMeta:
    """Build a :class:`PodMeta` from a pod as JSON (a dict), given its resolved workload."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    container_ids: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for st in status.get(key) or ():
            cid = st.get("containerID") if isinstance(st, Mapping) else None
            if cid and st.get("name"):
                container_ids[strip_runtime_prefix(cid)] = st["name"]
    return PodMeta(
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        uid=meta["uid"],
        workload_kind=workload[0],
        workload=workload[1],
        labels=MappingProxyType({k: str(labels[k]) for k in label_allowlist if k in labels}),
        container_ids=MappingProxyType(container_ids),
        phase=str(status.get("phase") or ""),
    )


class PodWatcher:
    """Keeps the metadata of the pods of ``node_name`` up to date from the API server.

    ``kubeconfig`` None: in-cluster config (the pod's service account); else the path of a
    kubeconfig file. ``label_allowlist``: pod label keys copied into ``PodMeta.labels``.
    ``resync_seconds``: a full list this often, besides the watch. The other keywords are for
    tuning and tests.
    """

    def __init__(
        self,
        node_name: str,
        *,
        kubeconfig: str | None = None,
        label_allowlist: tuple[str, ...] = (),
        resync_seconds: float = 300,
        logger: logging.Logger | None = None,
        owner_cache_ttl: float = 600.0,
        owner_failure_ttl: float = 30.0,
        watch_timeout_seconds: int = 300,
        request_timeout: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        if not node_name:
            raise ValueError("node_name is required")
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.label_allowlist = tuple(label_allowlist)
        self.resync_seconds = float(resync_seconds)
        self._log = logger or _log
        self._owner_cache_ttl = owner_cache_ttl
        self._owner_failure_ttl = owner_failure_ttl
        self._watch_timeout = max(1, int(watch_timeout_seconds))
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._field_selector = f"spec.nodeName={node_name}"

        self._lock = threading.Lock()
        self._pods: Mapping[str, PodMeta] = MappingProxyType({})  # replaced, never mutated
        self._by_name: Mapping[tuple[str, str], PodMeta] = MappingProxyType({})
        self._connected = False
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._logged_kinds: set[str] = set()
        # (namespace, kind, name) -> (expires at, (workload kind, workload name))
        self._owner_cache: dict[tuple[str, str, str], tuple[float, tuple[str, str]]] = {}
        # (namespace, kind, name) -> the last successful lookup's result, kept past its TTL for
        # when a later lookup fails; dropped at a list that no longer needs it.
        self._owner_good: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._owner_keys_used: set[tuple[str, str, str]] = set()  # since the last list began

        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None  # the current kubernetes.watch.Watch
        self._api_client: Any = None
        self._resource_version: str | None = None
        self._last_list = 0.0

    # -- accessors (any thread) --------------------------------------------------------------

    def pods(self) -> Mapping[str, PodMeta]:
        """pod uid -> PodMeta, as last known (an immutable view; cheap)."""
        with self._lock:
            return self._pods

    def pods_by_name(self) -> Mapping[tuple[str, str], PodMeta]:
        """(namespace, name) -> PodMeta, as last known (an immutable view; cheap)."""
        with self._lock:
            return self._by_name

    @property
    def connected(self) -> bool:
        """True once a list succeeded and the watch runs; False after an error until the next
        successful list."""
        with self._lock:
            return self._connected

    def error_counts(self) -> dict[str, int]:
        """Cumulative errors by kind (every kind of :data:`ERROR_KINDS` present)."""
        with self._lock:
            return dict(self._errors)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the client config (raises when it cannot: no in-cluster service account, a bad
        kubeconfig) and start the watch thread."""
        if self._thread is not None:
            raise RuntimeError("PodWatcher already started")
        from kubernetes import client, config  # lazily: only when the feature is on

        cfg = client.Configuration()
        # No urllib3-level retries (each logs a warning): the watch loop retries with backoff.
        cfg.retries = False
        if self.kubeconfig is None:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
        self._api_client = client.ApiClient(configuration=cfg)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"pod-watcher-{self.node_name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (within ``timeout`` unless a plain request hangs) and close the
        client. The last known pods stay readable."""
        self._stop.set()
        thread = self._thread
        deadline = time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            watch = self._watch
            if watch is not None:
                # Shuts the socket down: unblocks a watch waiting for the next event. Repeated
                # because a stream() starting right now would clear the flag.
                watch.stop()
            thread.join(0.05)
        with self._lock:
            self._connected = False
        if thread is None or not thread.is_alive():
            self._thread = None
            if self._api_client is not None:
                try:
                    self._api_client.close()
                except Exception:  # pragma: no cover - best effort
                    pass

    def __enter__(self) -> "PodWatcher":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        from kubernetes import client, watch

        backoff = self._backoff_initial
        need_list = True
        gone_in_a_row = 0
        while not self._stop.is_set():
            watch_started = time.monotonic()
            try:
                if need_list:
                    self._list()
                    need_list = False
                watch_started = time.monotonic()
                self._watch_once(watch)
                backoff = self._backoff_initial  # a watch that ran to its timeout: healthy
                gone_in_a_row = 0
                if time.monotonic() - self._last_list >= self.resync_seconds:
                    need_list = True
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                if self._stop.is_set():
                    break
                kind = self._classify(exc, client)
                need_list = True
                with self._lock:
                    self._connected = self._connected and kind == "gone"
                if kind == "gone":
                    # The usual end of a long watch: list again at once (but not in a loop).
                    self._count("gone", "watch resourceVersion expired (410 Gone); listing again")
                    if time.monotonic() - watch_started > 1.0:
                        gone_in_a_row = 0
                    gone_in_a_row += 1
                    if gone_in_a_row == 1:
                        continue
                else:
                    self._count(kind, f"pod list/watch failed ({kind}): {exc!r:.300}")
                if time.monotonic() - watch_started > self._backoff_max:
                    backoff = self._backoff_initial  # the watch had been running a good while
                delay = backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self._backoff_max)
                self._stop.wait(delay)
            finally:
                self._watch = None

    # -- requests ----------------------------------------------------------------------------

    def _get(
        self,
        resource_path: str,
        *,
        path_params: Mapping[str, str] | None = None,
        query: list[tuple[str, str]] | None = None,
        request_timeout: Any = None,
    ) -> Any:
        """GET through the ApiClient's low-level path (auth, TLS, proxy from the loaded config)
        and return the urllib3 response, body unread: the caller reads ``.data`` or streams it,
        then releases it. A status other than 2xx raises ``ApiException`` (body read, connection
        released), as the generated API methods do."""
        from kubernetes.client.exceptions import ApiException

        api = self._api_client
        request = api.param_serialize(
            method="GET",
            resource_path=resource_path,
            path_params=dict(path_params) if path_params else None,
            query_params=list(query or ()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],  # the name Configuration.auth_settings() uses
        )
        resp = api.call_api(*request, _request_timeout=request_timeout).response
        if not 200 <= resp.status <= 299:
            try:  # NotFoundException, ForbiddenException, ... (ApiException subclasses)
                raise ApiException.from_response(http_resp=resp, body=None, data=None)
            finally:
                resp.release_conn()
        return resp

    def _get_json(self, resource_path: str, **kwargs: Any) -> Any:
        resp = self._get(resource_path, request_timeout=self._request_timeout, **kwargs)
        try:
            data = resp.data
        finally:
            resp.release_conn()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise _InvalidResponse(f"{resource_path} is not JSON: {exc}") from exc

    def _list_pods_call(
        self,
        *,
        watch: bool = False,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        allow_watch_bookmarks: bool = False,
        _request_timeout: Any = None,
        _preload_content: bool = False,
    ) -> Any:
        """``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>``, callable as
        ``Watch.stream(func, **kwargs)`` calls it: with ``watch=True``,
        ``_preload_content=False`` (moot: the body is never preloaded) and the caller's keywords;
        returns the urllib3 response, which ``Watch.stream`` reads line by line and closes."""
        query = [("fieldSelector", self._field_selector)]
        if allow_watch_bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        if resource_version is not None:
            query.append(("resourceVersion", str(resource_version)))
        if timeout_seconds is not None:
            query.append(("timeoutSeconds", str(int(timeout_seconds))))
        if watch:
            query.append(("watch", "true"))
        return self._get("/api/v1/pods", query=query, request_timeout=_request_timeout)

    # -- list and watch ----------------------------------------------------------------------

    def _list(self) -> None:
        data = self._get_json("/api/v1/pods", query=[("fieldSelector", self._field_selector)])
        try:
            items = data["items"] or []
            rv = str(data["metadata"]["resourceVersion"])
        except (KeyError, TypeError) as exc:
            raise _InvalidResponse(f"pod list without items/resourceVersion: {exc!r}") from exc
        self._prune_owner_cache()
        self._owner_keys_used = set()
        pods: dict[str, PodMeta] = {}
        for item in items:
            meta = self._pod_meta(item)
            if meta is not None:
                pods[meta.uid] = meta
        # Owners of pods that are gone: their last good results are not needed any more.
        for key in [k for k in self._owner_good if k not in self._owner_keys_used]:
            del self._owner_good[key]
        with self._lock:
            self._publish(pods)
            self._connected = True
        self._resource_version = rv
        self._last_list = time.monotonic()
        if self._logged_kinds:
            self._log.debug("pod list of node %s succeeded: %d pods", self.node_name, len(pods))

    def _watch_once(self, watch_mod: Any) -> None:
        remaining = self.resync_seconds - (time.monotonic() - self._last_list)
        timeout = int(max(1, min(self._watch_timeout, remaining)))
        w = watch_mod.Watch(return_type="object")  # raw dicts: no model validation
        self._watch = w
        if self._stop.is_set():
            return
        stream = w.stream(
            self._list_pods_call,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(self._request_timeout, timeout + self._request_timeout),
        )
        for event in stream:
            if self._stop.is_set():
                w.stop()
                break
            self._handle_event(event)

    def _handle_event(self, event: Mapping[str, Any]) -> None:
        etype = event.get("type")
        obj = event.get("raw_object", event.get("object"))
        if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
            raise _InvalidResponse(f"watch event without an object: {str(event)[:200]}")
        rv = obj["metadata"].get("resourceVersion")
        if etype == "BOOKMARK":
            pass
        elif etype in ("ADDED", "MODIFIED"):
            meta = self._pod_meta(obj)
            if meta is not None:
                with self._lock:
                    pods = dict(self._pods)
                    pods[meta.uid] = meta
                    self._publish(pods)
        elif etype == "DELETED":
            uid = obj["metadata"].get("uid")
            with self._lock:
                if uid in self._pods:
                    pods = dict(self._pods)
                    del pods[uid]
                    self._publish(pods)
        else:
            raise _InvalidResponse(f"unknown watch event type {etype!r}")
        if rv:
            self._resource_version = str(rv)

    def _publish(self, pods: dict[str, PodMeta]) -> None:
        """Swap in a new map (caller holds the lock)."""
        self._pods = MappingProxyType(pods)
        self._by_name = MappingProxyType({(p.namespace, p.name): p for p in pods.values()})

    # -- pods and owners ---------------------------------------------------------------------

    def _pod_meta(self, pod: Mapping[str, Any]) -> PodMeta | None:
        meta = pod.get("metadata") if isinstance(pod, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("uid") or not meta.get("name"):
            self._count("invalid_response", f"pod without metadata.uid/name: {str(pod)[:200]}")
            return None
        return pod_meta_from_dict(pod, self._resolve_owner(meta), self.label_allowlist)

    def _resolve_owner(self, meta: Mapping[str, Any]) -> tuple[str, str]:
        ref = _controller_ref(meta)
        if ref is None:
            return ("Pod", meta["name"])
        kind, name = str(ref["kind"]), str(ref["name"])
        api_version = str(ref.get("apiVersion") or "")
        if (kind, api_version) not in (("ReplicaSet", "apps/v1"), ("Job", "batch/v1"),
                                       ("ReplicaSet", ""), ("Job", "")):
            return (kind, name)  # StatefulSet, DaemonSet, a custom resource...
        namespace = meta.get("namespace", "")
        key = (namespace, kind, name)
        self._owner_keys_used.add(key)
        now = time.monotonic()
        cached = self._owner_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            parent = self._get_controller(namespace, kind, name)
            result = parent if parent is not None else (kind, name)
            ttl = self._owner_cache_ttl
            self._owner_good[key] = result
        except Exception as exc:  # noqa: BLE001 - any failure falls back (see the module doc)
            good = self._owner_good.get(key)
            if good is not None:
                result = good  # a transient failure must not change the workload
            else:
                result = (kind, name)
                template_hash = (meta.get("labels") or {}).get("pod-template-hash")
                if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
                    result = ("Deployment", name[: -len(template_hash) - 1])
            self._count(
                "owner_lookup",
                f"cannot read {kind} {namespace}/{name}; reporting {result[0]}/{result[1]}: "
                f"{exc!r:.300}",
            )
            ttl = self._owner_failure_ttl
        self._owner_cache[key] = (now + ttl, result)
        return result

    def _get_controller(self, namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        """The controller owner (kind, name) of a ReplicaSet or Job, None when it has none."""
        path = ("/apis/apps/v1/namespaces/{namespace}/replicasets/{name}" if kind == "ReplicaSet"
                else "/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        obj = self._get_json(path, path_params={"namespace": namespace, "name": name})
        ref = _controller_ref(obj["metadata"])
        return None if ref is None else (str(ref["kind"]), str(ref["name"]))

    def _prune_owner_cache(self) -> None:
        now = time.monotonic()
        for key in [k for k, (exp, _) in self._owner_cache.items() if exp <= now]:
            del self._owner_cache[key]

    # -- errors ----------------------------------------------------------------------------

    @staticmethod
    def _classify(exc: BaseException, client: Any) -> str:
        if isinstance(exc, _InvalidResponse):
            return "invalid_response"
        if isinstance(exc, client.exceptions.ApiException):
            status = exc.status or 0
            if status in (401, 403):
                return "forbidden"
            if status == 410:
                return "gone"
            if status == 0 or status == 429 or status >= 500:
                return "unavailable"
            return "invalid_response"
        try:
            import urllib3

            if isinstance(exc, urllib3.exceptions.HTTPError):
                return "unavailable"
        except ImportError:  # pragma: no cover
            pass
        if isinstance(exc, OSError):
            return "unavailable"
        return "invalid_response"

    def _count(self, kind: str, message: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            self._log.warning("%s (node %s; further %s errors logged at debug)",
                              message, self.node_name, kind)
        else:
            self._log.debug("%s (node %s)", message, self.node_name)
