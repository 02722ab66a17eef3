"""The kubelet rows: the pod-resources socket (present, permitted), ``List`` and
``GetAllocatableResources`` (which resource names and device-id forms the kubelet names, DRA
claims), and whether the ids it allocated name GPUs that NVML reports.

One ``List`` and one ``GetAllocatableResources``, through the agent's own client with the
deadline of ``--kubelet.timeout``: the client is told to keep every device-plugin resource, so
that names the flags do not match are seen too.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import Counter
from typing import Any, Awaitable, Callable, Iterable

from ..attribution import attribute, parse_device_id
from ..config import Config
from ..model.gpu import GpuSnapshot
from ..model.kube import PodResources, ProcessOwners
from .report import DEGRADED, FAILED, OK, SKIPPED, Check

_TITLES = {"kubelet.socket": "kubelet socket", "kubelet.list": "kubelet List",
           "kubelet.allocatable": "kubelet allocatable", "kubelet.devices": "kubelet device ids"}
_SOCKET_FIX = ("mount the node's kubelet pod-resources directory at the socket's directory (daemonset.yaml: the "
               "pod-resources hostPath; a kubelet root other than /var/lib/kubelet, as k0s or MicroK8s have, needs "
               "its own hostPath) or point --kubelet.pod-resources-socket at it; --no-kubelet.enabled does without "
               "pod attribution")


def _skipped(reason: str, ids: Iterable[str]) -> list[Check]:
    return [Check(i, _TITLES[i], SKIPPED, reason) for i in ids]


def id_form(device_id: str) -> str:
    """The shape of a device-plugin id, with its variable parts named: ``GPU-<uuid>::<replica>``."""
    parsed = parse_device_id(device_id)
    if parsed is None:
        return "unknown form"
    kind, _, shared = parsed
    base = {"legacy_mig": "MIG-GPU-<uuid>/<gi>/<ci>", "index": "<index>", "minor": "nvidia<minor>"}.get(kind)
    if base is None:
        base = "MIG-<uuid>" if device_id.startswith("MIG-") else "GPU-<uuid>"
    if kind == "minor" and "/vgpu" in device_id:
        return base + "/vgpu<n>"
    return base + ("::<replica>" if shared else "")


def _forms(ids: Iterable[str]) -> str:
    counts = Counter(id_form(i) for i in ids)
    return ", ".join(f"{form}" + (f" x{n}" if n > 1 else "") for form, n in sorted(counts.items()))


def wanted(config: Config, resource: str) -> bool:
    return resource in config.resource_names or resource.startswith(config.resource_prefixes)


async def _socket_check(path: str, timeout: float) -> Check:
    """Present, a socket, and a connection accepted: what the agent's first call needs."""
    id_, title = "kubelet.socket", _TITLES["kubelet.socket"]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(id_, title, FAILED, f"no socket at {path}",
                     "the kubelet's pod-resources directory is not mounted there, or the kubelet keeps it elsewhere",
                     _SOCKET_FIX)
    except OSError as exc:
        return Check(id_, title, FAILED, f"cannot look at {path}: {exc.strerror or exc}",
                     "its directory may not be searched by the agent", _SOCKET_FIX)
    owner = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}, agent uid {os.geteuid()}"
    details = {"path": path, "mode": stat.filemode(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
               "agent_uid": os.geteuid()}
    if not stat.S_ISSOCK(st.st_mode):
        return Check(id_, title, FAILED, f"{path} is not a socket ({owner})",
                     "the path names something else than the kubelet's socket", _SOCKET_FIX, details=details)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    except PermissionError:
        return Check(id_, title, FAILED, f"{path}: permission denied ({owner})",
                     "the kubelet makes its socket root-only; the agent is not uid 0 here, runs in a user namespace "
                     "(hostUsers: false), or SELinux denies the connection",
                     "run the container as uid 0 with no capability, as daemonset.yaml does (runAsUser: 0); not "
                     "with hostUsers: false; on SELinux nodes the spc_t type (docs/deploy.md#security)",
                     details=details)
    except (ConnectionRefusedError, FileNotFoundError):
        return Check(id_, title, FAILED, f"{path}: connection refused ({owner})",
                     "nothing listens on the socket: the kubelet is down or restarting (or a stale socket file)",
                     "look at the kubelet on the node (`systemctl status kubelet`); the agent retries every cycle",
                     details=details)
    except (OSError, TimeoutError) as exc:
        return Check(id_, title, FAILED, f"{path}: cannot connect: {exc or type(exc).__name__} ({owner})",
                     "the kubelet does not accept connections", "look at the kubelet on the node "
                     "(`systemctl status kubelet`, its log)", details=details)
    writer.close()
    return Check(id_, title, OK, f"{path} accepts connections ({owner})", details=details)


_CALL_FIXES = {
    "unavailable": ("the kubelet does not answer pod-resources calls on this socket",
                    "look at the kubelet on the node; check that --kubelet.pod-resources-socket names its "
                    "pod-resources socket (not another of its sockets)"),
    "timeout": ("the kubelet did not answer within --kubelet.timeout", "an overloaded kubelet: look at it on the "
                "node; raise --kubelet.timeout if it answers slowly but answers"),
    "rpc_error": ("the kubelet refused the call", "RESOURCE_EXHAUSTED is its rate limit (100 requests/s shared by "
                  "every client on the node): find the client that floods it; other codes: the kubelet's log"),
    "invalid_response": ("the answer is not a pod-resources v1 message this agent can use: another server on that "
                         "socket path, or devices assigned to containers without names",
                         "check that --kubelet.pod-resources-socket names the kubelet's pod-resources socket; "
                         "the message says what was wrong"),
}


async def check_kubelet(config: Config, snapshot: Callable[[], Awaitable[GpuSnapshot | None]],
                        lister: Any | None = None) -> list[Check]:
    """``snapshot``: the GPUs NVML reports, when it has read them (the ids are matched with them);
    ``lister``: the scenario's kubelet under ``--simulate``; None: the node's, through its socket."""
    if not config.kubelet_enabled:
        return [Check("kubelet", "kubelet", SKIPPED, "off: --no-kubelet.enabled (devices are not attributed to pods)")]
    simulated = lister is not None
    rows: list[Check] = []
    if simulated:
        rows.append(Check("kubelet.socket", _TITLES["kubelet.socket"], OK,
                          "the scenario plays the kubelet", simulated=True))
    else:
        rows.append(await _socket_check(config.kubelet_socket, config.kubelet_timeout))
        if rows[0].status != OK:
            return rows + _skipped("the socket cannot be used", list(_TITLES)[1:])
        from ..sources.kubelet.client import PodResourcesClient

        # Every device-plugin resource (prefix ""), so that names the flags do not match show too.
        lister = PodResourcesClient(config.kubelet_socket, timeout_seconds=config.kubelet_timeout,
                                    resource_names=(), resource_prefixes=("",), dra_drivers=config.dra_drivers)
    allocatable_error = ""
    try:
        resources: PodResources = await asyncio.wait_for(lister.list_resources(), config.kubelet_timeout + 1)
    except TimeoutError:
        return rows + [Check("kubelet.list", _TITLES["kubelet.list"], FAILED,
                             f"no answer within {config.kubelet_timeout:g}s", *_CALL_FIXES["timeout"],
                             simulated=simulated)] + _skipped("List did not answer", list(_TITLES)[2:])
    except Exception as exc:  # noqa: BLE001 - KubeletError, or anything the transport raises
        kind = getattr(exc, "kind", "unavailable")
        if kind != "allocatable" or getattr(exc, "resources", None) is None:
            cause, fix = _CALL_FIXES.get(kind, _CALL_FIXES["unavailable"])
            return rows + [Check("kubelet.list", _TITLES["kubelet.list"], FAILED, f"List failed ({kind}): {exc}",
                                 cause, fix, simulated=simulated, details={"kind": kind})] + _skipped(
                "List did not answer", list(_TITLES)[2:])
        resources, allocatable_error = exc.resources, str(exc)
    finally:
        if not simulated:
            await lister.close()
    rows += [_list_check(config, resources, simulated),
             _allocatable_check(config, resources, allocatable_error, simulated),
             _devices_check(config, resources, await snapshot(), simulated)]
    return rows


def _list_check(config: Config, resources: PodResources, simulated: bool) -> Check:
    by_resource: dict[str, list[str]] = {}
    for row in resources.containers:
        by_resource.setdefault(row.resource, []).extend(row.device_ids)
    pods = {(r.namespace, r.pod) for r in resources.containers if wanted(config, r.resource)}
    pods |= {(d.namespace, d.pod) for d in resources.claim_devices}
    gpu_names = {n: ids for n, ids in by_resource.items() if wanted(config, n)}
    other = sorted(set(by_resource) | set(resources.allocatable)) if not simulated else []
    other = [n for n in other if not wanted(config, n)]
    parts = [f"{len(pods)} pod{'s' if len(pods) != 1 else ''} holding GPUs"]
    if gpu_names:
        parts.append("allocated: " + "; ".join(f"{n} {len(ids)} ({_forms(ids)})"
                                               for n, ids in sorted(gpu_names.items())))
    claims = resources.claim_devices
    if not config.dra_drivers:
        parts.append("DRA claims: off (--kubernetes.dra-drivers is empty)")
    elif claims:
        drivers = ", ".join(sorted({d.driver for d in claims}))
        n = len({(d.claim_namespace, d.claim_name) for d in claims})
        parts.append(f"DRA claims: {len(claims)} device{'s' if len(claims) != 1 else ''} in {n} "
                     f"claim{'s' if n != 1 else ''} ({drivers})")
    else:
        parts.append(f"DRA claims: none of {', '.join(config.dra_drivers)}")
    details = {"allocated": {n: sorted(ids) for n, ids in sorted(by_resource.items())},
               "gpu_resources": sorted(gpu_names), "other_resources": other,
               "claim_devices": [{"namespace": d.namespace, "pod": d.pod, "container": d.container,
                                  "claim": f"{d.claim_namespace}/{d.claim_name}", "driver": d.driver,
                                  "pool": d.pool, "device": d.device} for d in claims]}
    look_alike = [n for n in other if "gpu" in n.lower() or "nvidia" in n.lower()]
    seen = "List answered: " + "; ".join(parts)
    if other:
        seen += f"; other resources: {', '.join(other)}"
    if look_alike:
        return Check("kubelet.list", _TITLES["kubelet.list"], DEGRADED, seen,
                     f"the kubelet names GPU-like resources the flags do not list: {', '.join(look_alike)}",
                     "add them to --kubelet.resource-names (or a prefix to --kubelet.resource-prefixes), or they are "
                     "not attributed", simulated=simulated, details=details)
    return Check("kubelet.list", _TITLES["kubelet.list"], OK, seen, simulated=simulated, details=details)


def _allocatable_check(config: Config, resources: PodResources, error: str, simulated: bool) -> Check:
    id_, title = "kubelet.allocatable", _TITLES["kubelet.allocatable"]
    gpus = {n: ids for n, ids in resources.allocatable.items() if wanted(config, n)}
    details = {"allocatable": {n: list(ids) for n, ids in sorted(gpus.items())}}
    if error:
        return Check(id_, title, DEGRADED, f"GetAllocatableResources failed: {error}",
                     "the kubelet answered List but not GetAllocatableResources",
                     "allocations are attributed; the allocatable counts are left out while it lasts: look at the "
                     "kubelet (RESOURCE_EXHAUSTED: its rate limit)", simulated=simulated, details=details)
    if not gpus:
        return Check(id_, title, OK, "no GPU allocatable through a device "
                     "plugin (GPUs through DRA only, no device plugin registered yet, or a kubelet without "
                     "GetAllocatableResources: the allocatable counts are then left out)",
                     simulated=simulated, details=details)
    seen = "; ".join(f"{n} {len(ids)} ({_forms(ids)})" for n, ids in sorted(gpus.items()))
    unknown = sorted({i for ids in gpus.values() for i in ids if parse_device_id(i) is None})
    if unknown:
        return Check(id_, title, DEGRADED, f"{seen}; ids of no known form: {', '.join(unknown[:5])}",
                     "a device plugin names devices in a form the agent cannot map to a GPU",
                     "docs/attribution.md lists the forms known; report the plugin and its id form",
                     simulated=simulated, details=details)
    return Check(id_, title, OK, seen, simulated=simulated, details=details)


def _devices_check(config: Config, resources: PodResources, snapshot: GpuSnapshot | None, simulated: bool) -> Check:
    id_, title = "kubelet.devices", _TITLES["kubelet.devices"]
    if snapshot is None:
        return Check(id_, title, SKIPPED, "NVML gave no GPU to match the ids with", simulated=simulated)
    gpu_rows = tuple(r for r in resources.containers if wanted(config, r.resource))
    joined = attribute(snapshot, PodResources(gpu_rows, claim_devices=resources.claim_devices), {}, ProcessOwners())
    ids = sum(len(r.device_ids) for r in gpu_rows) + len(resources.claim_devices)
    held = sum(len(h) for h in joined.holders.values())
    details = {"unknown_ids": list(joined.unknown_ids),
               "unresolved_claim_devices": [f"{d.driver}/{d.pool}/{d.device}" for d in joined.unresolved],
               "devices_held": len(joined.holders)}
    seen = (f"{ids} allocated id{'s' if ids != 1 else ''} -> {len(joined.holders)} device"
            f"{'s' if len(joined.holders) != 1 else ''} NVML reports, {held} holder{'s' if held != 1 else ''}")
    if joined.unknown_ids:
        return Check(id_, title, DEGRADED, f"{seen}; no such GPU: {', '.join(joined.unknown_ids[:5])}",
                     "the kubelet allocated devices that match no GPU or MIG instance NVML reports (counted as "
                     "kind=\"unknown_device_id\")", "a device plugin id form the agent does not know, or GPUs the "
                     "container does not see (NVIDIA_VISIBLE_DEVICES=all); docs/attribution.md lists the forms",
                     simulated=simulated, details=details)
    if joined.unresolved:
        return Check(id_, title, OK, f"{seen}; {len(joined.unresolved)} DRA claim device(s) named only through the "
                     "API server's ResourceSlices (see the API server rows)", simulated=simulated, details=details)
    return Check(id_, title, OK, seen, simulated=simulated, details=details)
