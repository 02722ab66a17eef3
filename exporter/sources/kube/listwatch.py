"""List, then watch, one kind of object of this node, in a daemon thread: the loop the pod watch
and the ResourceSlice watch share.

The objects are listed (``fieldSelector`` limits them to this node), then watched from the
list's resourceVersion; a full list again every ``resync_seconds``. Failures never stop the
thread: each one is counted by kind (:data:`WATCH_ERROR_KINDS`), logged at warning the first time a
kind is seen (then at debug), and followed by a capped exponential backoff and a fresh list.
Meanwhile the last known objects are kept and :attr:`ListWatcher.connected` is False. A 410 Gone
(the usual end of a long watch) relists at once, without a backoff, unless it repeats within a
second.

A subclass says what to ask for (``path``, ``field_selector``, ``what`` for messages) and what to
do with the answers (:meth:`_replace_all` for a list, :meth:`_upsert` and :meth:`_delete` for
watch events).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Mapping

from .api import InvalidResponse, KubeApi

__all__ = ["WATCH_ERROR_KINDS", "ListWatcher", "error_kind"]

#: Kinds of error every watcher counts (a subclass may add its own).
WATCH_ERROR_KINDS = ("unavailable", "forbidden", "gone", "invalid_response")

# How long stop() waits for the thread; only a plain request that hangs takes longer.
_STOP_TIMEOUT = 2.0

_log = logging.getLogger(__name__)


def error_kind(exc: BaseException) -> str:
    """The kind (one of :data:`WATCH_ERROR_KINDS`) of a failed list or watch."""
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


class ListWatcher:
    """The list/watch loop; see the module docstring. Thread-safe accessors, one thread."""

    #: A few words for log lines ("pod", "ResourceSlice").
    what = "object"
    error_kinds: tuple[str, ...] = WATCH_ERROR_KINDS

    def __init__(
        self,
        node_name: str,
        path: str,
        field_selector: str,
        *,
        kubeconfig: str | None = None,
        resync_seconds: float = 300,
        watch_timeout_seconds: int = 300,
        request_timeout: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        if not node_name:
            raise ValueError("node_name is required")
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.resync_seconds = float(resync_seconds)
        self._path = path
        self._field_selector = field_selector
        self._watch_timeout = max(1, int(watch_timeout_seconds))
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

        self._lock = threading.Lock()  # guards _connected, _errors, _logged_kinds and what subclasses publish
        self._connected = False
        self._errors = dict.fromkeys(self.error_kinds, 0)
        self._logged_kinds: set[str] = set()
        self._synced = threading.Event()  # the first list succeeded

        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: KubeApi | None = None
        self._watch: Any = None  # the current api.Watch (stop() closes its stream)
        self._resource_version: str | None = None
        self._last_list = 0.0

    # -- accessors (any thread) --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True once a list succeeded and the watch runs; False after an error until the next
        successful list."""
        with self._lock:
            return self._connected

    def error_counts(self) -> dict[str, int]:
        """Cumulative errors by kind (every kind of ``error_kinds`` present, 0 before the first)."""
        with self._lock:
            return dict(self._errors)

    def wait_synced(self, timeout: float) -> bool:
        """Block until the first list has succeeded (True) or ``timeout`` seconds passed (False):
        a one-shot run calls it after :meth:`start`."""
        return self._synced.wait(timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the client config (raises when it cannot: no in-cluster service account, a bad
        kubeconfig) and start the thread, named ``<thread_prefix>-<node_name>``."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._api = KubeApi(self.kubeconfig, self._request_timeout)
        self._started(self._api)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.thread_prefix}-{self.node_name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (within 2 s unless a plain request hangs) and close the client. The
        last known objects stay readable."""
        self._stopping.set()
        thread = self._thread
        deadline = time.monotonic() + _STOP_TIMEOUT
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            if (watch := self._watch) is not None:
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

    # -- what subclasses provide -------------------------------------------------------------

    thread_prefix = "watcher"

    def _started(self, api: KubeApi) -> None:
        """Called by :meth:`start` with the client, before the thread starts."""

    def _replace_all(self, items: list[Any]) -> None:
        """A list came: replace everything known by ``items`` (and publish it)."""
        raise NotImplementedError

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        """A watch event ADDED or MODIFIED ``obj``."""
        raise NotImplementedError

    def _delete(self, obj: Mapping[str, Any]) -> None:
        """A watch event DELETED ``obj``."""
        raise NotImplementedError

    def _not_served(self) -> bool:
        """The list answered 404: True if that means "no such objects" for this kind (then the
        subclass has published accordingly), False to count it as an invalid response."""
        return False

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        from . import api as watch_module  # api.Watch: kubernetes.watch imports every API model

        backoff = self._backoff_initial
        need_list, gone_at = True, float("-inf")
        while not self._stopping.is_set():
            watch_started = time.monotonic()
            try:
                if need_list or time.monotonic() - self._last_list >= self.resync_seconds:
                    self._list()
                    need_list = False
                watch_started = time.monotonic()
                self._watch_once(watch_module)
                backoff = self._backoff_initial  # a watch that ran to its timeout: healthy
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                if self._stopping.is_set():
                    break
                if need_list and getattr(exc, "status", None) == 404 and self._not_served():
                    self._synced.set()
                    self._stopping.wait(self.resync_seconds)
                    continue
                kind = error_kind(exc)
                need_list = True
                with self._lock:
                    self._connected = self._connected and kind == "gone"
                if kind == "gone":
                    self._count("gone", f"{self.what} watch expired (410 Gone); listing again")
                    repeated, gone_at = time.monotonic() - gone_at < 1.0, time.monotonic()
                    if not repeated:
                        continue
                else:
                    self._count(kind, f"{self.what} list/watch failed ({kind}): {exc!r:.300}")
                if time.monotonic() - watch_started > self._backoff_max:
                    backoff = self._backoff_initial  # the watch had been running a good while
                self._stopping.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self._backoff_max)
            finally:
                self._watch = None

    def _request(
        self,
        *,
        watch: bool = False,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        allow_watch_bookmarks: bool = False,
        _request_timeout: Any = None,
        **_: Any,
    ) -> Any:
        """``GET <path>?fieldSelector=...``, callable as ``Watch.stream(func, **kwargs)`` calls a
        list function; returns the urllib3 response, which ``Watch.stream`` reads line by line."""
        query = [("fieldSelector", self._field_selector)]
        if allow_watch_bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        if resource_version is not None:
            query.append(("resourceVersion", str(resource_version)))
        if timeout_seconds is not None:
            query.append(("timeoutSeconds", str(int(timeout_seconds))))
        if watch:
            query.append(("watch", "true"))
        return self._api.get(self._path, query=query, request_timeout=_request_timeout)

    def _list(self) -> None:
        data = self._api.get_json(self._path, query=[("fieldSelector", self._field_selector)])
        try:
            items, rv = data["items"] or [], str(data["metadata"]["resourceVersion"])
        except (KeyError, TypeError) as exc:
            raise InvalidResponse(f"{self.what} list without items/resourceVersion: {exc!r}") from exc
        self._replace_all(items)
        with self._lock:
            self._connected = True
        self._synced.set()
        self._resource_version = rv
        self._last_list = time.monotonic()
        if self._logged_kinds:
            _log.debug("%s list of node %s succeeded: %d items", self.what, self.node_name, len(items))

    def _watch_once(self, watch_module: Any) -> None:
        remaining = self.resync_seconds - (time.monotonic() - self._last_list)
        timeout = int(max(1, min(self._watch_timeout, remaining)))
        w = watch_module.Watch(return_type="object")  # raw dicts: no model validation
        self._watch = w
        if self._stopping.is_set():
            return
        stream = w.stream(
            self._request,
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
            self._upsert(obj)
        elif etype == "DELETED":
            self._delete(obj)
        elif etype != "BOOKMARK":
            raise InvalidResponse(f"unknown watch event type {etype!r}")
        if rv := obj["metadata"].get("resourceVersion"):
            self._resource_version = str(rv)

    def _count(self, kind: str, message: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            _log.warning("%s (node %s; further %s errors logged at debug)", message, self.node_name, kind)
        else:
            _log.debug("%s (node %s)", message, self.node_name)
