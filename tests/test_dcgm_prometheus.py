"""The dcgm-exporter compatible output and its recording rules through a real Prometheus: the
queries of docs/migrate-from-dcgm-exporter.md's examples (KEDA, prometheus-adapter, OpenCost, a
Grafana dashboard, a direct scrape) return what the native series give after conversion, with the
labels a dcgm consumer expects, and the recording rules give the agent's values.

The agent runs the built-in simulated node with a 60 s interval: every scrape of the test sees the
same cycle, so that the native and compat series of one moment are compared.
"""

from __future__ import annotations

import math

import pytest
import yaml
from e2e import ROOT, AgentProcess, free_port
from conftest import wait_until
from test_alerting_e2e import Prometheus

from alerts import dcgm as dcgm_rules

NODE = "gpu-node-h100-01"  # the built-in scenario's node
#: The labels a dcgm consumer reads; the records and the scrape differ in target labels only.
DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION", "GPU_I_ID",
               "GPU_I_PROFILE", "pod", "namespace", "container")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dcgm-prometheus")
    direct = free_port()
    agent = AgentProcess(["--simulate", "--kubernetes.enabled", "--kubernetes.pod-labels", "team",
                          "--collector.profiling", "--collector.ecc", "--compat.dcgm-exporter",
                          "--compat.dcgm-exporter.listen-address", f"127.0.0.1:{direct}"], env=None, interval=60)
    rules = yaml.safe_load((ROOT / "alerts" / "dcgm-compat.rules.yaml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"  # the shipped 30 s, shortened for the test
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
    target = f"127.0.0.1:{agent.port}"
    prometheus = Prometheus(directory, f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{directory / 'rules.yaml'}]
scrape_configs:
- job_name: kube-gpu-exporter
  static_configs: [{{targets: ["{target}"], labels: {{node: {NODE}}}}}]
- job_name: dcgm
  metrics_path: /metrics/dcgm
  static_configs: [{{targets: ["{target}"]}}]
- job_name: direct
  static_configs: [{{targets: ["127.0.0.1:{direct}"]}}]
""")
    try:
        agent.wait_for(lambda body: "nvidia_gpu_up" in body, what="the agent's first cycle")
        wait_until(lambda: prometheus.query('DCGM_FI_DEV_GPU_UTIL{job="direct"}')
                   and prometheus.query('DCGM_FI_DEV_POWER_USAGE{job="dcgm"}')
                   and prometheus.query("nvidia_gpu_power_watts")
                   and prometheus.query('DCGM_FI_DEV_POWER_USAGE{job=""}'),
                   timeout=40, message="Prometheus scraping all three and recording")
        yield prometheus
    finally:
        prometheus.stop()
        agent.process.terminate()
        agent.process.wait(10)


def q(prometheus: Prometheus, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's samples, by their labels."""
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in prometheus.query(expr)}


def one(prometheus: Prometheus, expr: str) -> float:
    (value,) = q(prometheus, expr).values()
    return value


def by(prometheus: Prometheus, expr: str, label: str) -> dict[str, float]:
    return {dict(k).get(label, ""): v for k, v in q(prometheus, expr).items()}


def test_keda_per_pod_gpu_utilisation(stack):
    """KEDA ScaledObject's query (docs/migrate-from-dcgm-exporter.md#keda)."""
    got = by(stack, 'avg(DCGM_FI_DEV_GPU_UTIL{job="dcgm",namespace!="",pod!=""}) by (pod)', "pod")
    want = by(stack, "round(100 * avg by (pod) (nvidia_gpu_container_utilization_ratio))", "pod")
    assert got == want
    # the exclusive holder, the two holders of the time-sliced GPU, the DRA holder; MIG has no GPU_UTIL
    assert {"train-llama-0-8xq2v", "notebook-6d5f7c9b8-k2x7p", "notebook-6d5f7c9b8-wq9zt",
            "dev-sandbox-5b8d7f6c9-r4n2j"} == set(got)


def test_prometheus_adapter_rule_query(stack):
    """prometheus-adapter's metricsQuery for pods/gpu_utilization_percent."""
    got = by(stack, 'ceil(avg_over_time(DCGM_FI_DEV_GPU_UTIL{job="dcgm",namespace="research",'
                    'pod=~"notebook-.*"}[60s]))', "pod")
    want = by(stack, 'round(100 * max by (pod) (nvidia_gpu_container_utilization_ratio{namespace="research",'
                     'pod=~"notebook-.*"}))', "pod")
    assert got == want and len(got) == 2


def test_opencost_container_activity_and_gpu_info(stack):
    """OpenCost's DCGM_FI_PROF_GR_ENGINE_ACTIVE{container!=""} and DEC_UTIL info queries."""
    got = q(stack, 'avg(avg_over_time(DCGM_FI_PROF_GR_ENGINE_ACTIVE{job="dcgm",container!=""}[1m])) '
                   'by (container, pod, namespace)')
    want = q(stack, 'avg by (container, pod, namespace) (nvidia_gpu_graphics_active_ratio * on (uuid, '
                    'gpu_instance_id) group_left (container, pod, namespace) max by (uuid, gpu_instance_id, container, '
                    'pod, namespace) (nvidia_gpu_allocation_info{shared="false"}))')
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=1e-6) for k in got)
    pods = {dict(k)["pod"] for k in got}
    assert "train-llama-0-8xq2v" in pods and "ci-runner-0" in pods  # a whole GPU and a MIG instance
    info = q(stack, 'avg(avg_over_time(DCGM_FI_DEV_DEC_UTIL{job="dcgm",container!=""}[1m])) '
                    'by (container, pod, namespace, device, modelName, UUID)')
    assert {dict(k)["pod"]: dict(k)["device"] for k in info} == {
        "train-llama-0-8xq2v": "nvidia0", "dev-sandbox-5b8d7f6c9-r4n2j": "nvidia3"}


