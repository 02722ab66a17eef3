"""From a scenario file to a ``Scenario``: read it, check it, derive what is not given.

Validation happens once, here, and reports every problem at once: ``ScenarioError.problems``
lists each one prefixed with its path (``gpus[2].mig[0].profile: expected a MIG profile ...``),
in the order of the file. The shape (keys, types, ranges; unknown keys are problems too, so a
typo never silently falls back to a default) is ``scenario.schema.json`` (``schema.py``); what a
schema cannot say is checked here, on the parts that have the right shape: cross-references (a
pod's device exists and is advertised under its resource), uniqueness, and sums (MIG instances
fit their GPU, processes their device).

Everything not given is derived deterministically from the node name, ``seed`` and position,
so the same file always yields the same UUIDs, pids and container ids.
"""

from __future__ import annotations

import hashlib
import uuid as _uuid
from importlib import resources
from typing import Any

import yaml

from ...config import yamlfile
from ...model.vocabulary import BYTES_PER_KIB, GPU_RESOURCE, NVIDIA_DRA_DRIVER, SHARED_GPU_RESOURCE
from . import schema
from .scenario import (
    ContainerSpec, DeviceRef, FaultSpec, GpuSpec, LoadSpec, MiB, MigSpec, NodeSpec, PodSpec, ProcessSpec, Scenario,
    SharingSpec, model_defaults,
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
        data = yaml.load(text, Loader=schema.YamlLoader)  # noqa: S506 - a SafeLoader that keeps number text
    except yaml.YAMLError as e:
        raise ScenarioError([yamlfile.problem(e)], source) from None
    return parse_scenario(data, source)


# -- Deterministic derivations ---------------------------------------------------------------------

_PCI_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
               "KiB": BYTES_PER_KIB, "MiB": BYTES_PER_KIB ** 2, "GiB": BYTES_PER_KIB ** 3, "TiB": BYTES_PER_KIB ** 4}


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=32).digest()


def _derived_uuid(*parts: object) -> str:
    return str(_uuid.UUID(bytes=_digest(*parts)[:16], version=4))


def _derived_int(lo: int, hi: int, *parts: object) -> int:
    return lo + int.from_bytes(_digest(*parts)[:8], "big") % (hi - lo)


def _bytes(size: int | str) -> int:
    """A size the schema took (an integer, or a string like ``40GiB``) in bytes."""
    if isinstance(size, int):
        return size
    number, unit = schema.pattern("size", "anyOf", 1).match(size).groups()  # type: ignore[union-attr]
    return int(float(number) * _SIZE_UNITS[unit])


# -- Checking and building ----------------------------------------------------------------------------


