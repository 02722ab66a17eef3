"""The push path: which alerts a cycle makes (EventTracker), and their delivery to a real
Alertmanager (Debian's prometheus-alertmanager, on a loopback port) with auth, TLS, retries and a
bounded queue. ``Alertmanager`` and ``Webhook`` are shared with tests/test_alerting_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web

from conftest import wait_until, wait_until_async
from e2e import AgentProcess, free_port, samples
from exporter import catalog
from exporter.push.events import EventTracker
from exporter.push.notifier import AlertmanagerNotifier
from exporter.attribution import Attribution, Holder
from exporter.cli import build_agent
from exporter.config import ConfigError, parse_config
from exporter.model.gpu import Gpu, GpuSnapshot, MigDevice, Sample

NODE = "gpu-node-1"
GPU0, GPU1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-00000000-0000-4000-8000-000000000001"


# -- real binaries -------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen) -> None:
    """Stop a binary the test started, by its pid: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Alertmanager:
    """``prometheus-alertmanager`` on a free loopback port with its own config and storage."""

    def __init__(self, directory: Path, config: str, *, web_config: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, auth: str | None = None) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        assert binary, "alertmanager is missing: `make test` installs the Debian package prometheus-alertmanager"
        self.port = free_port()
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self.ssl_context = ssl_context
        self.headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        (directory / "alertmanager.yml").write_text(config)
        command = [binary, f"--config.file={directory / 'alertmanager.yml'}",
                   f"--storage.path={directory / 'am-data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                   "--cluster.listen-address=", "--log.level=warn"]
        if web_config is not None:
            (directory / "am-web.yml").write_text(web_config)
            command.append(f"--web.config.file={directory / 'am-web.yml'}")
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=self._log, text=True)
        wait_until(lambda: self._get("/-/ready") is not None, message="alertmanager to be ready")

    def _get(self, path: str) -> Any:
        if self.process.poll() is not None:
            self._log.seek(0)
            raise AssertionError(f"alertmanager exited: {self._log.read()}")
        request = urllib.request.Request(self.url + path, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context) as response:
                body = response.read()
                return json.loads(body) if body.startswith((b"[", b"{")) else body
        except (urllib.error.URLError, OSError):
            return None

    def alerts(self, **match: str) -> list[dict[str, Any]]:
        """Active alerts whose labels include ``match``."""
        return [a for a in self._get("/api/v2/alerts") or []
                if all(a["labels"].get(k) == v for k, v in match.items())]

    def stop(self) -> None:
        stop_process(self.process)


class Webhook:
    """An HTTP receiver in a thread: Alertmanager's webhook notifications, in order."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.notifications = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


NULL_RECEIVER = 'route: {receiver: "null", group_wait: 0s}\nreceivers: [{name: "null"}]\n'


@pytest.fixture
def alertmanager(tmp_path):
    started: list[Alertmanager] = []

    def start(config: str = NULL_RECEIVER, **kw: Any) -> Alertmanager:
        started.append(Alertmanager(tmp_path, config, **kw))
        return started[-1]

    yield start
    for am in started:
        am.stop()


# -- cycles -> alerts ----------------------------------------------------------------------------


def gpu(index: int, uuid: str, *, up: bool = True, uncorrected: float | None = 0, migs: tuple[MigDevice, ...] = (),
        kind: str | None = None) -> Gpu:
    readings = () if uncorrected is None else (Sample(catalog.ECC_ERRORS, uncorrected, ("uncorrected",)),)
    return Gpu(index, uuid, up=up, samples=readings if up else (), mig_devices=migs,
               error_kind=None if up else kind or "gpu_is_lost")


def xids(gpus: tuple[Gpu, ...], counts: dict[tuple[str, int], int], last: dict[tuple[str, int], float],
         **kw: Any) -> GpuSnapshot:
    """A cycle's snapshot with XID counts and the unix time each last grew (as the collector stamps it)."""
    return GpuSnapshot(gpus, 0.0, xids=counts, xid_last_event=last, **kw)


