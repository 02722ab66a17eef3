"""The workload a pod belongs to, following its controller one level up where needed::

    Pod -> ReplicaSet -> Deployment        reported as Deployment/<name>
    Pod -> Job -> CronJob                  reported as CronJob/<name>
    Pod -> ReplicaSet (no owner)           ReplicaSet/<name>
    Pod -> Job (no owner)                  Job/<name>
    Pod -> StatefulSet, DaemonSet, Notebook, RayCluster, ...   as given
    Pod (no controller)                    Pod/<pod name>

A ReplicaSet or Job owned by another controller (an Argo ``Rollout``, a ``JobSet``) reports that
controller.

**Without holding up the watch.** A pod is published at once with what its own metadata says:
its controller, or, for a ReplicaSet named ``<name>-<pod-template-hash of the pod>``, the
Deployment ``<name>`` (the Deployment controller names its ReplicaSets so). The ReplicaSet or Job
is read in the background: one GET per ReplicaSet or Job however many pods it has
(``resourceVersion=0``: from the API server's watch cache), at most ``concurrency`` at a time.
When the answer comes, the pods of that owner take it: their ``nvidia_gpu_allocation_info``
changes once (a Job's pod from ``Job/<job>`` to ``CronJob/<cronjob>``), in practice before the
next cycle reads them. The first list waits for its lookups (one request timeout at most) before
it counts as synced, so that an agent that starts shows the owners from its first cycle.

**Failures.** A failed lookup (403, 404, 429, the API server away) is reported, and retried with
backoff (1 s doubling up to 10 minutes, each x0.5-1.5 at random) while some pod of that owner is
known; meanwhile its pods keep what they show.

**The cache.** An answer is kept while pods use it and ``linger`` seconds (10 minutes) after the
last one goes, so that a Deployment's replaced pod finds it, and it is not asked for again
meanwhile: a ReplicaSet's or a Job's controller does not change (a ReplicaSet orphaned and adopted
by another Deployment shows its first owner until its pods are gone).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

from .pods import controller_ref

__all__ = ["OwnerResolver", "Workload", "OwnerKey"]

Workload = tuple[str, str]  # (kind, name)
OwnerKey = tuple[str, str, str]  # (namespace, kind, name) of a ReplicaSet or Job

# (kind, apiVersion) of the owners looked up -> the path of the object
_LOOKED_UP = {
    ("ReplicaSet", "apps/v1"): "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
    ("ReplicaSet", ""): "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
    ("Job", "batch/v1"): "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
    ("Job", ""): "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
}


@dataclass(slots=True)
class _Owner:
    path: str
    shown: Workload  # what its pods show: the answer once there is one, the first guess until then
    task: asyncio.Task[None] | None = None
    unused_since: float | None = None


class OwnerResolver:
    """Resolves pods' workloads with ``get_json(path, query)`` in tasks on the event loop.
    ``on_resolved(key, workload)`` is called when an owner's answer changes what its pods show;
    ``report_failure(message)`` for each failed lookup."""

    def __init__(
        self,
        get_json: Callable[..., Awaitable[Any]],
        on_resolved: Callable[[OwnerKey, Workload], None],
        report_failure: Callable[[str], None],
        *,
        concurrency: int = 4,
        backoff_initial: float = 1.0,
        backoff_max: float = 600.0,
        linger: float = 600.0,
    ) -> None:
        self._get_json = get_json
        self._on_resolved = on_resolved
        self._report_failure = report_failure
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._linger = linger
        self._owners: dict[OwnerKey, _Owner] = {}
        self._unanswered = 0  # lookups that have not had their first answer yet
        self._answered = asyncio.Event()
        self._answered.set()

    def workload(self, meta: Mapping[str, Any]) -> tuple[Workload, OwnerKey | None]:
        """The workload a pod shows now, from its metadata, and the ReplicaSet or Job it depends
        on (None: none). An owner not known yet is looked up in the background."""
        ref = controller_ref(meta)
        if ref is None:
            return ("Pod", str(meta["name"])), None
        kind, name = str(ref["kind"]), str(ref["name"])
        path = _LOOKED_UP.get((kind, str(ref.get("apiVersion") or "")))
        if path is None:
            return (kind, name), None  # StatefulSet, DaemonSet, a custom resource...
        namespace = str(meta.get("namespace", ""))
        key = (namespace, kind, name)
        owner = self._owners.get(key)
        if owner is None:
            path = path.format(namespace=quote(namespace, safe=""), name=quote(name, safe=""))
            owner = self._owners[key] = _Owner(path, _guess(kind, name, meta))
            self._unanswered += 1
            self._answered.clear()
            owner.task = asyncio.get_running_loop().create_task(self._resolve(key, owner),
                                                                name=f"owner-{kind}-{namespace}/{name}")
        owner.unused_since = None
        return owner.shown, key

    def in_use(self, keys: set[OwnerKey] | frozenset[OwnerKey]) -> None:
        """The owners the known pods depend on now; the others are forgotten ``linger`` seconds
        after they were first found unused (a lookup still retrying stops)."""
        now = time.monotonic()
        for key, owner in list(self._owners.items()):
            if key in keys:
                owner.unused_since = None
                continue
            if owner.unused_since is None:
                owner.unused_since = now
            if now - owner.unused_since >= self._linger:
                del self._owners[key]
                if owner.task is not None:
                    owner.task.cancel()

    async def answered(self, timeout: float) -> bool:
        """Wait until every lookup started so far has had its first answer, success or failure
        (True), or ``timeout`` seconds (False)."""
        if self._answered.is_set():
            return True
        try:
            await asyncio.wait_for(self._answered.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        tasks = [o.task for o in self._owners.values() if o.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def lookups_pending(self) -> int:
        """Owners whose answer has not come yet (retrying, or waiting for their turn)."""
        return sum(1 for o in self._owners.values() if o.task is not None)

    async def _resolve(self, key: OwnerKey, owner: _Owner) -> None:
        namespace, kind, name = key
        delay = self._backoff_initial
        first = True
        try:
            while True:
                try:
                    async with self._semaphore:
                        obj = await self._get_json(owner.path, [("resourceVersion", "0")])
                    parent = controller_ref(obj["metadata"])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure is retried
                    self._report_failure(f"cannot read {kind} {namespace}/{name} ({exc!r:.300}); its pods show "
                                         f"{owner.shown[0]}/{owner.shown[1]} until it can be read")
                    if first:
                        first = False
                        self._answer()
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, self._backoff_max)
                    continue
                answer = (kind, name) if parent is None else (str(parent["kind"]), str(parent["name"]))
                owner.task = None
                if answer != owner.shown:
                    owner.shown = answer
                    self._on_resolved(key, answer)
                return
        finally:
            owner.task = None
            if first:
                self._answer()

    def _answer(self) -> None:
        self._unanswered -= 1
        if self._unanswered <= 0:
            self._unanswered = 0
            self._answered.set()


def _guess(kind: str, name: str, meta: Mapping[str, Any]) -> Workload:
    """What a pod shows before its owner is read: a ReplicaSet named ``<name>-<the pod's
    pod-template-hash>`` is the Deployment ``<name>``'s; otherwise the controller itself."""
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
        return ("Deployment", name[: -len(template_hash) - 1])
    return (kind, name)
