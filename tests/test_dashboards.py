"""The Grafana dashboards: lint of the generated JSON, then every panel's queries against a real
Prometheus holding a day of the agent's history on a simulated node with pods and faults (a
backfill: dashboards/live.py), then the pictures.

``UPDATE_IMAGES=1`` also writes the rendered dashboards into docs/images/ (``make dashboards-png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from itertools import combinations

import matplotlib.image
import pytest
import yaml
from conftest import wait_until
from e2e import ROOT

from exporter import catalog
from exporter.push import definitions

sys.path.insert(0, str(ROOT / "dashboards"))
import generate  # noqa: E402
import live  # noqa: E402
import render_png  # noqa: E402
import validation  # noqa: E402
from grafana_foundation_sdk.models import dashboard as dm  # noqa: E402
from alerts.efficiency import efficiency_rules  # noqa: E402
from alerts.rules import Params, alerts, recording_rules  # noqa: E402

DASHBOARDS = live.dashboards()
UIDS = {"fleet.json": "kube-gpu-exporter-fleet", "node.json": "kube-gpu-exporter-node",
        "workload.json": "kube-gpu-exporter-workload"}
#: Series a query may name that the agent's catalog and the rules do not define: Prometheus' own
#: (ALERTS, the scrape's duration) and client_python's process metrics of the agent.
OTHER_SERIES = {"ALERTS", "scrape_duration_seconds", "process_resident_memory_bytes"}
#: Panels that are empty on the demo node on purpose, and why.
EMPTY_ON_PURPOSE = {
    ("workload.json", "Firing alerts on this workload or its GPUs", "A"):
        "the alerts about the research namespace's GPUs (its idle GPU, the power cap on the shared one, the PCIe "
        "replays) have a for:, and Prometheus, started on the backfill, evaluates them from now on: pending",
    ("node.json", "XID events", "A"):
        "it shows only the intervals with an event (> 0), and the demo's XIDs are older than the last "
        "$__rate_interval; test_the_first_xid_of_a_node_shows_in_the_xid_panels reads it over the whole data",
}
IMAGES = ROOT / "docs" / "images"


def all_panels():
    for name, dashboard in DASHBOARDS.items():
        for panel in live.panels(dashboard):
            yield name, panel


def all_exprs():
    for name, panel in all_panels():
        for target in panel.get("targets", ()):
            yield name, panel["title"], target["expr"]


# -- Lint -----------------------------------------------------------------------------------------


def test_generated_files_are_up_to_date():
    assert generate.main(["--check"]) == 0, "run: python dashboards/generate.py"


def test_three_dashboards_with_stable_uids_and_the_sdk_schema():
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == UIDS
    for dashboard in DASHBOARDS.values():
        assert dashboard["schemaVersion"] == generate.SCHEMA_VERSION and "id" not in dashboard
        assert generate.TAG in dashboard["tags"]
        assert len(dashboard["links"]) == 1 and dashboard["links"][0]["keepTime"]
        assert dashboard["links"][0]["type"] == "dashboards" and dashboard["links"][0]["tags"] == [generate.TAG]


def test_every_dashboard_holds_to_the_sdk_types():
    """Built through the SDK's typed builders, each model holds to the SDK's annotations, and each
    committed JSON decodes through the SDK's models (queries and panel options by their plugin's
    types) back to itself."""
    for spec in generate.SPECS:
        assert validation.type_problems(generate.model(spec), dm.Dashboard, "dashboard") == [], spec.file
        assert validation.roundtrip_problems(DASHBOARDS[spec.file]) == [], spec.file


def test_the_validation_rejects_what_the_sdk_types_do_not_accept():
    spec = generate.SPECS[1]
    model = generate.model(spec)
    model.graph_tooltip = 7  # not a DashboardCursorSync
    model.panels[1].grid_pos.w = "4"
    model.templating.list_val[0].hide = "no"
    with pytest.raises(validation.InvalidDashboard) as error:
        validation.validate(model, generate.SCHEMA_VERSION)
    assert error.value.problems == ["dashboard.graph_tooltip: 7 is not DashboardCursorSync",
                                    "dashboard.panels[1].grid_pos.w: '4' is not int",
                                    "dashboard.templating.list_val[0].hide: 'no' is not VariableHide"]
    dashboard = generate.build(spec)
    stat = next(i for i, p in enumerate(dashboard["panels"]) if p["type"] == "stat")
    dashboard["panels"][stat]["options"]["colourMode"] = "value"  # a key no type of the stat panel has
    dashboard["panels"][stat]["fieldConfig"]["defaults"]["units"] = "bytes"
    assert validation.roundtrip_problems(dashboard) == [
        f".panels[{stat}].options.colourMode: 'value' becomes '<absent>'",
        f".panels[{stat}].fieldConfig.defaults.units: 'bytes' becomes '<absent>'"]


def test_panel_ids_are_unique_and_panels_do_not_overlap():
    for name, dashboard in DASHBOARDS.items():
        panels = list(live.panels(dashboard))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), name
        for p in panels:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (name, p["title"])
        for a, b in combinations(panels, 2):
            ga, gb = a["gridPos"], b["gridPos"]
            overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                       and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
            assert not overlap, (name, a["title"], b["title"])


def _datasources(node):
    if isinstance(node, dict):
        if "datasource" in node:
            yield node["datasource"]
        for value in node.values():
            yield from _datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasources(value)


def test_every_query_uses_the_datasource_variable_and_no_uid_is_hard_coded():
    for name, dashboard in DASHBOARDS.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for datasource in _datasources(dashboard["panels"]):
            assert datasource == {"type": "prometheus", "uid": "${datasource}"}, name
        for panel in live.panels(dashboard):
            for target in panel.get("targets", ()):
                assert target["datasource"]["uid"] == "${datasource}", (name, panel["title"])
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "${datasource}"


_REFERENCE = re.compile(r"\$\{?([A-Za-z_][\w.]*)")
#: Grafana's own variables and macros the dashboards use.
BUILTINS = {"__range", "__range_s", "__rate_interval", "__interval", "__url_time_range"}


def test_every_referenced_variable_exists():
    for name, dashboard in DASHBOARDS.items():
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["templating"])
        for ref in set(_REFERENCE.findall(text)):
            if ref.startswith("__data.fields."):
                continue  # a table's own column, in a data link
            assert ref in defined | BUILTINS, f"{name}: ${ref} is not a variable of the dashboard"
        # cluster is optional: hidden (and All, matching series without the label) unless asked for.
        cluster = next(v for v in dashboard["templating"]["list"] if v["name"] == "cluster")
        assert cluster["hide"] == 2 and cluster["includeAll"] and cluster["allValue"] == ".*"
    shown = generate.build(generate.SPECS[0], multi_cluster=True)
    assert next(v for v in shown["templating"]["list"] if v["name"] == "cluster")["hide"] == 0


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, labels and keywords left out)."""
    text = _STRING.sub('""', re.sub(r"\$\{?\w+\}?", "1", expr))  # $__range_s is a number
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_are_found_in_queries():
    assert metric_names('sum by (namespace) (rate(a_total{x="b c"}[5m]) * on (uuid) group_left (pod) b_info) '
                        "or vector(0) unless c") == {"a_total", "b_info", "c"}