def holder(namespace: str, pod: str, container: str = "main") -> Holder:
    return Holder(namespace, pod, container, "nvidia.com/gpu", False, "Job", "train")


def labels_of(active) -> list[dict[str, str]]:
    return sorted((dict(a.labels) for a in active.values()), key=lambda d: sorted(d.items()))


def test_a_reset_tier_xid_is_an_alert_for_the_event_window_with_the_rules_label_set():
    tracker = EventTracker(NODE, {"cluster": "prod"}, event_window=600)
    held = Attribution(holders={GPU0: (holder("ml", "train-0"),)})
    snapshot = xids((gpu(0, GPU0), gpu(1, GPU1)), {(GPU0, 62): 1, (GPU1, 13): 4},
                    {(GPU0, 62): 1000.0, (GPU1, 13): 990.0})

    active = tracker.update(snapshot, held, now=1000.0)
    assert labels_of(active) == [{"alertname": "GpuXidResetRequired", "severity": "critical", "node": NODE,
                                  "gpu": "0", "uuid": GPU0, "cluster": "prod"}]  # XID 13: application tier, not pushed
    (alert,) = active.values()
    assert alert.annotations == {
        "summary": "A GPU reported an XID error that needs a GPU reset.",
        "description": f"GPU 0 ({GPU0}) on node {NODE} reported an XID error after which the GPU needs a reset "
                       "(drain the node, then nvidia-smi -r) before it can be trusted again; the codes are in the "
                       "xids annotation.",
        "runbook_url": "https://github.com/kube-gpu-exporter/kube-gpu-exporter/blob/main/docs/runbooks.md"
                       "#gpuxidresetrequired",
        "holders": "ml/train-0", "xids": "62"}

    assert tracker.update(snapshot, held, now=1500.0)[alert.key].starts_at == 1000.0  # still active, same start
    assert tracker.update(snapshot, held, now=1601.0) == {}  # no new event within the window
    again = xids(snapshot.gpus, {(GPU0, 62): 2}, {(GPU0, 62): 1700.0})
    assert list(tracker.update(again, held, now=1700.0)) == [alert.key]  # the next event: active again


def test_xid_alerts_are_one_per_gpu_and_tier_with_the_codes_of_the_window_in_an_annotation():
    tracker = EventTracker(NODE, {}, event_window=600)
    last = {(GPU0, 48): 1000.0, (GPU0, 74): 1300.0, (GPU0, 79): 1300.0, (GPU0, 13): 1300.0, (GPU0, 999): 1300.0}
    snapshot = xids((gpu(0, GPU0),), dict.fromkeys(last, 1), last)

    def alerts(now: float) -> dict[str, str]:
        active = tracker.update(snapshot, Attribution(), now)
        return {a.labels["alertname"]: a.annotations["xids"] for a in active.values()}

    assert alerts(1300.0) == {"GpuXidResetRequired": "48, 74", "GpuXidRebootRequired": "79"}
    assert alerts(1700.0) == {"GpuXidResetRequired": "74", "GpuXidRebootRequired": "79"}  # 48 left the window
    assert alerts(1901.0) == {}


def test_the_holders_are_an_annotation_and_every_pod_on_the_gpu_or_its_mig_instances():
    migs = (MigDevice("MIG-a", 1, 0, "3g.40gb"), MigDevice("MIG-b", 2, 0, "3g.40gb"))
    snapshot = xids((gpu(0, GPU0), gpu(1, GPU1, migs=migs)), {(GPU0, 79): 1, (GPU1, 48): 1},
                    {(GPU0, 79): 1.0, (GPU1, 48): 1.0})
    attribution = Attribution(holders={
        GPU0: (holder("lab", "nb-b"), holder("lab", "nb-a"), holder("lab", "nb-a", "sidecar")),
        "MIG-a": (holder("ml", "eval-0", "a"),), "MIG-b": (holder("ml", "eval-0", "b"), holder("dev", "x"))})
    active = EventTracker(NODE, {}, 600).update(snapshot, attribution, now=1.0)
    assert labels_of(active) == [
        {"alertname": "GpuXidRebootRequired", "severity": "critical", "node": NODE, "gpu": "0", "uuid": GPU0},
        {"alertname": "GpuXidResetRequired", "severity": "critical", "node": NODE, "gpu": "1", "uuid": GPU1},
    ]
    assert {a.labels["uuid"]: a.annotations["holders"] for a in active.values()} == {
        GPU0: "lab/nb-a, lab/nb-b", GPU1: "dev/x, ml/eval-0"}


