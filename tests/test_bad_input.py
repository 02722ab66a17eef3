"""Bad input, property-based (hypothesis): whatever a source, a file or a client sends, the agent
keeps running, says what was wrong in its own terms, and its exposition stays valid (checked by the
prometheus_client parser and by ``promtool check metrics``).

Every property is bounded (a few dozen examples, no deadline) so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading

import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.cli import build_sources
from exporter.config import ConfigError, get_parser, parse_config
from exporter.model.kube import ContainerDevices, PodMeta, PodResources, ProcessOwners
from exporter.config import webconfig
from exporter.serve.guard import Guard, HttpLimits, start_server
from exporter.sources import procfs
from exporter.sources.simulate import ScenarioError, SimulatedBackend, load_scenario, load_scenario_text

BOUNDED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

#: Text as hostile as Kubernetes or a broken kubelet could send: quotes, backslashes, newlines,
#: unicode (incl. lone surrogates' neighbours and NUL), and sometimes 10 kB of it.
hostile_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(['"', "\\", "\n", '\\"\n', "}", '{a="b"}', "\u2028", "\x00", "é✓🚀", "# HELP x"]),
    st.just("x" * 10_000),
    st.just('\\"\n' * 3000),
)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    # Lint findings (e.g. a counter's name) are not validity errors; a parse error is.
    assert "error while linting" not in check.stdout + check.stderr and "parse" not in check.stderr.lower(), \
        check.stdout + check.stderr


# -- pod data from the kubelet and the API server ---------------------------------------------------


class HostileKubelet:
    error_kinds: tuple[str, ...] = ()

    def __init__(self, containers: tuple[ContainerDevices, ...]) -> None:
        self.containers = containers

    async def list_resources(self) -> PodResources:
        return PodResources(containers=self.containers)

    async def close(self) -> None:
        pass


class HostileApi:
    connected = True

    def __init__(self, pods: dict[str, PodMeta]) -> None:
        self._pods = pods

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_synced(self, timeout: float) -> bool:
        return True

    def pods(self) -> dict[str, PodMeta]:
        return self._pods

    def error_counts(self) -> dict[str, int]:
        return {}


SCENARIO = load_scenario(None)  # the built-in simulated node: real GPU uuids to aim at


@st.composite
def hostile_pods(draw):
    uuids = [g.uuid for g in SCENARIO.gpus]
    pods = []
    for i in range(draw(st.integers(1, 4))):
        namespace, name, container = draw(hostile_text), draw(hostile_text), draw(hostile_text)
        device = draw(st.one_of(hostile_text, st.sampled_from(uuids),
                                st.builds(lambda u, s: f"{u}::{s}", st.sampled_from(uuids), hostile_text)))
        pods.append((namespace, f"{name}-{i}", container, device, draw(hostile_text), draw(hostile_text)))
    return pods


NASTY = 'a"b\\c\nd}é🚀'
NASTY_POD = ("ns" + NASTY, "pod" + NASTY, "c" + NASTY, SCENARIO.gpus[0].uuid, NASTY + "x" * 10_000, NASTY)


@BOUNDED
@given(pods=hostile_pods())
@example(pods=[NASTY_POD])
def test_hostile_pod_names_labels_and_device_ids_keep_the_exposition_valid(pods):
    config = parse_config(["--simulate", "--kubernetes.enabled", "--kubernetes.pod-labels", "team",
                           "--collector.interval", "1"], environ={})
    containers = tuple(ContainerDevices(ns, name, container, "nvidia.com/gpu", (device,))
                       for ns, name, container, device, _, _ in pods)
    metas = {f"{ns}/{name}": PodMeta(ns, name, f"uid-{i}", "Deployment", workload, labels={"team": team})
             for i, (ns, name, _, _, team, workload) in enumerate(pods)}
    backend = SimulatedBackend(SCENARIO)
    agent = Agent(config, *build_sources(config, backend, kubelet=HostileKubelet(containers), pods=HostileApi(metas),
                                         process_owners=lambda pids: ProcessOwners()))

    async def cycle():
        try:
            return await agent.collect_once()
        finally:
            await agent.stop()

    text = asyncio.run(cycle()).text.decode()
    families = list(text_string_to_metric_families(text))  # parses: nothing escaped wrongly
    held = {(s.labels["namespace"], s.labels["pod"]) for f in families if f.name == "nvidia_gpu_allocation_info"
            for s in f.samples}
    assert held <= {(ns, name) for ns, name, *_ in pods}  # label values come back exactly as sent
    if pods == [NASTY_POD]:
        assert held == {(NASTY_POD[0], NASTY_POD[1])}
        (labels, ), = [[s.labels for s in f.samples] for f in families if f.name == "nvidia_gpu_allocation_info"]
        assert labels["label_team"] == NASTY_POD[4] and labels["workload"] == NASTY
    for f in families:
        if f.name == "nvidia_gpu_allocation_info":
            for s in f.samples:
                meta = metas.get(f"{s.labels['namespace']}/{s.labels['pod']}")
                if meta is not None and "label_team" in s.labels:
                    assert s.labels["label_team"] == meta.labels["team"]
    promtool_check(text)


# -- cgroup files -----------------------------------------------------------------------------------


cgroup_lines = st.one_of(
    hostile_text,
    st.builds(lambda uid, cid: f"0::/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{cid}.scope",
              hostile_text, hostile_text),
    st.builds(lambda a, b: f"12:memory:/kubepods/burstable/pod{a}/{b}", hostile_text, hostile_text),
)


@BOUNDED
@given(text=st.lists(cgroup_lines, max_size=5).map("\n".join))
def test_any_cgroup_file_parses_to_a_container_or_none(text):
    ref = procfs.parse_cgroup_file(text)
    assert ref is None or (isinstance(ref.pod_uid, str) and isinstance(ref.container_id, str))


def test_unreadable_odd_and_vanishing_proc_entries_cost_nothing(tmp_path):
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "cgroup").write_bytes(b"\xff\xfe\x00garbage\n" * 1000)
    (proc / "2").mkdir()
    (proc / "2" / "cgroup").mkdir()  # a directory where a file should be
    (proc / "3").mkdir()
    (proc / "3" / "cgroup").symlink_to(proc / "nowhere")
    found = procfs.Procfs(str(proc)).owners([1, 2, 3, 4, -1, 0, 2**40])
    assert not found.containers and found.host == {1}  # garbage names no container
    assert found.missing == {3, 4, -1, 0, 2**40} and set(found.unreadable) == {2}  # none of it raises


# -- files: scenario, config, web config ------------------------------------------------------------


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), hostile_text),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(hostile_text, st.sampled_from(
                                   ["gpus", "pods", "node", "seed", "faults", "model", "mig", "uuid", "devices",
                                    "tls_server_config", "basic_auth_users", "http_server_config", "cert_file",
                                    "key_file", "headers", "min_version", "client_auth_type"])), children, max_size=4)),
    max_leaves=12,
)


@BOUNDED
@given(data=yaml_values)
def test_any_scenario_file_is_a_scenario_or_a_list_of_problems(data):
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        load_scenario_text(text)
    except ScenarioError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)


@BOUNDED
@given(data=yaml_values)
def test_any_web_config_is_loaded_or_every_problem_named(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("web") / "web.yml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    try:
        webconfig.load(path)
    except webconfig.WebConfigError as error:
        assert error.problems and all(str(path) in p for p in error.problems)


@BOUNDED
@given(data=st.binary(max_size=300))
def test_web_config_bytes_that_are_not_yaml_are_named(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("web") / "web.yml"
    path.write_bytes(data)
    try:
        webconfig.load(path)
    except webconfig.WebConfigError as error:
        assert error.problems


FLAGS = [a for a in get_parser()._actions if a.option_strings and a.dest not in ("help", "version")]


@BOUNDED
@given(values=st.lists(st.tuples(st.sampled_from([a.option_strings[0] for a in FLAGS if a.nargs != 0]),
                                 hostile_text.filter(lambda s: not s.startswith("-") and "\x00" not in s)),
                       max_size=4))
def test_any_flag_value_is_a_config_or_every_problem_named(values):
    argv = [part for pair in values for part in pair]
    try:
        parse_config(argv, environ={})
    except ConfigError as error:
        assert error.problems
    except SystemExit as exit_:  # argparse's own refusal (e.g. a value for --once)
        assert exit_.code == 2


# -- HTTP requests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server():
    """The guarded listener in a thread of its own; yields its port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="up 1\n")

    async def main() -> None:
        guard = Guard(webconfig.WebConfig(), HttpLimits(idle_timeout=1.0, read_timeout=1.0, write_timeout=1.0))
        app = web.Application(middlewares=[guard.middleware])
        app.router.add_get("/metrics", metrics)
        state["runner"], site = await start_server(app, "127.0.0.1", 0, guard=guard)
        state["port"] = site.port
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield state["port"]
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def exchange(port: int, raw: bytes, half_close: bool = True) -> bytes:
    """Send ``raw`` and read until the server closes; ``half_close`` ends our side at once, so an
    incomplete request is closed now rather than at the idle timeout (asyncio closes on EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # closed on us already: also an answer
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


request_parts = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, p, h: b"%s %s HTTP/1.1\r\n%s\r\n" % (m, p, h),
              st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"get", b"\x00", b"CONNECT", b""]),
              st.one_of(st.just(b"/metrics"), st.binary(max_size=50)),
              st.lists(st.binary(max_size=60).map(lambda b: b + b"\r\n"), max_size=5).map(b"".join)),
)


@BOUNDED
@given(raw=request_parts)
def test_any_request_bytes_get_an_http_answer_or_a_close_and_the_server_keeps_serving(http_server, raw, caplog):
    answer = exchange(http_server, raw)
    assert answer == b"" or answer.startswith(b"HTTP/1.")
    assert b"Traceback" not in answer
    scrape = b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"
    assert exchange(http_server, scrape, half_close=False).startswith(b"HTTP/1.1 200")
    assert not [r for r in caplog.records if r.exc_info]


# -- the kubelet's answer, through the real gRPC client ------------------------------------------------


@pytest.fixture(scope="module")
def kubelet():
    from fakekubelet import FakeKubelet

    server = FakeKubelet().start()
    yield server
    server.close()


@BOUNDED
@given(pods=st.lists(st.tuples(hostile_text, hostile_text, hostile_text, hostile_text), min_size=1, max_size=3))
def test_any_names_and_device_ids_from_the_kubelet_come_through_exactly_or_are_refused(kubelet, pods):
    from exporter.sources.kubelet.client import PodResourcesClient
    from exporter.sources.kubelet.client import KubeletError

    kubelet.set_pods([{"namespace": ns, "name": name, "containers": [
        {"name": container, "devices": [{"resource": "nvidia.com/gpu", "ids": [device]}]}]}
        for ns, name, container, device in pods])

    async def list_once():
        client = PodResourcesClient(kubelet.socket_path, timeout_seconds=5)
        try:
            return await client.list_resources()
        finally:
            await client.close()

    try:
        listed = asyncio.run(list_once())
    except KubeletError as error:  # e.g. a container without a name: refused as a whole, by kind
        assert error.kind == "invalid_response"
        assert any(not part for ns, name, container, _ in pods for part in (ns, name, container))
        return
    got = {(c.namespace, c.pod, c.container, d) for c in listed.containers for d in c.device_ids}
    assert got == {(ns, name, container, device) for ns, name, container, device in pods if device}
