"""Alerts on the agent itself: not scraped, absent, missing on a GPU node, and its collectors failing."""

from __future__ import annotations

from alerts.alert import Alert
from alerts.cases import NODE, Case, agent, one_faulty_agent
from alerts.params import Params
from alerts.promql import last_value


def agent_gauge(metric: str, value: int, p: Params, matcher: str = "", by: str = "node") -> str:
    """A gauge of the agent (``metric`` with ``matcher``) equals ``value`` on a node, carried over failed scrapes."""
    return f"max by ({by}) ({last_value(metric + matcher, p)}) == {value}"


def alerts(p: Params) -> list[Alert]:
    rules: list[Alert] = []
    job = f'job="{p.job}"'
    rules.append(Alert(
        name="KubeGpuExporterDown", severity="warning", for_=p.agent_down_for,
        summary="Prometheus cannot scrape the GPU agent of a node.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot be scraped: the node's "
                    "GPUs are not monitored.",
        expr=f"max by (node) (up{{{job}}}) == 0",
        threshold="up == 0",
        why="A blind node: no GPU alert can fire for it (the agent's own pushes too, if it is down rather than "
            "unreachable).",
        cases=(Case({f"up{{{agent()}}}": "1x4 0x40",
                     f'up{{node="gpu-node-2",instance="10.0.0.2:9400",{job}}}': "1x45"}, 5, {"node": NODE}),)))

    rules.append(Alert(
        name="KubeGpuExporterAbsent", severity="warning", for_=p.agent_absent_for,
        summary="Prometheus has no GPU agent to scrape at all.",
        description=f"No target of job {p.job} exists: the DaemonSet is gone or service discovery lost it.",
        expr=f"absent(up{{{job}}})",
        threshold="no up series of the job",
        why="KubeGpuExporterDown needs a target to say it is down; this catches the missing target.",
        cases=(Case({f"up{{{agent()}}}": "1x4 stale"}, 5, {"job": p.job}),)))

    rules.append(Alert(
        name="KubeGpuExporterMissingOnGpuNode", severity="warning", for_=p.agent_absent_for,
        summary="A node with GPUs has no GPU agent scraped.",
        description="Node {{ $labels.node }} has GPUs but no kube-gpu-exporter target: its GPUs are "
                    "not monitored.",
        expr=f"max by (node) ({p.gpu_capacity}) > 0\n  unless on (node) max by (node) (up{{{job}}})",
        threshold="GPU capacity (kube-state-metrics) > 0 and no agent target on the node",
        why="A DaemonSet that misses nodes (a taint it does not tolerate, a node selector) is silent; "
            "the nodes' GPU capacity from kube-state-metrics tells which nodes should have an agent.",
        cases=(Case({'kube_node_status_capacity{node="gpu-node-1",resource="nvidia_com_gpu",job="ksm"}': "8x45",
                     'kube_node_status_capacity{node="gpu-node-2",resource="nvidia_com_gpu",job="ksm"}': "8x45",
                     'kube_node_status_capacity{node="cpu-node-1",resource="nvidia_com_gpu",job="ksm"}': "0x45",
                     f"up{{{agent()}}}": "1x4 stale",
                     f'up{{node="gpu-node-2",instance="10.0.0.2:9400",{job}}}': "1x45"},
                    5, {"node": NODE}),)))

    rules.append(Alert(
        name="KubeGpuExporterNvmlDown", severity="critical", for_=p.nvml_down_for,
        summary="The GPU agent cannot use NVML.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot initialise NVML: no GPU "
                    "of the node is read.",
        expr=agent_gauge("kube_gpu_exporter_nvml_up", 0, p),
        threshold="kube_gpu_exporter_nvml_up == 0",
        why="A node whose driver is broken reports no GPU series at all, so no GPU alert can fire.",
        cases=(one_faulty_agent("kube_gpu_exporter_nvml_up", {}, "1x4 0x40", 5),)))

    rules.append(Alert(
        name="KubeGpuExporterCollectorFailing", severity="warning", for_=p.collector_failing_for,
        summary="A collector of the GPU agent keeps failing.",
        description="Collector {{ $labels.collector }} of the kube-gpu-exporter agent on node "
                    "{{ $labels.node }} keeps failing.",
        expr=agent_gauge("kube_gpu_exporter_collector_success", 0, p, '{collector!~"nvml|kubelet|kubernetes"}',
                         "node, collector"),
        threshold="kube_gpu_exporter_collector_success == 0 (collectors other than nvml, kubelet, "
                  "kubernetes, which have alerts of their own)",
        why="procfs failures cost per-container usage on shared GPUs; new collectors are covered by default.",
        cases=(one_faulty_agent("kube_gpu_exporter_collector_success", {"collector": "procfs"}, "1x4 0x40", 5,
                                expect={"collector": "procfs"}),)))

    rules.append(Alert(
        name="KubeGpuExporterSnapshotStale", severity="warning", for_=p.snapshot_stale_for,
        summary="The GPU agent serves stale GPU readings: NVML calls hang.",
        description="NVML calls of the kube-gpu-exporter agent on node {{ $labels.node }} do not return in "
                    "time; some GPU readings are old.",
        expr=agent_gauge("kube_gpu_exporter_gpu_snapshot_stale", 1, p),
        threshold="kube_gpu_exporter_gpu_snapshot_stale == 1",
        why="A hanging NVML call is a driver in trouble, and hides changes on the GPU it hangs on.",
        cases=(one_faulty_agent("kube_gpu_exporter_gpu_snapshot_stale", {}, "0x4 1x40", 5),)))

    rules.append(Alert(
        name="KubeGpuExporterKubeletUnreachable", severity="warning", for_=p.kubelet_for,
        summary="The GPU agent cannot reach the kubelet's pod-resources API.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot list pod resources "
                    "from the kubelet: GPUs are not attributed to pods.",
        expr=agent_gauge("kube_gpu_exporter_collector_success", 0, p, '{collector="kubelet"}'),
        threshold='kube_gpu_exporter_collector_success{collector="kubelet"} == 0',
        why="The agent keeps the last allocations for a grace period, so a kubelet restart is quiet; "
            "longer, the allocations are dropped: device alerts keep firing as they were (their labels "
            "name the device only) but their `holders` annotation goes empty, and the usage alerts and "
            "dashboards lose their pods and workloads.",
        cases=(one_faulty_agent("kube_gpu_exporter_collector_success", {"collector": "kubelet"}, "1x4 0x40", 5),)))

    rules.append(Alert(
        name="KubeGpuExporterApiServerUnreachable", severity="warning", for_=p.apiserver_for,
        summary="The GPU agent lost its watch of the API server.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} cannot watch its pods on the "
                    "API server: workloads are unknown.",
        expr=agent_gauge("kube_gpu_exporter_collector_success", 0, p, '{collector="kubernetes"}'),
        threshold='kube_gpu_exporter_collector_success{collector="kubernetes"} == 0',
        why="Workload labels (and per-container usage on shared GPUs) need the API server.",
        cases=(one_faulty_agent("kube_gpu_exporter_collector_success", {"collector": "kubernetes"}, "1x4 0x40", 5),)))

    rules.append(Alert(
        name="KubeGpuExporterUnknownDeviceIds", severity="warning", for_=p.unknown_ids_for,
        summary="The kubelet reports GPU device ids the agent cannot match.",
        description="The kubelet on node {{ $labels.node }} lists device ids that match no GPU or MIG device "
                    "the agent sees: their pods are not attributed.",
        expr='sum by (node) (\n  increase(kube_gpu_exporter_collector_errors_total{collector="kubelet", '
             'kind="unknown_device_id"}[10m])\n) > 0',
        threshold="any unknown device id in 10m",
        why="A device plugin naming scheme the agent does not know, or a GPU the driver lost while the "
            "plugin still allocates it.",
        cases=(one_faulty_agent("kube_gpu_exporter_collector_errors_total",
                                {"collector": "kubelet", "kind": "unknown_device_id"}, "0x4 1+1x40", 5),)))

    rules.append(Alert(
        name="KubeGpuExporterAlertmanagerNotificationsFailing", severity="warning", for_=p.notifications_for,
        summary="The GPU agent fails to push alerts to Alertmanager.",
        description="The kube-gpu-exporter agent on node {{ $labels.node }} fails to deliver or drops "
                    "alerts for Alertmanager {{ $labels.alertmanager }}.",
        expr='sum by (node, alertmanager) (\n  increase(kube_gpu_exporter_alertmanager_notifications_total'
             '{result=~"failed|dropped"}[10m])\n) > 0',
        threshold="any failed or dropped notification in 10m",
        why="The push path is the fast path for critical GPU events; Prometheus' rules still cover it.",
        cases=(one_faulty_agent("kube_gpu_exporter_alertmanager_notifications_total",
                                {"alertmanager": "http://am:9093", "result": "failed"}, "0x4 1+1x40", 5,
                                expect={"alertmanager": "http://am:9093"}),)))
    return rules
