"""The pods of this node, listed once and watched (the loop is
:class:`~exporter.sources.kube.listwatch.ListWatcher`), with the workload that owns each
(:class:`~exporter.sources.kube.owners.OwnerResolver`, in the background)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

from ...model.kube import PodMeta
from .api import KubeApi
from .listwatch import WATCH_ERROR_KINDS, ListWatcher
from .owners import OwnerKey, OwnerResolver, Workload
from .pods import pod_meta_from_dict

__all__ = ["POD_WATCH_ERROR_KINDS", "PodWatcher"]

#: Kinds of error counted by PodWatcher.error_counts(): the list/watch loop's, and owner lookups.
POD_WATCH_ERROR_KINDS = (*WATCH_ERROR_KINDS, "owner_lookup")


class PodWatcher(ListWatcher):
    """Keeps the metadata of the pods of ``node_name`` up to date from the API server.

    ``kubeconfig`` None: in-cluster credentials (the pod's service account); else the path of a
    kubeconfig file; ``api``: a :class:`~exporter.sources.kube.api.KubeApi` shared with the
    ResourceSlice watch. ``label_allowlist``: pod label keys copied into ``PodMeta.labels``.
    ``owner_*``: the owner lookups (see ``owners.py``). The other keywords are the list/watch
    loop's, for tuning and tests.
    """

    what = "pod"
    task_prefix = "pod-watch"
    error_kinds = POD_WATCH_ERROR_KINDS

    def __init__(
        self,
        node_name: str,
        *,
        label_allowlist: tuple[str, ...] = (),
        owner_concurrency: int = 4,
        owner_backoff_initial: float = 1.0,
        owner_backoff_max: float = 600.0,
        owner_linger: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, "/api/v1/pods", f"spec.nodeName={node_name}", **kwargs)
        self.label_allowlist = tuple(label_allowlist)
        self._owner_options = dict(concurrency=owner_concurrency, backoff_initial=owner_backoff_initial,
                                   backoff_max=owner_backoff_max, linger=owner_linger)
        self._pods: Mapping[str, PodMeta] = MappingProxyType({})  # replaced, never mutated
        self._owner_of: dict[str, OwnerKey] = {}  # pod uid -> the ReplicaSet or Job it depends on
        self._owners: OwnerResolver | None = None

    def pods(self) -> Mapping[str, PodMeta]:
        """pod uid -> PodMeta, as last known (an immutable view; cheap)."""
        return self._pods

    def _started(self, api: KubeApi) -> None:
        self._owners = OwnerResolver(api.get_json, self._owner_resolved,
                                     lambda message: self._count("owner_lookup", message), **self._owner_options)

    async def _settle(self) -> None:
        assert self._owners is not None
        await self._owners.answered(self._request_timeout)

    async def _stopped(self) -> None:
        if self._owners is not None:
            await self._owners.close()

    def _replace_all(self, items: list[Any]) -> None:
        assert self._owners is not None
        pods: dict[str, PodMeta] = {}
        owner_of: dict[str, OwnerKey] = {}
        for item in items:
            if (found := self._pod_meta(item)) is not None:
                meta, key = found
                pods[meta.uid] = meta
                if key is not None:
                    owner_of[meta.uid] = key
        self._pods, self._owner_of = MappingProxyType(pods), owner_of
        self._owners.in_use(set(owner_of.values()))

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        if (found := self._pod_meta(obj)) is None:
            return
        meta, key = found
        if key is None:
            self._owner_of.pop(meta.uid, None)
        else:
            self._owner_of[meta.uid] = key
        self._pods = MappingProxyType({**self._pods, meta.uid: meta})

    def _delete(self, obj: Mapping[str, Any]) -> None:
        uid = obj["metadata"].get("uid")
        if uid in self._pods:
            self._pods = MappingProxyType({k: v for k, v in self._pods.items() if k != uid})
        if self._owner_of.pop(uid, None) is not None and self._owners is not None:
            self._owners.in_use(set(self._owner_of.values()))

    def _owner_resolved(self, key: OwnerKey, workload: Workload) -> None:
        """An owner's answer came: its pods show it from now on (their one change)."""
        uids = [uid for uid, k in self._owner_of.items() if k == key and uid in self._pods]
        if uids:
            pods = dict(self._pods)
            for uid in uids:
                pods[uid] = dataclasses.replace(pods[uid], workload_kind=workload[0], workload=workload[1])
            self._pods = MappingProxyType(pods)

    def _pod_meta(self, pod: Mapping[str, Any]) -> tuple[PodMeta, OwnerKey | None] | None:
        meta = pod.get("metadata") if isinstance(pod, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("uid") or not meta.get("name"):
            self._count("invalid_response", f"pod without metadata.uid/name: {str(pod)[:200]}")
            return None
        assert self._owners is not None
        workload, key = self._owners.workload(meta)
        return pod_meta_from_dict(pod, workload, self.label_allowlist), key