class _Problems:
    """The problems found so far, by path; and which values have the schema's shape."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.found = schema.problems(data)
        self._broken = {path[:n] for path, _ in self.found for n in range(len(path) + 1)}

    def add(self, path: schema.Path, message: str) -> None:
        self.found.append((path, message))

    def items(self, container: Any, key: str, path: schema.Path = ()) -> list[tuple[schema.Path, Any]]:
        """The entries of the list ``container[key]`` that broke no rule of the schema, with their paths."""
        values = container.get(key) if isinstance(container, dict) else None
        return [(path + (key, i), v) for i, v in enumerate(values) if path + (key, i) not in self._broken] \
            if isinstance(values, list) else []

    def ok(self, *paths: schema.Path) -> bool:
        """Whether the values at ``paths`` (and everything in them) broke no rule of the schema."""
        return not any(path in self._broken for path in paths)

    def raise_any(self, source: str) -> None:
        """Raise every problem, in the order of the file, if there is any."""
        if self.found:
            self.found.sort(key=lambda problem: _position(self.data, problem[0]))
            raise ScenarioError([f"{_dotted(path)}: {message}" for path, message in self.found], source)


def _position(data: Any, path: schema.Path) -> list[int]:
    """Where ``path`` is in the file: the position of each key in its mapping (a missing one last)."""
    out = []
    for key in path:
        keys = list(data) if isinstance(data, dict) else []
        out.append(key if isinstance(data, list) else keys.index(key) if key in keys else len(keys))
        data = data[key] if isinstance(data, list) or key in keys else None
    return out


def _load(p: _Problems, raw: Any, path: schema.Path) -> LoadSpec:
    """A ``load`` (a GPU's or a MIG instance's): the shorthand or the mapping, with its defaults."""
    if raw == "constant":  # the shorthand: no level to be constant at
        p.add(path, "pattern constant needs a level: write load: {pattern: constant, level: <0..1>}")
    load = schema.with_defaults({"pattern": raw} if isinstance(raw, str) else raw, "load")
    if load["min"] > load["max"]:
        p.add(path, f"min {load['min']:g} is above max {load['max']:g}")
    return LoadSpec(**{"noise": 0.0 if load["pattern"] == "idle" else 0.02, **load})


def _dotted(path: schema.Path) -> str:
    return "".join(f"[{k}]" if type(k) is int else f".{k}" for k in path).lstrip(".") or "(document)"


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a scenario already read from YAML; raise ``ScenarioError`` listing every problem."""
    p = _Problems(data)
    if not isinstance(data, dict):
        p.raise_any(source)
    top = schema.with_defaults(schema.plain(data), "")
    node = top.get("node") if p.ok(("node",)) else None
    name = node["name"] if node else ""
    seed = top["seed"] if p.ok(("seed",)) else 0
    gpus: list[GpuSpec | None] = [None] * len(top["gpus"]) if isinstance(top.get("gpus"), list) else []
    uuids: dict[str, schema.Path] = {}
    for path, raw in p.items(top, "gpus"):
        g = gpus[path[1]] = _gpu(p, schema.with_defaults(raw, "gpu"), path, name, seed)
        for uuid_path, uuid in [(path + ("uuid",), g.uuid), *((path + ("mig", j, "uuid"), m.uuid)
                                                               for j, m in enumerate(g.mig))]:
            if uuid in uuids:
                p.add(uuid_path, f"{uuid} already used by {_dotted(uuids[uuid][:2])}")
            uuids.setdefault(uuid, uuid_path)
    pods = _pods(p, top, gpus, name, seed)
    faults = top["faults"] if isinstance(top.get("faults"), dict) else {}
    repeat_every = faults.get("repeat_every") if p.ok(("faults", "repeat_every")) else None
    events = [_fault(p, schema.with_defaults(e, e["kind"]), path, gpus, repeat_every)
              for path, e in p.items(faults, "events", ("faults",))]
    p.raise_any(source)
    return Scenario(NodeSpec(**schema.with_defaults(node, "node")), tuple(gpus), tuple(pods),  # type: ignore[arg-type]
                    tuple(e for e in events if e is not None), repeat_every, seed, source)