def test_a_holder_change_or_a_kubelet_outage_changes_no_alert_only_its_holders_annotation():
    tracker = EventTracker(NODE, {"cluster": "prod"}, 600)
    snapshot = xids((gpu(0, GPU0, uncorrected=1), gpu(1, GPU1, up=False)), {(GPU0, 48): 1}, {(GPU0, 48): 100.0})
    first = tracker.update(snapshot, Attribution(holders={GPU0: (holder("ml", "train-0"),),
                                                          GPU1: (holder("ml", "serve-0"),)}), now=100.0)
    assert sorted(a.labels["alertname"] for a in first.values()) == ["GpuLost", "GpuXidResetRequired"]
    next_pod = Attribution(holders={GPU0: (holder("ml", "train-1"),)})  # the Job's next pod; then no kubelet
    for attribution, holders in ((next_pod, {GPU0: "ml/train-1", GPU1: ""}), (Attribution(), {GPU0: "", GPU1: ""})):
        later = tracker.update(snapshot, attribution, now=200.0)
        assert list(later) == list(first)  # the same alerts: none resolved, none new ...
        assert [a.starts_at for a in later.values()] == [a.starts_at for a in first.values()]  # ... same start
        assert {a.labels["uuid"]: a.annotations["holders"] for a in later.values()} == holders


def test_uncorrectable_ecc_counts_from_the_first_reading():
    tracker = EventTracker(NODE, {}, 600)
    none = Attribution()

    def names(*gpus: Gpu, now: float) -> list[tuple[str, str]]:
        active = tracker.update(GpuSnapshot(gpus, 0.0), none, now)
        return sorted((a.labels["alertname"], a.labels["uuid"]) for a in active.values())

    assert names(gpu(0, GPU0, uncorrected=3), gpu(1, GPU1), now=0) == []  # errors from before: the baseline
    assert names(gpu(0, GPU0, uncorrected=4), gpu(1, GPU1), now=10) == [("GpuEccUncorrectableErrors", GPU0)]
    assert names(gpu(0, GPU0, uncorrected=4), gpu(1, GPU1), now=700) == []  # window over
    assert names(gpu(0, GPU0, uncorrected=0), gpu(1, GPU1), now=710) == []  # a driver reload: new baseline
    assert names(gpu(0, GPU0, uncorrected=1), gpu(1, GPU1), now=720) == [("GpuEccUncorrectableErrors", GPU0)]


def lost(tracker: EventTracker, *gpus: Gpu, now: float, nvml_up: bool = True) -> dict[str, float]:
    """uuid -> startsAt of the GpuLost alerts active after a cycle."""
    active = tracker.update(GpuSnapshot(gpus, 0.0, nvml_up=nvml_up), Attribution(), now)
    return {a.labels["uuid"]: a.starts_at for a in active.values() if a.labels["alertname"] == "GpuLost"}


def test_gpu_lost_is_pushed_at_once_when_nvml_says_the_gpu_is_lost():
    tracker = EventTracker(NODE, {}, 600)
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1), now=0) == {}
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1, up=False, kind="gpu_is_lost"), now=10) == {GPU1: 10}
    # Lost, then its reads hang: still the same spell, still lost.
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1, up=False, kind="timeout"), now=20) == {GPU1: 10}
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1), now=30) == {}  # back


