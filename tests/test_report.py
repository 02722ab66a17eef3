"""``kube-gpu-exporter report`` against a real Prometheus holding a simulated week
(dashboards/week.py: backfilled, the efficiency rules over it backfilled too), every figure
computed here by hand from the scenario's facts; its outputs' schemas; its errors and exit codes.
The tests that start a server (Prometheus, Chromium, an HTTP API) are marked integration."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time

import jsonschema
import pytest
from e2e import ROOT

from alerts import efficiency
from alerts.params import Params, minutes
from exporter.report import figures, output, prometheus, run

sys.path.insert(0, str(ROOT / "dashboards"))
import week  # noqa: E402

END = (time.time() // 86400) * 86400  # the week ends at the last midnight (UTC): whole calendar days
START = END - week.WEEK
PRICES = ["--price", "*H100*=2.5", "--price", "NVIDIA A100-SXM4-80GB=1.2"]
H100_PRICE, A100_PRICE = 2.5, 1.2


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@pytest.fixture(scope="module")
def node():
    with week.week_node(END) as node:
        yield node


def report(node, *flags: str, capsys=None) -> tuple[int, str, str]:
    """The report command in-process: (exit status, stdout, stderr)."""
    code = run.main([f"--prometheus.url={node.prometheus.url}", f"--from={_iso(START)}", f"--to={_iso(END)}",
                     *PRICES, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def _minutes(window: tuple[int, int]) -> int:
    return window[1] - window[0]


def expected_week() -> dict[tuple[str, str], dict[str, float]]:
    """The week's figures per (namespace, workload), by hand from dashboards/week.py's facts:
    GPU-hours are held share x hours; a shared GPU counts 1/2 per replica, a MIG 3g instance 3/7
    and a 2g one 2/7 of the A100."""
    days = week.DAYS
    notebook_busy_h = days * _minutes(week.NOTEBOOK_BUSY) / 60  # 16.8 h busy, the rest idle
    train_h = days * _minutes(week.TRAIN_HOURS) / 60  # 28 h
    night_h = days * _minutes(week.INFERENCE_NIGHT) / 60  # 42 h
    day_h = days * 24 - night_h
    hours = days * 24.0
    day_util = sum(u[0] for u in week.INFERENCE_UTIL.values())
    night_util = sum(u[1] for u in week.INFERENCE_UTIL.values())
    busy_w, idle_w = week.NOTEBOOK_WATTS
    return {
        ("research", "notebook-alice"): dict(
            held=hours, used=notebook_busy_h * week.NOTEBOOK_UTIL, idle=hours - notebook_busy_h,
            kwh=(notebook_busy_h * busy_w + (hours - notebook_busy_h) * idle_w) / 1000, price=H100_PRICE, sm=None),
        ("ml", "nightly-train"): dict(held=train_h, used=train_h * week.TRAIN_UTIL, idle=0.0,
                                      kwh=train_h * week.TRAIN_WATTS / 1000, price=H100_PRICE, sm=train_h * week.TRAIN_SM),
        # idle at night: both replicas below idle_ratio (0.02 < 0.05)
        ("serving", "inference"): dict(held=hours, used=day_h * day_util + night_h * night_util, idle=night_h,
                                       kwh=hours * week.INFERENCE_WATTS / 1000, price=H100_PRICE, sm=None),
        ("ml", "eval"): dict(held=hours * 3 / 7, used=hours * 3 / 7, idle=0.0, kwh=hours * week.MIG_WATTS * 3 / 7 / 1000,
                             price=A100_PRICE, sm=None),
        ("research", "dev-bob"): dict(held=hours * 2 / 7, used=0.0, idle=hours * 2 / 7,
                                      kwh=hours * week.MIG_WATTS * 2 / 7 / 1000, price=A100_PRICE, sm=None),
    }


@pytest.mark.integration
def test_the_week_equals_the_hand_computed_figures(node, capsys):
    code, out, err = report(node, "--output", "json", capsys=capsys)
    assert code == 0, err
    data = json.loads(out)
    expected = expected_week()
    got = {(w["namespace"], w["workload"]): w for w in data["workloads"]}
    assert set(got) == set(expected)
    for key, e in expected.items():
        w = got[key]
        assert w["held_gpu_hours"] == pytest.approx(e["held"], abs=1e-6), key
        assert w["used_gpu_hours"] == pytest.approx(e["used"], abs=1e-6), key
        assert w["idle_gpu_hours"] == pytest.approx(e["idle"], abs=1e-6), key
        assert w["energy_kwh"] == pytest.approx(e["kwh"], abs=1e-6), key
        assert w["efficiency"] == pytest.approx(e["used"] / e["held"]), key
        assert w["cost"] == pytest.approx(e["held"] * e["price"]), key
        assert w["idle_cost"] == pytest.approx(e["idle"] * e["price"]), key
        assert (w["sm_active_gpu_hours"] is None) == (e["sm"] is None), key
        if e["sm"] is not None:
            assert w["sm_active_gpu_hours"] == pytest.approx(e["sm"], abs=1e-6), key
    assert got[("research", "notebook-alice")]["efficiency"] == pytest.approx(0.06)  # idle 90 % of the time
    # the figures by hand: 168 + 28 + 168 + 72 + 48 GPU-hours held
    assert data["total"]["held_gpu_hours"] == pytest.approx(484.0)
    namespaces = {n["namespace"]: n for n in data["namespaces"]}
    assert namespaces["research"]["held_gpu_hours"] == pytest.approx(168 + 48)
    assert namespaces["research"]["idle_cost"] == pytest.approx(151.2 * 2.5 + 48 * 1.2)
    assert [n["namespace"] for n in data["namespaces"]] == ["research", "serving", "ml"]  # most held first
    assert data["range"] == {"from": _iso(START), "to": _iso(END), "seconds": week.WEEK}
    assert data["interval_seconds"] == 60 and data["unpriced_models"] == []


@pytest.mark.integration
def test_each_day_of_the_trend_holds_a_seventh_of_the_week(node, capsys):
    code, out, _ = report(node, "--output", "json", capsys=capsys)
    days = json.loads(out)["days"]
    assert [d["from"] for d in days] == [_iso(START + i * 86400) for i in range(7)]
    for day in days:
        research = {n["namespace"]: n for n in day["namespaces"]}["research"]
        assert research["held_gpu_hours"] == pytest.approx(24 + 24 * 2 / 7)
        assert research["used_gpu_hours"] == pytest.approx(2.4 * 0.6)


@pytest.mark.integration
def test_the_lists_name_the_idle_interactive_holders_and_the_batch_workloads(node, capsys):
    code, out, _ = report(node, capsys=capsys)
    assert code == 0
    idle = out.split("Longest-idle interactive holders\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[0] for line in idle] == ["research/notebook-alice", "research/dev-bob", "serving/inference"]
    batch = out.split("Least efficient batch workloads\n")[1].splitlines()[1:]
    assert [line.split()[0] for line in batch if line] == ["ml/nightly-train"]
    assert re.search(r"^total\s+484\.00\s+173\.36\s+241\.20\s+35\.8%", out, re.M), out


@pytest.mark.integration
def test_csv_and_json_hold_to_their_committed_schemas(node, capsys):
    code, out, _ = report(node, "--output", "json", capsys=capsys)
    jsonschema.validate(json.loads(out), json.loads((ROOT / "docs" / "report.schema.json").read_text()))
    schema = json.loads((ROOT / "docs" / "report-csv.schema.json").read_text())
    code, out, _ = report(node, "--output", "csv", capsys=capsys)
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == schema["x-columns"] == list(output.CSV_COLUMNS)
    rows = list(reader)
    assert len(rows) == 5
    for row in rows:
        typed = {k: (None if v == "" else float(v)) if schema["properties"][k]["type"] != "string" else v
                 for k, v in row.items()}
        jsonschema.validate(typed, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail
        jsonschema.validate(dict(typed, held_gpu_hours=-1.0), schema)


@pytest.mark.integration
def test_a_range_before_the_data_is_no_data_exit_4(node, capsys):
    code = run.main([f"--prometheus.url={node.prometheus.url}", f"--from={_iso(START - 3 * 86400)}",
                     f"--to={_iso(START - 86400)}"])
    assert code == run.EXIT_NO_DATA == 4
    assert "no GPU was held in the range" in capsys.readouterr().err


def test_an_unreachable_prometheus_is_exit_3(capsys):
    code = run.main(["--prometheus.url=http://127.0.0.1:9", "--since=1d", "--prometheus.timeout=5s"])
    assert code == run.EXIT_PROMETHEUS == 3
    assert "http://127.0.0.1:9: unreachable" in capsys.readouterr().err


@pytest.mark.integration
def test_prometheus_without_the_rules_is_exit_5_naming_the_rule_file(tmp_path, capsys):
    """The agent's series for an hour, and no efficiency rule over them."""
    from live import DemoNode

    def hour(_):
        backfill = week.Backfill(week.TARGET)
        for k in range(61):
            backfill.scrape(week.exposition(k), float(k * 60))
        return backfill

    with DemoNode(tmp_path, history=hour, span=3600, end=END, groups=[], live_rules=False) as bare:
        code = run.main([f"--prometheus.url={bare.prometheus.url}", f"--to={_iso(END)}", "--since=1d"])
    err = capsys.readouterr().err
    assert code == run.EXIT_MISSING_RULES == 5
    assert "alerts/kube-gpu-exporter.rules.yaml" in err and efficiency.GROUP in err


