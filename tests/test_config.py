"""Flags, environment variables and validation: every problem listed, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from exporter.config import ConfigError, env_name, parse_config


def test_defaults():
    config = parse_config([], environ={})
    assert (config.listen_host, config.listen_port) == ("", 9400)
    assert config.collector_interval == 10.0
    assert config.collector_timeout == 5.0
    assert config.kubelet_socket == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert config.kubelet_enabled is True and config.kubernetes_enabled is False
    assert config.simulate is False and config.procfs == "/proc"


def test_every_flag_reads_its_environment_variable_and_flags_win():
    environ = {
        env_name("--collector.interval"): "3",
        env_name("--web.listen-address"): "127.0.0.1:9999",
        env_name("--kubernetes.enabled"): "true",
        env_name("--kubelet.enabled"): "false",
        env_name("--kubernetes.pod-labels"): "team, app.kubernetes.io/name",
        "NODE_NAME": "gpu-node-7",
    }
    config = parse_config(["--collector.interval", "4"], environ=environ)
    assert config.collector_interval == 4.0
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9999)
    assert config.kubernetes_enabled is True and config.kubelet_enabled is False
    assert config.node_name == "gpu-node-7"
    assert config.pod_labels == ("team", "app.kubernetes.io/name")


def test_simulate_without_a_file_uses_the_built_in_scenario():
    config = parse_config(["--simulate"], environ={})
    assert config.simulate is True and config.scenario is None


def test_all_problems_are_listed_together(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse_config(
            [
                "--collector.interval", "-1",
                "--web.listen-address", "localhost:http",
                "--log.level", "loud",
                "--simulate", str(tmp_path / "missing.yaml"),
                "--kubernetes.pod-labels", "ok,bad label",
            ],
            environ={},
        )
    problems = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 5
    for fragment in ("--collector.interval", "--web.listen-address", "--log.level", "missing.yaml", "bad label"):
        assert fragment in problems


def test_kubernetes_needs_a_node_name():
    with pytest.raises(ConfigError, match="node-name"):
        parse_config(["--kubernetes.enabled"], environ={})


def test_bad_boolean_in_environment_is_a_problem():
    with pytest.raises(ConfigError, match="not a boolean"):
        parse_config([], environ={env_name("--kubelet.enabled"): "maybe"})


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--collector.interval", "soon"], "--collector.interval: 'soon' is not a number"),
        (["--no-such-flag"], "unknown flag --no-such-flag (--help lists the flags)"),
    ],
)
def test_cli_exits_2_with_a_message_naming_the_problem(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--colector.interval", "2"], "unknown flag --colector.interval, did you mean --collector.interval?"),
        (["--colector.interval=2"], "unknown flag --colector.interval, did you mean --collector.interval?"),
        (["--node-name", "n1"], "unknown flag --node-name, did you mean --kubernetes.node-name?"),
        (["--no-kubelet.enable"], "unknown flag --no-kubelet.enable, did you mean --no-kubelet.enabled?"),
        # No abbreviations: a flag is its full name, as its variable is.
        (["--collector.int", "2"], "unknown flag --collector.int, did you mean --collector.interval?"),
        (["--simulate", "x.yaml", "y.yaml"], "unexpected argument 'y.yaml' (--help lists the flags)"),
        (["--collector.interval"], "argument --collector.interval: expected one argument (--help lists the flags)"),
    ],
)
def test_a_mistyped_flag_is_one_line_naming_the_closest_flag_without_the_usage(args, line, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(args, environ={})
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"kube-gpu-exporter: {line}\n"


def test_help_still_shows_the_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(["--help"], environ={})
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kube-gpu-exporter")


@pytest.mark.integration
def test_a_bad_scenario_file_exits_2_listing_every_problem(tmp_path):
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("node:\n  drivr_version: '1'\ngpus:\n  - model: X\n    memry: 1GiB\npods: 7\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--simulate", str(scenario), "--once"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert f"invalid scenario {scenario}" in result.stderr
    for fragment in ("node.drivr_version", "gpus[0].memry", "pods"):
        assert fragment in result.stderr


@pytest.mark.integration
def test_json_logs_are_one_object_per_line_and_include_the_resolved_config_as_fields():
    import json

    from exporter.sources.simulate import load_scenario

    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--simulate", "--once", "--log.format", "json"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "NODE_NAME"},
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    start = next(e for e in entries if e["message"].endswith(" starting"))
    assert start["level"] == "info" and start["config"]["simulate"] is True
    assert start["config"]["collector_timeout"] == 5.0 and start["config"]["dra_drivers"] == ["gpu.nvidia.com"]
    # The effective value: the simulated node's name, as the status page shows it, not "".
    assert start["config"]["node_name"] == load_scenario(None).node.name != ""
    assert any(e["level"] == "warning" and "SIMULATED" in e["message"] for e in entries)


def test_text_logs_follow_the_message_with_its_fields_as_json():
    import logging

    from exporter.cli import TextFormatter, fields

    record = logging.LogRecord("exporter", logging.INFO, __file__, 1, "starting", (), None)
    record.__dict__.update(fields(config={"node_name": "n1", "pod_labels": ["team"]}))
    assert TextFormatter().format(record).endswith(
        ' INFO exporter: starting config={"node_name": "n1", "pod_labels": ["team"]}')


def test_empty_environment_variables_count_as_unset():
    config = parse_config([], environ={env_name("--simulate"): "", env_name("--kubelet.enabled"): " "})
    assert config.simulate is False and config.kubelet_enabled is True


def test_simulate_from_the_environment_takes_a_boolean_or_a_file(tmp_path):
    assert parse_config([], environ={env_name("--simulate"): "true"}).scenario is None
    assert parse_config([], environ={env_name("--simulate"): "true"}).simulate is True
    assert parse_config([], environ={env_name("--simulate"): "false"}).simulate is False
    scenario = tmp_path / "node.yaml"
    scenario.write_text("gpus: []\n")
    assert parse_config([], environ={env_name("--simulate"): str(scenario)}).scenario == str(scenario)


def test_a_kubeconfig_without_the_package_is_a_config_error_in_cluster_needs_none(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kubernetes" else real(name, *a))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    with pytest.raises(ConfigError, match=r"kube-gpu-exporter\[kubernetes\]") as caught:
        parse_config(["--kubernetes.enabled", "--kubernetes.node-name", "n", "--kubernetes.kubeconfig",
                      str(kubeconfig)], environ={})
    assert caught.value.problems[0].startswith("--kubernetes.kubeconfig:")
    # In-cluster, the agent's own client is enough.
    assert parse_config(["--kubernetes.enabled", "--kubernetes.node-name", "n"], environ={}).kubernetes_enabled


# --- where a bad value came from -------------------------------------------------------------------


def test_a_bad_value_from_the_environment_names_the_variable_not_the_flag():
    with pytest.raises(ConfigError) as caught:
        parse_config([], environ={
            "KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL": "x",
            "KUBE_GPU_EXPORTER_KUBELET_ENABLED": "maybe",
            "KUBE_GPU_EXPORTER_LOG_LEVEL": "loud",
        })
    assert sorted(caught.value.problems) == [
        "KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL: 'x' is not a number",
        "KUBE_GPU_EXPORTER_KUBELET_ENABLED: 'maybe' is not a boolean (true/false)",
        "KUBE_GPU_EXPORTER_LOG_LEVEL: 'loud' is not one of debug, info, warning, error",
    ]


def test_a_bad_value_on_the_command_line_names_the_flag_even_when_the_variable_is_set():
    environ = {"KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL": "5", "KUBE_GPU_EXPORTER_KUBELET_TIMEOUT": "-1"}
    with pytest.raises(ConfigError) as caught:
        parse_config(["--collector.interval", "x"], environ=environ)
    assert caught.value.problems == [
        "--collector.interval: 'x' is not a number",
        "KUBE_GPU_EXPORTER_KUBELET_TIMEOUT: must be greater than 0, got '-1'",
    ]
    # and a good flag overrides a bad variable: nothing to report
    assert parse_config(["--kubelet.timeout", "1"], environ=environ).kubelet_timeout == 1.0


@pytest.mark.integration
def test_the_cli_names_the_variable_and_exits_2():
    import os

    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--once"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL": "soon"},
    )
    assert result.returncode == 2
    assert "KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL: 'soon' is not a number" in result.stderr


def test_a_bad_once_from_the_environment_is_a_problem_not_true():
    with pytest.raises(ConfigError, match="KUBE_GPU_EXPORTER_ONCE: 'maybe' is not a boolean"):
        parse_config([], environ={"KUBE_GPU_EXPORTER_ONCE": "maybe"})
    assert parse_config([], environ={"KUBE_GPU_EXPORTER_ONCE": "false"}).once is False


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_number_must_be_finite(value):
    with pytest.raises(ConfigError, match=f"--collector.interval: '{value}' is not a finite number"):
        parse_config(["--collector.interval", value], environ={})


# --- unknown variables -----------------------------------------------------------------------------


def test_unknown_variables_are_warnings_with_the_closest_known_name():
    config = parse_config([], environ={
        "KUBE_GPU_EXPORTER_COLLECTOR_INTERVL": "3",  # a typo
        "KUBE_GPU_EXPORTER_NODE_NAME": "n1",  # the tail of KUBE_GPU_EXPORTER_KUBERNETES_NODE_NAME
        "KUBE_GPU_EXPORTER_WHATEVER": "1",  # nothing close
        "KUBE_GPU_EXPORTER_LOG_LEVEL": "debug",  # known: no warning
        "NODE_NAME": "n1",  # not ours: no warning
    })
    assert config.collector_interval == 10.0  # the typo was ignored...
    assert config.warnings == (  # ...and said so
        "KUBE_GPU_EXPORTER_COLLECTOR_INTERVL: unknown environment variable, ignored; "
        "did you mean KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL?",
        "KUBE_GPU_EXPORTER_NODE_NAME: unknown environment variable, ignored; "
        "did you mean KUBE_GPU_EXPORTER_KUBERNETES_NODE_NAME?",
        "KUBE_GPU_EXPORTER_WHATEVER: unknown environment variable, ignored",
    )
    assert "warnings" not in config.as_log_dict()


def test_every_flag_variable_is_known():
    environ = {env_name(flag): "" for flag in ("--collector.interval", "--attribution.grace-period", "--simulate")}
    assert parse_config([], environ=environ).warnings == ()


def test_a_config_error_also_shows_the_unknown_variables():
    # The misspelt variable is why the node name is missing: the error says so.
    with pytest.raises(ConfigError) as caught:
        parse_config(["--kubernetes.enabled"], environ={"KUBE_GPU_EXPORTER_NODE_NAME": "n1"})
    assert "KUBE_GPU_EXPORTER_KUBERNETES_NODE_NAME?" in str(caught.value)
    assert len(caught.value.problems) == 1  # a warning is not a problem


# --- collector timeout, scenario path, grace period ------------------------------------------------


def test_a_timeout_longer_than_the_interval_is_refused_and_equal_is_fine():
    with pytest.raises(ConfigError) as caught:
        parse_config(["--collector.interval", "5", "--collector.timeout", "6"], environ={})
    assert caught.value.problems == [
        "--collector.timeout: '6' is longer than --collector.interval ('5'); a cycle's NVML work may take at most "
        "one interval"
    ]
    assert parse_config(["--collector.interval", "5", "--collector.timeout", "5"], environ={}).collector_timeout == 5
    with pytest.raises(ConfigError, match="KUBE_GPU_EXPORTER_COLLECTOR_TIMEOUT: '20' is longer than"):
        parse_config([], environ={"KUBE_GPU_EXPORTER_COLLECTOR_TIMEOUT": "20"})


def test_a_bad_interval_is_reported_once_not_again_against_the_timeout():
    with pytest.raises(ConfigError) as caught:
        parse_config(["--collector.interval", "-5", "--collector.timeout", "1"], environ={})
    assert caught.value.problems == ["--collector.interval: must be greater than 0, got '-5'"]


def test_a_scenario_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse_config(["--simulate", str(tmp_path)], environ={})
    assert caught.value.problems == [f"--simulate: scenario {str(tmp_path)!r} is a directory, not a file"]
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(["--simulate", str(tmp_path / "missing.yaml")], environ={})


def test_the_grace_period_defaults_to_three_intervals():
    assert parse_config(["--collector.interval", "4"], environ={}).attribution_grace_period == 12.0
    assert parse_config([], environ={}).attribution_grace_period == 30.0
    environ = {"KUBE_GPU_EXPORTER_ATTRIBUTION_GRACE_PERIOD": "0"}  # 0: drop at once
    assert parse_config([], environ=environ).attribution_grace_period == 0.0
    assert parse_config(["--attribution.grace-period", "90"], environ=environ).attribution_grace_period == 90.0


@pytest.mark.parametrize(
    ("argv", "environ", "problem"),
    [
        (["--attribution.grace-period", "-1"], {}, "--attribution.grace-period: must be 0 or more, got '-1'"),
        ([], {"KUBE_GPU_EXPORTER_ATTRIBUTION_GRACE_PERIOD": "soon"},
         "KUBE_GPU_EXPORTER_ATTRIBUTION_GRACE_PERIOD: 'soon' is not a number"),
    ],
)
def test_a_bad_grace_period_is_a_problem(argv, environ, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(argv, environ=environ)
    assert caught.value.problems == [problem]


def test_simulate_honours_the_kubernetes_switches_without_a_node_name_or_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kubernetes" else real(name, *a))
    config = parse_config(["--simulate", "--kubernetes.enabled", "--no-kubelet.enabled"], environ={})
    assert (config.kubernetes_enabled, config.kubelet_enabled, config.node_name) == (True, False, "")


# --- packaging -------------------------------------------------------------------------------------


def _make_dry_run(target: str, tmp_path) -> str:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        ["make", "-n", "-C", str(root), target, f"VENV={tmp_path / 'venv'}", "ARGS=--collector.interval 2"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_installs_only_what_running_needs_and_serves_workloads(tmp_path):
    commands = _make_dry_run("run", tmp_path)
    assert "pip install -q -e ." in commands and "[test]" not in commands
    assert "kube-gpu-exporter --simulate --kubernetes.enabled --collector.interval 2" in commands
    assert "prometheus" not in commands  # no test-only Debian package


def test_make_test_installs_the_test_extras(tmp_path):
    assert "pip install -q -e '.[test]'" in _make_dry_run("test", tmp_path)


def test_collector_groups_switch_on_and_off_by_flag_and_variable():
    from exporter import catalog

    config = parse_config([], environ={})
    assert config.collectors == catalog.default_collectors()
    assert {"identity", "health", "allocation", "nvlink"} <= config.collectors
    assert not {"profiling", "limits", "ecc", "nvlink.links"} & config.collectors
    config = parse_config(["--collector.nvlink.links", "--no-collector.throttle", "--collector.profiling"],
                          environ={env_name("--collector.limits"): "true", env_name("--collector.profiling"): "0"})
    assert config.collectors == catalog.default_collectors() - {"throttle"} | {"nvlink.links", "limits", "profiling"}
    assert env_name("--collector.nvlink.links") == "KUBE_GPU_EXPORTER_COLLECTOR_NVLINK_LINKS"


def test_every_switchable_group_has_both_flags_and_the_always_on_none():
    from exporter import catalog
    from exporter.config import get_parser

    flags = {f for a in get_parser()._actions for f in a.option_strings}
    for group in catalog.GROUPS.values():
        assert (group.flag in flags) == (f"--no-collector.{group.name}" in flags) == (group.default is not None)


def test_a_bad_group_switch_in_the_environment_is_a_problem():
    with pytest.raises(ConfigError) as caught:
        parse_config([], environ={env_name("--collector.nvlink"): "sometimes"})
    assert caught.value.problems == ["KUBE_GPU_EXPORTER_COLLECTOR_NVLINK: 'sometimes' is not a boolean (true/false)"]
