"""Scenario files: loading, validation (every problem listed, nothing silently changed), identifiers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from exporter.model.vocabulary import COMPUTE_MODES, NVLINK_ERROR_TYPES, SHARED_GPU_RESOURCE
from exporter.sources.simulate import ScenarioError, load_scenario, load_scenario_text, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
SIMULATE = ROOT / "exporter" / "sources" / "simulate"

SMALL = """
    node: {name: n1}
    gpus: [{model: NVIDIA H100 80GB HBM3}]
    pods: [{namespace: a, name: p, containers: [{name: c, resource: nvidia.com/gpu, devices: [0],
                                                  processes: [{memory: 1GiB}]}]}]
"""


def scenario(text: str):
    return load_scenario_text(textwrap.dedent(text))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        scenario(text)
    return err.value.problems


def test_bad_scenario_lists_every_problem():
    text = """
        node: {name: n1, drivr_version: "1"}
        gpus:
          - model: NVIDIA H100 80GB HBM3
            mig:
              - {profile: x, gpu_instance_id: 1}
          - model: NVIDIA H100 80GB HBM3
            load: {pattern: wobble}
        pods: [{namespace: a, name: p, containers: [{name: c, resource: nvidia.com/gpu, devices: [{gpu: 7}]}]}]
        faults:
          events:
            - {kind: thermal, at: 10, gpu: 0}
    """
    with pytest.raises(ScenarioError) as err:
        scenario(text)
    problems = err.value.problems
    message = str(err.value)
    expected = [
        "node.drivr_version: unknown key",
        "gpus[0].mig[0].profile: expected a MIG profile like 1g.10gb, 3g.40gb, 7g.80gb, got string 'x'",
        "gpus[1].load.pattern: unknown value 'wobble'",
        "pods[0].containers[0].devices[0]: gpu 7 does not exist",
        "faults.events[0].duration: required for thermal",
    ]
    for e in expected:
        assert any(p.startswith(e) for p in problems), (e, problems)
        assert e in message
    assert len(problems) == len(expected)


def test_device_references_must_match_the_gpu_layout():
    text = """
        node: {name: n1}
        gpus:
          - {model: NVIDIA H100 80GB HBM3, mig: [{profile: 1g.10gb, gpu_instance_id: 9}]}
          - {model: NVIDIA H100 80GB HBM3, sharing: {replicas: 2}}
        pods:
          - namespace: a
            name: p
            containers:
              - {name: c1, resource: nvidia.com/gpu, devices: [{gpu: 0}]}
              - {name: c2, resource: nvidia.com/mig-2g.20gb, devices: [{gpu: 0, mig: 9}]}
              - {name: c3, resource: nvidia.com/gpu.shared, devices: [{gpu: 1, replica: 5}]}
              - {name: c4, resource: nvidia.com/gpu.shared, devices: [{gpu: 1, replica: 0}]}
              - {name: c5, resource: nvidia.com/gpu.shared, devices: [{gpu: 1, replica: 0}]}
    """
    paths = [p.split(":", 1)[0] for p in problems_of(text)]
    assert paths == [
        "pods[0].containers[0].devices[0]",  # a MIG-enabled GPU held whole
        "pods[0].containers[1].devices[0]",  # wrong resource name for the MIG profile
        "pods[0].containers[2].devices[0].replica",  # no such replica
        "pods[0].containers[4].devices[0]",  # replica held twice
    ]


def test_numbers_where_strings_are_due_must_be_quoted_not_converted():
    """YAML reads ``550.90`` as 550.9 and ``0123`` as 83: such a value is refused, shown as written."""
    text = """
        node: {name: n1, driver_version: 550.90, cuda_version: 12.10}
        gpus:
          - model: NVIDIA H100 80GB HBM3
            serial: 0123
            vbios_version: 96.00
        pods:
          - namespace: a
            name: p
            labels: {version: 1.10, team: ml}
            containers: [{name: c, resource: nvidia.com/gpu, devices: [0]}]
    """
    problems = problems_of(text)
    assert len(problems) == 5, problems
    for path, written in [("node.driver_version", "550.90"), ("node.cuda_version", "12.10"),
                          ("gpus[0].serial", "0123"), ("gpus[0].vbios_version", "96.00"),
                          ("pods[0].labels.version", "1.10")]:
        [problem] = [p for p in problems if p.startswith(f"{path}:")]
        assert f"the number {written}:" in problem and f'quotes ("{written}")' in problem, problem


def test_quoted_versions_are_kept_as_written():
    s = scenario("""
        node: {name: n1, driver_version: "550.90", cuda_version: "12.10"}
        gpus: [{model: NVIDIA H100 80GB HBM3, serial: "0123"}]
    """)
    assert (s.node.driver_version, s.node.cuda_version, s.gpus[0].serial) == ("550.90", "12.10", "0123")


def test_numbers_from_data_not_read_from_yaml_are_refused_too():
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"node": {"name": "n1", "cuda_version": 12.1}, "gpus": [{"model": "NVIDIA H200"}]})
    assert err.value.problems == ['node.cuda_version: expected a string, got the number 12.1: write it in quotes '
                                  '("12.1") so that it is kept as written']


def test_the_node_has_a_name():
    """It names the node on the status page and in pushed alerts unless --kubernetes.node-name does."""
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"node": {"name": " "}, "gpus": [{"model": "NVIDIA H200"}]})
    assert err.value.problems == ["node.name: must not be empty, got string ' '"]


def test_unreadable_and_invalid_yaml_are_scenario_errors(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(missing))
    assert err.value.problems == [f"{missing}: cannot read: No such file or directory"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: [\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(bad))
    assert "invalid YAML" in str(err.value)


def test_a_directory_is_reported_as_a_directory(tmp_path):
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(tmp_path))
    assert err.value.problems == [f"{tmp_path}: is a directory, not a scenario file"]


def test_text_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("node: {name: n1}\ngpus: [{model: caf\u00e9}]\n".encode("latin-1"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(path))
    assert err.value.source == str(path)
    assert err.value.problems == [f"{path}: line 2: byte 0xe9 at offset 35 is not UTF-8 text (save the file as UTF-8)"]


@pytest.mark.integration
def test_the_cli_reports_a_file_that_is_not_utf8_and_exits_2(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"node: {name: n\xe9}\ngpus: [{model: NVIDIA H200}]\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--simulate", str(path), "--once"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"{path}: line 1: byte 0xe9 at offset 14 is not UTF-8 text" in run.stderr


def test_same_scenario_same_identifiers():
    a, b = scenario(SMALL), scenario(SMALL)
    assert [g.uuid for g in a.gpus] == [g.uuid for g in b.gpus]
    assert a.pods[0].uid == b.pods[0].uid
    assert a.pods[0].containers[0].processes[0].pid == b.pods[0].containers[0].processes[0].pid
    assert scenario("seed: 1\n" + textwrap.dedent(SMALL)).gpus[0].uuid != a.gpus[0].uuid


def test_compute_modes_are_the_vocabulary_s():
    s = scenario("""
        node: {name: n1}
        gpus: [{model: NVIDIA H200, compute_mode: exclusive_process}]
    """)
    assert s.gpus[0].compute_mode == "exclusive_process"
    [problem] = problems_of("""
        node: {name: n1}
        gpus: [{model: NVIDIA H200, compute_mode: exclusive}]
    """)
    assert problem == ("gpus[0].compute_mode: unknown value 'exclusive' "
                       "(one of: default, exclusive_thread, prohibited, exclusive_process)")


def test_problems_come_in_the_order_of_the_file():
    """The schema's problems and the cross-checks' interleave as the file reads, not as they were found."""
    paths = [p.split(":", 1)[0] for p in problems_of("""
        node: {name: n1}
        gpus:
          - {model: NVIDIA H200, uuid: nope, memory: 40 gigs}
          - {model: NVIDIA H200, nvlink_links: 19}
        pods: [{namespace: a, name: p, containers: [{name: c, resource: nvidia.com/gpu, devices: [5]}]}]
        seed: x
    """)]
    assert paths == ["gpus[0].uuid", "gpus[0].memory", "gpus[1].nvlink_links", "pods[0].containers[0].devices[0]",
                     "seed"]


def test_counts_are_integers_and_every_number_finite():
    """YAML has 1.0, .inf and .nan; a scenario takes none of them where they would change what is meant."""
    problems = problems_of("""
        node: {name: n1}
        gpus:
          - {model: NVIDIA H200, nvlink_links: 1.0, memory: 1.5, power_limit: .inf}
          - {model: NVIDIA H200, load: constant}
        pods:
          - namespace: a
            name: p
            labels: {on: call}
            containers: [{name: c, resource: nvidia.com/gpu, devices: [1]}]
    """)
    assert problems == [
        "gpus[0].nvlink_links: expected an integer, got the number 1.0",
        "gpus[0].memory: expected a size in bytes or like '40GiB', got the number 1.5",
        "gpus[0].power_limit: expected a finite number, got the number .inf",
        "gpus[1].load: pattern constant needs a level: write load: {pattern: constant, level: <0..1>}",
        "pods[0].labels.True: expected a string, got boolean True",  # YAML 1.1 reads `on` as true
    ]


def test_the_schema_is_the_file_editors_check_against():
    """``scenario.schema.json`` is a plain JSON Schema (draft 7, what editors support best): the files the
    project ships pass it without the agent's own checks, and it names the agent's own vocabulary."""
    schema = json.loads((SIMULATE / "scenario.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    editor = jsonschema.Draft7Validator(schema)
    default = (SIMULATE / "default.yaml").read_text()
    assert "# yaml-language-server: $schema=scenario.schema.json\n" in default
    example = (ROOT / "docs" / "scenarios.md").read_text().split("## Example")[1].split("```yaml")[1].split("```")[0]
    for text in (default, example):
        assert not list(editor.iter_errors(yaml.safe_load(text)))
    assert not list(editor.iter_errors({"node": {"name": "n"}, "gpus": [{"model": "x", "load": "idle"}], "pods": None}))
    assert list(editor.iter_errors({"node": {"name": "n"}, "gpus": [{"model": "x", "memroy": "1GiB"}]}))

    definitions = schema["definitions"]
    assert definitions["gpu"]["properties"]["compute_mode"]["enum"] == list(COMPUTE_MODES)
    assert definitions["nvlink_errors"]["properties"]["type"]["enum"] == list(NVLINK_ERROR_TYPES)
    assert definitions["sharing"]["properties"]["resource"]["default"] == SHARED_GPU_RESOURCE
    kinds = definitions["event"]["properties"]["kind"]["enum"]
    assert [rule["if"]["properties"]["kind"]["const"] for rule in definitions["event"]["allOf"]] == kinds
    assert all(definitions[kind]["title"] == kind for kind in kinds)


def test_only_a_simulation_loads_jsonschema():
    run = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import exporter.cli
        assert "jsonschema" not in sys.modules
        from exporter.sources import simulate
        simulate.load_scenario(None)
        assert "jsonschema" in sys.modules
    """)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
