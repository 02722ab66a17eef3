"""The node's status page (``/``) and its JSON form (``/api/v1/status``).

What a person on the node (``kubectl port-forward``) needs at a glance, without a Prometheus:
every GPU and MIG instance with its model, health, utilisation, memory, temperature and who
holds it, and the agent's own state. Built once per collection cycle from the same snapshot,
attribution and agent status the metric renderer gets, and served as bytes: a request does no
work and never waits on NVML, the kubelet or the API server.

XIDs are graded as the alerts grade them, by the tier of their code (``model/xid.py``):
a reboot- or reset-tier XID is critical, an unknown code a warning, an application fault or an
informational code only information; and each mark fades after the alerts' event window
(``--alertmanager.event-window``) from the code's last event, as the alert resolves. The counts
since the agent started stay on the card as plain numbers.

The page is plain server-rendered HTML with inline CSS (no JavaScript, no external assets, a
refresh meta tag). Every value that comes from a pod or a GPU (names, labels, errors) reaches the
HTML only through ``html()``, which escapes it: a pod named ``<script>`` is shown as text.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import asdict, astuple, dataclass, replace
from datetime import datetime, timezone
from html import escape
from typing import Iterable, Mapping

from ... import __version__, catalog
from ...attribution import Attribution, ContainerUsage, Holder
from ...model import health, xid
from ...model.cycle import AgentStatus
from ...model.gpu import Gpu, GpuSnapshot, MigDevice

#: Version of the JSON document; bumped when a field changes meaning or goes away.
SCHEMA_VERSION = 1
#: The collectors schema version 1 promises in ``agent.collectors``: one the agent does not run is
#: there with ``enabled: false``. The others it runs (resourceslices) are there too, in its order.
SCHEMA_V1_COLLECTORS = ("nvml", "kubelet", "kubernetes", "procfs")
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


#: Served at ``/`` until the first cycle has finished (with status 503).
STARTING_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="2">
<title>kube-gpu-exporter</title></head><body><h1>kube-gpu-exporter</h1>
<p>Starting: no collection has finished yet.</p>
<p><a href="metrics">/metrics</a> <a href="healthz">/healthz</a> <a href="readyz">/readyz</a>
<a href="api/v1/status">/api/v1/status</a></p></body></html>
"""


# -- The model (what the JSON holds) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HolderStatus(Holder):
    """A container holding a device, with what it uses of it (None: not known). ``pod_labels``
    are the ``--kubernetes.pod-labels`` allowlisted ones, as on nvidia_gpu_allocation_info."""

    memory_used_bytes: float | None = None
    utilization_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class MigStatus:
    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_used_bytes: float | None
    memory_total_bytes: float | None
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
    memory_used_bytes: float | None
    memory_total_bytes: float | None
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


@dataclass(frozen=True, slots=True)
class StatusPage:
    """The page and its JSON, rendered once per cycle."""

    html: bytes
    json: bytes
    status: NodeStatus


# -- Building the model ----------------------------------------------------------------------


def _holders(device: str, attribution: Attribution) -> list[HolderStatus]:
    usage: Mapping[tuple[str, str, str], ContainerUsage] = {
        (u.namespace, u.pod, u.container): u for u in attribution.usage.get(device, ())
    }
    result = []
    for h in attribution.holders.get(device, ()):
        u = usage.get((h.namespace, h.pod, h.container))
        result.append(HolderStatus(
            *astuple(h), memory_used_bytes=u.memory_used_bytes if u else None,
            utilization_ratio=u.utilization_ratio if u else None,
        ))
    return result


