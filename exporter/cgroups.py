"""Which container a process belongs to, from ``/proc/<pid>/cgroup``.

The kubelet puts every container in a cgroup under ``kubepods``, below a per-pod cgroup named
after the pod uid; the container runtime names the container's own cgroup after the container
id. The shapes seen in the wild, all matched by :data:`_CONTAINER_RE`::

    # cgroup v2 ("0::<path>"), systemd driver, containerd (uid dashes become underscores)
    0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-<64 hex>.scope
    # guaranteed QoS has no class level; CRI-O and cri-dockerd prefixes
    0::/kubepods.slice/kubepods-pod<uid_>.slice/crio-<64 hex>.scope
    0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/docker-<64 hex>.scope
    # cgroupfs driver (v1 lines "N:controllers:<path>", or v2)
    11:memory:/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/<64 hex>
    4:pids:/kubepods/pod<uid>/<64 hex>
    # nested (kind, a kubelet in a container): a prefix before "kubepods" is fine
    0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<uid_>.slice/cri-containerd-<64 hex>.scope
    # the reader in its own cgroup namespace (containerd's default on cgroup v2): paths are
    # relative to the reader's own cgroup, and may not name "kubepods" at all
    0::/../../besteffort/pod<uid>/<64 hex>
    0::/../pod<uid>/<64 hex>
    0::/../../kubepods-besteffort-pod<uid_>.slice/cri-containerd-<64 hex>.scope

What is required is a path segment naming the pod (``pod<uid>``, or ``<prefix>-pod<uid>`` with
an optional ``.slice``) directly followed by a segment naming the container
(``[<runtime>-]<hex id>[.scope]``); "kubepods" is not required (relative paths, and a kubelet
with ``cgroupsPerQOS: false``, put pods right under the root).

Not containers: ``crio-conmon-<id>.scope`` (CRI-O's monitor process), the pod-level cgroup
itself, and host processes (``/system.slice/...``, ``/user.slice/...``, ``/``). From inside a
cgroup namespace, a sibling container of the reader's own pod shows as ``/../<id>``, with no pod
segment: it is not attributed.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from .snapshot import ContainerRef

__all__ = ["container_of", "containers_of", "parse_cgroup_file"]

# A segment [<anything>-]pod<uid>[.slice] then a segment [runtime-]<container id>[.scope],
# followed by / or the end. The uid is 32 hex digits, with '-' (cgroupfs) or '_' (systemd)
# between groups or without separators (static pods: a hash of the manifest). The pod segment
# must start a segment (after "/" or a "-"-ended prefix within it), so "/../pod<uid>" and
# "/kubepods-besteffort-pod<uid>.slice" both match. "crio-conmon-..." does not match: "conmon"
# is not hex.
_CONTAINER_RE = re.compile(
    r"(?:^|/)(?:[^/]*-)?pod(?P<uid>[0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12})"
    r"(?:\.slice)?/"
    r"(?:cri-containerd-|crio-|docker-|containerd-)?(?P<id>[0-9a-f]{12,128})(?:\.scope)?"
    r"(?:/|$)"
)

# v1 controllers whose hierarchy is tried first (all point to the same container normally).
_PREFERRED_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct")


def _normalise_uid(uid: str) -> str:
    """``0f1e2d3c_4b5a_...`` or ``0f1e2d3c4b5a...`` -> ``0f1e2d3c-4b5a-...``."""
    hexdigits = uid.replace("_", "").replace("-", "")
    if len(hexdigits) != 32:  # pragma: no cover - the regex allows only 32
        return uid.replace("_", "-")
    if "_" not in uid and "-" not in uid:
        return hexdigits  # a static pod's uid is a plain hash: keep it as the kubelet does
    h = hexdigits
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_cgroup_file(text: str) -> ContainerRef | None:
    """The container named by the contents of a ``/proc/<pid>/cgroup`` file, or None."""
    candidates: list[tuple[int, str]] = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or "pod" not in parts[2]:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            rank = 0  # cgroup v2 (or the v2 line of a hybrid setup)
        elif any(c in _PREFERRED_CONTROLLERS for c in controllers.split(",")):
            rank = 1
        else:
            rank = 2
        candidates.append((rank, path))
    for _, path in sorted(candidates, key=lambda c: c[0]):
        match = _CONTAINER_RE.search(path)
        if match:
            return ContainerRef(pod_uid=_normalise_uid(match["uid"]), container_id=match["id"])
    return None


def container_of(pid: int, procfs: str = "/proc") -> ContainerRef | None:
    """The container of process ``pid``; None for a host process, a process that has exited,
    or a cgroup file that cannot be read. Never raises for those."""
    try:
        with open(os.path.join(procfs, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (OSError, ValueError):  # FileNotFoundError, ProcessLookupError, PermissionError...
        return None
    return parse_cgroup_file(text)


def containers_of(pids: Iterable[int], procfs: str = "/proc") -> dict[int, ContainerRef]:
    """pid -> ContainerRef for the pids that are in a container (the others are left out)."""
    out: dict[int, ContainerRef] = {}
    for pid in pids:
        ref = container_of(pid, procfs)
        if ref is not None:
            out[pid] = ref
    return out
