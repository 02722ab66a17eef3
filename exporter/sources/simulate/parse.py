"""From a scenario file to a ``Scenario``: read it, check every value, derive what is not given.

Validation happens once, here, and reports every problem at once: ``ScenarioError.problems``
lists each one prefixed with its path (``gpus[2].mig[0].profile: unknown profile 'x'``).
Unknown keys are problems too, so a typo never silently falls back to a default, and a value is
never silently changed (a number where a string is due must be quoted, see ``checker.py``).

Everything not given is derived deterministically from the node name, ``seed`` and position,
so the same file always yields the same UUIDs, pids and container ids.
"""

from __future__ import annotations

import hashlib
import re
import uuid as _uuid
from importlib import resources
from typing import Any

import yaml

from ...model.vocabulary import COMPUTE_MODES, GPU_RESOURCE, NVIDIA_DRA_DRIVER, NVLINK_ERROR_TYPES, SHARED_GPU_RESOURCE
from .checker import Checker, YamlLoader, typename
from .scenario import (
    FAULT_KINDS, LOAD_PATTERNS, SHARING_STRATEGIES, ContainerSpec, DeviceRef, FaultSpec, GpuSpec, LoadSpec,
    MiB, MigSpec, NodeSpec, PodSpec, ProcessSpec, Scenario, SharingSpec, model_defaults,
)

__all__ = ["ScenarioError", "load_scenario", "load_scenario_text", "parse_scenario"]