def _gpu(p: _Problems, g: dict, path: schema.Path, node: str, seed: int) -> GpuSpec:
    i = path[-1]
    d = model_defaults(g["model"])
    uuid = "GPU-" + (g["uuid"].removeprefix("GPU-") if "uuid" in g else _derived_uuid(seed, node, "gpu", i))
    memory = _bytes(g.get("memory", d.memory))
    mig: list[MigSpec] = []
    seen: dict[tuple[int, int], int] = {}
    instances: dict[int, tuple[int, int]] = {}  # gpu_instance_id -> (slices, memory)
    instance_load: dict[int, tuple[LoadSpec, int]] = {}  # gpu_instance_id -> (its load, where given)
    profile = schema.pattern("mig", "properties", "profile")
    for j, m in enumerate(schema.with_defaults(m, "mig") for m in g.get("mig") or ()):
        slices, gigabytes, _ = profile.match(m["profile"]).groups()  # type: ignore[union-attr]
        gi, ci = m["gpu_instance_id"], m["compute_instance_id"]
        mem = _bytes(m.get("memory", int(gigabytes) * 1000 * MiB))
        if (gi, ci) in seen:
            p.add(path + ("mig", j), f"gpu_instance_id {gi} / compute_instance_id {ci} already used by "
                                     f"{_dotted(path)}.mig[{seen[gi, ci]}]")
            continue
        seen[gi, ci] = j
        instances.setdefault(gi, (int(slices), mem))
        mload = _load(p, m["load"], path + ("mig", j, "load")) if "load" in m else None
        if mload is not None:  # compute instances share their GPU instance's SMs: one load
            given = instance_load.setdefault(gi, (mload, j))
            if given[0] != mload:
                p.add(path + ("mig", j, "load"), f"differs from the load of gpu_instance_id {gi} at "
                      f"{_dotted(path)}.mig[{given[1]}]: compute instances share their GPU instance's SMs")
        muuid = m["uuid"].removeprefix("MIG-") if "uuid" in m else _derived_uuid(seed, uuid, "mig", gi, ci)
        mig.append(MigSpec(m["profile"], gi, ci, mem, "MIG-" + muuid, mload))
    if (slices := sum(s for s, _ in instances.values())) > 7:
        p.add(path + ("mig",), f"instances use {slices} compute slices; a GPU has 7")
    if (total := sum(m for _, m in instances.values())) > memory:
        p.add(path + ("mig",), f"instances use {total} bytes of memory; the GPU has {memory}")
    sharing = SharingSpec(**schema.with_defaults(g["sharing"], "sharing")) if "sharing" in g else None
    if sharing and mig:
        p.add(path + ("sharing",), "a MIG-enabled GPU cannot also be shared in this simulator")
    load = _load(p, g["load"], path + ("load",))
    bus = _PCI_BUSES[i] if i < len(_PCI_BUSES) else (0x100 + i) % 0xFF
    return GpuSpec(
        index=i, model=g["model"], uuid=uuid, pci_bus_id=f"00000000:{bus:02X}:00.0",
        serial=g.get("serial") or str(_derived_int(1_320_000_000_000, 1_659_999_999_999, seed, uuid)),
        vbios_version=g.get("vbios_version", d.vbios_version), memory=memory,
        power_limit=float(g.get("power_limit", d.power_limit)), nvlink_links=g.get("nvlink_links", d.nvlink_links),
        compute_mode=g["compute_mode"], persistence_mode=g["persistence_mode"],
        load=load,
        mig=tuple(mig), sharing=sharing, defaults=d,
    )