def _mig(mig: MigDevice, attribution: Attribution) -> MigStatus:
    return MigStatus(
        mig.uuid, mig.profile, mig.gpu_instance_id, mig.compute_instance_id,
        mig.readings.get(catalog.MIG_MEMORY_USED), mig.readings.get(catalog.MIG_MEMORY_TOTAL),
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
    if _near_slowdown(g):
        warning.append(f"temperature {g.temperature_celsius:.0f} °C is within {health.TEMPERATURE_MARGIN_CELSIUS:.0f} °C "
                       f"of its slowdown threshold ({g.temperature_slowdown_celsius:.0f} °C)")
    return [Problem(level, text) for level in LEVELS for text in found[level]]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _near_slowdown(g: GpuStatus) -> bool:
    t, slowdown = g.temperature_celsius, g.temperature_slowdown_celsius
    return t is not None and slowdown is not None and t >= slowdown - health.TEMPERATURE_MARGIN_CELSIUS


def _gpu(gpu: Gpu, attribution: Attribution, snapshot: GpuSnapshot, now: float, event_window: float) -> GpuStatus:
    readings = gpu.readings
    mine = sorted(code for uuid, code in snapshot.xids if gpu.uuid and uuid == gpu.uuid)
    status = GpuStatus(
        index=gpu.index, uuid=gpu.uuid, model=gpu.info.get("model", ""), up=gpu.up, error=gpu.error,
        health="ok", problems=[],
        utilization_ratio=readings.get(catalog.UTILIZATION),
        memory_used_bytes=readings.get(catalog.MEMORY_USED),
        memory_total_bytes=readings.get(catalog.MEMORY_TOTAL),
        temperature_celsius=readings.get(catalog.TEMPERATURE),
        temperature_slowdown_celsius=readings.get(catalog.TEMPERATURE_THRESHOLD, threshold="slowdown"),
        power_watts=readings.get(catalog.POWER), power_limit_watts=readings.get(catalog.POWER_LIMIT),
        clock_events_active=sorted(reason for reason, on in readings.by(catalog.CLOCK_EVENT, "reason").items() if on),
        xid_events={str(code): snapshot.xids[gpu.uuid, code] for code in mine},
        xid_last_event_timestamps={str(code): snapshot.xid_last_event[gpu.uuid, code] for code in mine
                                   if (gpu.uuid, code) in snapshot.xid_last_event},
        ecc_errors={kind: int(count) for kind, count in readings.by(catalog.ECC_ERRORS, "type").items()},
        holders=_holders(gpu.uuid, attribution) if gpu.uuid else [],
        mig_instances=[_mig(m, attribution) for m in gpu.mig_devices],
    )
    problems = _problems(gpu, status, now, event_window)
    level = next((p.level for p in problems if p.level != "info"), "ok")
    return replace(status, health=level, problems=problems)


def _agent(status: AgentStatus) -> AgentState:
    """The agent's state; its collectors are the sources it runs, in its order."""
    collectors = {name: CollectorState(c.title, True, c.success, c.last_success_timestamp, c.duration_seconds)
                  for name, c in status.collectors.items()}
    for name in SCHEMA_V1_COLLECTORS:
        collectors.setdefault(name, CollectorState(name, False, None, None, None))
    return AgentState(
        version=__version__, simulated=status.simulated, nvml_up=status.nvml_up, collectors=collectors,
        last_cycle_timestamp=status.cycle_timestamp, cycle_duration_seconds=status.cycle_duration_seconds,
        gpu_snapshot_age_seconds=status.gpu_snapshot_age_seconds, gpu_snapshot_stale=status.gpu_snapshot_stale,
        errors_total=sum(status.errors.values()),
    )


def build(snapshot: GpuSnapshot, attribution: Attribution, status: AgentStatus, *,
          node: str = "", interval_seconds: float = 10.0,
          event_window: float = health.EVENT_WINDOW_SECONDS) -> NodeStatus:
    return NodeStatus(
        schema_version=SCHEMA_VERSION,
        node=node or socket.gethostname(),
        generated_at=status.cycle_timestamp,
        refresh_seconds=max(MIN_REFRESH_SECONDS, math.ceil(interval_seconds)),
        agent=_agent(status),
        gpus=[_gpu(g, attribution, snapshot, status.cycle_timestamp, event_window) for g in snapshot.gpus],
    )


def render(snapshot: GpuSnapshot, attribution: Attribution, status: AgentStatus, *,
           node: str = "", interval_seconds: float = 10.0,
           event_window: float = health.EVENT_WINDOW_SECONDS) -> StatusPage:
    """The status page and its JSON for one cycle (call it where the exposition is rendered)."""
    model = build(snapshot, attribution, status, node=node, interval_seconds=interval_seconds,
                  event_window=event_window)
    document = asdict(model, dict_factory=_json_object)
    return StatusPage(to_html(model).encode(), json.dumps(document, indent=1).encode() + b"\n", model)


def _json_object(items: list[tuple[str, object]]) -> dict[str, object]:
    """A dataclass as JSON; pod labels (name, value) pairs as an object; a collector's title left
    out (the page's words, not the document's)."""
    return {k: dict(v) if k == "pod_labels" else v for k, v in items if k != "title"}  # type: ignore[call-overload]


# -- HTML ------------------------------------------------------------------------------------


class Html(str):
    """Markup that is safe to insert as is. Made only by ``html()`` (a constant template whose
    values are escaped) and ``join()`` (of such markup)."""


def html(template: str, **values: object) -> Html:
    """``template.format(**values)`` with every value escaped, unless it is already ``Html``."""
    return Html(template.format(**{
        k: v if isinstance(v, Html) else escape("" if v is None else str(v), quote=True) for k, v in values.items()
    }))


def join(parts: Iterable[Html], sep: str = "") -> Html:
    return Html(sep.join(parts))


GIB = 1 << 30

_CSS = Html("""
:root{color-scheme:light dark;--ok:#1a7f37;--warn:#9a6700;--crit:#cf222e;--info:#0969da;--mute:#6e7781;--line:#d0d7de}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:12px;max-width:1200px}
h1{font-size:1.3rem;margin:0 0 4px}h2{font-size:1.1rem;margin:18px 0 8px}h3{font-size:1rem;margin:0}
.sub,.mute{color:var(--mute)}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
nav a{margin-right:12px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:.8rem;font-weight:600;color:#fff;background:var(--mute)}
.badge.ok{background:var(--ok)}.badge.warning{background:var(--warn)}.badge.critical{background:var(--crit)}
.badge.sim{background:#8250df}
.grid{display:grid;gap:12px;grid-template-columns:repeat(auto-fill,minmax(min(100%,34rem),1fr))}
.card{border:1px solid var(--line);border-radius:8px;padding:12px;min-width:0}
.card.h-warning{border-left:5px solid var(--warn)}.card.h-critical{border-left:5px solid var(--crit)}
.head{display:flex;flex-wrap:wrap;gap:6px;align-items:center;justify-content:space-between}
.gauges{display:grid;grid-template-columns:repeat(auto-fit,minmax(7.5rem,1fr));gap:8px;margin:10px 0}
.gauge b{font-size:.9rem}
.gauge .bar{height:8px;border-radius:4px;background:var(--line);overflow:hidden}
.gauge .bar span{display:block;height:100%;background:#0969da}
.gauge .bar span.hot{background:var(--crit)}
ul.problems{margin:6px 0;padding-left:20px}li.critical{color:var(--crit)}li.warning{color:var(--warn)}
li.info{color:var(--info)}
h4{font-size:.9rem;margin:10px 0 4px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{font-weight:600;color:var(--mute)}
td.num,th.num{text-align:right;white-space:nowrap}
td.num,table.mig td:first-child{white-space:nowrap;overflow-wrap:normal}
""")


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.0f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.1f} GiB"