def test_a_hung_read_pages_nobody_unless_the_gpu_stays_down_as_long_as_the_rules_for():
    tracker = EventTracker(NODE, {}, 600)
    hung = gpu(1, GPU1, up=False, kind="timeout")
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1), now=0) == {}
    assert lost(tracker, gpu(0, GPU0), hung, now=10) == {}  # one read past --collector.timeout
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1), now=20) == {}
    for now in range(30, 90, 10):  # down from 30 s on: the rule's for: 1m ends at 90 s
        assert lost(tracker, gpu(0, GPU0), hung, now=now) == {}, now
    assert lost(tracker, gpu(0, GPU0), hung, now=90) == {GPU1: 30}  # starts when the spell did, as the rule's
    unknown = gpu(1, GPU1, up=False, kind="unknown")  # any other failure counts the same
    assert lost(tracker, gpu(0, GPU0), unknown, now=100) == {GPU1: 30}


def test_an_nvml_restart_pushes_no_gpu_lost():
    """NVML down as a whole reads as every GPU down: KubeGpuExporterNvmlDown's alert, not one GpuLost a GPU."""
    tracker = EventTracker(NODE, {}, 600)
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1), now=0) == {}
    for now in range(10, 300, 10):
        down = [gpu(i, u, up=False, kind="restart" if now == 10 else "init") for i, u in enumerate((GPU0, GPU1))]
        assert lost(tracker, *down, now=now, nvml_up=False) == {}, now
    # Back with one GPU down: its spell starts now, not with the restart.
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1, up=False, kind="timeout"), now=300) == {}
    assert lost(tracker, gpu(0, GPU0), gpu(1, GPU1, up=False, kind="timeout"), now=360) == {GPU1: 300}
    # A lost GPU's alert resolves while NVML is down, as the rule's does (unless nvml_up == 0).
    assert lost(tracker, gpu(0, GPU0, up=False, kind="restart"), gpu(1, GPU1, up=False, kind="restart"), now=370,
                nvml_up=False) == {}


# -- delivery ---------------------------------------------------------------------------------------


def notifier_config(url: str, *extra: str):
    return parse_config(["--simulate", "--kubernetes.node-name", NODE, "--alertmanager.url", url,
                         "--alertmanager.label", "cluster=test", "--alertmanager.event-window", "2", *extra],
                        environ={})


def counts(notifier: AlertmanagerNotifier) -> dict[str, float]:
    return {s.labels[1]: s.value for s in notifier.self_metrics() if s.metric is catalog.ALERTMANAGER_NOTIFICATIONS}


def queue_lengths(notifier: AlertmanagerNotifier) -> list[tuple[str, float]]:
    return [(s.labels[0], s.value) for s in notifier.self_metrics() if s.metric is catalog.ALERTMANAGER_QUEUE_LENGTH]


def xid_now() -> GpuSnapshot:
    """XID 62 on GPU 0, just now (the window of these notifiers is 2 s)."""
    return xids((gpu(0, GPU0),), {(GPU0, 62): 1}, {(GPU0, 62): time.time()})


@pytest.mark.integration
async def test_a_pushed_alert_reaches_a_real_alertmanager_and_resolves_there(alertmanager):
    am = alertmanager()
    notifier = AlertmanagerNotifier(notifier_config(am.url))
    await notifier.start()
    xid = xid_now()
    try:
        notifier.update(xid, Attribution())
        (alert,) = await asyncio.to_thread(wait_until, lambda: am.alerts(alertname="GpuXidResetRequired"),
                                           message="the pushed alert in Alertmanager")
        assert alert["labels"] == {"alertname": "GpuXidResetRequired", "severity": "critical", "node": NODE,
                                   "gpu": "0", "uuid": GPU0, "cluster": "test"}
        assert alert["annotations"]["summary"] == "A GPU reported an XID error that needs a GPU reset."
        assert (alert["annotations"]["xids"], alert["annotations"]["holders"]) == ("62", "")

        await asyncio.to_thread(wait_until, lambda: counts(notifier) == {"sent": 1, "failed": 0, "dropped": 0},
                                message="the batch counted as sent")

        async def resolved() -> bool:
            notifier.update(xid, Attribution())  # the same count: no new event; resolves after the 2 s window
            return not await asyncio.to_thread(am.alerts, alertname="GpuXidResetRequired")

        await wait_until_async(resolved, message="the alert resolved in Alertmanager")
        await asyncio.to_thread(wait_until, lambda: counts(notifier) == {"sent": 2, "failed": 0, "dropped": 0},
                                message="the resolving batch counted as sent")
    finally:
        await notifier.stop()


