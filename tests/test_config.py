"""Flags, environment variables and validation: every problem listed, exit code 2."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--collector.interval", "soon"], "--collector.interval: 'soon' is not a number"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_cli_exits_2_with_a_message_naming_the_problem(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr


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


def test_json_logs_are_one_object_per_line_and_include_the_resolved_config():
    import json

    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--simulate", "--once", "--log.format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    start = next(e for e in entries if "starting with" in e["message"])
    assert start["level"] == "info" and '"simulate": true' in start["message"]
    assert any(e["level"] == "warning" and "SIMULATED" in e["message"] for e in entries)


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


def test_kubernetes_without_the_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kubernetes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"kube-gpu-exporter\[kubernetes\]"):
        parse_config(["--kubernetes.enabled", "--kubernetes.node-name", "n"], environ={})
