"""End to end with real binaries: the agent on a fault scenario, Prometheus (Debian's) scraping it
with the generated rules (shortened for:), Alertmanager delivering to a webhook in the test.

What it shows: the expected alerts fire (the node's very first XID included) and the healthy
GPU's do not; the agent's push delivers the XID alert before any rule could (Alertmanager's
first notification carries the pushed copy, which has no generatorURL); the rule-made copy has
the same label set (the device, never its holder) and the same ``holders`` annotation, so
Alertmanager holds one alert and sends one notification for both. On the fake NVML: a read that
hangs for a few cycles pages nobody, by push or rule, while a GPU NVML calls lost pages once.

Both tests need the rules of the alert-seams change (device labels, holders annotation, XID
tiers, GpuLost unless NVML is down) in ``alerts/groups/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from alerts.generate import rules_file
from alerts.rules import Params
from conftest import wait_until
from e2e import GPU, ROOT, AgentProcess, free_port, value
from test_alertmanager import Alertmanager, Webhook, stop_process

pytestmark = pytest.mark.integration  # the agent, Prometheus and Alertmanager as processes

NODE = "gpu-node-e2e"
SCENARIO = ROOT / "tests" / "alerts" / "e2e-scenario.yaml"
PUSHED = ("GpuXidResetRequired", "GpuLost", "GpuEccUncorrectableErrors")


class Prometheus:
    def __init__(self, directory: Path, config: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make test` installs the Debian package prometheus"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "prometheus.yml").write_text(config)
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--web.external-url={self.url}",
             "--rules.alert.resend-delay=1s", "--log.level=warn"],
            stdout=self._log, stderr=self._log, text=True)

    def _api(self, path: str) -> Any:
        if self.process.poll() is not None:
            self._log.seek(0)
            raise AssertionError(f"prometheus exited: {self._log.read()}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return json.load(response)["data"]
        except OSError:
            return None

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' own alerts (pending and firing), as /api/v1/alerts lists them."""
        return (self._api("/api/v1/alerts") or {"alerts": []})["alerts"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's samples (empty while Prometheus does not answer)."""
        return (self._api("/api/v1/query?" + urllib.parse.urlencode({"query": expr})) or {"result": []})["result"]

    def last_evaluation(self) -> float:
        """Unix time of the oldest last evaluation among the rule groups (year 1 before the first)."""
        groups = (self._api("/api/v1/rules") or {"groups": []})["groups"]
        return min((datetime.fromisoformat(g["lastEvaluation"]).timestamp() for g in groups), default=0.0)

    def stop(self) -> None:
        stop_process(self.process)


def start_stack(directory: Path, agent_args: list[str], env: dict[str, str], *, gpu_lost_for: str,
                started: list[Any]) -> tuple[AgentProcess, Prometheus, Alertmanager, Webhook]:
    """The agent pushing to Alertmanager, Prometheus scraping it with the generated rules (GpuLost's
    ``for:`` shortened) and alerting the same Alertmanager, which notifies a webhook."""
    webhook = Webhook()
    started.append(webhook)
    am = Alertmanager(directory, (
        # Every alert its own group, notified at once and never again within the test: the number of
        # notifications that carry an alert is then the number of distinct alerts Alertmanager made of it.
        "route: {receiver: hook, group_by: ['...'], group_wait: 0s, group_interval: 10m, repeat_interval: 1h}\n"
        f"receivers: [{{name: hook, webhook_configs: [{{url: '{webhook.url}', send_resolved: false}}]}}]\n"))
    started.append(am)
    agent = AgentProcess([*agent_args, "--kubernetes.node-name", NODE, "--alertmanager.url", am.url,
                          "--alertmanager.label", "cluster=e2e"], env=env, interval=0.5)
    started.append(agent)
    # every group at the evaluation interval below, not the shipped 30 s and 1 m
    fast = dict.fromkeys(("recording_interval", "efficiency_interval", "urgent_interval", "alert_interval"), "2s")
    (directory / "rules.yaml").write_text(rules_file(Params(gpu_lost_for=gpu_lost_for, **fast)))
    prometheus = Prometheus(directory, f"""
global: {{scrape_interval: 1s, evaluation_interval: 2s, external_labels: {{cluster: e2e}}}}
rule_files: [{directory / 'rules.yaml'}]
alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am.port}']}}]}}]}}
scrape_configs:
  - job_name: kube-gpu-exporter
    honor_labels: true
    static_configs: [{{targets: ['127.0.0.1:{agent.port}'], labels: {{node: {NODE}}}}}]
""")
    started.append(prometheus)
    return agent, prometheus, am, webhook


@pytest.fixture
def stacks():
    started: list[Any] = []
    yield lambda *args, **kw: start_stack(*args, **kw, started=started)
    for process in reversed(started):
        process.stop()


@pytest.fixture
def stack(stacks, tmp_path):
    return stacks(tmp_path, ["--simulate", str(SCENARIO), "--kubernetes.enabled"], dict(os.environ), gpu_lost_for="2s")


def notified(webhook: Webhook, alertname: str, **match: str) -> list[dict[str, Any]]:
    """Every alert of that name (and those labels) in every notification so far, in order."""
    return [a for n in webhook.notifications for a in n["alerts"] if a["labels"]["alertname"] == alertname
            and all(a["labels"].get(k) == v for k, v in match.items())]


def firing(prometheus: Prometheus) -> dict[str, list[dict[str, Any]]]:
    """Prometheus' firing alerts by name (labels and annotations)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for alert in prometheus.alerts():
        if alert["state"] == "firing":
            found.setdefault(alert["labels"]["alertname"], []).append(alert)
    return found


def without_cluster(labels: dict[str, str]) -> dict[str, str]:
    """A pushed alert's labels as Prometheus lists its own (external labels are added on the way out)."""
    return {k: v for k, v in labels.items() if k != "cluster"}


def test_rules_and_pushes_meet_in_alertmanager(stack):
    agent, prometheus, am, webhook = stack
    uuids = {}
    body = agent.wait_for(lambda b: 'gpu="3"' in b, what="the first cycle", timeout=30)
    for line in body.splitlines():
        if line.startswith("nvidia_gpu_up{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            uuids[labels["gpu"].strip('"')] = labels["uuid"].strip('"')

    # 1. The push path: each pushed alert's first notification carries the agent's copy.
    for name in PUSHED:
        first = wait_until(lambda name=name: notified(webhook, name), message=f"a notification of {name}", timeout=40)[0]
        assert first["generatorURL"] == "", f"{name}: Prometheus' copy arrived first: {first}"
    xid = notified(webhook, "GpuXidResetRequired")[0]
    # The device is the identity; the holder and the codes are annotations.
    assert xid["labels"] == {"alertname": "GpuXidResetRequired", "severity": "critical", "cluster": "e2e",
                             "node": NODE, "gpu": "0", "uuid": uuids["0"]}
    assert (xid["annotations"]["holders"], xid["annotations"]["xids"]) == ("ml/train-0", "62")
    lost = notified(webhook, "GpuLost")[0]  # GPU 1: NVML answers GPU_IS_LOST, pushed at once
    assert lost["labels"] == {"alertname": "GpuLost", "severity": "critical", "cluster": "e2e", "node": NODE,
                              "gpu": "1", "uuid": uuids["1"]}

    # 2. The rules fire the same alerts (the node's first XID included), with the same labels and holders.
    expected = (*PUSHED, "GpuXidApplicationError")
    rule_made = wait_until(lambda: (f := firing(prometheus)) and all(n in f for n in expected) and f,
                           message=f"Prometheus firing {expected}", timeout=40)
    for name, pushed in (("GpuXidResetRequired", xid), ("GpuLost", lost)):
        (made,) = rule_made[name]
        assert made["labels"] == without_cluster(pushed["labels"]), name
        assert made["annotations"]["holders"] == pushed["annotations"]["holders"], name
    assert {a["labels"]["gpu"] for alerts in rule_made.values() for a in alerts if "gpu" in a["labels"]} == {
        "0", "1", "2"}
    assert not [a for a in prometheus.alerts() if a["labels"].get("uuid") == uuids["3"]], "the healthy GPU alerted"

    # 3. One alert in Alertmanager for both copies (the rule's copy updated the pushed one) ...
    def merged() -> bool:
        copies = am.alerts(alertname="GpuXidResetRequired")
        return len(copies) == 1 and copies[0]["generatorURL"].startswith(prometheus.url)

    wait_until(merged, message="the rule-made copy merged into the pushed alert", timeout=20)
    # ... and one notification: wait for an alert that reached Alertmanager after the merge (the
    # application-tier XID at 18 s comes from the rules only); by then a second group of the XID
    # alert would have been notified too.
    wait_until(lambda: notified(webhook, "GpuXidApplicationError"), message="the later rule-made alert's notification",
               timeout=30)
    for name in PUSHED:
        assert len(notified(webhook, name)) == 1, f"{name}: {notified(webhook, name)}"


def test_a_hung_read_pages_nobody_and_a_lost_gpu_pages_once(stacks, fake_nvml, tmp_path):
    """The fake NVML's GPU 1 hangs in one read for a few cycles (past --collector.timeout, shorter
    than GpuLost's for:): no GpuLost from the push path, none from the rule. Then GPU 0 answers
    GPU_IS_LOST: pushed at once, fired by the rule with the same labels, one notification. By the
    time the rule fires for GPU 0, it would have fired for GPU 1 too, had the hang been enough."""
    agent, prometheus, am, webhook = stacks(tmp_path, ["--no-kubelet.enabled", "--collector.timeout", "0.3"],
                                            fake_nvml.env, gpu_lost_for="10s")
    agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 1, what="the first cycle", timeout=30)
    wait_until(lambda: prometheus.query('nvidia_gpu_up{gpu="1"} == 1'), message="Prometheus scraping GPU 1", timeout=30)

    fake_nvml.update_gpu(1, hang_seconds=120)
    try:
        agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 0, what="GPU 1's read hanging")
        # Until Prometheus has seen it down too: the rule gets its chance to go pending.
        wait_until(lambda: prometheus.query('nvidia_gpu_up{gpu="1"} == 0'), message="Prometheus seeing GPU 1 down",
                   timeout=30)
    finally:
        fake_nvml.update_gpu(1, hang_seconds=None)  # the hung call returns
    agent.wait_for(lambda b: value(b, "nvidia_gpu_up", gpu="1") == 1, what="GPU 1 back")
    body = agent.scrape()
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="nvml", kind="timeout") >= 1
    back = time.time()

    fake_nvml.update_gpu(0, lost=1)
    pushed = wait_until(lambda: notified(webhook, "GpuLost", gpu="0"), message="GPU 0's GpuLost pushed", timeout=30)[0]
    assert pushed["generatorURL"] == "" and pushed["labels"]["uuid"] == GPU[0]
    (made,) = wait_until(lambda: firing(prometheus).get("GpuLost"), message="the GpuLost rule firing", timeout=40)
    assert made["labels"] == without_cluster(pushed["labels"])
    # Every rule group evaluated past the point where a GpuLost of the hang would have fired.
    wait_until(lambda: prometheus.last_evaluation() > back + 10, message="a rule evaluation after the for: of the hang",
               timeout=40)
    wait_until(lambda: len(am.alerts(alertname="GpuLost")) == 1 and am.alerts(alertname="GpuLost")[0][
        "generatorURL"].startswith(prometheus.url), message="the rule's copy merged into the pushed one", timeout=20)

    assert not notified(webhook, "GpuLost", gpu="1"), "a hung read paged"
    assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] == "GpuLost" and a["labels"]["gpu"] == "1"]
    assert len(notified(webhook, "GpuLost", gpu="0")) == 1
