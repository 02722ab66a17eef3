"""The generated rule set: up to date, valid for promtool, and every alert tested by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from alerts import generate
from alerts.rules import Params, alerts, recording_rules
from exporter.alerting import definitions

ROOT = generate.ROOT


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    return promtool


def test_generated_files_are_up_to_date():
    assert generate.stale() == [], "run `make rules` (python -m alerts.generate) and commit the result"


def test_the_staleness_check_sees_a_changed_threshold():
    tuned = generate.rules_file(Params(gpu_lost_for="3m"))
    assert tuned != generate.RULES.read_text()
    assert "for: 3m" in tuned


def test_promtool_accepts_the_rule_file():
    result = subprocess.run([_promtool(), "check", "rules", str(generate.RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_and_recording_rule_holds_in_promtool():
    tests = [str(ROOT / "tests" / "alerts" / name) for name in ("alerts.test.yaml", "recording.test.yaml")]
    result = subprocess.run([_promtool(), "test", "rules", *tests], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_prometheus_rule_object_carries_the_same_groups_and_promtool_accepts_them(tmp_path):
    plain = yaml.safe_load(generate.RULES.read_text())
    operator = yaml.safe_load(generate.PROMETHEUS_RULE.read_text())
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == plain["groups"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(operator["spec"]))
    result = subprocess.run([_promtool(), "check", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_silent_then_firing_with_its_labels_and_annotations():
    tests = yaml.safe_load(generate.TESTS.read_text())["tests"]
    for alert in alerts(Params()):
        checks = [c for t in tests for c in t["alert_rule_test"] if c["alertname"] == alert.name]
        assert any(c["exp_alerts"] == [] for c in checks), f"{alert.name}: never checked silent"
        firing = [a for c in checks for a in c["exp_alerts"]]
        assert firing, f"{alert.name}: never checked firing"
        for expected in firing:
            assert expected["exp_labels"]["severity"] == alert.severity
            assert set(expected["exp_annotations"]) == {"summary", "description", "runbook_url"}


def test_the_rule_set_covers_the_issue():
    rules = alerts(Params())
    names = [a.name for a in rules]
    assert len(names) == len(set(names)) >= 25
    for alert in rules:
        assert alert.severity in ("critical", "warning", "info"), alert.name
        assert "{{" not in alert.summary, f"{alert.name}: the summary must be static"
        assert "$labels" in alert.description or alert.name == "KubeGpuExporterAbsent", alert.name
        assert re.fullmatch(r"[A-Z][A-Za-z]+", alert.name)
    # the pushed alerts exist as rules under the same names and severities
    for pushed in definitions.PUSHED.values():
        rule = next(a for a in rules if a.name == pushed.name)
        assert (rule.severity, rule.summary, rule.description) == (pushed.severity, pushed.summary, pushed.description)


def test_the_xid_tiers_do_not_overlap():
    tiers = [definitions.XID_APPLICATION, definitions.XID_RESET, definitions.XID_REBOOT,
             definitions.XID_INFORMATIONAL]
    codes = [c for tier in tiers for c in tier]
    assert len(codes) == len(set(codes))
    assert set(definitions.XID_REPLACE_IF_RECURRING) <= set(definitions.XID_RESET)


def test_docs_list_every_rule_and_every_alert_has_a_runbook_section():
    alerts_doc = (ROOT / "docs" / "alerts.md").read_text()
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for record, _ in recording_rules(Params()):
        assert f"`{record}`" in alerts_doc
    for alert in alerts(Params()):
        assert f"### {alert.name}\n" in alerts_doc
        assert f"\n## {alert.name}\n" in runbooks
        assert alert.annotations(Params())["runbook_url"].endswith(f"runbooks.md#{alert.name.lower()}")


@pytest.mark.parametrize("template,labels,expected", [
    ("GPU {{ $labels.gpu }}{{ if $labels.pod }} held by {{ $labels.pod }}{{ end }}.", {"gpu": "1"}, "GPU 1."),
    ("GPU {{ $labels.gpu }}{{ if $labels.pod }} held by {{ $labels.pod }}{{ end }}.", {"gpu": "1", "pod": "p"},
     "GPU 1 held by p."),
    ("{{ $labels.missing }}x", {}, "x"),
])
def test_annotation_templates_render_as_prometheus_does(template, labels, expected):
    # promtool checks the same renderer against Go's templates on every generated test.
    assert definitions.render(template, labels) == expected