def _time(unix: float | None) -> str:
    if not unix:
        return "never"
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _gauge(label: str, text: str, fraction: float | None, hot: bool = False) -> Html:
    width = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    return html(
        '<div class="gauge"><div class="mute">{label}</div><div><b>{text}</b></div>'
        '<div class="bar"><span class="{cls}" style="width:{width}%"></span></div></div>',
        label=label, text=text, cls="hot" if hot else "", width=f"{width:.0f}",
    )


def _holder_rows(holders: list[HolderStatus]) -> Html:
    return join(html(
        '<tr><td>{who}</td><td class="num">{memory}</td><td class="num">{util}</td></tr>',
        who=_holder_html(h), memory=_gib(h.memory_used_bytes), util=_percent(h.utilization_ratio),
    ) for h in holders)


def _holder_html(h: HolderStatus) -> Html:
    labels = " ".join(f"{name.removeprefix('label_')}={value}" for name, value in h.pod_labels if value)
    return html(
        '{namespace}/<b>{pod}</b><br><span class="mute">{container} · {kind} {workload} · {mode}</span>{labels}',
        namespace=h.namespace, pod=h.pod, container=h.container, kind=h.workload_kind or "workload",
        workload=h.workload or "unknown", mode="shared" if h.shared else "exclusive",
        labels=html('<br><span class="mono mute">{labels}</span>', labels=labels) if labels else Html(""),
    )