def test_every_metric_a_query_names_is_produced_by_the_agent_or_the_rules():
    produced = ({m.name for m in catalog.all_metrics()} | dict(recording_rules(Params())).keys()
                | dict(efficiency_rules(Params())).keys() | OTHER_SERIES)
    for name, title, expr in all_exprs():
        unknown = metric_names(expr) - produced
        assert not unknown, f"{name} / {title}: {sorted(unknown)} is neither in exporter/catalog.py nor a rule"
    used_rules = {n for _, _, expr in all_exprs() for n in metric_names(expr) if ":" in n}
    assert len(used_rules) >= 10, used_rules  # the fleet and workload panels read the rules


def _panel(file: str, title: str) -> dict:
    return next(p for p in live.panels(DASHBOARDS[file]) if p["title"] == title)


def test_thresholds_and_units_are_the_alert_rules():
    p = Params()
    expected = {  # (dashboard, panel): the alert parameter its thresholds draw
        ("node.json", "Memory used / total"): p.memory_full_ratio,
        ("node.json", f"Thermal violation time ({p.capping_window})"): p.thermal_capping_ratio,
        ("node.json", f"Power violation time ({p.capping_window})"): p.power_capping_ratio,
        ("node.json", "Margin to slowdown temperature"): p.temperature_margin,
        ("fleet.json", "Most idle allocated pods"): p.idle_ratio,
        ("fleet.json", "Efficiency"): p.idle_ratio,
        ("fleet.json", "Efficiency per workload (time range)"): p.idle_ratio,
    }
    for (file, title), value in expected.items():
        steps = [s["value"] for s in _panel(file, title)["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert value in steps, (file, title, steps)
    units = {
        ("node.json", "Utilisation"): "percentunit", ("node.json", "Memory used"): "bytes",
        ("node.json", "Power"): "watt", ("node.json", "Temperature"): "celsius", ("node.json", "Energy"): "joule",
        ("node.json", "SM clock"): "hertz", ("fleet.json", "Energy by namespace (time range)"): "joule",
        ("fleet.json", "Energy"): "kwatth", ("fleet.json", "Efficiency"): "percentunit",
        ("workload.json", "GPU memory per container"): "bytes",
        ("workload.json", "Utilisation per container"): "percentunit",
    }
    for (file, title), unit in units.items():
        assert _panel(file, title)["fieldConfig"]["defaults"]["unit"] == unit, (file, title)
    for name, panel in all_panels():
        if panel["type"] != "row":
            assert panel["fieldConfig"]["defaults"]["unit"], (name, panel["title"])


def test_the_alerts_panels_select_every_alert_of_the_rules():
    names = [a.name for a in alerts(Params())]
    assert names and all(re.fullmatch(generate.ALERT_NAMES, n) for n in names)
    assert any("ALERTS{" in expr for name, _, expr in all_exprs() if name == "fleet.json")
    assert any("ALERTS{" in expr for name, _, expr in all_exprs() if name == "workload.json")


def test_links_lead_to_the_other_dashboards():
    urls = re.findall(r'"url": "(/d/[^"?]+)', json.dumps(DASHBOARDS))
    assert {u.removeprefix("/d/") for u in urls} == set(UIDS.values()) - {"kube-gpu-exporter-fleet"}
    for name, dashboard in DASHBOARDS.items():
        linked = re.findall(r"/d/([\w-]+)", json.dumps(dashboard["panels"]))
        assert set(linked) <= set(UIDS.values()) - {dashboard["uid"]}, name


def test_configmap_carries_the_three_dashboards_for_the_sidecar():
    configmap = yaml.safe_load(generate.CONFIGMAP.read_text())
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in configmap["data"].items()} == {
        f"kube-gpu-exporter-{name}": dashboard for name, dashboard in DASHBOARDS.items()}


# -- Live -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    with live.DemoNode() as node:
        yield node


@pytest.mark.integration
def test_every_panel_query_returns_data_from_a_real_prometheus(demo):
    """Every target of every panel, over a time range of a day ($__range), at the end of the
    history: the day-long and hour-long windows read the backfill."""
    empty, checked = [], 0
    for name, dashboard in DASHBOARDS.items():
        values = live.resolve_variables(dashboard, demo.prometheus)
        assert values.get("node", live.NODE_NAME) == live.NODE_NAME  # relabelled at scrape time
        if name == "workload.json":  # a namespace with a time-sliced GPU and an idle one
            assert values["namespace"] == "research" and values["workload"] == "dev-sandbox|notebook"
        for target in live.targets(dashboard, values, live.DAY):
            try:
                result = demo.prometheus.query(target.expr)
            except live.QueryError as error:
                pytest.fail(f"{name} / {target.panel} ({target.ref}) does not evaluate: {error}\n{target.expr}")
            checked += 1
            if not result:
                empty.append((name, target.panel, target.ref))
    assert checked == sum(len(p.get("targets", ())) for _, p in all_panels())
    assert set(empty) == set(EMPTY_ON_PURPOSE), f"empty panels: {empty}"


@pytest.mark.integration
def test_the_demo_node_shows_its_faults(demo):
    q = demo.prometheus.query
    assert float(q('sum(nvidia_gpu_up{node="%s"})' % live.NODE_NAME)[0]["value"][1]) == 4  # GPU 4 is lost
    assert q('nvidia_gpu_clock_event_active{reason="hw_thermal_slowdown"} == 1')
    assert q(f'ALERTS{{alertname="{definitions.ECC_UNCORRECTABLE.name}", alertstate="firing"}}')
    assert float(q("sum(node:nvidia_gpu_gpus_idle_allocated:count)")[0]["value"][1]) >= 1


def _query(file: str, title: str, node, range_seconds: float, *, whole: bool = False) -> list[dict]:
    """A panel's (only) query over a time range of ``range_seconds``; with ``whole``, its
    ``$__rate_interval`` widened to that range too."""
    dashboard = DASHBOARDS[file]
    values = live.resolve_variables(dashboard, node.prometheus)
    [target] = [t for t in _panel(file, title)["targets"]]
    expr = target["expr"].replace("$__rate_interval", "$__range") if whole else target["expr"]
    return node.prometheus.query(live.substitute(expr, values, range_seconds))


def _by(label: str, results: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for series in results:
        out[series["metric"][label]] = out.get(series["metric"][label], 0) + float(series["value"][1])
    return out


@pytest.mark.integration
def test_the_day_and_hour_windows_read_the_history(demo):
    """The backfill covers the day, the agent's series and the recording rules alike; the panels'
    1 h windows see the last hour of it and a time range of a day sees all of it."""
    q = demo.prometheus.query
    assert float(q("count_over_time(kube_gpu_exporter_build_info[1d])")[0]["value"][1]) >= live.DAY / live.STEP_SECONDS
    rules = q("count_over_time(namespace:nvidia_gpu_allocated_devices:sum[1d])")
    assert len(rules) == 5 and min(float(r["value"][1]) for r in rules) >= 0.95 * live.DAY / live.STEP_SECONDS
    # GPU 0's first XID is 20 hours old, its second 40 minutes; GPU 4's 20 minutes.
    day, hour = (_query("node.json", "XID events (time range)", demo, r) for r in (live.DAY, live.HOUR))
    assert round(float(day[0]["value"][1])) == 3 and round(float(hour[0]["value"][1])) == 2
    problems = _query("fleet.json", "GPUs with problems", demo, live.DAY)
    assert {(p["metric"]["gpu"], round(float(p["value"][1]))) for p in problems} == {
        ("0", 1),  # one XID in the last hour, not two
        ("2", 1),  # an uncorrected ECC error
        ("4", 0),  # lost (nvidia_gpu_up 0)
    }
    # ml-training's job holds one whole GPU all day: 24 GPU-hours over a day.
    hours = _by("namespace", _query("fleet.json", "GPU-hours by namespace (time range)", demo, live.DAY))
    assert 23.5 < hours["ml-training"] < 24.5, hours


@pytest.mark.integration
def test_the_first_xid_of_a_node_shows_in_the_xid_panels(demo):
    """The demo's XIDs: 13 on GPU 0 20 hours and again 40 minutes before the end, then 79 once on
    GPU 4. Read per code, a code's series is born at 1 and increase() misses its first event: GPU
    4's XID 79 would not show at all, and GPU 0 would show one. The panels read the tier counts, at
    0 from the start."""
    per_gpu = _by("gpu", _query("node.json", "XID events", demo, demo.span, whole=True))
    assert {gpu: round(events) for gpu, events in per_gpu.items()} == {"0": 2, "4": 1}
    fleet = _query("fleet.json", "XID events by tier", demo, demo.span, whole=True)
    assert round(sum(float(series["value"][1]) for series in fleet)) == 3
    per_code = demo.prometheus.query(f"sum(increase(nvidia_gpu_xid_errors_total[{int(demo.span)}s]))")
    assert round(float(per_code[0]["value"][1])) < 3  # the trap the tier counts avoid


@pytest.mark.integration
def test_a_mig_only_workload_shows_its_instances_activity(demo):
    """ml-eval's only workload holds a MIG instance: NVML gives it no utilisation, so the workload's
    utilisation and efficiency come from the instance's activity (GPM), not a flat 0 %."""
    assert not demo.prometheus.query('nvidia_gpu_container_utilization_ratio{namespace="ml-eval"}')
    assert demo.prometheus.query('nvidia_gpu_graphics_active_ratio{gpu_instance_id!=""} > 0')
    dashboard = DASHBOARDS["workload.json"]
    values = live.resolve_variables(dashboard, demo.prometheus, {"namespace": "ml-eval"})
    assert values["namespace"] == "ml-eval" and values["workload"] == "nightly-eval"
    queries = {t.panel: t.expr for t in live.targets(dashboard, values, live.DAY)}
    for title in ("Utilisation of held devices", "Efficiency (time range)"):
        result = demo.prometheus.query(queries[title])
        assert len(result) == 1 and 0 < float(result[0]["value"][1]) <= 1, (title, result)


@pytest.mark.integration
def test_render_png_draws_every_dashboard_from_prometheus(demo, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "render_png.py"), "--prometheus", demo.prometheus.url,
         "--out", str(tmp_path), "--seconds", str(int(demo.span))],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["dashboard-fleet.png", "dashboard-node.png", "dashboard-workload.png"]
    for path in tmp_path.glob("*.png"):
        image = matplotlib.image.imread(path)
        assert image.shape[1] == 1600 and image.shape[0] > 800 and image.std() > 0.05, path.name
        if os.environ.get("UPDATE_IMAGES"):
            IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, IMAGES / path.name)


