"""The workload a pod belongs to, following its controller one level up where needed::

    Pod -> ReplicaSet -> Deployment        reported as Deployment/<name>
    Pod -> Job -> CronJob                  reported as CronJob/<name>
    Pod -> ReplicaSet (no owner)           ReplicaSet/<name>
    Pod -> Job (no owner)                  Job/<name>
    Pod -> StatefulSet, DaemonSet, Notebook, RayCluster, ...   as given
    Pod (no controller)                    Pod/<pod name>

A ReplicaSet or Job owned by another controller (an Argo ``Rollout``, a ``JobSet``) reports that
controller. Lookups of ReplicaSets and Jobs are cached per namespace/kind/name with a TTL. When
a lookup fails (403, 404, 429, API server down) the last good result for that ReplicaSet or Job
is reported again, however old: a brief outage must not turn a CronJob's pods into a Job's. Only
when there never was one is the direct owner reported, except that a ReplicaSet whose name ends
in ``-<pod-template-hash>`` of the pod is taken to be a Deployment's (the Deployment controller
names them so). Last good results are forgotten at a list in which no pod uses them any more.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from .pods import controller_ref

Workload = tuple[str, str]  # (kind, name)
_OwnerKey = tuple[str, str, str]  # (namespace, kind, name) of a ReplicaSet or Job

# (kind, apiVersion) of the owners looked up -> the path of the object
_LOOKED_UP = {
    ("ReplicaSet", "apps/v1"): "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
    ("ReplicaSet", ""): "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
    ("Job", "batch/v1"): "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
    ("Job", ""): "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
}


class OwnerResolver:
    """Resolves pods' workloads with ``get_json(path, path_params=...)``; each failed lookup is
    passed to ``report_failure`` as a message. Used from one thread."""

    def __init__(
        self,
        get_json: Callable[..., Any],
        report_failure: Callable[[str], None],
        *,
        cache_ttl: float,
        failure_ttl: float,
    ) -> None:
        self._get_json = get_json
        self._report_failure = report_failure
        self._cache_ttl = cache_ttl
        self._failure_ttl = failure_ttl
        self._cache: dict[_OwnerKey, tuple[float, Workload]] = {}  # -> (expires at, workload)
        self._last_good: dict[_OwnerKey, Workload] = {}
        self._used_since_list: set[_OwnerKey] = set()

    def begin_list(self) -> None:
        """A full list of the pods begins: expired cache entries go."""
        now = time.monotonic()
        self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._used_since_list = set()

    def end_list(self) -> None:
        """The list succeeded: last good results no pod resolved since it began are forgotten."""
        self._last_good = {k: v for k, v in self._last_good.items() if k in self._used_since_list}

    def workload(self, meta: Mapping[str, Any]) -> Workload:
        """The workload of a pod, from its metadata."""
        ref = controller_ref(meta)
        if ref is None:
            return ("Pod", meta["name"])
        kind, name = str(ref["kind"]), str(ref["name"])
        path = _LOOKED_UP.get((kind, str(ref.get("apiVersion") or "")))
        if path is None:
            return (kind, name)  # StatefulSet, DaemonSet, a custom resource...
        namespace = meta.get("namespace", "")
        key = (namespace, kind, name)
        self._used_since_list.add(key)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            obj = self._get_json(path, path_params={"namespace": namespace, "name": name})
            parent = controller_ref(obj["metadata"])
            result = (kind, name) if parent is None else (str(parent["kind"]), str(parent["name"]))
            self._last_good[key] = result
            ttl = self._cache_ttl
        except Exception as exc:  # noqa: BLE001 - any failure falls back (see the module doc)
            result = self._fallback(key, meta)
            self._report_failure(f"cannot read {kind} {namespace}/{name}; reporting "
                                 f"{result[0]}/{result[1]}: {exc!r:.300}")
            ttl = self._failure_ttl
        self._cache[key] = (now + ttl, result)
        return result

    def _fallback(self, key: _OwnerKey, meta: Mapping[str, Any]) -> Workload:
        good = self._last_good.get(key)
        if good is not None:
            return good
        _, kind, name = key
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
            return ("Deployment", name[: -len(template_hash) - 1])
        return (kind, name)