_HOLDER_HEAD = Html('<tr><th>namespace/pod · container · workload</th><th class="num">memory</th>'
                    '<th class="num">util</th></tr>')


def _holders_html(holders: list[HolderStatus]) -> Html:
    if not holders:
        return Html('<p class="mute">not allocated to any pod</p>')
    return html('<div class="scroll"><table class="holders">{head}{rows}</table></div>',
                head=_HOLDER_HEAD, rows=_holder_rows(holders))


def _mig_html(migs: list[MigStatus]) -> Html:
    if not migs:
        return Html("")
    rows = join(html(
        '<tr><td><b>{profile}</b><br><span class="mute">GI {gi} / CI {ci}</span></td><td>{holders}</td>'
        '<td class="num">{used}<br><span class="mute">of {total}</span></td></tr>',
        profile=m.profile, gi=m.gpu_instance_id, ci=m.compute_instance_id,
        used=_gib(m.memory_used_bytes), total=_gib(m.memory_total_bytes),
        holders=join((_holder_html(h) for h in m.holders), "<br>") or Html('<span class="mute">free</span>'),
    ) for m in migs)
    return html('<h4>MIG instances</h4><div class="scroll"><table class="mig"><tr><th>instance</th>'
                '<th>held by</th><th class="num">memory</th></tr>{rows}</table></div>', rows=rows)


def _gpu_html(g: GpuStatus) -> Html:
    problems = join(html('<li class="{level}">{text}</li>', level=p.level, text=p.text) for p in g.problems)
    temperature = "n/a" if g.temperature_celsius is None else f"{g.temperature_celsius:.0f} °C"
    if g.temperature_slowdown_celsius is not None:
        temperature += f" (slowdown {g.temperature_slowdown_celsius:.0f})"
    power = "n/a" if g.power_watts is None else f"{g.power_watts:.0f} W"
    if g.power_limit_watts:
        power += f" / {g.power_limit_watts:.0f} W"
    memory = f"{_gib(g.memory_used_bytes)} / {_gib(g.memory_total_bytes)}"
    gauges = join([
        _gauge("utilisation", _percent(g.utilization_ratio) if not g.mig_instances else "n/a (MIG)",
               g.utilization_ratio),
        _gauge("memory", memory, _ratio(g.memory_used_bytes, g.memory_total_bytes)),
        _gauge("temperature", temperature, _ratio(g.temperature_celsius, g.temperature_slowdown_celsius),
               hot=_near_slowdown(g)),
        _gauge("power", power, _ratio(g.power_watts, g.power_limit_watts)),
    ])
    events = ", ".join(g.clock_events_active) or "none"
    ecc = ", ".join(f"{k} {v}" for k, v in sorted(g.ecc_errors.items())) or "n/a"
    xids = ", ".join(f"{code} x{count}" for code, count in g.xid_events.items()) or "none"
    return html(
        '<section class="card h-{health}" id="gpu-{index}" data-uuid="{uuid}"><div class="head">'
        '<h3>GPU {index} · {model}</h3><span class="badge health {health}">{health_text}</span></div>'
        '<div class="mono mute">{uuid}</div>'
        '{problems}<div class="gauges">{gauges}</div>'
        '<div class="mute">clock events: {events} · ECC (volatile): {ecc} · XIDs: '
        '<span class="xids" title="events since the agent started">{xids}</span></div>'
        '{holders}{mig}</section>',
        health=g.health, index=g.index, uuid=g.uuid or "uuid unknown", model=g.model or "unknown model",
        health_text=g.health if g.up else "down",
        problems=html('<ul class="problems">{items}</ul>', items=problems) if g.problems else Html(""),
        gauges=gauges if g.up else Html('<p class="mute">no readings while the GPU is down</p>'),
        events=events, ecc=ecc, xids=xids,
        holders=html("<h4>Held by</h4>{t}", t=_holders_html(g.holders)) if g.holders or not g.mig_instances
        else Html(""),
        mig=_mig_html(g.mig_instances),
    )


