"""procfs as a source: which container each GPU process runs in, from ``/proc/<pid>/cgroup``.

``ProcfsSource`` reads it once per cycle, after the GPUs (it places the processes of their
snapshot); ``Procfs`` reads the host's procfs (``--path.procfs``), ``container_of`` and
``parse_cgroup_file`` one process's file.

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

import asyncio
import logging
import os
import re
from typing import Callable, Iterable, Mapping, Sequence

from .. import catalog
from ..model.gpu import GpuSnapshot, Sample
from ..model.kube import ContainerRef, ProcessOwners
from .base import ErrorTally, Outcome, Source

__all__ = ["NotInProcfs", "Procfs", "ProcfsSource", "container_of", "parse_cgroup_file", "shares_pid_namespace"]

log = logging.getLogger(__name__)

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


class NotInProcfs(LookupError):
    """procfs does not show this pid: the process exited, or NVML named it in another pid
    namespace (pid 0 included: a process NVML could not name in the agent's namespace)."""


def container_of(pid: int, procfs: str = "/proc") -> ContainerRef | None:
    """The container of process ``pid``, or None for a process outside any container (a host
    process).

    Raises ``NotInProcfs`` when procfs does not show the pid, and ``OSError`` when its cgroup
    file is there but cannot be read (permissions, a broken mount): neither is "not a container".
    """
    if pid <= 0:
        raise NotInProcfs(pid)
    try:
        with open(os.path.join(procfs, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):  # no such pid, or it exited while being read
        raise NotInProcfs(pid) from None
    return parse_cgroup_file(text)


def shares_pid_namespace(procfs: str = "/proc") -> bool | None:
    """Whether this process sees pids as ``procfs`` does.

    A procfs names ``self`` in the pid namespace it was mounted for: True when that is this
    process's own pid (``hostPID: true``, or the agent run on the host), False when it is
    another (the agent in a pid namespace of its own reading the host's ``/proc`` at
    ``/host/proc``), None when there is no ``self`` to read (not a procfs, or one of a pid
    namespace this process is not in)."""
    try:
        return int(os.readlink(os.path.join(procfs, "self"))) == os.getpid()
    except (OSError, ValueError):
        return None


class Procfs:
    """The host's procfs as the agent reads it (``--path.procfs``).

    ``owners()`` first reads ``<procfs>/1/cgroup``: a procfs that is not mounted (or not the
    host's) fails there with ``OSError``, every cycle, rather than reading as "no process is in
    a container". Then each pid is placed in its container, on the host, or not at all.

    Drivers that translate the pids NVML reports into the caller's pid namespace leave out every
    process that namespace does not see; an agent in a pid namespace of its own then gets empty
    process lists that only look like idle GPUs. So the lists count as complete only when the
    agent shares procfs's pid namespace, or once NVML has listed a pid that procfs places in a
    container (a driver that reports host pids: the agent's own namespace holds no GPU process).
    """

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._shares_pid_namespace: bool | None = None
        self._checked_namespace = False
        self._host_pids_seen = False

    @property
    def shares_pid_namespace(self) -> bool | None:
        """``shares_pid_namespace(root)``, read once."""
        if not self._checked_namespace:
            self._shares_pid_namespace = shares_pid_namespace(self.root)
            self._checked_namespace = True
        return self._shares_pid_namespace

    @property
    def lists_complete(self) -> bool:
        return self.shares_pid_namespace is True or self._host_pids_seen

    def check(self) -> None:
        """Raise ``OSError`` unless ``<procfs>/1/cgroup`` can be read."""
        with open(os.path.join(self.root, "1", "cgroup"), "rb") as f:
            f.read()

    def owners(self, pids: Iterable[int]) -> ProcessOwners:
        self.check()
        containers: dict[int, ContainerRef] = {}
        host: set[int] = set()
        missing: set[int] = set()
        unreadable: dict[int, str] = {}
        for pid in pids:
            try:
                ref = container_of(pid, self.root)
            except NotInProcfs:
                missing.add(pid)
                continue
            except OSError as exc:
                unreadable[pid] = str(exc) or type(exc).__name__
                continue
            if ref is None:
                host.add(pid)
            else:
                containers[pid] = ref
        self._host_pids_seen = self._host_pids_seen or bool(containers)
        return ProcessOwners(containers, frozenset(host), frozenset(missing), unreadable, self.lists_complete)


class ProcfsSource(Source[ProcessOwners]):
    """Where each GPU process of the cycle runs, read every cycle (processes or not), so that a
    procfs that cannot be read fails the collector, and its alert, at once.

    ``owners`` places pids (``Procfs.owners`` on a node; the scenario's under ``--simulate``);
    ``path`` is what it reads, for the messages; ``procfs``, when it is the host's, also tells
    whether the agent shares its pid namespace. A process whose pid procfs does not show cannot be
    attributed: it is counted (``unresolved_pid``, and ``kube_gpu_exporter_unresolved_gpu_processes``
    over the processes of this cycle's readings), and the first time said in one line that names
    the fix.
    """

    name = "procfs"
    title = "procfs"
    provides = "process_owners"
    # read: procfs (or a pid's cgroup file) cannot be read; unresolved_pid: a GPU process whose pid
    # procfs does not show (docs/deploy.md#shared-gpus-and-hostpid)
    error_kinds = ("read", "unresolved_pid")
    after_gpus = True

    def __init__(self, owners: Callable[[Sequence[int]], ProcessOwners], path: str,
                 procfs: Procfs | None = None) -> None:
        self.owners, self.path, self.procfs = owners, path, procfs
        self._errors = ErrorTally(self.error_kinds, log)
        self._unresolved = 0  # GPU processes of the last cycle not placed
        self._pid_namespace_logged = False
        self._missing_pids_logged = False

    @classmethod
    def host(cls, root: str) -> "ProcfsSource":
        """The host's procfs at ``root`` (``--path.procfs``)."""
        procfs = Procfs(root)
        return cls(procfs.owners, root, procfs)

    async def read(self, gpus: GpuSnapshot | None) -> Outcome[ProcessOwners]:
        assert gpus is not None
        up = [g for g in gpus.gpus if g.up]
        entries = [p.pid for g in up for p in g.processes] + [p.pid for g in up for m in g.mig_devices
                                                              for p in m.processes]
        pids = sorted({p.pid for g in gpus.gpus for p in g.processes}
                      | {p.pid for g in gpus.gpus for m in g.mig_devices for p in m.processes})
        self._log_pid_namespace_once()
        try:
            owners = await asyncio.to_thread(self.owners, pids)
        except Exception as exc:  # noqa: BLE001 - any failure costs the process split only
            self._errors.count("read", f"procfs at {self.path} cannot be read ({exc}); GPU processes are not "
                               "attributed to containers: check the /host/proc mount and --path.procfs")
            self._unresolved = len(entries)
            return Outcome(ProcessOwners(), ok=False)
        for pid, why in sorted(owners.unreadable.items()):
            self._errors.count("read", f"cannot read the cgroup of GPU process {pid}: {why}")
        missing = [pid for pid in entries if pid in owners.missing]
        if missing:
            self._errors.count("unresolved_pid", n=len(missing))
            self._log_unresolved_once(sorted(set(missing)))
        self._unresolved = sum(not owners.placed(pid) for pid in entries)
        return Outcome(owners, ok=not self._unresolved)

    def error_counts(self) -> Mapping[str, int]:
        return self._errors.counts()

    def self_metrics(self) -> Iterable[Sample]:
        return (Sample(catalog.UNRESOLVED_GPU_PROCESSES, self._unresolved),)

    def _log_pid_namespace_once(self) -> None:
        """Say once, at info, that the agent runs in a pid namespace of its own: drivers that
        translate GPU pids into it hide every other container's process from NVML's lists."""
        if self._pid_namespace_logged or self.procfs is None or self.procfs.shares_pid_namespace is not False:
            return
        self._pid_namespace_logged = True
        log.info("the agent runs in a pid namespace of its own (hostPID: false). A driver that translates GPU "
                 "pids into it leaves other containers' processes out of NVML's lists, so idle holders of shared "
                 "GPUs are reported at 0 only once NVML has listed a pid that %s places in a container (a driver "
                 "that reports host pids); else see docs/deploy.md#shared-gpus-and-hostpid", self.path)

    def _log_unresolved_once(self, pids: list[int]) -> None:
        """Processes NVML lists that procfs does not have: in the host's pid namespace they just
        exited (counted, not worth a line); otherwise the agent sees another pid namespace."""
        if self._missing_pids_logged or (self.procfs is not None and self.procfs.shares_pid_namespace):
            return
        self._missing_pids_logged = True
        shown = ", ".join(map(str, pids[:10])) + (", ..." if len(pids) > 10 else "")
        log.warning("NVML lists GPU processes that %s does not show (pids %s): the agent looks to run in a pid "
                    "namespace of its own, into which the driver translates pids. Their containers are unknown, and "
                    "idle holders of shared GPUs are not reported. Fix: run the agent with hostPID: true "
                    "(deploy/hostpid.patch.yaml, docs/deploy.md#shared-gpus-and-hostpid)", self.path, shown)
