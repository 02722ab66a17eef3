"""The status page (``/``) and its JSON (``/api/v1/status``).

Structure, escaping and the JSON schema through aiohttp's test client on the simulated node; then
the page as a real browser shows it: headless Chromium loads ``/`` from the agent process, the test
reads the GPUs and pods off the rendered DOM, and a pod whose names carry HTML is shown as text.

``UPDATE_IMAGES=1`` also writes the screenshots into docs/images/ (``make dashboards-png``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import matplotlib.image
import pytest
from aiohttp.test_utils import TestClient, TestServer
from e2e import ROOT, AgentProcess, value
from PIL import Image

from exporter.render import status
from exporter import catalog
from exporter.attribution import Attribution, ContainerUsage, Holder
from exporter.cli import build_agent
from exporter.config import parse_config
from exporter.model.cycle import AgentStatus, CollectorStatus
from exporter.serve.guard import Guard, HttpLimits
from exporter.serve.routes import make_app
from exporter.sources.simulate import load_scenario
from exporter.model.gpu import Gpu, GpuSnapshot, MigDevice, Sample

IMAGES = ROOT / "docs" / "images"
BUILT_IN = load_scenario(None)
BUILT_IN_PODS = {(p.namespace, p.name) for p in BUILT_IN.pods}

# Names no API server would accept, which is the point: the page must not trust what it shows.
EVIL_POD = '<script>document.title="owned"</script>'
EVIL_NAMESPACE = "ns<b>bold</b>"
EVIL_WORKLOAD = '<img src=x onerror="alert(1)">'
EVIL_CONTAINER = "c&\"'<i>"
EVIL_NODE = "node<u>x</u>"
EVIL_LABEL = "<svg onload=alert(2)>"
EVIL_SCENARIO = f"""
node: {{name: evil}}
gpus:
  - {{model: "NVIDIA H100 80GB HBM3<br>", load: {{pattern: constant, level: 0.5}}}}
pods:
  - namespace: {json.dumps(EVIL_NAMESPACE)}
    name: {json.dumps(EVIL_POD)}
    workload: {{kind: Deployment, name: {json.dumps(EVIL_WORKLOAD)}}}
    labels: {{app: {json.dumps(EVIL_LABEL)}}}
    containers:
      - name: {json.dumps(EVIL_CONTAINER)}
        resource: nvidia.com/gpu
        devices: [0]
        processes: [{{memory: 1GiB, utilization: 1.0}}]
"""

# Faults active from the first second: an XID, a thermal episode, an uncorrected ECC burst, and a
# GPU lost from the start (so never identified).
FAULT_SCENARIO = """
node: {name: faulty}
gpus:
  - {model: NVIDIA H100 80GB HBM3, load: {pattern: constant, level: 0.9}}
  - {model: NVIDIA H100 80GB HBM3, load: {pattern: constant, level: 0.9}}
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3}
faults:
  events:
    - {kind: xid, at: 0, gpu: 0, code: 79, count: 2}
    - {kind: thermal, at: 0, gpu: 1, duration: 3600}
    - {kind: ecc, at: 0, gpu: 2, uncorrected: 3}
    - {kind: gpu_lost, at: 0, gpu: 3, duration: 3600}