def test_grafana_dashboard_queries_and_nothing_double_counts(stack):
    """A dashboard built for dcgm-exporter: power per node, memory used over total, temperature."""
    assert one(stack, 'sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE{job="dcgm"})') == pytest.approx(
        one(stack, "sum(nvidia_gpu_power_watts)"), abs=1e-3)
    ratio = by(stack, 'max by (UUID, GPU_I_ID) (DCGM_FI_DEV_FB_USED{job="dcgm",pod=""} or '
                      'DCGM_FI_DEV_FB_USED{job="dcgm",GPU_I_ID!=""} or DCGM_FI_DEV_FB_USED{job="dcgm",pod!=""})', "UUID")
    assert len(ratio) == 4
    # memory per node: the device series once each (a shared GPU's holders are beside it, not in it)
    total = one(stack, 'sum(max by (UUID, GPU_I_ID) (DCGM_FI_DEV_FB_USED{job="dcgm"}))')
    native = one(stack, 'sum(floor(nvidia_gpu_memory_used_bytes unless on (uuid) nvidia_gpu_mig_info) / 1048576) '
                        '+ sum(floor(max by (uuid, gpu_instance_id) (nvidia_gpu_mig_memory_used_bytes) / 1048576))')
    assert total == pytest.approx(native, abs=4)  # floor per device on one side, per sum on the other
    used_over_total = by(stack, 'DCGM_FI_DEV_FB_USED{job="dcgm",pod=""} / (DCGM_FI_DEV_FB_USED{job="dcgm",pod=""} '
                                '+ DCGM_FI_DEV_FB_FREE{job="dcgm",pod=""})', "gpu")
    assert set(used_over_total) <= {"1", "2"} and used_over_total  # the shared GPU and the free MIG instance
    temps = by(stack, 'avg by (gpu) (DCGM_FI_DEV_GPU_TEMP{job="dcgm"})', "gpu")
    assert temps == by(stack, "round(avg by (gpu) (nvidia_gpu_temperature_celsius))", "gpu")
    # every board field once per GPU: no copy per holder or MIG instance
    assert by(stack, 'count by (gpu) (DCGM_FI_DEV_POWER_USAGE{job="dcgm"})', "gpu") == {str(i): 1 for i in range(4)}


def test_throttle_reason_bits_and_xid_changes(stack):
    for reason, bit in (("gpu_idle", 1), ("sw_power_cap", 4), ("hw_slowdown", 8)):
        got = by(stack, f'floor(DCGM_FI_DEV_CLOCK_THROTTLE_REASONS{{job="dcgm"}} / {bit}) % 2', "gpu")
        want = by(stack, f'max by (gpu) (nvidia_gpu_clock_event_active{{reason="{reason}"}})', "gpu")
        assert got == want and len(got) == 4, reason
    changes = q(stack, 'changes(DCGM_FI_DEV_XID_ERRORS{job="dcgm"}[5m])')
    assert len(changes) == 4 and set(changes.values()) == {0.0}
    assert {dict(k)["err_msg"] for k in changes} == {"No Error"}


def test_a_direct_scrape_of_its_own_listener_gets_the_same_series(stack):
    """A Datadog-style agent scraping :9400/metrics directly: the own listener's bytes."""
    direct = {tuple(kv for kv in k if kv[0] not in ("job", "instance")): v
              for k, v in q(stack, '{job="direct",__name__=~"DCGM_FI_.*"}').items()}
    path = {tuple(kv for kv in k if kv[0] not in ("job", "instance")): v
            for k, v in q(stack, '{job="dcgm",__name__=~"DCGM_FI_.*"}').items()}
    assert direct == path and len(direct) > 100


def _restricted(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple((k, v) for k, v in key if k in DCGM_LABELS or k == "__name__"): value for key, value in samples.items()}


def test_the_recording_rules_give_the_agents_values(stack):
    wait_until(lambda: stack.last_evaluation() > 0, message="a rule evaluation")
    compared = 0
    for name, _ in dcgm_rules.fields():
        if name == "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL":  # a rate over the rules' window: its own semantics
            continue
        recorded = _restricted(q(stack, f'{name}{{job=""}}'))
        scraped = _restricted(q(stack, f'{name}{{job="dcgm"}}'))
        assert recorded.keys() == scraped.keys(), name
        for key, value in scraped.items():
            assert math.isclose(recorded[key], value, rel_tol=1e-6, abs_tol=1e-6), (name, dict(key), recorded[key], value)
        compared += len(scraped)
    assert compared > 150
