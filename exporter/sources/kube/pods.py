"""A pod as the API server returns it (JSON, a dict) -> :class:`PodMeta`."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from ...model.kube import PodMeta


def strip_runtime_prefix(container_id: str) -> str:
    """``"containerd://abc"`` -> ``"abc"``; ids without a prefix are returned unchanged."""
    return container_id.split("://", 1)[1] if "://" in container_id else container_id


def controller_ref(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``ownerReference`` with ``controller: true`` of an object's metadata, if any."""
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") and ref.get("name"):
            return ref
    return None


def pod_meta_from_dict(
    pod: Mapping[str, Any],
    workload: tuple[str, str],
    label_allowlist: tuple[str, ...] | frozenset[str] = (),
) -> PodMeta:
    """Build a :class:`PodMeta` from a pod, given its resolved ``(kind, name)`` workload; only
    the labels in ``label_allowlist`` are kept."""
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