def _pods(p: _Problems, top: dict, gpus: list[GpuSpec | None], node: str, seed: int) -> list[PodSpec]:
    pods: list[PodSpec] = []
    names: dict[tuple[str, str], schema.Path] = {}
    uids: dict[str, schema.Path] = {}
    holders: dict[str, tuple[schema.Path, tuple[str, str] | None]] = {}  # device id -> (path, claim) of 1st holder
    claims: dict[tuple[str, str], tuple[tuple[str, ...], schema.Path]] = {}  # claim -> (device ids, path 1st seen)
    pids: dict[int, schema.Path] = {}
    # per GPU / MIG instance: memory and utilisation shares of processes, to check the sums
    mem_use: dict[str, int] = {}
    util_use: dict[int, float] = {}
    for path, pod in p.items(top, "pods"):
        if not p.ok(*(path + (key,) for key in ("namespace", "name", "uid"))):
            continue  # its containers are checked once it has a name
        ns, name = pod["namespace"], pod["name"]
        if (ns, name) in names:
            p.add(path, f"pod {ns}/{name} already defined at {_dotted(names[ns, name])}")
        names.setdefault((ns, name), path)
        uid = pod.get("uid") or _derived_uuid(seed, node, "pod", ns, name)
        if uid in uids:
            p.add(path + ("uid",), f"{uid} already used by {_dotted(uids[uid])}")
        uids.setdefault(uid, path)
        containers: list[ContainerSpec] = []
        for cp, c in p.items(pod, "containers", path):
            cname, claim = c["name"], c.get("claim")
            if any(cname == other.name for other in containers):
                p.add(cp + ("name",), f"container {cname!r} already defined in this pod")
            if claim and "resource" in c:
                p.add(cp + ("resource",),
                      f"devices of a claim come from the DRA driver {NVIDIA_DRA_DRIVER}; no resource")
            resource = NVIDIA_DRA_DRIVER if claim else c["resource"]
            claim_key = (ns, claim) if claim else None
            devices: list[DeviceRef | None] = []
            for dp, raw in p.items(c, "devices", cp):
                ref = _device(p, {"gpu": raw} if isinstance(raw, int) else raw, dp, gpus, None if claim else resource)
                devices.append(ref)
                if ref is not None:
                    held = holders.setdefault(ref.device_id, (dp, claim_key))
                    if held[0] != dp and (claim_key is None or held[1] != claim_key):
                        p.add(dp, f"device {ref.device_id} is already held by {_dotted(held[0])}")
            if claim_key is not None:
                ids = tuple(sorted(d.device_id for d in devices if d is not None))
                if (seen := claims.setdefault(claim_key, (ids, cp)))[0] != ids:
                    p.add(cp + ("devices",), f"claim {claim!r} holds other devices at {_dotted(seen[1])}")
            processes: list[ProcessSpec] = []
            for pp, proc in p.items(c, "processes", cp):
                proc = schema.with_defaults(proc, "process")
                dev, mem, share, pid = proc["device"], _bytes(proc["memory"]), proc["utilization"], proc.get("pid")
                if pid is None:
                    pid = _derived_int(10_000, 4_000_000, seed, uid, cname, pp[-1])
                    while pid in pids:
                        pid += 1
                elif pid in pids:
                    p.add(pp + ("pid",), f"pid {pid} already used by {_dotted(pids[pid])}")
                pids.setdefault(pid, pp)
                if dev >= len(devices):
                    p.add(pp + ("device",), f"the container holds {len(devices)} device(s); no device {dev}")
                elif (ref := devices[dev]) is not None:
                    key = ref.mig.uuid if ref.mig else gpus[ref.gpu].uuid  # type: ignore[union-attr]
                    mem_use[key] = mem_use.get(key, 0) + mem
                    if ref.mig is None:
                        util_use[ref.gpu] = util_use.get(ref.gpu, 0.0) + share
                    processes.append(ProcessSpec(pid, mem, float(share), dev))
            cid = c.get("id") or _digest(seed, uid, "container", cname).hex()
            containers.append(ContainerSpec(cname, cid, resource, tuple(d for d in devices if d is not None),
                                            tuple(processes), claim))
        if p.ok(path):
            workload = pod.get("workload", {"kind": "Pod", "name": name})
            pods.append(PodSpec(ns, name, uid, workload["kind"], workload["name"], pod.get("labels", {}),
                                tuple(containers)))

    for g in gpus:
        if g is None:
            continue
        if util_use.get(g.index, 0.0) > 1.0 + 1e-9:
            p.add(("gpus", g.index), f"processes' utilization shares add up to {util_use[g.index]:g}, above 1")
        if mem_use.get(g.uuid, 0) + sum(mem_use.get(m.uuid, 0) for m in g.mig) > g.memory:
            p.add(("gpus", g.index), "processes use more memory than the GPU has")
        for j, m in enumerate(g.mig):
            if mem_use.get(m.uuid, 0) > m.memory:
                p.add(("gpus", g.index, "mig", j), "processes use more memory than the MIG instance has")
    return pods


