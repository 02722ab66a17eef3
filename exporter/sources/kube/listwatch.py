"""List once, then watch, one kind of object of this node, in a task on the event loop: the loop
the pod watch and the ResourceSlice watch share.

What it costs the API server (measured in docs/scaling.md):

* **One list, from the watch cache.** The first list asks for ``resourceVersion=0``: the API
  server answers from its cache, not with a quorum read of etcd.
* **Then a watch, resumed, never replaced by a list.** The watch starts from the list's
  resourceVersion with ``allowWatchBookmarks=true``; every event and every bookmark (the API
  server sends one a minute) moves the resourceVersion on. A watch that the server ends
  (``timeoutSeconds``, 5 to 10 minutes at random as client-go's reflector does, so that watches
  spread over the API servers again after one restarts), or that is cut (a disconnect, an API
  server away, nothing for ``read_timeout`` seconds) is resumed from there.
* **A list again only when the watch cannot resume**: 410 Gone (the resourceVersion left the
  API server's history), or an event that is not understood (what came after it is unknown).
  That list asks for the last resourceVersion seen (from the cache, and never older than what is
  known); when it cannot be served so (410, or ``ResourceVersionTooLarge`` from an API server
  behind the others), the next list asks for the newest (``resourceVersion`` unset).
* **A safety list every 12 to 18 hours** (at random), when a watch ends: it would only correct an
  event lost by a bug somewhere, and costs one list a node in half a day.

Failures never end the task: each one is counted by kind (:data:`WATCH_ERROR_KINDS`), logged at
warning the first time a kind is seen (then at debug), and followed by a capped exponential
backoff (1 s doubling up to 30 s, each x0.5-1.5 at random, so that a fleet does not come back in
step). A 410 lists again at once, unless it repeats within a second. Meanwhile the last known
objects are kept and :attr:`ListWatcher.connected` is False.

A subclass says what to ask for (``path``, ``field_selector``, ``what`` for messages) and what to
do with the answers (:meth:`_replace_all` for a list, :meth:`_upsert` and :meth:`_delete` for
watch events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from typing import Any, Mapping

import aiohttp

from .api import ApiError, InvalidResponse, KubeApi

__all__ = ["WATCH_ERROR_KINDS", "ListWatcher", "error_kind"]

#: Kinds of error every watcher counts (a subclass may add its own).
WATCH_ERROR_KINDS = ("unavailable", "forbidden", "gone", "invalid_response")
#: The safety list: this often, x1-1.5 at random.
RELIST_SECONDS = 12 * 3600.0
#: A watch's ``timeoutSeconds``: at random in this range (client-go's reflector: 5-10 minutes).
WATCH_TIMEOUT_SECONDS = (300.0, 600.0)
#: A watch that sends nothing for this long is cut and resumed: more than twice the API server's
#: bookmark period (one minute).
WATCH_READ_TIMEOUT_SECONDS = 150.0
#: An API server that does not serve the resource (404) is asked again this often (x1-1.5).
NOT_SERVED_RETRY_SECONDS = 3600.0

_log = logging.getLogger(__name__)


def error_kind(exc: BaseException) -> str:
    """The kind (one of :data:`WATCH_ERROR_KINDS`) of a failed list or watch."""
    if isinstance(exc, ApiError):
        if exc.status in (401, 403):
            return "forbidden"
        if exc.status == 410:
            return "gone"
        if exc.status == 0 or exc.status == 429 or exc.status >= 500:
            return "unavailable"
        return "invalid_response"
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return "unavailable"
    return "invalid_response"  # InvalidResponse, and anything unforeseen


class ShortWatch(ConnectionError):
    """A watch the server ended at once without an event: counted as ``unavailable`` and backed
    off, so that a proxy that closes every stream cannot make the agent spin (client-go's
    reflector does the same)."""


def _too_large(exc: BaseException) -> bool:
    """An API server whose cache is behind the resourceVersion asked for."""
    return isinstance(exc, ApiError) and "ResourceVersionTooLarge" in exc.causes


class ListWatcher:
    """The list/watch loop; see the module docstring. Runs on the event loop; every accessor is
    cheap and called from the loop."""

    #: A few words for log lines ("pod", "ResourceSlice").
    what = "object"
    error_kinds: tuple[str, ...] = WATCH_ERROR_KINDS
    #: The task's name: ``<task_prefix>-<node_name>``.
    task_prefix = "watch"

    def __init__(
        self,
        node_name: str,
        path: str,
        field_selector: str,
        *,
        kubeconfig: str | None = None,
        api: KubeApi | None = None,
        relist_seconds: float = RELIST_SECONDS,
        watch_timeout_seconds: tuple[float, float] = WATCH_TIMEOUT_SECONDS,
        read_timeout: float = WATCH_READ_TIMEOUT_SECONDS,
        request_timeout: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        not_served_retry_seconds: float = NOT_SERVED_RETRY_SECONDS,
    ) -> None:
        if not node_name:
            raise ValueError("node_name is required")
        self.node_name = node_name
        self.api = api if api is not None else KubeApi(kubeconfig, request_timeout=request_timeout)
        self.relist_seconds = float(relist_seconds)
        self._path = path
        self._field_selector = field_selector
        shortest = max(1.0, watch_timeout_seconds[0])
        self._watch_timeout = (shortest, max(shortest, watch_timeout_seconds[1]))
        self._read_timeout = read_timeout
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._not_served_retry = not_served_retry_seconds

        self._connected = False
        self._errors = dict.fromkeys(self.error_kinds, 0)
        self._logged_kinds: set[str] = set()
        self._synced = asyncio.Event()  # the first list succeeded
        self._task: asyncio.Task[None] | None = None
        self._acquired = False
        #: Where the watch resumes: the last resourceVersion of a list, an event or a bookmark.
        self.resource_version: str | None = None

    # -- accessors ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a list succeeded and its watch runs; False from an error until a list or
        a resumed watch succeeds."""
        return self._connected

    @property
    def synced(self) -> bool:
        """The first list succeeded: what is known stays readable from then on, connected or not."""
        return self._synced.is_set()

    def error_counts(self) -> dict[str, int]:
        """Cumulative errors by kind (every kind of ``error_kinds`` present, 0 before the first)."""
        return dict(self._errors)

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until the first list has succeeded (True) or ``timeout`` seconds passed (False)."""
        if self._synced.is_set():
            return True
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the credentials (raises when it cannot: no in-cluster service account, a bad
        kubeconfig) and start the task."""
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        await self.api.acquire()
        self._acquired = True
        self._started(self.api)
        self._task = asyncio.create_task(self._run(), name=f"{self.task_prefix}-{self.node_name}")

    async def stop(self) -> None:
        """Stop the task and release the client. The last known objects stay readable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected = False
        await self._stopped()
        if self._acquired:
            self._acquired = False
            await self.api.release()

    # -- what subclasses provide -------------------------------------------------------------

    def _started(self, api: KubeApi) -> None:
        """Called by :meth:`start` with the client, before the task starts."""

    async def _stopped(self) -> None:
        """Called by :meth:`stop` once the task has ended."""

    async def _settle(self) -> None:
        """Called after the first list, before it counts as synced (the pods: their owners)."""

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

    # -- the task --------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._backoff_initial
        list_from: str | None = "0"  # the next list's resourceVersion; None: resume the watch
        relist_at = math.inf
        gone_at = float("-inf")
        while True:
            started = time.monotonic()
            try:
                if list_from is not None:
                    await self._list(list_from)
                    list_from = None
                    relist_at = time.monotonic() + self.relist_seconds * random.uniform(1.0, 1.5)
                await self._watch()
                backoff = self._backoff_initial  # a watch the server ended: healthy
                if time.monotonic() >= relist_at:
                    list_from = self.resource_version or "0"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                listing = list_from is not None
                if listing and isinstance(exc, ApiError) and exc.status == 404 and self._not_served():
                    self._connected = True
                    self._synced.set()
                    await asyncio.sleep(self._not_served_retry * random.uniform(1.0, 1.5))
                    continue
                kind = error_kind(exc)
                if kind != "gone":
                    self._connected = False
                if listing:
                    if kind == "gone" or _too_large(exc):
                        list_from = ""  # this API server cannot serve it from its cache: the newest
                elif kind in ("gone", "invalid_response") or self.resource_version is None:
                    list_from = self.resource_version or "0"  # the watch cannot resume: list again
                if kind == "gone":
                    self._count("gone", f"{self.what} watch expired (410 Gone); listing again")
                    repeated, gone_at = time.monotonic() - gone_at < 1.0, time.monotonic()
                    if not repeated:
                        continue
                else:
                    self._count(kind, f"{self.what} {'list' if listing else 'watch'} failed ({kind}): "
                                      f"{exc!r:.300}")
                if time.monotonic() - started > self._backoff_max:
                    backoff = self._backoff_initial  # the watch had been running a good while
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, self._backoff_max)

    async def _list(self, resource_version: str) -> None:
        query = [("fieldSelector", self._field_selector)]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        data = await self.api.get_json(self._path, query)
        try:
            items, rv = data["items"] or [], str(data["metadata"]["resourceVersion"])
        except (KeyError, TypeError) as exc:
            raise InvalidResponse(f"{self.what} list without items/resourceVersion: {exc!r}") from exc
        if not isinstance(items, list):
            raise InvalidResponse(f"{self.what} list whose items are not a list")
        self._replace_all(items)
        self.resource_version = rv
        if not self._synced.is_set():
            await self._settle()
        self._connected = True
        self._synced.set()
        if self._logged_kinds:
            _log.debug("%s list of node %s succeeded: %d items", self.what, self.node_name, len(items))

    async def _watch(self) -> None:
        """One watch request, from :attr:`resource_version`, until the server ends it."""
        timeout = int(random.uniform(*self._watch_timeout))
        query = [("fieldSelector", self._field_selector), ("allowWatchBookmarks", "true"),
                 ("resourceVersion", self.resource_version or "0"), ("timeoutSeconds", str(timeout))]
        started, events = time.monotonic(), 0
        stream = await self.api.watch(self._path, query, read_timeout=self._read_timeout)
        try:
            self._connected = True
            async for event in stream:
                events += 1
                self._handle_event(event)
        finally:
            stream.close()
        if events == 0 and time.monotonic() - started < 1.0:
            raise ShortWatch("the watch ended at once, without an event")

    def _handle_event(self, event: Mapping[str, Any]) -> None:
        etype, obj = event["type"], event["object"]
        if etype == "ERROR":  # a Status: 410 Gone, mostly
            raise ApiError.from_status(int(obj.get("code") or 500), obj)
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping):
            raise InvalidResponse(f"watch event without an object: {str(event)[:200]}")
        if etype in ("ADDED", "MODIFIED"):
            self._upsert(obj)
        elif etype == "DELETED":
            self._delete(obj)
        elif etype != "BOOKMARK":
            raise InvalidResponse(f"unknown watch event type {etype!r}")
        if rv := metadata.get("resourceVersion"):
            self.resource_version = str(rv)

    def _count(self, kind: str, message: str) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + 1
        first = kind not in self._logged_kinds
        self._logged_kinds.add(kind)
        if first:
            _log.warning("%s (node %s; further %s errors logged at debug)", message, self.node_name, kind)
        else:
            _log.debug("%s (node %s)", message, self.node_name)