def _ratio(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else part / whole


def _agent_html(a: AgentState) -> Html:
    rows = []
    for c in a.collectors.values():
        if not c.enabled:
            state, level, detail = "disabled", "", ""
        else:
            state, level = ("ok", "ok") if c.success else ("failing", "critical")
            detail = f"last success {_time(c.last_success_timestamp)}"
            if c.duration_seconds is not None:
                detail += f", took {c.duration_seconds * 1000:.1f} ms"
        rows.append(html('<tr><td>{title}</td><td><span class="badge {level}">{state}</span></td>'
                         '<td class="mute">{detail}</td></tr>', title=c.title, level=level, state=state, detail=detail))
    stale = " (stale: an NVML call did not return in time)" if a.gpu_snapshot_stale else ""
    return html(
        '<div class="scroll"><table class="agent">{rows}'
        '<tr><td>last collection</td><td colspan="2">{last} (took {took} ms; GPU readings {age} s old{stale})</td></tr>'
        '<tr><td>errors counted</td><td colspan="2">{errors} (see <span class="mono">'
        'kube_gpu_exporter_collector_errors_total</span>)</td></tr>'
        '<tr><td>version</td><td colspan="2">kube-gpu-exporter {version}{sim}</td></tr></table></div>',
        rows=join(rows), last=_time(a.last_cycle_timestamp), took=f"{a.cycle_duration_seconds * 1000:.1f}",
        age=f"{a.gpu_snapshot_age_seconds:.1f}", stale=stale, errors=a.errors_total, version=a.version,
        sim=", simulated node" if a.simulated else "",
    )


def to_html(model: NodeStatus) -> str:
    gpus = model.gpus
    counts = {level: sum(g.health == level for g in gpus) for level in ("ok", "warning", "critical")}
    held = sum(bool(g.holders or any(m.holders for m in g.mig_instances)) for g in gpus)
    summary = html(
        "{n} GPUs: {ok} ok, {warning} warning, {critical} critical; {held} allocated to pods",
        n=len(gpus), held=held, **counts,
    )
    return html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="refresh" content="{refresh}">'
        "<title>{node} · kube-gpu-exporter</title><style>{css}</style></head><body>"
        '<header><h1>GPUs of node <span id="node">{node}</span> {sim}</h1>'
        '<div class="sub">{summary} · as of {when} · refreshes every {refresh} s</div>'
        '<nav><a href="metrics">/metrics</a><a href="healthz">/healthz</a><a href="readyz">/readyz</a>'
        '<a href="api/v1/status">/api/v1/status</a></nav></header>'
        '<main><div class="grid">{gpus}</div><h2>Agent</h2>{agent}</main></body></html>\n',
        refresh=model.refresh_seconds, node=model.node, css=_CSS, summary=summary,
        when=_time(model.generated_at),
        sim=Html('<span class="badge sim">simulated</span>') if model.agent.simulated else Html(""),
        gpus=join(_gpu_html(g) for g in gpus) or Html('<p class="mute">no GPU found</p>'),
        agent=_agent_html(model.agent),
    )