"""

#: The contract of /api/v1/status (schema_version 1), published for scripts beside docs/dashboards.md.
STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
#: JSON Schema takes 1.0 for an integer and 1 for a number; the document holds each field to one
#: type: an integer is written without a fraction, any other number with one (70.0).
_ONE_TYPE_PER_FIELD = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
    "integer": lambda _, value: type(value) is int,
    "number": lambda _, value: type(value) is float,
})
StatusValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_ONE_TYPE_PER_FIELD)


def validate(document: dict) -> None:
    StatusValidator(STATUS_SCHEMA).validate(document)


class Dom(HTMLParser):
    """The elements of a page (tag, attributes, own text) and its whole visible text."""

    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []
        self.texts: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        text: list[str] = []
        self.elements.append((tag, {k: v or "" for k, v in attrs}, text))
        if tag not in self.VOID:
            self._open.append(text)

    def handle_endtag(self, tag):  # noqa: ANN001
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data):  # noqa: ANN001
        if self.lasttag != "style":
            self.texts.append(data)
        for text in self._open:
            text.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())

    def find(self, tag: str, **attrs: str) -> list[tuple[dict[str, str], str]]:
        return [(a, "".join(t)) for name, a, t in self.elements
                if name == tag and all(k in a and v in a[k].split() for k, v in attrs.items())]

    def tags(self) -> set[str]:
        return {name for name, _, _ in self.elements}


def _client_for(args: list[str]):  # noqa: ANN202
    agent = build_agent(parse_config(["--collector.interval", "60", *args], environ={}))
    return agent, TestClient(TestServer(make_app(agent)))


@pytest.fixture
async def built_in():
    agent, client = _client_for(["--simulate", "--kubernetes.enabled", "--kubernetes.node-name", "gpu-node-h100-01"])
    async with client:
        await agent.start_sources(sync_timeout=5)
        await agent.collect_once()
        yield client
    await agent.stop()


async def _get(client: TestClient, path: str) -> tuple[int, str, str]:
    response = await client.get(path)
    return response.status, response.headers["Content-Type"], await response.text()


async def test_page_and_json_are_503_until_the_first_cycle():
    agent, client = _client_for(["--simulate"])
    async with client:
        status, _, body = await _get(client, "/")
        assert status == 503 and 'href="metrics"' in body
        status, _, body = await _get(client, "/api/v1/status")
        assert status == 503 and json.loads(body) == {"error": "no collection has finished yet"}
        await agent.collect_once()
        assert (await client.get("/")).status == 200
        assert (await client.get("/api/v1/status")).status == 200
    await agent.stop()


async def test_a_page_view_and_its_icon_are_no_refusal():
    """A browser asks for /favicon.ico with every page it shows (the status page, /metrics): it gets
    an icon, and kube_gpu_exporter_http_rejected_total{reason="path"} counts only what is refused."""
    config = parse_config(["--simulate", "--collector.interval", "60"], environ={})
    guard = Guard(config.web_config, HttpLimits())
    agent = build_agent(config, guard=guard)
    async with TestClient(TestServer(make_app(agent, guard))) as client:
        await agent.collect_once()
        for path in ("/", "/favicon.ico", "/metrics", "/favicon.ico"):
            assert (await client.get(path)).status == 200, path
        response = await client.get("/favicon.ico")
        assert response.content_type == "image/vnd.microsoft.icon" and "max-age" in response.headers["Cache-Control"]
        icon = Image.open(io.BytesIO(await response.read()))
        assert icon.format == "ICO" and (32, 32) in icon.info["sizes"]
        assert (await client.get("/favicon.png")).status == 404  # a path with no route is still refused
        await agent.collect_once()
        body = await (await client.get("/metrics")).text()
    await agent.stop()
    assert value(body, "kube_gpu_exporter_http_rejected_total", reason="path") == 1


async def test_page_shows_every_gpu_mig_instance_and_holder(built_in):
    status, content_type, page = await _get(built_in, "/")
    assert status == 200 and content_type.startswith("text/html")
    document = json.loads((await _get(built_in, "/api/v1/status"))[2])
    dom = Dom(page)

    cards = dom.find("section", **{"class": "card"})
    assert [a["data-uuid"] for a, _ in cards] == [g["uuid"] for g in document["gpus"]]
    assert len(cards) == len(BUILT_IN.gpus)
    for (attrs, text), gpu in zip(cards, BUILT_IN.gpus):
        assert attrs["id"] == f"gpu-{gpu.index}" and gpu.model in text
    for namespace, pod in BUILT_IN_PODS:
        assert pod in dom.text and namespace in dom.text
    # The time-sliced GPU lists both notebooks; the MIG GPU its four instances, one of them free.
    shared = cards[1][1]
    assert "notebook-6d5f7c9b8-k2x7p" in shared and "notebook-6d5f7c9b8-wq9zt" in shared and "shared" in shared
    mig_card = cards[2][1]
    for profile in ("3g.40gb", "2g.20gb", "1g.10gb"):
        assert profile in mig_card
    assert "nightly-eval" in mig_card and "CronJob" in mig_card and "free" in mig_card
    # The agent's own state, and links relative to wherever the page is served (port-forward, proxy).
    assert "gpu-node-h100-01" in dom.text and "simulated" in dom.text
    for name in ("NVML", "kubelet pod-resources", "API server pod watch", "API server ResourceSlice watch", "procfs"):
        assert name in dom.text
    # A DRA claim's holder says which claim (the JSON's claim_name).
    claimed = [h for g in document["gpus"] for h in g["holders"] if h["claim_name"]]
    assert [h["claim_name"] for h in claimed] == ["dev-sandbox-gpu"]
    assert [text for _, text in dom.find("span", **{"class": "claim"})] == ["claim dev-sandbox-gpu"]
    assert {a["href"] for a, _ in dom.find("a")} == {"metrics", "healthz", "readyz", "api/v1/status"}


async def test_page_is_self_contained_refreshing_and_phone_sized(built_in):
    dom = Dom((await _get(built_in, "/"))[2])
    assert not dom.tags() & {"script", "link", "img", "iframe", "object"}
    assert not [a for _, a, _ in dom.elements if "src" in a or any(k.startswith("on") for k in a)]
    metas = {a.get("name") or a.get("http-equiv"): a["content"] for a, _ in dom.find("meta") if "content" in a}
    assert metas["viewport"].startswith("width=device-width")
    assert int(metas["refresh"]) >= 5


async def test_json_follows_its_schema_and_says_what_the_page_says(built_in):
    status, content_type, body = await _get(built_in, "/api/v1/status")
    assert status == 200 and content_type.startswith("application/json")
    document = json.loads(body)
    validate(document)
    assert document["node"] == "gpu-node-h100-01" and document["agent"]["simulated"] is True
    assert all(c["enabled"] and c["success"] for c in document["agent"]["collectors"].values())
    gpus = document["gpus"]
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    assert {(h["pod"], h["workload_kind"], h["workload"], h["shared"]) for h in gpus[0]["holders"]} == {
        ("train-llama-0-8xq2v", "Job", "train-llama", False)}
    notebooks = gpus[1]["holders"]
    assert sorted(h["pod"] for h in notebooks) == ["notebook-6d5f7c9b8-k2x7p", "notebook-6d5f7c9b8-wq9zt"]
    assert all(h["shared"] and h["memory_used_bytes"] > 0 for h in notebooks)
    migs = {m["gpu_instance_id"]: m for m in gpus[2]["mig_instances"]}
    assert sorted(migs) == [2, 3, 9, 10]
    assert [h["workload"] for h in migs[2]["holders"]] == ["nightly-eval"] and migs[10]["holders"] == []
    assert gpus[2]["holders"] == [] and gpus[2]["utilization_ratio"] is None  # NVML has none in MIG mode
    idle = gpus[3]
    assert idle["utilization_ratio"] == 0 and [h["pod"] for h in idle["holders"]] == ["dev-sandbox-5b8d7f6c9-r4n2j"]
    for gpu in gpus:
        assert gpu["model"] == "NVIDIA H100 80GB HBM3" and gpu["up"] and gpu["memory_total_bytes"] > 0
        assert gpu["temperature_slowdown_celsius"] > gpu["temperature_celsius"] > 0


async def test_every_collector_is_listed_the_switched_off_ones_as_disabled():
    """The page and the JSON list the agent's sources, those the flags switch off included: the
    ResourceSlice watch as much as the pod watch."""
    agent, client = _client_for(["--simulate", "--no-kubelet.enabled"])
    async with client:
        await agent.collect_once()
        document = json.loads((await _get(client, "/api/v1/status"))[2])
        dom = Dom((await _get(client, "/"))[2])
    await agent.stop()
    validate(document)
    collectors = document["agent"]["collectors"]
    assert {name: c["enabled"] for name, c in collectors.items()} == {
        "nvml": True, "procfs": True, "kubelet": False, "kubernetes": False, "resourceslices": False}
    assert all(c["success"] is None for c in collectors.values() if not c["enabled"])
    for title in ("kubelet pod-resources API", "API server pod watch", "API server ResourceSlice watch"):
        assert f"{title} disabled" in dom.text, title
    assert "NVML ok" in dom.text and "procfs ok" in dom.text


async def test_faults_show_as_problems_worst_first(tmp_path):
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(FAULT_SCENARIO)
    agent, client = _client_for(["--simulate", str(scenario)])
    async with client:
        await agent.collect_once()
        document = json.loads((await _get(client, "/api/v1/status"))[2])
        dom = Dom((await _get(client, "/"))[2])
    await agent.stop()
    validate(document)
    xid, thermal, ecc, lost = document["gpus"]
    assert xid["health"] == "critical" and xid["xid_events"] == {"79": 2}  # 79: reboot tier, as the alert
    assert xid["problems"][0] == {"level": "critical", "text": "XID 79 in the last 10 min: the GPU fell off the bus: "
                                                               "drain and power-cycle the node"}
    assert set(xid["xid_last_event_timestamps"]) == {"79"}
    assert thermal["health"] == "warning" and "hw_thermal_slowdown" in thermal["clock_events_active"]
    assert any("clocks held down" in p["text"] for p in thermal["problems"])
    assert ecc["health"] == "critical" and ecc["ecc_errors"]["uncorrected"] == 3
    assert lost["health"] == "critical" and not lost["up"] and lost["uuid"] == ""
    assert lost["problems"][0]["level"] == "critical" and "not answering" in lost["problems"][0]["text"]
    badges = [text for _, text in dom.find("span", **{"class": "health"})]
    assert badges == ["critical", "warning", "critical", "down"]
    assert "1 ok" not in dom.text and "0 ok, 1 warning, 3 critical" in dom.text
    assert [text for _, text in dom.find("span", **{"class": "xids"})] == ["79 x2", "none", "none", "none"]
    assert "uuid unknown" in dom.text and "no readings while the GPU is down" in dom.text


async def test_json_from_nvml_follows_its_schema(fake_nvml):
    """NVML answers integers where the simulated node has floats (the built-in node's JSON is
    validated above): the document is the same, type for type (two H100s, an A100 in MIG mode)."""
    agent = build_agent(parse_config(["--collector.interval", "60", "--no-kubelet.enabled", "--path.procfs="],
                                     environ={}))
    await agent.start_sources()
    await agent.collect_once()
    await agent.stop()
    document = json.loads(agent.status_page.json)
    validate(document)
    assert document["agent"]["simulated"] is False and len(document["gpus"]) == 3
    assert document["gpus"][2]["mig_instances"] and document["gpus"][0]["memory_total_bytes"] > 0


def _typed_node(number: type) -> dict:
    """The JSON of a one-GPU node with a MIG instance and a holder on each, every value read as
    ``number`` (NVML's ints, the simulated node's floats)."""
    n = number
    gpu = Gpu(0, "GPU-0", info={"model": "H100"}, samples=(
        Sample(catalog.UTILIZATION, n(1)), Sample(catalog.MEMORY_USED, n(3 << 30)),
        Sample(catalog.MEMORY_TOTAL, n(80 << 30)), Sample(catalog.TEMPERATURE, n(70)),
        Sample(catalog.TEMPERATURE_THRESHOLD, n(87), ("slowdown",)), Sample(catalog.POWER, n(300)),
        Sample(catalog.POWER_LIMIT, n(700)), Sample(catalog.ECC_ERRORS, n(0), ("corrected",)),
    ), mig_devices=(MigDevice("MIG-0", 1, 0, "1g.10gb", samples=(
        Sample(catalog.MIG_MEMORY_USED, n(1 << 30)), Sample(catalog.MIG_MEMORY_TOTAL, n(10 << 30)))),))
    holder = Holder("ns", "pod", "c", "nvidia.com/gpu", False, "Job", "train")
    attribution = Attribution(holders={"GPU-0": (holder,), "MIG-0": (holder,)},
                              usage={"GPU-0": (ContainerUsage("ns", "pod", "c", n(3 << 30), n(1)),),
                                     "MIG-0": (ContainerUsage("ns", "pod", "c", n(1 << 30), None),)})
    snapshot = GpuSnapshot((gpu,), n(0), xids={("GPU-0", 13): n(2)}, xid_last_event={("GPU-0", 13): n(990)})
    agent = _agent_status(n(1000), cycle_duration_seconds=n(0), gpu_snapshot_age_seconds=n(0),
                          errors={("nvml", "timeout"): n(1)})
    return json.loads(status.render(snapshot, attribution, agent, node="n").json)


def test_each_field_has_one_type_whatever_the_backend_gives():
    """Byte counts and counts are integers, every other number a float, whether the readings came
    as integers or floats: a script decoding into typed fields gets what the schema says."""
    StatusValidator.check_schema(STATUS_SCHEMA)
    for number in (int, float):
        document = _typed_node(number)
        validate(document)
        (gpu,) = document["gpus"]
        (mig,) = gpu["mig_instances"]
        assert [type(v) for v in (gpu["memory_used_bytes"], gpu["holders"][0]["memory_used_bytes"],
                                  mig["memory_total_bytes"], mig["holders"][0]["memory_used_bytes"])] == [int] * 4
        assert [type(v) for v in (gpu["temperature_celsius"], gpu["power_watts"], gpu["utilization_ratio"],
                                  gpu["holders"][0]["utilization_ratio"])] == [float] * 4
    # The check can fail: a byte count written as a float, a temperature as an integer.
    for field, wrong in (("memory_used_bytes", float(3 << 30)), ("temperature_celsius", 70)):
        with pytest.raises(jsonschema.ValidationError):
            validate({**document, "gpus": [{**gpu, field: wrong}]})


def _agent_status(now: float, **fields) -> AgentStatus:  # noqa: ANN003
    """The status of an agent that reads only the GPUs (the others switched off), at ``now``."""
    return AgentStatus(simulated=False, nvml_up=True, cycle_timestamp=now,
                       collectors={"nvml": CollectorStatus("NVML", True, 0.0, now)},
                       switched_off={name: name for name in ("kubelet", "kubernetes", "resourceslices", "procfs")},
                       **fields)


def _xid_node(now: float, last: dict[int, float], *, event_window: float = 600.0) -> dict:
    """The JSON of a one-GPU node whose XIDs (code -> unix time of the last event) came so long ago."""
    uuid = "GPU-0"
    snapshot = GpuSnapshot((Gpu(0, uuid, info={"model": "H100"}),), 0.0, xids={(uuid, c): 1 for c in last},
                           xid_last_event={(uuid, c): t for c, t in last.items()})
    page = status.render(snapshot, Attribution(), _agent_status(now), node="n", event_window=event_window)
    document = json.loads(page.json)
    validate(document)
    (gpu,) = document["gpus"]
    return gpu


def test_xids_are_graded_by_tier_as_the_alerts_grade_them():
    cases = {  # codes -> health, levels of the problems
        (48,): ("critical", ["critical"]), (79,): ("critical", ["critical"]),  # reset, reboot: a page
        (999,): ("warning", ["warning"]),  # a code nobody named: look at it
        (13,): ("ok", ["info"]), (63,): ("ok", ["info"]),  # an application fault, informational: the GPU is fine
        (13, 48, 999): ("critical", ["critical", "warning", "info"]),
    }
    for codes, (health, levels) in cases.items():
        gpu = _xid_node(1000.0, dict.fromkeys(codes, 990.0))
        assert (gpu["health"], [p["level"] for p in gpu["problems"]]) == (health, levels), codes
    gpu = _xid_node(1000.0, {13: 990.0, 48: 995.0, 74: 990.0})
    assert [p["text"] for p in gpu["problems"]] == [
        "XID 48, 74 in the last 10 min: the GPU needs a reset (drain the node, then nvidia-smi -r)",
        "XID 13 in the last 10 min: an application faulted; the GPU stays usable"]


def test_an_xid_mark_fades_after_the_event_window_and_its_count_stays():
    gpu = _xid_node(1000.0, {48: 400.0, 13: 390.0})  # 600 s and 610 s ago
    assert [p["text"][:6] for p in gpu["problems"]] == ["XID 48"] and gpu["health"] == "critical"
    gpu = _xid_node(1001.0, {48: 400.0, 13: 390.0})
    assert gpu["problems"] == [] and gpu["health"] == "ok"
    assert gpu["xid_events"] == {"13": 1, "48": 1} and gpu["xid_last_event_timestamps"] == {"13": 390.0, "48": 400.0}
    page = Dom(status.to_html(status.build(
        GpuSnapshot((Gpu(0, "GPU-0"),), 0.0, xids={("GPU-0", 48): 3}, xid_last_event={("GPU-0", 48): 400.0}),
        Attribution(), AgentStatus(simulated=False, nvml_up=True, cycle_timestamp=1001.0), node="n")))
    assert [text for _, text in page.find("span", **{"class": "xids"})] == ["48 x3"]
    assert [text for _, text in page.find("span", **{"class": "health"})] == ["ok"]
    # The window is the configured one (--alertmanager.event-window), as for the pushed alerts.
    assert _xid_node(1000.0, {48: 800.0}, event_window=120)["problems"] == []
    assert _xid_node(1000.0, {48: 900.0}, event_window=120)["problems"][0]["text"].startswith(
        "XID 48 in the last 2 min")


async def test_the_agent_grades_xids_with_its_configured_event_window(tmp_path):
    scenario = tmp_path / "xid.yaml"
    scenario.write_text("node: {name: n}\ngpus: [{model: NVIDIA H100 80GB HBM3}]\n"
                        "faults: {events: [{kind: xid, at: 0, gpu: 0, code: 48}]}\n")
    agent, client = _client_for(["--simulate", str(scenario), "--alertmanager.event-window", "0.000001"])
    async with client:
        await agent.collect_once()  # the XID is seen: stamped now
        await asyncio.sleep(0.01)
        await agent.collect_once()  # ... and out of a window of a microsecond by the next cycle
        document = json.loads((await _get(client, "/api/v1/status"))[2])
    await agent.stop()
    (gpu,) = document["gpus"]
    assert gpu["xid_events"] == {"48": 1} and gpu["problems"] == [] and gpu["health"] == "ok"


async def test_values_from_pods_are_escaped(tmp_path):
    scenario = tmp_path / "evil.yaml"
    scenario.write_text(EVIL_SCENARIO)
    agent, client = _client_for(["--simulate", str(scenario), "--kubernetes.enabled", "--kubernetes.pod-labels",
                                 "app", "--kubernetes.node-name", EVIL_NODE])
    async with client:
        await agent.start_sources(sync_timeout=5)
        await agent.collect_once()
        page = (await _get(client, "/"))[2]
        document = json.loads((await _get(client, "/api/v1/status"))[2])
    await agent.stop()
    assert "<script" not in page and "<img" not in page and "<b>bold" not in page and "<u>" not in page
    dom = Dom(page)
    assert not dom.tags() & {"script", "img", "u", "i", "svg"}
    assert "bold" not in [text for _, text in dom.find("b")]
    for value in (EVIL_POD, EVIL_NAMESPACE, EVIL_WORKLOAD, EVIL_CONTAINER, EVIL_NODE, "H100 80GB HBM3<br>",
                  f"app={EVIL_LABEL}"):
        assert value in dom.text, value
    holder = document["gpus"][0]["holders"][0]
    assert (holder["namespace"], holder["pod"], holder["workload"], holder["container"], holder["pod_labels"]) == (
        EVIL_NAMESPACE, EVIL_POD, EVIL_WORKLOAD, EVIL_CONTAINER, {"label_app": EVIL_LABEL})


def test_jinja2_is_loaded_by_the_first_page_and_never_under_once():
    """The page's templates need Jinja2 when a page is rendered: serving. ``--once`` prints the
    exposition and renders no page, so it never imports Jinja2 (nor pays its memory)."""
    code = textwrap.dedent("""
        import contextlib, io, sys
        from exporter.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["--simulate", "--once"]) == 0
        assert "nvidia_gpu_info{" in out.getvalue()
        assert "jinja2" not in sys.modules, "--once loaded jinja2"
        from exporter.render import status
        assert status.starting_page().startswith("<!doctype html>") and "jinja2" in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