async def test_a_holder_change_updates_the_pushed_alert_in_place():
    """The next batch carries the same alert (labels, startsAt, endsAt ahead) with the new holders,
    and no resolved copy: Alertmanager updates the alert, it does not resolve and re-open it."""
    notifier = AlertmanagerNotifier(notifier_config("http://127.0.0.1:9"))  # never started: nothing is posted
    (target,) = notifier.targets
    xid = xid_now()
    notifier.update(xid, Attribution(holders={GPU0: (holder("ml", "train-0"),)}))
    notifier.update(xid, Attribution(holders={GPU0: (holder("ml", "train-0"),)}))  # nothing changed: no batch
    notifier.update(xid, Attribution(holders={GPU0: (holder("ml", "train-1"),)}))
    first, second = target.queue
    (before,), (after,) = first, second
    assert after["labels"] == before["labels"] and after["startsAt"] == before["startsAt"]
    assert after["endsAt"] > after["startsAt"]  # still firing
    assert (before["annotations"]["holders"], after["annotations"]["holders"]) == ("ml/train-0", "ml/train-1")


class Untouchable:
    """A queue that may not be read: what the render thread must never do with the loop's deque."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the queue was read ({name}) outside the event loop")

    def __iter__(self):
        raise AssertionError("the queue was iterated outside the event loop")

    def __len__(self) -> int:
        raise AssertionError("the queue was measured outside the event loop")


async def test_the_self_metrics_are_figures_taken_on_the_loop_not_reads_of_the_queue():
    """``self_metrics`` may run beside the loop popping the queue: it must read only the figures
    the loop computed (iterating the deque there can fail the whole rendering)."""
    notifier = AlertmanagerNotifier(notifier_config("http://127.0.0.1:9"), max_batches=2)
    (target,) = notifier.targets
    for n in range(4):  # three batches (start, resolve, start) into a queue of two: one dropped
        notifier.update(GpuSnapshot((gpu(0, GPU0, up=n % 2 == 0),), 0.0), Attribution())
    queue, target.queue = target.queue, Untouchable()
    try:
        sent, queued = counts(notifier), queue_lengths(notifier)
    finally:
        target.queue = queue
    assert sent == {"sent": 0, "failed": 0, "dropped": 1}
    assert queued == [("http://127.0.0.1:9", 2)]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alertmanager")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "am.crt", directory / "am.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.integration
async def test_basic_auth_and_a_private_ca_from_files(alertmanager, tmp_path):
    cert, key = _self_signed(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web_config = f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\nbasic_auth_users: {{pager: '{hashed}'}}\n"
    am = alertmanager(web_config=web_config, ssl_context=ssl.create_default_context(cafile=str(cert)),
                      auth="pager:s3cret")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("pager:s3cret\n")
    bad.write_text("pager:wrong\n")

    right = AlertmanagerNotifier(notifier_config(am.url, "--alertmanager.basic-auth-file", str(good),
                                                 "--alertmanager.tls-ca-file", str(cert)))
    wrong = AlertmanagerNotifier(notifier_config(am.url, "--alertmanager.basic-auth-file", str(bad),
                                                 "--alertmanager.tls-ca-file", str(cert)))
    for n in (right, wrong):
        await n.start()
    try:
        wrong.update(xid_now(), Attribution())
        await asyncio.to_thread(wait_until, lambda: counts(wrong)["failed"] == 1, message="a 401 counted as failed")
        assert am.alerts() == []
        right.update(xid_now(), Attribution())
        await asyncio.to_thread(wait_until, lambda: am.alerts(alertname="GpuXidResetRequired"), message="the alert over TLS")
        await asyncio.to_thread(wait_until, lambda: counts(right)["sent"] == 1, message="the batch counted as sent")
    finally:
        for n in (right, wrong):
            await n.stop()


async def test_a_bearer_token_is_read_from_its_file_at_each_post(tmp_path):
    # Alertmanager itself has no bearer-token auth (a proxy in front of it does): a receiver that
    # records the header stands in for that proxy.
    seen: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/v2/alerts", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    token = tmp_path / "token"
    token.write_text("first\n")
    notifier = AlertmanagerNotifier(notifier_config(f"http://127.0.0.1:{port}",
                                                    "--alertmanager.bearer-token-file", str(token)))
    await notifier.start()
    try:
        notifier.update(xid_now(), Attribution())
        await asyncio.to_thread(wait_until, lambda: len(seen) == 1, message="the first post")
        token.write_text("rotated\n")
        notifier.update(GpuSnapshot((gpu(0, GPU0, up=False),), 0.0), Attribution())  # a new alert: a new batch
        await asyncio.to_thread(wait_until, lambda: len(seen) >= 2, message="the next post")
        assert seen[0] == "Bearer first" and seen[-1] == "Bearer rotated"
    finally:
        await notifier.stop()
        await runner.cleanup()


async def test_a_hanging_alertmanager_fills_a_bounded_queue_then_drops_and_fails():
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = notifier_config(f"http://127.0.0.1:{port}", "--alertmanager.timeout", "0.3")
    notifier = AlertmanagerNotifier(config, max_batches=2, attempts=2, backoff=0.05)
    await notifier.start()
    try:
        for n in range(6):  # every update changes the set: six batches of one alert
            notifier.update(GpuSnapshot((gpu(0, GPU0, up=n % 2 == 0),), 0.0), Attribution())
        assert counts(notifier)["dropped"] >= 3  # at most two wait, one may be on the wire
        await asyncio.to_thread(wait_until, lambda: counts(notifier)["failed"] >= 1, message="a batch failed after retries")
        ((_, queued),) = queue_lengths(notifier)
        assert queued <= 2
    finally:
        await notifier.stop()
        server.close()
        for writer in accepted:
            writer.close()


@pytest.mark.integration
def test_the_agent_collects_and_serves_while_alertmanager_hangs(tmp_path):
    """The agent process, pushing to an Alertmanager that accepts and never answers: cycles go on,
    scrapes are served, and the failures show in the self-metric."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    scenario = tmp_path / "lost.yaml"
    scenario.write_text("node: {name: n}\ngpus: [{model: NVIDIA H100 80GB HBM3}]\n"
                        "faults: {events: [{kind: gpu_lost, at: 1, gpu: 0, duration: 3600}]}\n")
    agent = AgentProcess(["--simulate", str(scenario), "--kubernetes.node-name", NODE, "--alertmanager.url", url,
                          "--alertmanager.timeout", "0.5"], env=dict(os.environ), interval=0.2)
    try:
        agent.wait_for(lambda b: "kube_gpu_exporter_last_cycle_timestamp_seconds" in b, what="the first cycle")
        body = agent.after_cycles(5)
        assert samples(body, "kube_gpu_exporter_alertmanager_notifications_total", alertmanager=url)
        agent.wait_for(lambda b: any(v >= 1 for _, v in samples(
            b, "kube_gpu_exporter_alertmanager_queue_length", alertmanager=url)) or any(
            v >= 1 for _, v in samples(b, "kube_gpu_exporter_alertmanager_notifications_total", result="failed")),
            what="the stuck alert queued or failed")
    finally:
        agent.stop()
        listener.close()


