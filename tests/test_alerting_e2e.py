"""End to end with real binaries: the agent on a fault scenario, Prometheus (Debian's) scraping it
with the generated rules (shortened for:), Alertmanager delivering to a webhook in the test.

What it shows: the expected alerts fire (the node's very first XID included) and the healthy
GPU's do not; the agent's push delivers the XID alert before any rule could (Alertmanager's
first notification carries the pushed copy, which has no generatorURL); the rule-made copy has
the same label set, so Alertmanager holds one alert and sends one notification for both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from alerts.generate import rules_file
from alerts.rules import Params
from e2e import ROOT, AgentProcess, free_port
from test_alertmanager import Alertmanager, Webhook, eventually, stop_process

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

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' own alerts (pending and firing), as /api/v1/alerts lists them."""
        if self.process.poll() is not None:
            self._log.seek(0)
            raise AssertionError(f"prometheus exited: {self._log.read()}")
        try:
            with urllib.request.urlopen(self.url + "/api/v1/alerts", timeout=5) as response:
                return json.load(response)["data"]["alerts"]
        except OSError:
            return []

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def stack(tmp_path):
    webhook = Webhook()
    am = Alertmanager(tmp_path, (
        # Every alert its own group, notified at once and never again within the test: the number of
        # notifications that carry an alert is then the number of distinct alerts Alertmanager made of it.
        "route: {receiver: hook, group_by: ['...'], group_wait: 0s, group_interval: 10m, repeat_interval: 1h}\n"
        f"receivers: [{{name: hook, webhook_configs: [{{url: '{webhook.url}', send_resolved: false}}]}}]\n"))
    agent = AgentProcess(["--simulate", str(SCENARIO), "--kubernetes.enabled", "--kubernetes.node-name", NODE,
                          "--alertmanager.url", am.url, "--alertmanager.label", "cluster=e2e"],
                         env=dict(os.environ), interval=0.5)
    (tmp_path / "rules.yaml").write_text(rules_file(Params(gpu_lost_for="2s")))
    prometheus = Prometheus(tmp_path, f"""
global: {{scrape_interval: 1s, evaluation_interval: 2s, external_labels: {{cluster: e2e}}}}
rule_files: [{tmp_path / 'rules.yaml'}]
alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am.port}']}}]}}]}}
scrape_configs:
  - job_name: kube-gpu-exporter
    honor_labels: true
    static_configs: [{{targets: ['127.0.0.1:{agent.port}'], labels: {{node: {NODE}}}}}]
""")
    yield agent, prometheus, am, webhook
    for process in (prometheus, agent, am, webhook):
        process.stop()


def notified(webhook: Webhook, alertname: str) -> list[dict[str, Any]]:
    """Every alert of that name in every notification so far, in order."""
    return [a for n in webhook.notifications for a in n["alerts"] if a["labels"]["alertname"] == alertname]


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
        first = eventually(lambda name=name: notified(webhook, name), f"a notification of {name}", timeout=40)[0]
        assert first["generatorURL"] == "", f"{name}: Prometheus' copy arrived first: {first}"
    xid = notified(webhook, "GpuXidResetRequired")[0]["labels"]
    assert xid == {"alertname": "GpuXidResetRequired", "severity": "critical", "cluster": "e2e", "node": NODE,
                   "gpu": "0", "uuid": uuids["0"], "xid": "62", "namespace": "ml", "pod": "train-0"}

    # 2. The rules fire the same alerts (the node's first XID included), with the same labels.
    def firing() -> dict[str, list[dict[str, str]]]:
        found: dict[str, list[dict[str, str]]] = {}
        for alert in prometheus.alerts():
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    expected = (*PUSHED, "GpuXidApplicationError")
    rule_made = eventually(lambda: (f := firing()) and all(n in f for n in expected) and f,
                           f"Prometheus firing {expected}", timeout=40)
    assert rule_made["GpuXidResetRequired"] == [{k: v for k, v in xid.items() if k != "cluster"}]
    assert {a["gpu"] for alerts in rule_made.values() for a in alerts if "gpu" in a} == {"0", "1", "2"}
    assert not [a for a in prometheus.alerts() if a["labels"].get("uuid") == uuids["3"]], "the healthy GPU alerted"

    # 3. One alert in Alertmanager for both copies (the rule's copy updated the pushed one) ...
    def merged() -> bool:
        copies = am.alerts(alertname="GpuXidResetRequired")
        return len(copies) == 1 and copies[0]["generatorURL"].startswith(prometheus.url)

    eventually(merged, "the rule-made copy merged into the pushed alert", timeout=20)
    # ... and one notification: wait for an alert that reached Alertmanager after the merge (the
    # application-tier XID at 18 s comes from the rules only); by then a second group of the XID
    # alert would have been notified too.
    eventually(lambda: notified(webhook, "GpuXidApplicationError"), "the later rule-made alert's notification",
               timeout=30)
    for name in PUSHED:
        assert len(notified(webhook, name)) == 1, f"{name}: {notified(webhook, name)}"
