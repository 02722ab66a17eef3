"""The status page's model: what ``/api/v1/status`` holds, and the page shows, built once per cycle
from the snapshot, the attribution and the agent's status.

XIDs are graded as the alerts grade them, by the tier of their code (``model/xid.py``):
a reboot- or reset-tier XID is critical, an unknown code a warning, an application fault or an
informational code only information; and each mark fades after the alerts' event window
(``--alertmanager.event-window``) from the code's last event, as the alert resolves. The counts
since the agent started stay on the card as plain numbers. Clock events that throttle and the
temperature margin are ``model/health.py``'s, as in the rules.

Each field has one type whatever the backend gives (NVML's integers, the simulated node's floats):
byte counts and counts are ``int``, every other number a ``float`` (the JSON schema,
docs/status.schema.json, says which).
"""

from __future__ import annotations

import math
import socket
from dataclasses import astuple, dataclass, replace
from typing import Mapping

from ... import __version__, catalog
from ...attribution import Attribution, ContainerUsage, Holder
from ...model import health, xid
from ...model.cycle import AgentStatus
from ...model.gpu import Gpu, GpuSnapshot, MigDevice

#: Version of the JSON document; bumped when a field changes meaning or goes away.
SCHEMA_VERSION = 1
MIN_REFRESH_SECONDS = 5
#: How an XID within the event window shows, by tier: the level the alerts give it, and what it means.
XID_PROBLEMS: Mapping[str, tuple[str, str]] = {
    "reboot": ("critical", "the GPU fell off the bus: drain and power-cycle the node"),
    "reset": ("critical", "the GPU needs a reset (drain the node, then nvidia-smi -r)"),
    "other": ("warning", "a code the agent does not know: look it up in NVIDIA's XID catalog"),
    "application": ("info", "an application faulted; the GPU stays usable"),
    "informational": ("info", "recorded for information (a row remap, a high single-bit ECC rate)"),
}
#: Problem levels, worst first; "info" does not change a GPU's health.
LEVELS = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class HolderStatus(Holder):
    """A container holding a device, with what it uses of it (None: not known). ``pod_labels``
    are the ``--kubernetes.pod-labels`` allowlisted ones, as on nvidia_gpu_allocation_info."""

    memory_used_bytes: int | None = None
    utilization_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class MigStatus:
    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    holders: list[HolderStatus]


@dataclass(frozen=True, slots=True)
class Problem:
    level: str  # "critical", "warning" or "info"
    text: str


@dataclass(frozen=True, slots=True)
class GpuStatus:
    index: int
    uuid: str
    model: str
    up: bool
    error: str | None
    health: str  # "ok", "warning" or "critical": the worst of ``problems`` ("ok" if only info)
    problems: list[Problem]  # what a person should look at, worst first
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    temperature_slowdown_celsius: float | None
    power_watts: float | None
    power_limit_watts: float | None
    clock_events_active: list[str]  # reasons of nvidia_gpu_clock_event_active that are 1
    xid_events: dict[str, int]  # XID code -> events since the agent started
    xid_last_event_timestamps: dict[str, float]  # XID code -> unix time of its last event
    ecc_errors: dict[str, int]  # type (corrected, uncorrected) -> volatile count
    holders: list[HolderStatus]  # of the whole GPU (time-sliced: every holder)
    mig_instances: list[MigStatus]

    @property
    def allocated(self) -> bool:
        """Held by a pod: the whole GPU, or one of its MIG instances."""
        return bool(self.holders or any(m.holders for m in self.mig_instances))

    @property
    def near_slowdown(self) -> bool:
        """Within ``TEMPERATURE_MARGIN_CELSIUS`` of its slowdown temperature (a warning)."""
        t, slowdown = self.temperature_celsius, self.temperature_slowdown_celsius
        return t is not None and slowdown is not None and t >= slowdown - health.TEMPERATURE_MARGIN_CELSIUS


@dataclass(frozen=True, slots=True)
class CollectorState:
    title: str  # what a person calls it; not in the JSON
    enabled: bool
    success: bool | None  # None when disabled
    last_success_timestamp: float | None
    duration_seconds: float | None


@dataclass(frozen=True, slots=True)
class AgentState:
    version: str
    simulated: bool
    nvml_up: bool
    collectors: dict[str, CollectorState]
    last_cycle_timestamp: float
    cycle_duration_seconds: float
    gpu_snapshot_age_seconds: float
    gpu_snapshot_stale: bool
    errors_total: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    schema_version: int
    node: str
    generated_at: float  # unix time of the cycle this was built from
    refresh_seconds: int
    agent: AgentState
    gpus: list[GpuStatus]


# -- Building it ------------------------------------------------------------------------------


def _bytes(value: float | None) -> int | None:
    return None if value is None else round(value)


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def _holders(device: str, attribution: Attribution) -> list[HolderStatus]:
    usage: Mapping[tuple[str, str, str], ContainerUsage] = {
        (u.namespace, u.pod, u.container): u for u in attribution.usage.get(device, ())
    }
    result = []
    for h in attribution.holders.get(device, ()):
        u = usage.get((h.namespace, h.pod, h.container))
        result.append(HolderStatus(
            *astuple(h), memory_used_bytes=_bytes(u.memory_used_bytes) if u else None,
            utilization_ratio=_number(u.utilization_ratio) if u else None,
        ))
    return result


def _mig(mig: MigDevice, attribution: Attribution) -> MigStatus:
    return MigStatus(
        mig.uuid, mig.profile, mig.gpu_instance_id, mig.compute_instance_id,
        _bytes(mig.readings.get(catalog.MIG_MEMORY_USED)), _bytes(mig.readings.get(catalog.MIG_MEMORY_TOTAL)),
        _holders(mig.uuid, attribution),
    )