@pytest.mark.integration
def test_rules_loaded_during_the_range_are_a_warning(tmp_path, capsys):
    """Two days of the agent's series, the efficiency rules over the second only."""
    from live import DemoNode

    def two_days(_):
        backfill = week.Backfill(week.TARGET)
        for k in range(2 * 1440 + 1):
            backfill.scrape(week.exposition(k), float(k * 60))
        return backfill

    groups = week.efficiency_groups()
    with DemoNode(tmp_path, history=two_days, span=2 * 86400, end=END, groups=[], live_rules=False) as node:
        node.stop()
        late = DemoNode(tmp_path, history=lambda _: week.Backfill(week.TARGET), span=86400, end=END, step=60,
                        groups=groups, lookback="59s", live_rules=False)
        with late:
            code = run.main([f"--prometheus.url={late.prometheus.url}", f"--to={_iso(END)}", "--since=2d",
                             "--output=json"])
            out, err = capsys.readouterr()
    assert code == 0
    assert f"no data before {_iso(END - 86400)} while the agent's allocations have" in err
    assert json.loads(out)["total"]["held_gpu_hours"] == pytest.approx(24 + 4 + 24 + 24 * 5 / 7)


@pytest.mark.parametrize("flags, problem", [
    (["--since=7x"], "'7x' is not a duration"),
    (["--from=2026-12-08", "--to=2026-12-01"], "--from must come before --to"),
    (["--from=yesterday"], "'yesterday' is not a date"),
    (["--price=H100"], "'H100' is not MODEL=PRICE"),
    (["--price=H100=-1"], "is not MODEL=PRICE"),
    (["--price-file=/nonexistent/prices.yaml"], "cannot read"),
    (["--prometheus.bearer-token-file=/nonexistent/token"], "--prometheus.bearer-token-file: cannot read"),
    (["--output=pdf"], ""),
    (["--rules.interval=0s"], "must be more than 0s"),
    (["--from=2999-01-01"], "and before now"),
])
def test_bad_flags_are_exit_2(flags, problem, capsys):
    assert run.main(["--prometheus.url=http://127.0.0.1:9", *flags]) == run.EXIT_USAGE == 2
    assert problem in capsys.readouterr().err