def _device(p: _Problems, d: dict, path: schema.Path, gpus: list[GpuSpec | None], resource: str | None
            ) -> DeviceRef | None:
    """A device held under ``resource`` (a device plugin's), or through a DRA claim (None)."""
    gi, mig_id, ci, replica = d["gpu"], d.get("mig"), d.get("compute_instance_id"), d.get("replica")
    if gi >= len(gpus):
        p.add(path, f"gpu {gi} does not exist (the scenario has {len(gpus)} GPUs)")
        return None
    if (g := gpus[gi]) is None:
        return None
    if mig_id is not None:
        if not g.mig:
            p.add(path, f"gpu {gi} is not MIG-enabled; it has no MIG instance {mig_id}")
            return None
        found = [m for m in g.mig if m.gpu_instance_id == mig_id and (ci is None or m.compute_instance_id == ci)]
        if not found:
            p.add(path, f"gpu {gi} has no MIG instance with gpu_instance_id {mig_id}"
                  + (f" and compute_instance_id {ci}" if ci is not None else ""))
            return None
        if len(found) > 1:
            p.add(path, f"gpu {gi} has several compute instances in gpu instance {mig_id}; give compute_instance_id")
            return None
        m = found[0]
        if replica is not None:
            p.add(path + ("replica",), "MIG instances are not shared in this simulator")
        if resource is not None and resource != m.resource:
            p.add(path, f"MIG instance {m.profile} is advertised as {m.resource}, not {resource}")
        return DeviceRef(gi, mig=m, device_id=m.uuid)
    if ci is not None:
        p.add(path + ("compute_instance_id",), "only with mig")
    if g.mig:
        p.add(path, f"gpu {gi} is MIG-enabled; hold one of its MIG instances (give mig: <gpu_instance_id>)")
        return None
    if g.sharing is not None:
        if resource is None:
            p.add(path, f"gpu {gi} is shared by the device plugin ({g.sharing.strategy}); a claim cannot hold it")
            return None
        if replica is None:
            p.add(path, f"gpu {gi} is shared ({g.sharing.strategy}); give replica: 0..{g.sharing.replicas - 1}")
            return None
        if replica >= g.sharing.replicas:
            p.add(path + ("replica",), f"gpu {gi} has {g.sharing.replicas} replicas; no replica {replica}")
            return None
        if resource != g.sharing.resource:
            p.add(path, f"replicas of gpu {gi} are advertised as {g.sharing.resource}, not {resource}")
        return DeviceRef(gi, replica=replica, device_id=f"{g.uuid}::{replica}")
    if replica is not None:
        p.add(path + ("replica",), f"gpu {gi} is not shared (add sharing: to gpus[{gi}])")
        return None
    if resource is not None and resource != GPU_RESOURCE:
        p.add(path, f"full GPUs are advertised as {GPU_RESOURCE}, not {resource}")
    return DeviceRef(gi, device_id=g.uuid)


_FAULT_FIELDS = {"correctable": "corrected", "uncorrectable": "uncorrected", "type": "error_type"}  # file -> FaultSpec


def _fault(p: _Problems, e: dict, path: schema.Path, gpus: list[GpuSpec | None], period: float | None
           ) -> FaultSpec | None:
    kind, at, gi, duration = e.pop("kind"), e.pop("at"), e.pop("gpu"), e.pop("duration", None)
    if gi >= len(gpus):
        p.add(path + ("gpu",), f"gpu {gi} does not exist (the scenario has {len(gpus)} GPUs)")
        return None
    if period is not None and at >= period:
        p.add(path + ("at",), f"{at:g} is not before faults.repeat_every ({period:g})")
    elif period is not None and duration is not None and at + duration > period:
        p.add(path + ("duration",), f"the fault would run past faults.repeat_every ({period:g})")
    if kind == "ecc" and not e["corrected"] and not e["uncorrected"]:
        p.add(path, "ecc needs corrected or uncorrected above 0")
    links = gpus[gi].nvlink_links if gpus[gi] is not None else None  # type: ignore[union-attr]
    if kind.startswith("nvlink") and links == 0:
        p.add(path + ("gpu",), f"gpu {gi} has no NVLink links")
    elif links and (link := e.get("link")) is not None and link >= links:
        p.add(path + ("link",), f"gpu {gi} has {links} NVLink links; no link {e['link']}")
    return FaultSpec(kind=kind, gpu=gi, at=at, duration=duration, **{_FAULT_FIELDS.get(k, k): v for k, v in e.items()})
