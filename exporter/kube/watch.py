"""The pod list/watch loop, in a daemon thread.

The pods of one node (``fieldSelector=spec.nodeName=<node>``) are listed, then watched from the
list's resourceVersion; a full list again every ``resync_seconds``. Failures never stop the
thread: each one is counted by kind (:data:`ERROR_KINDS`), logged at warning the first time a
kind is seen (then at debug), and followed by a capped exponential backoff and a fresh list.
Meanwhile the last known pods are kept and :attr:`PodWatcher.connected` is False. A 410 Gone
(the usual end of a long watch) relists at once, without a backoff, unless it repeats.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from types import MappingProxyType
from typing import Any, Mapping

from ..snapshot import PodMeta
from .api import InvalidResponse, KubeApi
from .owners import OwnerResolver
from .pods import pod_meta_from_dict

__all__ = ["ERROR_KINDS", "PodWatcher"]

# Kinds of error counted by PodWatcher.error_counts().
ERROR_KINDS = ("unavailable", "forbidden", "gone", "invalid_response", "owner_lookup")

# How long stop() waits for the thread; only a plain request that hangs takes longer.
_STOP_TIMEOUT = 2.0

_log = logging.getLogger(__name__)


def error_kind(exc: BaseException) -> str:
    """The kind (one of :data:`ERROR_KINDS`) of a failed list or watch."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        status = exc.status or 0
        if status in (401, 403):
            return "forbidden"
        if status == 410:
            return "gone"
        if status == 0 or status == 429 or status >= 500:
            return "unavailable"
        return "invalid_response"
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return "unavailable"
    return "invalid_response"  # InvalidResponse, and anything unforeseen