@pytest.mark.parametrize("url", ["http://user:secret@alertmanager:9093", "https://user@alertmanager:9093/am",
                                 "http://:secret@alertmanager:9093"])
def test_credentials_in_the_url_are_refused_without_showing_them(url, capsys):
    """The URL is the alertmanager label of an unauthenticated /metrics, and is logged: a password
    in it belongs in --alertmanager.basic-auth-file."""
    from exporter.cli import main

    assert main(["--simulate", "--alertmanager.url", url]) == 2
    err = capsys.readouterr().err
    assert "holds credentials, which would show in /metrics and the logs: put username:password in " \
           "--alertmanager.basic-auth-file" in err
    assert "<credentials>@alertmanager:9093" in err and "secret" not in err and "user" not in err.replace("username", "")
    with pytest.raises(ConfigError, match="KUBE_GPU_EXPORTER_ALERTMANAGER_URL: .* holds credentials"):
        parse_config([], environ={"NODE_NAME": NODE, "KUBE_GPU_EXPORTER_ALERTMANAGER_URL": url})


@pytest.mark.integration
def test_a_simulated_node_pushes_under_its_scenario_name_without_a_node_name(alertmanager, tmp_path):
    am = alertmanager()
    scenario = tmp_path / "xid.yaml"
    scenario.write_text("node: {name: sim-node-3}\ngpus: [{model: NVIDIA H100 80GB HBM3}]\n"
                        "faults: {events: [{kind: xid, at: 0, gpu: 0, code: 79}]}\n")
    assert parse_config(["--simulate", str(scenario), "--alertmanager.url", am.url], environ={}).node_name == ""
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME" and not k.startswith("KUBE_GPU_EXPORTER_")}
    agent = AgentProcess(["--simulate", str(scenario), "--alertmanager.url", am.url], env=env, interval=0.2)
    try:
        alerts = wait_until(lambda: am.alerts(alertname="GpuXidRebootRequired"), message="the pushed alert in Alertmanager")
        assert {a["labels"]["node"] for a in alerts} == {"sim-node-3"}
    finally:
        agent.stop()
    # --kubernetes.node-name still wins over the scenario's name, as for the status page.
    config = parse_config(["--simulate", str(scenario), "--alertmanager.url", am.url,
                           "--kubernetes.node-name", NODE], environ={})
    assert build_agent(config).config.node_name == NODE