def test_the_price_file_and_globs(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("currency: EUR\nprices:\n  '*H100*': 2.5\n  NVIDIA A100-SXM4-80GB: 1.2\n")
    prices, currency = run.load_prices(str(path), ["*h100*=3"])
    assert currency == "EUR"
    assert figures.price_of("NVIDIA H100 80GB HBM3", prices) == 3.0  # the flag wins, case-insensitively
    assert figures.price_of("NVIDIA A100-SXM4-80GB", prices) == 1.2
    assert figures.price_of("Tesla T4", prices) is None
    path.write_text("H100: 2\n")
    with pytest.raises(run.UsageError, match="prices:"):
        run.load_prices(str(path), [])


def test_progress_goes_to_a_terminal_only():
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (True, False):
        stream = Stream(tty)
        show = run._progress(stream)
        show(1, 2)
        show(2, 2)
        assert stream.getvalue() == ("\rkube-gpu-exporter report: querying Prometheus 1/2"
                                     "\rkube-gpu-exporter report: querying Prometheus 2/2\n" if tty else "")


def test_the_command_reads_what_the_rules_record():
    """The report is part of the agent's package, the rules are not: the names must agree."""
    assert prometheus.RECORDS == dict(zip(["held", "used", "sm_active", "idle", "power"], efficiency.INTEGRALS))
    assert prometheus.GROUP == efficiency.GROUP
    assert run.duration(run.DEFAULT_INTERVAL) == 60 * minutes(Params().efficiency_interval)
    assert figures.BATCH_KINDS.pattern == Params().batch_kinds
    assert (ROOT / prometheus.RULES_FILE).exists() and (ROOT / prometheus.PROMETHEUS_RULE).exists()


@pytest.mark.integration
def test_the_cli_runs_the_report(node):
    result = subprocess.run([sys.executable, "-m", "exporter", "report", f"--prometheus.url={node.prometheus.url}",
                             f"--from={_iso(START)}", f"--to={_iso(END)}", "--output=csv"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(",".join(output.CSV_COLUMNS) + "\n") and result.stderr == ""


# -- The HTML page --------------------------------------------------------------------------------


def _chromium(tmp_path, *args: str) -> str:
    import shutil

    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test` installs the Debian package chromium"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.integration
def test_the_html_page_is_self_contained_and_chromium_draws_it(node, tmp_path, capsys):
    import os
    import shutil

    import matplotlib.image

    page = tmp_path / "report.html"
    code, _, err = report(node, "--output", "html", "--out", str(page), capsys=capsys)
    assert code == 0, err
    html = page.read_text()
    assert "<script" not in html.lower() and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<svg" in html and "<style>" in html
    # Chromium, offline: what it lays out is the page alone
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    for name in ("notebook-alice", "nightly-train", "inference", "eval", "dev-bob", "484.0 GPU-h"):
        assert name in dom, name
    # a bar per namespace, its parts in proportion: research holds 216 GPU-h of which 10.08 used
    bars = re.findall(r'<rect class="(used|idle|rest)" x="([\d.]+)" y="(\d+)" width="([\d.]+)"', dom)
    research = {part: float(width) for part, _, y, width in bars if y == "6"}  # the first bar
    assert research["used"] / sum(research.values()) == pytest.approx(10.08 / 216, abs=1e-3)
    assert research["idle"] / sum(research.values()) == pytest.approx(199.2 / 216, abs=1e-3)
    assert len(re.findall(r'<rect class="used" x="\d+" y="[\d.]+" width="46"', dom)) == 7  # one per day
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1400,1400", f"--screenshot={shot}", page.as_uri())
    image = matplotlib.image.imread(shot)
    assert image.shape[1] == 1400 and image.std() > 0.05, "the screenshot looks blank"
    if os.environ.get("UPDATE_IMAGES"):
        shutil.copyfile(shot, ROOT / "docs" / "images" / "report.png")


def test_the_html_page_shows_markup_in_names_as_text():
    from exporter.report.html import to_html

    key = ("ns", "Deployment", "<script>alert(1)</script>", "<b>GPU</b>")
    per_span = [{figure: ({key: 24.0} if figure in ("held", "idle") else {}) for figure in prometheus.RECORDS}]
    html = to_html(figures.build(prometheus.days(0, 86400), per_span, {}, 60.0))
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;GPU&lt;/b&gt;" in html


# -- The Grafana row ------------------------------------------------------------------------------


def _fleet_panel(title: str) -> list[str]:
    import live

    dashboard = live.dashboards()["fleet.json"]
    panel = next(p for p in live.panels(dashboard) if p["title"] == title)
    values = {"cluster": ".*", "namespace": ".*", "node": ".*"}
    return [live.substitute(t["expr"], values, week.WEEK) for t in panel["targets"]]


@pytest.mark.integration
def test_the_fleet_dashboards_efficiency_row_shows_the_weeks_figures(node):
    """The same figures as the report for a time range of the week, read the way Grafana does."""
    def value(title: str) -> float:
        (expr,) = _fleet_panel(title)
        (sample,) = node.prometheus.query(expr, END)
        return float(sample["value"][1])

    expected = expected_week()
    held = sum(e["held"] for e in expected.values())
    used = sum(e["used"] for e in expected.values())
    assert value("GPU-hours held") == pytest.approx(held)
    assert value("GPU-hours used") == pytest.approx(used)
    assert value("GPU-hours idle") == pytest.approx(sum(e["idle"] for e in expected.values()))
    assert value("Efficiency") == pytest.approx(used / held)
    assert value("SM-active GPU-hours") == pytest.approx(expected[("ml", "nightly-train")]["sm"])
    assert value("Energy") == pytest.approx(sum(e["kwh"] for e in expected.values()))
    for title, figure, scale in (("GPU-hours by namespace (time range)", "held", 1.0),
                                 ("Energy by namespace (time range)", "kwh", 3.6e6)):  # joules
        (expr,) = _fleet_panel(title)
        shown = {r["metric"]["namespace"]: float(r["value"][1]) for r in node.prometheus.query(expr, END)}
        by_hand: dict[str, float] = {}
        for (namespace, _), e in expected.items():
            by_hand[namespace] = by_hand.get(namespace, 0.0) + e[figure] * scale
        assert shown == pytest.approx(by_hand), title
    (idle,) = _fleet_panel("Idle GPU-hours per workload (time range)")
    ranked = [(r["metric"]["workload"], float(r["value"][1])) for r in node.prometheus.query(idle, END)]
    assert [w for w, _ in ranked] == ["notebook-alice", "dev-bob", "inference"]
    assert ranked[0][1] == pytest.approx(expected[("research", "notebook-alice")]["idle"])
    (ratio,) = _fleet_panel("Efficiency per workload (time range)")
    ranked = [(r["metric"]["workload"], float(r["value"][1])) for r in node.prometheus.query(ratio, END)]
    assert [w for w, _ in ranked][0] == "dev-bob" and ranked[-1][0] == "eval"
    by_workload = {w: e for (_, w), e in expected.items()}
    for workload, ratio_value in ranked:
        assert ratio_value == pytest.approx(by_workload[workload]["used"] / by_workload[workload]["held"]), workload


# -- Credentials ----------------------------------------------------------------------------------


class _FakePrometheus:
    """A query API that wants ``Authorization: Bearer s3cret`` and holds one held workload."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def query(self, request):
        from aiohttp import web

        self.seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"status": "error", "error": "unauthorized"}, status=401)
        form = await request.post()
        result = []
        if efficiency.ALLOCATED in form["query"] or efficiency.IDLE in form["query"]:
            result = [{"metric": {"namespace": "a", "workload_kind": "Pod", "workload": "p", "model": "M"},
                       "value": [float(form["time"]), "2"]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture
def fake_prometheus():
    import asyncio
    import threading

    from aiohttp import web

    fake = _FakePrometheus()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/prom/api/v1/query", fake.query)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{port}/prom"
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.mark.integration
def test_the_bearer_token_file_is_sent_and_a_refusal_is_exit_3(fake_prometheus, tmp_path, capsys):
    fake, url = fake_prometheus
    token = tmp_path / "token"
    token.write_text("wrong\n")
    flags = [f"--prometheus.url={url}", f"--prometheus.bearer-token-file={token}", "--since=2d", "--output=json"]
    assert run.main(flags) == run.EXIT_PROMETHEUS
    assert "HTTP 401: the credentials were refused" in capsys.readouterr().err
    token.write_text("s3cret\n")  # read at each use: a rotated Secret needs no restart
    assert run.main(flags) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["held_gpu_hours"] == 4 and data["total"]["idle_gpu_hours"] == 4  # 2 per day, two days
    assert set(fake.seen) == {"Bearer wrong", "Bearer s3cret"}


@pytest.mark.integration
def test_not_a_prometheus_is_exit_3(fake_prometheus, capsys):
    _, url = fake_prometheus
    assert run.main([f"--prometheus.url={url}/nothing-here", "--since=1d"]) == run.EXIT_PROMETHEUS
    assert "not a Prometheus query API answer" in capsys.readouterr().err


def test_a_model_without_a_price_has_no_cost_and_is_named():
    per_span = [{figure: {("ns", "Job", "j", "Tesla T4"): 10.0, ("ns", "Job", "k", "NVIDIA H100 80GB HBM3"): 10.0}
                 if figure == "held" else {} for figure in prometheus.RECORDS}]
    report = figures.build(prometheus.days(0, 86400), per_span, {"*H100*": 2.0}, 60.0, "EUR")
    costs = {row.workload: row.cost for row in report.rows}
    assert costs == {"j": None, "k": 20.0} and report.total.cost == 20.0
    assert report.unpriced_models == ("Tesla T4",)
    text = output.table(report)
    assert "No price for: Tesla T4 (--price MODEL=PRICE)" in text and "COST (EUR)" in text
    assert [w.name for w in report.inefficient_batch] == ["ns/j", "ns/k"]  # both 0 % used