# -- In a real browser ----------------------------------------------------------------------------


def _chromium(tmp_path: Path, *args: str) -> str:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test` installs the Debian package chromium"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _agent(args: list[str]) -> AgentProcess:
    agent = AgentProcess(args, env=dict(os.environ), interval=1)
    agent.wait_for(lambda body: "nvidia_gpu_allocation_info{" in body, what="the first attributed cycle")
    return agent


@pytest.mark.integration
def test_chromium_shows_the_gpus_and_pods_and_takes_the_screenshot(tmp_path):
    agent = _agent(["--simulate", "--kubernetes.enabled", "--kubernetes.node-name", "gpu-node-h100-01"])
    try:
        dom = Dom(_chromium(tmp_path, "--dump-dom", agent.url + "/"))
        shots = {name: tmp_path / f"{name}.png" for name in ("status-page", "status-page-phone")}
        _chromium(tmp_path, "--window-size=1280,1500", f"--screenshot={shots['status-page']}", agent.url + "/")
        _chromium(tmp_path, "--window-size=412,1900", "--force-device-scale-factor=1",
                  f"--screenshot={shots['status-page-phone']}", agent.url + "/")
    finally:
        agent.stop()
    cards = dom.find("section", **{"class": "card"})
    assert len(cards) == len(BUILT_IN.gpus)
    assert all(BUILT_IN.gpus[0].model in text for _, text in cards)
    for namespace, pod in BUILT_IN_PODS:
        assert pod in dom.text and namespace in dom.text
    assert "gpu-node-h100-01" in dom.text
    for name, path in shots.items():
        image = matplotlib.image.imread(path)
        assert image.shape[1] in (1280, 412) and image.std() > 0.05, f"{name} looks blank"
        if os.environ.get("UPDATE_IMAGES"):
            IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, IMAGES / path.name)


#: Lays the page out and writes, per GPU card, the rows its gauges take and, for each gauge's label
#: and value, its lines (its height over its line height) and whether its text stays in the card.
MEASURE = """<script>
addEventListener("DOMContentLoaded", () => {
  const cards = [...document.querySelectorAll("section.card")].map(card => {
    const box = card.getBoundingClientRect(), style = getComputedStyle(card);
    const left = box.left + parseFloat(style.borderLeftWidth) + parseFloat(style.paddingLeft);
    const right = box.right - parseFloat(style.borderRightWidth) - parseFloat(style.paddingRight);
    const gauges = [...card.querySelectorAll(".gauge")];
    return {
      rows: new Set(gauges.map(g => Math.round(g.getBoundingClientRect().top))).size,
      texts: gauges.flatMap(g => [...g.querySelectorAll(".label, .value")]).map(e => {
        const range = document.createRange();
        range.selectNodeContents(e);
        const text = range.getBoundingClientRect();
        return {text: e.textContent, lines: e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight),
                inside: text.left >= left - 0.5 && text.right <= right + 0.5};
      }),
    };
  });
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(cards);
  document.body.append(out);
});
</script>"""


@pytest.mark.integration
async def test_chromium_lays_each_gauge_on_one_line_from_a_phone_to_a_wide_screen(built_in, tmp_path):
    """Values such as "69.6 / 79.6 GiB" and "70 °C (slowdown 87)" never break: a card's gauges read
    on one row at common desktop widths, and two by two on a phone; no text leaves its card."""
    page = tmp_path / "status.html"
    page.write_text((await _get(built_in, "/"))[2].replace("</head>", MEASURE + "</head>"))
    for width, rows in ((1280, 1), (1400, 1), (1920, 1), (412, 2), (360, 2)):
        dom = Dom(_chromium(tmp_path, f"--window-size={width},1500", "--force-device-scale-factor=1", "--dump-dom",
                            page.as_uri()))
        (_, measured), = dom.find("pre", id="measured")
        cards = json.loads(measured)
        assert len(cards) == len(BUILT_IN.gpus)
        for card in cards:
            assert card["rows"] == rows and len(card["texts"]) == 8, (width, card)  # 4 gauges: label, value
            for text in card["texts"]:
                assert round(text["lines"], 1) == 1 and text["inside"], (width, text)


@pytest.mark.integration
def test_chromium_shows_html_in_pod_names_as_text(tmp_path):
    scenario = tmp_path / "evil.yaml"
    scenario.write_text(EVIL_SCENARIO)
    agent = _agent(["--simulate", str(scenario), "--kubernetes.enabled", "--kubernetes.pod-labels", "app",
                    "--kubernetes.node-name", EVIL_NODE])
    try:
        dom = Dom(_chromium(tmp_path, "--dump-dom", agent.url + "/"))
    finally:
        agent.stop()
    # The browser built no element from the names (no script ran: the title is the page's own).
    assert not dom.tags() & {"script", "img", "svg", "u", "i"}
    (_, title), = dom.find("title")
    assert "owned" != title and title.startswith(EVIL_NODE)
    for value in (EVIL_POD, EVIL_NAMESPACE, EVIL_WORKLOAD, EVIL_CONTAINER, EVIL_LABEL):
        assert value in dom.text, value