def _problems(gpu: Gpu, g: GpuStatus, now: float, event_window: float) -> list[Problem]:
    """What is wrong with a GPU, worst first."""
    found: dict[str, list[str]] = {level: [] for level in LEVELS}
    critical, warning = found["critical"], found["warning"]
    if not gpu.up:
        critical.append(f"not answering: {gpu.error or 'unknown error'}")
    if uncorrected := g.ecc_errors.get("uncorrected"):
        critical.append(f"{uncorrected} uncorrected ECC errors since the driver loaded")
    if gpu.readings.get(catalog.REMAPPED_ROWS_FAILURE):
        critical.append("a memory row remap failed: the GPU needs service")
    recent: dict[str, list[str]] = {}  # tier -> codes with an event within the window
    for code, at in g.xid_last_event_timestamps.items():
        if now - at <= event_window:
            recent.setdefault(xid.xid_tier(int(code)), []).append(code)
    for tier in xid.XID_TIERS:
        if codes := recent.get(tier):
            level, meaning = XID_PROBLEMS[tier]
            found[level].append(f"XID {', '.join(codes)} in the last {_duration(event_window)}: {meaning}")
    if gpu.readings.get(catalog.REMAPPED_ROWS_PENDING):
        warning.append("a memory row remap waits for a GPU reset")
    if throttled := [r for r in g.clock_events_active if r in health.THROTTLE_REASONS]:
        warning.append("clocks held down: " + ", ".join(throttled))
    if g.near_slowdown:
        warning.append(f"temperature {g.temperature_celsius:.0f} °C is within {health.TEMPERATURE_MARGIN_CELSIUS:.0f} °C "
                       f"of its slowdown threshold ({g.temperature_slowdown_celsius:.0f} °C)")
    return [Problem(level, text) for level in LEVELS for text in found[level]]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _gpu(gpu: Gpu, attribution: Attribution, snapshot: GpuSnapshot, now: float, event_window: float) -> GpuStatus:
    readings = gpu.readings
    mine = sorted(code for uuid, code in snapshot.xids if gpu.uuid and uuid == gpu.uuid)
    status = GpuStatus(
        index=gpu.index, uuid=gpu.uuid, model=gpu.info.get("model", ""), up=gpu.up, error=gpu.error,
        health="ok", problems=[],
        utilization_ratio=_number(readings.get(catalog.UTILIZATION)),
        memory_used_bytes=_bytes(readings.get(catalog.MEMORY_USED)),
        memory_total_bytes=_bytes(readings.get(catalog.MEMORY_TOTAL)),
        temperature_celsius=_number(readings.get(catalog.TEMPERATURE)),
        temperature_slowdown_celsius=_number(readings.get(catalog.TEMPERATURE_THRESHOLD, threshold="slowdown")),
        power_watts=_number(readings.get(catalog.POWER)), power_limit_watts=_number(readings.get(catalog.POWER_LIMIT)),
        clock_events_active=sorted(reason for reason, on in readings.by(catalog.CLOCK_EVENT, "reason").items() if on),
        xid_events={str(code): int(snapshot.xids[gpu.uuid, code]) for code in mine},
        xid_last_event_timestamps={str(code): float(snapshot.xid_last_event[gpu.uuid, code]) for code in mine
                                   if (gpu.uuid, code) in snapshot.xid_last_event},
        ecc_errors={kind: int(count) for kind, count in readings.by(catalog.ECC_ERRORS, "type").items()},
        holders=_holders(gpu.uuid, attribution) if gpu.uuid else [],
        mig_instances=[_mig(m, attribution) for m in gpu.mig_devices],
    )
    problems = _problems(gpu, status, now, event_window)
    level = next((p.level for p in problems if p.level != "info"), "ok")
    return replace(status, health=level, problems=problems)


def _agent(status: AgentStatus) -> AgentState:
    """The agent's state; its collectors are the sources it runs, in its order, then those the
    configuration switches off (``enabled: false``)."""
    collectors = {name: CollectorState(c.title, True, c.success, _number(c.last_success_timestamp),
                                       _number(c.duration_seconds))
                  for name, c in status.collectors.items()}
    collectors |= {name: CollectorState(title, False, None, None, None) for name, title in status.switched_off.items()}
    return AgentState(
        version=__version__, simulated=status.simulated, nvml_up=status.nvml_up, collectors=collectors,
        last_cycle_timestamp=float(status.cycle_timestamp),
        cycle_duration_seconds=float(status.cycle_duration_seconds),
        gpu_snapshot_age_seconds=float(status.gpu_snapshot_age_seconds), gpu_snapshot_stale=status.gpu_snapshot_stale,
        errors_total=int(sum(status.errors.values())),
    )


def build(snapshot: GpuSnapshot, attribution: Attribution, status: AgentStatus, *,
          node: str = "", interval_seconds: float = 10.0,
          event_window: float = health.EVENT_WINDOW_SECONDS) -> NodeStatus:
    return NodeStatus(
        schema_version=SCHEMA_VERSION,
        node=node or socket.gethostname(),
        generated_at=float(status.cycle_timestamp),
        refresh_seconds=max(MIN_REFRESH_SECONDS, math.ceil(interval_seconds)),
        agent=_agent(status),
        gpus=[_gpu(g, attribution, snapshot, status.cycle_timestamp, event_window) for g in snapshot.gpus],
    )