class ScenarioError(Exception):
    """A scenario that cannot be used; ``problems`` lists every problem found, each with its path."""

    def __init__(self, problems: list[str], source: str = "<scenario>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"scenario {self.source}: {n} problem{'s' if n != 1 else ''}"
        return head + "".join(f"\n  - {p}" for p in self.problems)


# -- Loading ------------------------------------------------------------------------------------


def load_scenario(path: str | None = None) -> Scenario:
    """Read and validate a scenario file; ``None`` reads the built-in ``default.yaml``.

    Raises ``ScenarioError`` (every problem listed) for unreadable files, text that is not
    UTF-8, bad YAML and invalid scenarios alike.
    """
    if path is None:
        source = "default.yaml (built in)"
        data = resources.files(__package__).joinpath("default.yaml").read_bytes()
    else:
        source = path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except IsADirectoryError:
            raise ScenarioError([f"{path}: is a directory, not a scenario file"], source) from None
        except OSError as e:
            raise ScenarioError([f"{path}: cannot read: {e.strerror or e}"], source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ScenarioError([f"{source}: line {line}: byte 0x{data[e.start]:02x} at offset {e.start} is not "
                             "UTF-8 text (save the file as UTF-8)"], source) from None
    return load_scenario_text(text, source)


def load_scenario_text(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and validate scenario YAML given as text."""
    try:
        data = yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader that keeps number text
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ScenarioError([f"{where}invalid YAML: {getattr(e, 'problem', None) or e}"], source) from None
    return parse_scenario(data, source)


# -- Deterministic derivations ---------------------------------------------------------------------

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CID_RE = re.compile(r"^[0-9a-f]{12,64}$")
_MIG_PROFILE = re.compile(r"^([1-7])g\.(\d+)gb(\+me)?$")
_PCI_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=32).digest()


def _derived_uuid(*parts: object) -> str:
    return str(_uuid.UUID(bytes=_digest(*parts)[:16], version=4))


def _derived_int(lo: int, hi: int, *parts: object) -> int:
    return lo + int.from_bytes(_digest(*parts)[:8], "big") % (hi - lo)


# -- Parsing ----------------------------------------------------------------------------------------

_TOP_KEYS = ("seed", "node", "gpus", "pods", "faults")
_NODE_KEYS = ("name", "driver_version", "cuda_version")
_GPU_KEYS = ("model", "memory", "power_limit", "uuid", "serial", "vbios_version", "nvlink_links",
             "compute_mode", "persistence_mode", "load", "mig", "sharing")
_MIG_KEYS = ("profile", "gpu_instance_id", "compute_instance_id", "memory", "uuid", "load")
_SHARING_KEYS = ("strategy", "replicas", "resource")
_LOAD_KEYS = ("pattern", "level", "min", "max", "period", "phase", "duty", "noise")
_POD_KEYS = ("namespace", "name", "uid", "workload", "labels", "containers")
_WORKLOAD_KEYS = ("kind", "name")
_CONTAINER_KEYS = ("name", "id", "resource", "claim", "devices", "processes")
_DEVICE_KEYS = ("gpu", "mig", "compute_instance_id", "replica")
_PROCESS_KEYS = ("pid", "memory", "utilization", "device")
_FAULTS_KEYS = ("repeat_every", "events")
_FAULT_COMMON = ("kind", "at", "gpu", "duration")
_FAULT_KEYS: dict[str, tuple[str, ...]] = {
    "xid": ("code", "count"),
    "ecc": ("corrected", "uncorrected"),
    "thermal": ("temperature_rise",),
    "power_cap": ("limit_watts",),
    "gpu_lost": (),
    "row_remap": ("correctable", "uncorrectable", "pending", "failure"),
    "pcie_replay": ("count",),
    "nvlink_errors": ("link", "type", "count"),
    "nvlink_down": ("link",),
}
_NEEDS_DURATION = ("thermal", "power_cap", "gpu_lost")
_DEFAULT_NODE = NodeSpec(name="node", driver_version="550.90.07", cuda_version="12.4")


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a scenario already read from YAML; raise ``ScenarioError`` listing every problem."""
    c = Checker()
    top = c.mapping(data, "", _TOP_KEYS, ("node", "gpus"))
    if top is None:
        raise ScenarioError(c.problems, source)
    seed = c.get(top, "seed", "", "int", 0)

    node = _DEFAULT_NODE
    n = c.mapping(top.get("node"), "node", _NODE_KEYS, ("name",)) if "node" in top else None
    if n is not None:
        node = NodeSpec(**{key: c.get(n, key, "node", "str", getattr(node, key)) for key in _NODE_KEYS})

    gpus = [_parse_gpu(c, raw, i, node.name, seed) for i, raw in enumerate(c.seq(top, "gpus", "", required=True))]
    uuids: dict[str, int] = {}
    for g in gpus:
        if g is None:
            continue
        if g.uuid in uuids:
            c.add(f"gpus[{g.index}].uuid", f"{g.uuid} already used by gpus[{uuids[g.uuid]}]")
        uuids.setdefault(g.uuid, g.index)
        for j, m in enumerate(g.mig):
            if m.uuid in uuids:
                c.add(f"gpus[{g.index}].mig[{j}].uuid", f"{m.uuid} already used")
            uuids.setdefault(m.uuid, g.index)

    pods = _parse_pods(c, top, gpus, node.name, seed)
    repeat_every, faults = _parse_faults(c, top, gpus)

    if c.problems:
        raise ScenarioError(c.problems, source)
    return Scenario(node, tuple(g for g in gpus if g is not None), tuple(pods), tuple(faults),
                    repeat_every, seed, source)


def _parse_gpu(c: Checker, raw: Any, i: int, node: str, seed: int) -> GpuSpec | None:
    path = f"gpus[{i}]"
    g = c.mapping(raw, path, _GPU_KEYS, ("model",))
    if g is None:
        return None
    model = c.get(g, "model", path, "str", "NVIDIA GPU")
    d = model_defaults(model)
    memory = c.get(g, "memory", path, "size", d.memory, lo=1)
    power_limit = c.get(g, "power_limit", path, "number", float(d.power_limit), lo=1)
    uuid = _device_uuid(c, g, path, "GPU-") or "GPU-" + _derived_uuid(seed, node, "gpu", i)
    serial = c.get(g, "serial", path, "str", None) or str(_derived_int(1_320_000_000_000, 1_659_999_999_999, seed, uuid))
    bus = _PCI_BUSES[i] if i < len(_PCI_BUSES) else (0x100 + i) % 0xFF
    load = _parse_load(c, g.get("load"), f"{path}.load") if "load" in g else LoadSpec()

    mig: list[MigSpec] = []
    seen: dict[tuple[int, int], int] = {}
    instance_mem: dict[int, tuple[int, int]] = {}  # gpu_instance_id -> (slices, memory)
    instance_load: dict[int, tuple[LoadSpec, str]] = {}  # gpu_instance_id -> (its load, where given)
    for j, rm in enumerate(c.seq(g, "mig", path)):
        mp = f"{path}.mig[{j}]"
        m = c.mapping(rm, mp, _MIG_KEYS, ("profile", "gpu_instance_id"))
        if m is None:
            continue
        profile = c.get(m, "profile", mp, "str", None)
        match = _MIG_PROFILE.match(profile) if profile else None
        if profile and not match:
            c.add(f"{mp}.profile", f"unknown profile {profile!r} (expected like 1g.10gb, 3g.40gb, 7g.80gb)")
        gi = c.get(m, "gpu_instance_id", mp, "int", None, lo=0)
        ci = c.get(m, "compute_instance_id", mp, "int", 0, lo=0)
        mem_default = int(match.group(2)) * 1000 * MiB if match else 0
        mem = c.get(m, "memory", mp, "size", mem_default, lo=1)
        muuid = _device_uuid(c, m, mp, "MIG-")
        mload = _parse_load(c, m["load"], f"{mp}.load") if "load" in m else None
        if not match or gi is None:
            continue
        if mload is not None:  # compute instances share their GPU instance's SMs: one load
            given = instance_load.setdefault(gi, (mload, mp))
            if given[0] != mload:
                c.add(f"{mp}.load", f"differs from the load of gpu_instance_id {gi} at {given[1]}: compute "
                      "instances share their GPU instance's SMs")
        if (gi, ci) in seen:
            c.add(mp, f"gpu_instance_id {gi} / compute_instance_id {ci} already used by {path}.mig[{seen[gi, ci]}]")
            continue
        seen[gi, ci] = j
        instance_mem.setdefault(gi, (int(match.group(1)), mem))
        mig.append(MigSpec(profile, gi, ci, mem, muuid or "MIG-" + _derived_uuid(seed, uuid, "mig", gi, ci), mload))
    if mig:
        slices = sum(s for s, _ in instance_mem.values())
        if slices > 7:
            c.add(f"{path}.mig", f"instances use {slices} compute slices; a GPU has 7")
        total = sum(m for _, m in instance_mem.values())
        if total > memory:
            c.add(f"{path}.mig", f"instances use {total} bytes of memory; the GPU has {memory}")

    sharing = None
    if "sharing" in g:
        sp = f"{path}.sharing"
        s = c.mapping(g["sharing"], sp, _SHARING_KEYS, ("replicas",))
        if s is not None:
            sharing = SharingSpec(c.get(s, "strategy", sp, "str", "time-slicing", choices=SHARING_STRATEGIES),
                                  c.get(s, "replicas", sp, "int", 2, lo=2, hi=64),
                                  c.get(s, "resource", sp, "str", SHARED_GPU_RESOURCE))
            if mig:
                c.add(sp, "a MIG-enabled GPU cannot also be shared in this simulator")

    return GpuSpec(
        index=i, model=model, uuid=uuid, pci_bus_id=f"00000000:{bus:02X}:00.0", serial=serial,
        vbios_version=c.get(g, "vbios_version", path, "str", d.vbios_version), memory=memory,
        power_limit=power_limit, nvlink_links=c.get(g, "nvlink_links", path, "int", d.nvlink_links, lo=0, hi=18),
        compute_mode=c.get(g, "compute_mode", path, "str", "default", choices=COMPUTE_MODES),
        persistence_mode=c.get(g, "persistence_mode", path, "bool", True),
        load=load, mig=tuple(mig), sharing=sharing, defaults=d,
    )


def _device_uuid(c: Checker, m: dict, path: str, prefix: str) -> str | None:
    """``m["uuid"]`` as ``<prefix><uuid>`` (the prefix may be left out); None when absent or wrong."""
    given = c.get(m, "uuid", path, "str", None)
    if given is None:
        return None
    bare = given.removeprefix(prefix)
    if not _UUID_RE.match(bare):
        c.add(f"{path}.uuid", f"expected {prefix}xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (lower-case hex), got {given!r}")
        return None
    return prefix + bare


def _parse_load(c: Checker, raw: Any, path: str) -> LoadSpec:
    if isinstance(raw, str):  # shorthand: load: idle
        raw = {"pattern": raw}
    m = c.mapping(raw, path, _LOAD_KEYS, ("pattern",))
    if m is None:
        return LoadSpec()
    pattern = c.get(m, "pattern", path, "str", "idle", choices=LOAD_PATTERNS)
    ratio = dict(lo=0.0, hi=1.0)
    spec = LoadSpec(
        pattern=pattern,
        level=c.get(m, "level", path, "number", 0.0, **ratio),
        min=c.get(m, "min", path, "number", 0.0, **ratio),
        max=c.get(m, "max", path, "number", 1.0, **ratio),
        period=c.get(m, "period", path, "number", 300.0, lo=1.0),
        phase=c.get(m, "phase", path, "number", 0.0),
        duty=c.get(m, "duty", path, "number", 0.5, **ratio),
        noise=c.get(m, "noise", path, "number", 0.0 if pattern == "idle" else 0.02, lo=0.0, hi=0.5),
    )
    if spec.min > spec.max:
        c.add(path, f"min {spec.min:g} is above max {spec.max:g}")
    if pattern == "constant" and "level" not in m:
        c.add(f"{path}.level", "required for pattern constant")
    return spec


def _parse_pods(c: Checker, top: dict, gpus: list[GpuSpec | None], node: str, seed: int) -> list[PodSpec]:
    pods: list[PodSpec] = []
    names: dict[tuple[str, str], int] = {}
    uids: dict[str, int] = {}
    holders: dict[str, tuple[str, tuple[str, str] | None]] = {}  # device id -> (path, claim) of first holder
    claims: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {}  # claim -> (device ids, path first seen)
    pids: dict[int, str] = {}
    # per GPU / MIG instance: memory and utilisation shares of processes, to check the sums
    mem_use: dict[str, int] = {}
    util_use: dict[int, float] = {}
    for i, raw in enumerate(c.seq(top, "pods", "")):
        path = f"pods[{i}]"
        p = c.mapping(raw, path, _POD_KEYS, ("namespace", "name", "containers"))
        if p is None:
            continue
        ns = c.get(p, "namespace", path, "str", "default")
        name = c.get(p, "name", path, "str", f"pod-{i}")
        if (ns, name) in names:
            c.add(path, f"pod {ns}/{name} already defined at pods[{names[ns, name]}]")
        names.setdefault((ns, name), i)
        uid = c.get(p, "uid", path, "str", None)
        if uid is not None and not _UUID_RE.match(uid):
            c.add(f"{path}.uid", f"expected a lower-case UUID, got {uid!r}")
            uid = None
        uid = uid or _derived_uuid(seed, node, "pod", ns, name)
        if uid in uids:
            c.add(f"{path}.uid", f"{uid} already used by pods[{uids[uid]}]")
        uids.setdefault(uid, i)
        kind, workload = "Pod", name
        if "workload" in p:
            w = c.mapping(p["workload"], f"{path}.workload", _WORKLOAD_KEYS, ("kind", "name"))
            if w is not None:
                kind = c.get(w, "kind", f"{path}.workload", "str", "Pod")
                workload = c.get(w, "name", f"{path}.workload", "str", name)
        labels: dict[str, str] = {}
        if "labels" in p:
            lab = p["labels"]
            if not isinstance(lab, dict):
                c.add(f"{path}.labels", f"expected a mapping, got {typename(lab)}")
            else:
                for k, v in lab.items():
                    if not isinstance(k, str):
                        c.add(f"{path}.labels", f"label keys must be strings, got {typename(k)}")
                    elif (value := c.string(v, f"{path}.labels.{k}")) is not None:
                        labels[k] = value
        containers: list[ContainerSpec] = []
        cnames: set[str] = set()
        for j, rc in enumerate(c.seq(p, "containers", path, required=True)):
            cp = f"{path}.containers[{j}]"
            is_claim = isinstance(rc, dict) and "claim" in rc
            required = ("name", "devices") if is_claim else ("name", "resource", "devices")
            cm = c.mapping(rc, cp, _CONTAINER_KEYS, required)
            if cm is None:
                continue
            claim = c.get(cm, "claim", cp, "str", None)
            if is_claim and "resource" in cm:
                c.add(f"{cp}.resource", f"devices of a claim come from the DRA driver {NVIDIA_DRA_DRIVER}; no resource")
            cname = c.get(cm, "name", cp, "str", f"c{j}")
            if cname in cnames:
                c.add(f"{cp}.name", f"container {cname!r} already defined in this pod")
            cnames.add(cname)
            cid = c.get(cm, "id", cp, "str", None)
            if cid is not None and not _CID_RE.match(cid):
                c.add(f"{cp}.id", "expected 12 to 64 lower-case hex digits, without a runtime prefix")
                cid = None
            cid = cid or _digest(seed, uid, "container", cname).hex()
            resource = NVIDIA_DRA_DRIVER if claim else c.get(cm, "resource", cp, "str", GPU_RESOURCE)
            claim_key = (ns, claim) if claim else None
            devices: list[DeviceRef | None] = []
            for k, rd in enumerate(c.seq(cm, "devices", cp, required=True)):
                dp = f"{cp}.devices[{k}]"
                ref = _parse_device(c, rd, dp, gpus, None if claim else resource)
                devices.append(ref)
                if ref is not None:
                    held = holders.get(ref.device_id)
                    if held is not None and (claim_key is None or held[1] != claim_key):
                        c.add(dp, f"device {ref.device_id} is already held by {held[0]}")
                    holders.setdefault(ref.device_id, (dp, claim_key))
            if claim_key is not None:
                ids = tuple(sorted(d.device_id for d in devices if d is not None))
                seen_claim = claims.setdefault(claim_key, (ids, cp))
                if seen_claim[0] != ids:
                    c.add(f"{cp}.devices", f"claim {claim!r} holds other devices at {seen_claim[1]}")
            processes: list[ProcessSpec] = []
            for k, rp in enumerate(c.seq(cm, "processes", cp)):
                pp = f"{cp}.processes[{k}]"
                pm = c.mapping(rp, pp, _PROCESS_KEYS, ("memory",))
                if pm is None:
                    continue
                dev = c.get(pm, "device", pp, "int", 0, lo=0)
                if dev >= len(devices):
                    c.add(f"{pp}.device", f"the container holds {len(devices)} device(s); no device {dev}")
                    dev = None
                mem = c.get(pm, "memory", pp, "size", 0)
                share = c.get(pm, "utilization", pp, "number", 0.0, lo=0.0, hi=1.0)
                pid = c.get(pm, "pid", pp, "int", None, lo=1, hi=4_194_304)
                if pid is None:
                    pid = _derived_int(10_000, 4_000_000, seed, uid, cname, k)
                    while pid in pids:
                        pid += 1
                elif pid in pids:
                    c.add(f"{pp}.pid", f"pid {pid} already used by {pids[pid]}")
                pids.setdefault(pid, pp)
                if dev is not None and devices[dev] is not None:
                    ref = devices[dev]
                    key = ref.mig.uuid if ref.mig else gpus[ref.gpu].uuid  # type: ignore[union-attr]
                    mem_use[key] = mem_use.get(key, 0) + mem
                    if ref.mig is None:
                        util_use[ref.gpu] = util_use.get(ref.gpu, 0.0) + share
                    processes.append(ProcessSpec(pid, mem, share, dev))
            containers.append(ContainerSpec(cname, cid, resource, tuple(d for d in devices if d is not None),
                                            tuple(processes), claim))
        pods.append(PodSpec(ns, name, uid, kind, workload, labels, tuple(containers)))

    for g in gpus:
        if g is None:
            continue
        if util_use.get(g.index, 0.0) > 1.0 + 1e-9:
            c.add(f"gpus[{g.index}]", f"processes' utilization shares add up to {util_use[g.index]:g}, above 1")
        if mem_use.get(g.uuid, 0) + sum(mem_use.get(m.uuid, 0) for m in g.mig) > g.memory:
            c.add(f"gpus[{g.index}]", "processes use more memory than the GPU has")
        for j, m in enumerate(g.mig):
            if mem_use.get(m.uuid, 0) > m.memory:
                c.add(f"gpus[{g.index}].mig[{j}]", "processes use more memory than the MIG instance has")
    return pods


def _parse_device(
    c: Checker, raw: Any, path: str, gpus: list[GpuSpec | None], resource: str | None
) -> DeviceRef | None:
    """A device held under ``resource`` (a device plugin's), or through a DRA claim (None)."""
    if isinstance(raw, int) and not isinstance(raw, bool):  # shorthand: devices: [0]
        raw = {"gpu": raw}
    d = c.mapping(raw, path, _DEVICE_KEYS, ("gpu",))
    if d is None:
        return None
    gi = c.get(d, "gpu", path, "int", None, lo=0)
    if gi is None:
        return None
    if gi >= len(gpus):
        c.add(path, f"gpu {gi} does not exist (the scenario has {len(gpus)} GPUs)")
        return None
    g = gpus[gi]
    if g is None:
        return None
    mig_id = c.get(d, "mig", path, "int", None, lo=0)
    ci = c.get(d, "compute_instance_id", path, "int", None, lo=0)
    replica = c.get(d, "replica", path, "int", None, lo=0)
    if mig_id is not None:
        if not g.mig:
            c.add(path, f"gpu {gi} is not MIG-enabled; it has no MIG instance {mig_id}")
            return None
        found = [m for m in g.mig if m.gpu_instance_id == mig_id and (ci is None or m.compute_instance_id == ci)]
        if not found:
            c.add(path, f"gpu {gi} has no MIG instance with gpu_instance_id {mig_id}"
                  + (f" and compute_instance_id {ci}" if ci is not None else ""))
            return None
        if len(found) > 1:
            c.add(path, f"gpu {gi} has several compute instances in gpu instance {mig_id}; give compute_instance_id")
            return None
        m = found[0]
        if replica is not None:
            c.add(f"{path}.replica", "MIG instances are not shared in this simulator")
        if resource is not None and resource != m.resource:
            c.add(path, f"MIG instance {m.profile} is advertised as {m.resource}, not {resource}")
        return DeviceRef(gi, mig=m, device_id=m.uuid)
    if ci is not None:
        c.add(f"{path}.compute_instance_id", "only with mig")
    if g.mig:
        c.add(path, f"gpu {gi} is MIG-enabled; hold one of its MIG instances (give mig: <gpu_instance_id>)")
        return None
    if g.sharing is not None:
        if resource is None:
            c.add(path, f"gpu {gi} is shared by the device plugin ({g.sharing.strategy}); a claim cannot hold it")
            return None
        if replica is None:
            c.add(path, f"gpu {gi} is shared ({g.sharing.strategy}); give replica: 0..{g.sharing.replicas - 1}")
            return None
        if replica >= g.sharing.replicas:
            c.add(f"{path}.replica", f"gpu {gi} has {g.sharing.replicas} replicas; no replica {replica}")
            return None
        if resource != g.sharing.resource:
            c.add(path, f"replicas of gpu {gi} are advertised as {g.sharing.resource}, not {resource}")
        return DeviceRef(gi, replica=replica, device_id=f"{g.uuid}::{replica}")
    if replica is not None:
        c.add(f"{path}.replica", f"gpu {gi} is not shared (add sharing: to gpus[{gi}])")
        return None
    if resource is not None and resource != GPU_RESOURCE:
        c.add(path, f"full GPUs are advertised as {GPU_RESOURCE}, not {resource}")
    return DeviceRef(gi, device_id=g.uuid)


def _parse_faults(c: Checker, top: dict, gpus: list[GpuSpec | None]) -> tuple[float | None, list[FaultSpec]]:
    if "faults" not in top or top["faults"] is None:
        return None, []
    f = c.mapping(top["faults"], "faults", _FAULTS_KEYS)
    if f is None:
        return None, []
    period = c.get(f, "repeat_every", "faults", "number", None, lo=1.0)
    out: list[FaultSpec] = []
    for i, raw in enumerate(c.seq(f, "events", "faults")):
        path = f"faults.events[{i}]"
        kind = raw.get("kind") if isinstance(raw, dict) else None
        extra = _FAULT_KEYS.get(kind, ()) if isinstance(kind, str) else ()
        e = c.mapping(raw, path, _FAULT_COMMON + extra, ("kind", "at", "gpu"))
        if e is None:
            continue
        kind = c.get(e, "kind", path, "str", None, choices=FAULT_KINDS)
        at = c.get(e, "at", path, "number", None, lo=0.0)
        gi = c.get(e, "gpu", path, "int", None, lo=0)
        duration = c.get(e, "duration", path, "number", None, lo=0.001)
        if gi is not None and gi >= len(gpus):
            c.add(f"{path}.gpu", f"gpu {gi} does not exist (the scenario has {len(gpus)} GPUs)")
            gi = None
        if kind is None or at is None or gi is None:
            continue
        if kind in _NEEDS_DURATION and duration is None:
            c.add(f"{path}.duration", f"required for {kind}")
            continue
        if period is not None:
            if at >= period:
                c.add(f"{path}.at", f"{at:g} is not before faults.repeat_every ({period:g})")
            elif duration is not None and at + duration > period:
                c.add(f"{path}.duration", f"the fault would run past faults.repeat_every ({period:g})")
        g = gpus[gi]
        links = g.nvlink_links if g is not None else 0
        kw: dict[str, Any] = {}
        if kind == "xid":
            if "code" not in e:
                c.add(f"{path}.code", "required for xid")
            kw["code"] = c.get(e, "code", path, "int", 0, lo=1, hi=999)
            kw["count"] = c.get(e, "count", path, "int", 1, lo=1)
        elif kind == "ecc":
            kw["corrected"] = c.get(e, "corrected", path, "int", 0, lo=0)
            kw["uncorrected"] = c.get(e, "uncorrected", path, "int", 0, lo=0)
            if not kw["corrected"] and not kw["uncorrected"]:
                c.add(path, "ecc needs corrected or uncorrected above 0")
        elif kind == "thermal":
            kw["temperature_rise"] = c.get(e, "temperature_rise", path, "number", 20.0, lo=0.0, hi=80.0)
        elif kind == "power_cap":
            kw["limit_watts"] = c.get(e, "limit_watts", path, "number", None, lo=1.0)
        elif kind == "row_remap":
            kw["corrected"] = c.get(e, "correctable", path, "int", 0, lo=0)
            kw["uncorrected"] = c.get(e, "uncorrectable", path, "int", 1, lo=0)
            kw["pending"] = c.get(e, "pending", path, "bool", True)
            kw["failure"] = c.get(e, "failure", path, "bool", False)
        elif kind == "pcie_replay":
            kw["count"] = c.get(e, "count", path, "int", 1, lo=1)
        elif kind in ("nvlink_errors", "nvlink_down"):
            if links == 0 and g is not None:
                c.add(f"{path}.gpu", f"gpu {gi} has no NVLink links")
            link = c.get(e, "link", path, "int", None if kind == "nvlink_down" else 0, lo=0)
            if link is not None and links and link >= links:
                c.add(f"{path}.link", f"gpu {gi} has {links} NVLink links; no link {link}")
            kw["link"] = link
            if kind == "nvlink_errors":
                kw["error_type"] = c.get(e, "type", path, "str", "crc_flit", choices=NVLINK_ERROR_TYPES)
                kw["count"] = c.get(e, "count", path, "int", 1, lo=1)
        out.append(FaultSpec(kind=kind, gpu=gi, at=at, duration=duration, **kw))
    return period, out