# -- the example configuration ---------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "alerts" / "alertmanager-example.yaml"


def _amtool(*args: str) -> subprocess.CompletedProcess:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: `make test` installs the Debian package prometheus-alertmanager"
    return subprocess.run([amtool, *args], capture_output=True, text=True)


def test_the_example_configuration_is_valid_and_routes_by_severity():
    check = _amtool("check-config", str(EXAMPLE))
    assert check.returncode == 0, check.stdout + check.stderr
    for severity, receiver in (("critical", "gpu-pager"), ("warning", "gpu-tickets"), ("info", "gpu-info")):
        route = _amtool("config", "routes", "test", f"--config.file={EXAMPLE}", f"severity={severity}", "node=n")
        assert route.stdout.strip().splitlines()[-1] == receiver, route.stdout + route.stderr


@pytest.mark.integration
def test_the_example_inhibitions_in_a_real_alertmanager(alertmanager):
    """The cause silences the symptom, never the reverse: XID 79 and GpuLost on one GPU notify the
    XID alone; GpuLost silences what follows from it on its GPU, not what may explain it."""
    am = alertmanager(EXAMPLE.read_text())
    gpu0 = {"cluster": "c", "node": NODE, "gpu": "0", "uuid": GPU0}
    gpu1 = {**gpu0, "gpu": "1", "uuid": GPU1}
    holder = {"namespace": "ml", "pod": "train-0", "container": "main", "workload_kind": "Job", "workload": "train"}
    posted = [
        {"alertname": "GpuXidRebootRequired", "severity": "critical", **gpu0},  # the cause: notifies
        {"alertname": "GpuLost", "severity": "critical", **gpu0},  # explained by the XID: inhibited
        {"alertname": "GpuBatchJobStuck", "severity": "warning", **gpu0, **holder},  # follows from the loss
        {"alertname": "GpuThermalCapping", "severity": "warning", **gpu0},  # may explain it: not inhibited
        {"alertname": "GpuLost", "severity": "critical", **gpu1},  # no XID on this GPU: notifies
        {"alertname": "GpuXidApplicationError", "severity": "info", **gpu1},  # the node's XID 79 inhibits it
        {"alertname": "GpuXidInformational", "severity": "info", **gpu1},  # unrelated to XID 79
    ]
    request = urllib.request.Request(am.url + "/api/v2/alerts", method="POST", data=json.dumps(
        [{"labels": labels} for labels in posted]).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()

    def states() -> dict[tuple[str, str], str]:
        return {(a["labels"]["alertname"], a["labels"]["gpu"]): a["status"]["state"] for a in am.alerts()}

    expected = {("GpuXidRebootRequired", "0"): "active", ("GpuLost", "0"): "suppressed",
                ("GpuBatchJobStuck", "0"): "suppressed", ("GpuThermalCapping", "0"): "active",
                ("GpuLost", "1"): "active", ("GpuXidApplicationError", "1"): "suppressed",
                ("GpuXidInformational", "1"): "active"}
    wait_until(lambda: states() == expected, message=f"inhibitions {expected}")


# -- flags -------------------------------------------------------------------------------------------


def test_alertmanager_flags_from_the_command_line_and_the_environment():
    config = parse_config(["--simulate", "--kubernetes.node-name", NODE, "--alertmanager.url", "http://a:9093",
                           "--alertmanager.url", "https://b:9093/prefix", "--alertmanager.label", "cluster=prod"],
                          environ={"KUBE_GPU_EXPORTER_ALERTMANAGER_LABEL": "region=eu"})
    assert config.alertmanager_urls == ("http://a:9093", "https://b:9093/prefix")
    assert config.alertmanager_labels == (("cluster", "prod"),)  # the command line wins over the variable
    config = parse_config(["--simulate"], environ={
        "NODE_NAME": NODE, "KUBE_GPU_EXPORTER_ALERTMANAGER_URL": "http://a:9093, http://b:9093",
        "KUBE_GPU_EXPORTER_ALERTMANAGER_LABEL": "cluster=prod,region=eu"})
    assert config.alertmanager_urls == ("http://a:9093", "http://b:9093")
    assert config.alertmanager_labels == (("cluster", "prod"), ("region", "eu"))


def test_every_bad_alertmanager_flag_is_named_and_the_agent_exits_2(tmp_path, capsys):
    from exporter.cli import main

    token, credentials = tmp_path / "token", tmp_path / "credentials"
    token.write_text("t")
    credentials.write_text("no colon")
    # Not simulated: the node has no name until --kubernetes.node-name gives it one.
    code = main(["--alertmanager.url", "alertmanager:9093", "--alertmanager.label", "node=x",
                 "--alertmanager.label", "cluster", "--alertmanager.basic-auth-file", str(credentials),
                 "--alertmanager.bearer-token-file", str(token), "--alertmanager.tls-ca-file", "/nonexistent/ca.pem",
                 "--alertmanager.timeout", "0", "--alertmanager.event-window", "soon"])
    assert code == 2
    err = capsys.readouterr().err
    for problem in ("--alertmanager.url: 'alertmanager:9093' is not an http(s):// URL",
                    "--alertmanager.label: 'node' is set by the agent itself",
                    "--alertmanager.label: 'cluster' is not name=value",
                    f"--alertmanager.basic-auth-file: {str(credentials)!r} must hold username:password",
                    "give one of them, not both",
                    "--alertmanager.tls-ca-file: cannot read '/nonexistent/ca.pem'",
                    "--alertmanager.timeout: must be greater than 0",
                    "--alertmanager.event-window: 'soon' is not a number",
                    "--alertmanager.url: pushed alerts name the node"):
        assert problem in err, err
