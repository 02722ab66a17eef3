"""The generated rule set: up to date, valid for promtool, and every alert tested by promtool."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import pytest
import yaml

from alerts import cases, efficiency, generate, runbooks
from alerts.groups.xid import XID_MATCHERS, XID_TIER_CODES
from alerts.efficiency import efficiency_rules
from alerts.rules import Params, alerts, recording_rules
from exporter.push import definitions

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


@pytest.mark.integration
def test_every_alert_and_recording_rule_holds_in_promtool():
    tests = [str(ROOT / "tests" / "alerts" / name) for name in ("alerts.test.yaml", "recording.test.yaml",
                                                               "efficiency.test.yaml")]
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


@functools.cache
def _rule_tests() -> list[dict]:
    """The generated promtool tests, parsed once: a third of a second each time, asked for per alert."""
    return yaml.safe_load(generate.TESTS.read_text())["tests"]


def _firing(alert_name: str) -> list[dict]:
    tests = _rule_tests()
    return [a for t in tests for c in t["alert_rule_test"] if c["alertname"] == alert_name for a in c["exp_alerts"]]


def test_every_alert_is_tested_silent_then_firing_with_its_labels_and_annotations():
    tests = _rule_tests()
    for alert in alerts(Params()):
        checks = [c for t in tests for c in t["alert_rule_test"] if c["alertname"] == alert.name]
        assert any(c["exp_alerts"] == [] for c in checks), f"{alert.name}: never checked silent"
        firing = _firing(alert.name)
        assert firing, f"{alert.name}: never checked firing"
        annotations = {"summary", "description", "runbook_url"}
        annotations |= {definitions.HOLDERS_ANNOTATION} if alert.device_alert else set()
        annotations |= {definitions.XIDS_ANNOTATION} if alert.xid_matcher else set()
        for expected in firing:
            assert expected["exp_labels"]["severity"] == alert.severity
            assert set(expected["exp_annotations"]) == annotations, alert.name


#: The labels a device alert may carry: the device, and the link or code it is about.
DEVICE_LABELS = {"severity", "node", "gpu", "uuid", "link", "xid"}


def test_device_alerts_are_labelled_by_the_device_and_name_their_holders_in_an_annotation():
    device = [a for a in alerts(Params()) if "uuid" in {k for e in _firing(a.name) for k in e["exp_labels"]}]
    container = {"GpuAllocatedIdle", "GpuBatchJobStuck", "GpuContainerMemoryNearFull"}  # about a container
    assert {a.name for a in device} - container == {a.name for a in alerts(Params()) if a.device_alert}
    shown = set()
    for alert in device:
        if alert.name in container:
            continue
        for expected in _firing(alert.name):
            assert set(expected["exp_labels"]) <= DEVICE_LABELS, (alert.name, expected["exp_labels"])
            shown.add(expected["exp_annotations"][definitions.HOLDERS_ANNOTATION])
        assert "namespace" not in alert.expr, alert.name
    # the expected annotation is definitions.holders_text of the input's pods: one, several, none
    assert {"ml/train-0", "ml/eval-0, serving/embed-0", ""} <= shown
    assert definitions.holders_text([("serving", "embed-0"), ("ml", "eval-0"), ("ml", "eval-0")]) \
        == "ml/eval-0, serving/embed-0"


def test_the_xid_alerts_are_one_per_tier_and_list_their_codes():
    rules = {a.xid_matcher: a for a in alerts(Params()) if a.xid_matcher}
    assert set(rules) == set(XID_MATCHERS.values()) and set(XID_MATCHERS) == set(definitions.XID_TIERS)
    for tier, matcher in XID_MATCHERS.items():
        alert = rules[matcher]
        assert f'nvidia_gpu_xid_events_total{{tier="{tier}"}}' in alert.expr
        assert "nvidia_gpu_xid_errors_total" not in alert.expr  # the per-code series only in the annotation
        listed = {e["exp_annotations"][definitions.XIDS_ANNOTATION] for e in _firing(alert.name)}
        if "|" in matcher or tier == "other":
            assert any(", " in codes for codes in listed), f"{alert.name}: never two codes at once"
        for codes in listed:
            assert all(definitions.xid_tier(int(c)) == tier for c in codes.split(", ")), (alert.name, codes)


def test_no_rule_names_the_holder_of_a_device_in_its_labels():
    text = generate.RULES.read_text()
    assert "single_pod" not in text and "group_left (namespace, pod)" not in text


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
    # the rules' tiers are the agent's tier label
    for tier, tier_codes in XID_TIER_CODES.items():
        assert all(definitions.xid_tier(code) == tier for code in tier_codes or ()), tier
    assert definitions.xid_tier(999) == "other" and list(XID_TIER_CODES) == list(definitions.XID_TIERS)
    # GpuXidRecurring counts every event only on series there at 0 before the first
    assert set(definitions.XID_REPLACE_IF_RECURRING) <= set(definitions.XID_ZERO_CODES)


def test_docs_list_every_rule_and_every_alert_has_a_runbook_section():
    alerts_doc = (ROOT / "docs" / "alerts.md").read_text()
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for record, _ in recording_rules(Params()) + efficiency_rules(Params()):
        assert f"`{record}`" in alerts_doc
    for alert in alerts(Params()):
        assert f"### {alert.name}\n" in alerts_doc
        assert f"\n## {alert.name}\n" in runbooks
        assert alert.annotations(Params())["runbook_url"].endswith(f"runbooks.md#{alert.name.lower()}")


def test_every_alert_has_a_runbook_with_every_section_and_no_runbook_is_left_over():
    names = [a.name for a in alerts(Params())]
    books = runbooks.load(names, Params())
    assert list(books) == names
    for name, book in books.items():
        for section in runbooks.SECTIONS:
            assert getattr(book, section.lower()).strip(), f"{name}: {section} is empty"
    shipped = {path.stem for path in runbooks.DIRECTORY.glob("*.md")} - {"README"}
    assert shipped == set(names)
    # a parameter named in the Markdown follows Params
    assert "[24h]" in books["GpuXidRecurring"].diagnose
    tuned = runbooks.load(names, Params(xid_recurring_window="48h"))
    assert "[48h]" in tuned["GpuXidRecurring"].diagnose


def _runbook_copy(tmp_path):
    """The shipped runbooks, copied where a test may break them."""
    for path in runbooks.DIRECTORY.glob("*.md"):
        (tmp_path / path.name).write_text(path.read_text())
    return tmp_path


def test_a_missing_runbook_or_section_fails_the_generator_with_every_problem_named(tmp_path, monkeypatch, capsys):
    books = _runbook_copy(tmp_path)
    (books / "GpuLost.md").unlink()
    other = books / "GpuXidOther.md"
    other.write_text(other.read_text().replace("## Impact\n", ""))
    (books / "GpuWasRenamed.md").write_text("# GpuWasRenamed\n")
    monkeypatch.setattr(generate, "RUNBOOKS", books)
    before = generate.RUNBOOKS_DOC.read_text()
    for argv in (["--check"], []):
        assert generate.main(argv) == 2
        err = capsys.readouterr().err
        assert "the runbooks do not match the alerts" in err
        assert "GpuLost.md: missing: alert GpuLost has no runbook" in err
        assert "no `## Impact` section" in err and "GpuXidOther.md" in err
        assert "GpuWasRenamed.md: no alert is named GpuWasRenamed" in err
    assert generate.RUNBOOKS_DOC.read_text() == before, "nothing is written when a runbook is wrong"


GOOD = "# GpuLost\n\n## Meaning\n\nm\n\n## Impact\n\ni\n\n## Diagnose\n\nd\n\n## Action\n\na\n"


@pytest.mark.parametrize("old,new,problem", [
    ("# GpuLost", "# GpuGone", ":1: the title is `# GpuGone`, expected `# GpuLost`"),
    ("\nm\n", "\n\n", "`## Meaning` is empty"),
    ("## Diagnose", "## Diagnosis", "unknown section `## Diagnosis`"),
    ("## Action\n\na", "## Action\n\na\n\n## Impact\n\nx", "`## Impact` a second time"),
    ("\nd\n", "\n- step one\n", ":13: `- step one` starts a list"),
    ("\nd\n", "\n```sh\nnvidia-smi\n```\n", ":13: ````sh` starts a list, heading, quote, code block"),
    ("\nd\n", "\nwithin ${lost_window}\n", "`## Diagnose` names ${lost_window}, which is no field of Params"),
    ("\nd\n", "\ncosts $5\n", "`## Diagnose`: Invalid placeholder"),
    ("## Impact\n\ni\n\n## Diagnose\n\nd", "## Diagnose\n\nd\n\n## Impact\n\ni",
     "the sections are Meaning, Diagnose, Impact, Action"),
])
def test_a_malformed_runbook_is_refused_with_its_file_and_line(tmp_path, old, new, problem):
    path = tmp_path / "GpuLost.md"
    path.write_text(GOOD)
    assert runbooks.load(["GpuLost"], Params(), tmp_path)["GpuLost"].meaning == "m"
    assert old in GOOD
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(runbooks.RunbookError) as failure:
        runbooks.load(["GpuLost"], Params(), tmp_path)
    assert f"{path}" in str(failure.value) and problem in str(failure.value)


def test_a_runbook_section_is_one_bullet_its_paragraphs_kept(tmp_path):
    text = GOOD.replace("\nd\n", "\nfirst line\nwrapped, `code`\n\nsecond paragraph costs $$5\n")
    (tmp_path / "GpuLost.md").write_text(text)
    diagnose = runbooks.load(["GpuLost"], Params(), tmp_path)["GpuLost"].diagnose
    assert diagnose == "first line wrapped, `code`\n\n  second paragraph costs $5"


@pytest.mark.parametrize("template,labels,expected", [
    ("GPU {{ $labels.gpu }}{{ if $labels.pod }} held by {{ $labels.pod }}{{ end }}.", {"gpu": "1"}, "GPU 1."),
    ("GPU {{ $labels.gpu }}{{ if $labels.pod }} held by {{ $labels.pod }}{{ end }}.", {"gpu": "1", "pod": "p"},
     "GPU 1 held by p."),
    ("{{ $labels.missing }}x", {}, "x"),
])
def test_annotation_templates_render_as_prometheus_does(template, labels, expected):
    # promtool checks the same renderer against Go's templates on every generated test.
    assert definitions.render(template, labels) == expected


@pytest.mark.parametrize("values,minute,interval,seen", [
    ("1x9 stale", 9, "1m", True), ("1x9 stale", 10, "1m", False), ("_x10 1x30", 9, "1m", False),
    ("_x10 1x30", 10, "1m", True), ("1x2", 7, "1m", True), ("1x2", 8, "1m", False),  # 5 minutes of lookback
    ("1x10 0 0 1x60", 5, "30s", True), ("_ 1", 0, "1m", False), ("0+1x3 stale", 2, "1m", True),
])
def test_the_expected_holders_follow_the_input_series_as_prometheus_sees_them(values, minute, interval, seen):
    assert cases.present(values, minute, interval) is seen


def _matches(matcher: str, name: str) -> bool:
    """An Alertmanager matcher on alertname (``=``, ``!=``, ``=~``, ``!~``; regexes anchored)."""
    match = re.fullmatch(r'alertname(=~|!~|!=|=)"(.*)"', matcher)
    assert match, f"only alertname matchers are expected in the example: {matcher}"
    op, value = match.groups()
    found = re.fullmatch(value, name) is not None if "~" in op else value == name
    return found if op in ("=", "=~") else not found


def test_the_example_inhibitions_run_from_cause_to_symptom_without_a_cycle():
    example = yaml.safe_load((ROOT / "alerts" / "alertmanager-example.yaml").read_text())
    names = [a.name for a in alerts(Params())]
    edges = {(source, target) for rule in example["inhibit_rules"]
             for source in names if all(_matches(m, source) for m in rule["source_matchers"])
             for target in names if all(_matches(m, target) for m in rule["target_matchers"])}
    assert edges and all(source != target for source, target in edges)
    # no alert silenced, directly or through others, by an alert it silences (neither would notify)
    reach = {name: {t for s, t in edges if s == name} for name in names}
    for _ in names:
        for name in names:
            reach[name] |= {far for near in reach[name] for far in reach[near]}
    assert not [name for name in names if name in reach[name]]
    # the XID that explains a lost GPU is what pages; GpuLost never hides it
    for cause in (definitions.XID_REBOOT_REQUIRED.name, definitions.XID_RESET_REQUIRED.name):
        assert (cause, definitions.GPU_LOST.name) in edges and (definitions.GPU_LOST.name, cause) not in edges


def test_every_rule_reads_only_what_the_default_collector_groups_give():
    """No shipped rule needs a group that is off by default (docs/metrics.md#collector-groups):
    the two efficiency rules that read profiling series where they exist are named, and read
    nothing else of an opt-in group (without it, one falls back, the other has no series)."""
    from exporter import catalog

    opt_in = [m.name for m in catalog.all_metrics() if catalog.GROUPS[m.group].default is False]
    assert "nvidia_gpu_nvlink_link_errors_total" in opt_in  # the check can fail
    for group in generate.rule_groups(Params()):
        for rule in group["rules"]:
            read = [name for name in opt_in if re.search(rf"\b{name}\b", rule["expr"])
                    and name not in efficiency.READS_OPT_IN.get(rule.get("record"), ())]
            assert not read, f"{rule.get('alert') or rule.get('record')} reads {read}, off by default"
