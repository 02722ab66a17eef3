"""The status page as HTML: plain server-rendered markup with inline CSS (no JavaScript, no external
assets, a refresh meta tag), from the page's model (``model.py``).

Every value that comes from a pod or a GPU (names, labels, errors) reaches the HTML only through
``html()``, which escapes it: a pod named ``<script>`` is shown as text.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Iterable

from .model import AgentState, GpuStatus, HolderStatus, MigStatus, NodeStatus

#: Served at ``/`` until the first cycle has finished (with status 503).
STARTING_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="2">
<title>kube-gpu-exporter</title></head><body><h1>kube-gpu-exporter</h1>
<p>Starting: no collection has finished yet.</p>
<p><a href="metrics">/metrics</a> <a href="healthz">/healthz</a> <a href="readyz">/readyz</a>
<a href="api/v1/status">/api/v1/status</a></p></body></html>
"""


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
               hot=g.near_slowdown),
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
    allocated = sum(bool(g.holders or any(m.holders for m in g.mig_instances)) for g in gpus)
    summary = html(
        "{n} GPUs: {ok} ok, {warning} warning, {critical} critical; {allocated} allocated to pods",
        n=len(gpus), allocated=allocated, **counts,
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