def test_a_panel_reading_an_opt_in_group_names_its_flag():
    """A panel that reads a collector group off by default says which flag it needs (the
    generator adds it from the catalog); the demo node turns exactly those groups on."""
    needing = {}
    for name, panel in all_panels():
        exprs = [t["expr"] for t in panel.get("targets", ())]
        for group in generate.opt_in_metrics(exprs):
            assert f"--collector.{group} (off by default)" in panel["description"], (name, panel["title"])
            needing.setdefault(group, []).append(panel["title"])
    assert sorted(needing) == generate.opt_in_groups() == ["limits", "profiling"]
    assert needing["limits"] == ["SM clock"]
    assert {"SM active", "Tensor cores active", "Efficiency (profiling)"} <= set(needing["profiling"])


# -- A Prometheus with a minute of data ---------------------------------------------------------------


@pytest.fixture(scope="module")
def a_minute_of_data(tmp_path_factory):
    """A real Prometheus holding the last minute of the simulated agent's output (four scrapes,
    15 s apart, ending now), as a Prometheus started a minute ago would: backfilled with promtool."""
    import asyncio
    import time

    import history
    from exporter.cli import build_agent
    from exporter.config import parse_config

    async def exposition() -> str:
        agent = build_agent(parse_config(["--simulate", "--kubernetes.node-name", history.NODE_NAME], environ={}))
        await agent.start_sources()
        try:
            return (await agent.collect_once()).openmetrics.decode()
        finally:
            await agent.stop()

    directory = tmp_path_factory.mktemp("a-minute")
    text = asyncio.run(exposition())
    backfill = history.Backfill(history.TARGET)
    for t in (0, 15, 30, 45, 60):
        backfill.scrape(text, t)
    end = time.time()
    for path in backfill.write(directory, end - 60):
        subprocess.run([shutil.which("promtool") or "promtool", "tsdb", "create-blocks-from", "openmetrics",
                        "--quiet", str(path), str(directory / "data")], check=True, capture_output=True, timeout=120)
    (directory / "prometheus.yml").write_text("global: {}\n")
    port = live.free_port()
    with open(directory / "prometheus.log", "w") as log:
        process = subprocess.Popen([shutil.which("prometheus") or "prometheus", f"--config.file={directory / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    prometheus = live.Prometheus(f"http://127.0.0.1:{port}")
    try:
        def ready() -> bool:
            assert process.poll() is None, (directory / "prometheus.log").read_text()
            return bool(prometheus.query(render_png.PRESENT))

        wait_until(ready, timeout=60, interval=0.2, ignore=(OSError, live.QueryError),
                   message=lambda: (directory / "prometheus.log").read_text())
        yield prometheus, end
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
def test_render_png_draws_the_minute_there_is_when_asked_for_an_hour(a_minute_of_data, tmp_path):
    """`render_png.py --seconds 3600` against a Prometheus with a minute of data draws that minute
    (the step fitted to it), with time ticks inside it, and says so; a panel with nothing says
    how little data there is, not just "No data"."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    prometheus, end = a_minute_of_data
    frame = render_png.fit_range(prometheus, 3600, end)
    assert frame.fitted and 45 <= frame.seconds <= 75 and frame.step == 1.0, frame
    assert frame.no_data() == f"No data in the {render_png._duration(frame.seconds)} there is"
    assert not render_png.fit_range(prometheus, 30, end).fitted  # the data covers the last 30 s

    dashboard = DASHBOARDS["node.json"]
    drawn_frame, drawn = render_png.render(dashboard, prometheus, tmp_path / "node.png", 3600, frame=frame)
    assert drawn_frame == frame
    timeseries = [p for p in live.panels(dashboard) if p["type"] == "timeseries"]
    assert sum(drawn[p["title"]] > 0 for p in timeseries) >= len(timeseries) // 2, drawn

    panel = next(p for p in timeseries if drawn[p["title"]] > 0)
    values = live.resolve_variables(dashboard, prometheus)
    data = [(target, prometheus.query_range(live.substitute(target["expr"], values, frame.seconds, frame.step),
                                            frame.start, frame.end, frame.step)) for target in panel["targets"]]
    fig, ax = plt.subplots()
    try:
        render_png.draw_timeseries(ax, panel, data, frame)
        fig.canvas.draw()
        ticks = [mdates.num2date(x).timestamp() for x in ax.get_xticks()]
    finally:
        plt.close(fig)
    inside = [t for t in ticks if frame.start - 1 <= t <= frame.end + 1]
    assert len(inside) >= 3, (ticks, frame)
