"""The pods of this node, listed and watched (the loop is :class:`~exporter.sources.kube.listwatch.ListWatcher`),
with the workload that owns each (:class:`~exporter.sources.kube.owners.OwnerResolver`)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from ...model.kube import PodMeta
from .api import KubeApi
from .listwatch import WATCH_ERROR_KINDS, ListWatcher
from .owners import OwnerResolver
from .pods import pod_meta_from_dict

__all__ = ["POD_WATCH_ERROR_KINDS", "PodWatcher"]

#: Kinds of error counted by PodWatcher.error_counts(): the list/watch loop's, and owner lookups.
POD_WATCH_ERROR_KINDS = (*WATCH_ERROR_KINDS, "owner_lookup")


class PodWatcher(ListWatcher):
    """Keeps the metadata of the pods of ``node_name`` up to date from the API server.

    ``kubeconfig`` None: in-cluster config (the pod's service account); else the path of a
    kubeconfig file. ``label_allowlist``: pod label keys copied into ``PodMeta.labels``.
    ``resync_seconds``: a full list this often, besides the watch. The other keywords are for
    tuning and tests. The thread is named ``pod-watcher-<node_name>``.
    """

    what = "pod"
    thread_prefix = "pod-watcher"
    error_kinds = POD_WATCH_ERROR_KINDS

    def __init__(
        self,
        node_name: str,
        *,
        label_allowlist: tuple[str, ...] = (),
        owner_cache_ttl: float = 600.0,
        owner_failure_ttl: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, "/api/v1/pods", f"spec.nodeName={node_name}", **kwargs)
        self.label_allowlist = tuple(label_allowlist)
        self._owner_cache_ttl = owner_cache_ttl
        self._owner_failure_ttl = owner_failure_ttl
        self._pods: Mapping[str, PodMeta] = MappingProxyType({})  # replaced, never mutated
        self._owners: OwnerResolver | None = None

    def pods(self) -> Mapping[str, PodMeta]:
        """pod uid -> PodMeta, as last known (an immutable view; cheap)."""
        with self._lock:
            return self._pods

    def _started(self, api: KubeApi) -> None:
        self._owners = OwnerResolver(
            api.get_json,
            lambda message: self._count("owner_lookup", message),
            cache_ttl=self._owner_cache_ttl,
            failure_ttl=self._owner_failure_ttl,
        )

    def _replace_all(self, items: list[Any]) -> None:
        assert self._owners is not None
        self._owners.begin_list()
        pods = {meta.uid: meta for item in items if (meta := self._pod_meta(item)) is not None}
        self._owners.end_list()
        with self._lock:
            self._pods = MappingProxyType(pods)

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        meta = self._pod_meta(obj)
        if meta is not None:
            with self._lock:
                self._pods = MappingProxyType({**self._pods, meta.uid: meta})

    def _delete(self, obj: Mapping[str, Any]) -> None:
        uid = obj["metadata"].get("uid")
        with self._lock:
            if uid in self._pods:
                self._pods = MappingProxyType({k: v for k, v in self._pods.items() if k != uid})

    def _pod_meta(self, pod: Mapping[str, Any]) -> PodMeta | None:
        meta = pod.get("metadata") if isinstance(pod, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("uid") or not meta.get("name"):
            self._count("invalid_response", f"pod without metadata.uid/name: {str(pod)[:200]}")
            return None
        assert self._owners is not None
        return pod_meta_from_dict(pod, self._owners.workload(meta), self.label_allowlist)