class PodWatcher:
    """Keeps the metadata of the pods of ``node_name`` up to date from the API server.

    ``kubeconfig`` None: in-cluster config (the pod's service account); else the path of a
    kubeconfig file. ``label_allowlist``: pod label keys copied into ``PodMeta.labels``.
    ``resync_seconds``: a full list this often, besides the watch. The other keywords are for
    tuning and tests. The thread is named ``pod-watcher-<node_name>``.
    """

    def __init__(
        self,
        node_name: str,
        *,
        kubeconfig: str | None = None,
        label_allowlist: tuple[str, ...] = (),
        resync_seconds: float = 300,
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
        self._owner_cache_ttl = owner_cache_ttl
        self._owner_failure_ttl = owner_failure_ttl
        self._watch_timeout = max(1, int(watch_timeout_seconds))
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._field_selector = f"spec.nodeName={node_name}"

        self._lock = threading.Lock()  # guards the three below
        self._pods: Mapping[str, PodMeta] = MappingProxyType({})  # replaced, never mutated
        self._connected = False
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._logged_kinds: set[str] = set()
        self._synced = threading.Event()  # the first list succeeded

        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: KubeApi | None = None
        self._owners: OwnerResolver | None = None
        self._watch: Any = None  # the current kubernetes.watch.Watch
        self._resource_version: str | None = None
        self._last_list = 0.0

    # -- accessors (any thread) --------------------------------------------------------------

    def pods(self) -> Mapping[str, PodMeta]:
        """pod uid -> PodMeta, as last known (an immutable view; cheap)."""
        with self._lock:
            return self._pods

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

    def wait_synced(self, timeout: float) -> bool:
        """Block until the first list has succeeded (True) or ``timeout`` seconds passed
        (False): a one-shot run calls it after :meth:`start` to show workloads."""
        return self._synced.wait(timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the client config (raises when it cannot: no in-cluster service account, a bad
        kubeconfig) and start the watch thread."""
        if self._thread is not None:
            raise RuntimeError("PodWatcher already started")
        self._api = KubeApi(self.kubeconfig, self._request_timeout)
        self._owners = OwnerResolver(
            self._api.get_json,
            lambda message: self._count("owner_lookup", message),
            cache_ttl=self._owner_cache_ttl,
            failure_ttl=self._owner_failure_ttl,
        )
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"pod-watcher-{self.node_name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (within 2 s unless a plain request hangs) and close the client. The
        last known pods stay readable."""
        self._stopping.set()
        thread = self._thread
        deadline = time.monotonic() + _STOP_TIMEOUT
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
            if self._api is not None:
                try:
                    self._api.close()
                except Exception:  # pragma: no cover - best effort
                    pass

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        from kubernetes import watch

        backoff = self._backoff_initial
        need_list = True
        gone_in_a_row = 0
        while not self._stopping.is_set():
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
                if self._stopping.is_set():
                    break
                kind = error_kind(exc)
                need_list = True
                with self._lock:
                    self._connected = self._connected and kind == "gone"
                if kind == "gone":
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
                self._stopping.wait(delay)
            finally:
                self._watch = None

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
        return self._api.get("/api/v1/pods", query=query, request_timeout=_request_timeout)

    def _list(self) -> None:
        data = self._api.get_json("/api/v1/pods", query=[("fieldSelector", self._field_selector)])
        try:
            items = data["items"] or []
            rv = str(data["metadata"]["resourceVersion"])
        except (KeyError, TypeError) as exc:
            raise InvalidResponse(f"pod list without items/resourceVersion: {exc!r}") from exc
        self._owners.begin_list()
        pods: dict[str, PodMeta] = {}
        for item in items:
            meta = self._pod_meta(item)
            if meta is not None:
                pods[meta.uid] = meta
        self._owners.end_list()
        with self._lock:
            self._pods = MappingProxyType(pods)
            self._connected = True
        self._synced.set()
        self._resource_version = rv
        self._last_list = time.monotonic()
        if self._logged_kinds:
            _log.debug("pod list of node %s succeeded: %d pods", self.node_name, len(pods))

    def _watch_once(self, watch_mod: Any) -> None:
        remaining = self.resync_seconds - (time.monotonic() - self._last_list)
        timeout = int(max(1, min(self._watch_timeout, remaining)))
        w = watch_mod.Watch(return_type="object")  # raw dicts: no model validation
        self._watch = w
        if self._stopping.is_set():
            return
        stream = w.stream(
            self._list_pods_call,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(self._request_timeout, timeout + self._request_timeout),
        )
        for event in stream:
            if self._stopping.is_set():
                w.stop()
                break
            self._handle_event(event)

    def _handle_event(self, event: Mapping[str, Any]) -> None:
        etype = event.get("type")
        obj = event.get("raw_object", event.get("object"))
        if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
            raise InvalidResponse(f"watch event without an object: {str(event)[:200]}")
        if etype in ("ADDED", "MODIFIED"):
            meta = self._pod_meta(obj)
            if meta is not None:
                with self._lock:
                    self._pods = MappingProxyType({**self._pods, meta.uid: meta})
        elif etype == "DELETED":
            uid = obj["metadata"].get("uid")
            with self._lock:
                if uid in self._pods:
                    self._pods = MappingProxyType({k: v for k, v in self._pods.items() if k != uid})
        elif etype != "BOOKMARK":
            raise InvalidResponse(f"unknown watch event type {etype!r}")
        rv = obj["metadata"].get("resourceVersion")
        if rv:
            self._resource_version = str(rv)

    def _pod_meta(self, pod: Mapping[str, Any]) -> PodMeta | None:
        meta = pod.get("metadata") if isinstance(pod, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("uid") or not meta.get("name"):
            self._count("invalid_response", f"pod without metadata.uid/name: {str(pod)[:200]}")
            return None
        return pod_meta_from_dict(pod, self._owners.workload(meta), self.label_allowlist)

    def _count(self, kind: str, message: str) -> None:
        with self._lock:
            self._errors[kind] += 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            _log.warning("%s (node %s; further %s errors logged at debug)",
                         message, self.node_name, kind)
        else:
            _log.debug("%s (node %s)", message, self.node_name)
