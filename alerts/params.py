"""Every threshold, window and ``for:`` of the rule set, in one place: ``Params``.

Tune the rule set by changing a default here and running ``make rules``, or by passing other
``Params`` to ``alerts.generate.rules_file`` (docs/alerts.md, "Tuning"). The promtool tests are
built from the same ``Params``, so they follow a changed threshold. Durations are Prometheus
durations (``"10m"``); ratios are 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.push import definitions


def duration(seconds: int) -> str:
    """A Prometheus duration for a whole number of seconds, in the largest unit that divides it
    (3600 -> "1h", 600 -> "10m", 30 -> "30s")."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def minutes(text: str) -> int:
    """A Prometheus duration of one unit (``"30s"``, ``"15m"``, ``"3h"``, ``"1d"``) in whole minutes."""
    units = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}
    return int(int(text[:-1]) * units[text[-1]])


@dataclass(frozen=True)
class Params:
    """The rule set's parameters; the field name says which alert (``<what>_for`` is its ``for:``)."""

    job: str = "kube-gpu-exporter"  # the scrape job of the agent (for up / absent)
    # How often each rule group is evaluated. A group costs what it selects, per node and evaluation
    # (docs/scaling.md); the agent pushes the critical alerts itself within one cycle.
    recording_interval: str = "1m"  # the recording rules: dashboards over hours and days
    urgent_interval: str = "30s"  # gpu-xid, gpu-hardware: the alerts that page
    alert_interval: str = "1m"  # the other alert groups, whose for: is minutes or hours
    runbook_base: str = definitions.RUNBOOK_BASE  # runbook_url = runbook_base#<alert name, lower case>
    # The selector of kube-state-metrics' GPU capacity, to find GPU nodes without an agent.
    gpu_capacity: str = 'kube_node_status_capacity{resource="nvidia_com_gpu"}'
    # How long a gauge keeps its last value over failed scrapes (last_over_time), so that a scrape
    # that fails (the agent restarting) neither resolves an alert that is still true nor restarts its for:.
    scrape_gap_tolerance: str = "5m"
    # An XID or ECC event keeps its alert active this long (the agent's --alertmanager.event-window).
    event_window: str = duration(definitions.EVENT_WINDOW_SECONDS)
    xid_recurring_window: str = "24h"  # GpuXidRecurring: a second event of one code within this
    ecc_for: str = "0s"
    xid_for: str = "0s"
    gpu_lost_for: str = duration(definitions.GPU_LOST_FOR_SECONDS)  # the agent pushes GpuLost after as long
    gpu_missing_window: str = "1d"  # a node's GPU count is compared with its maximum over this window
    gpu_missing_for: str = "5m"
    row_remap_failure_for: str = "1m"
    pending_for: str = "15m"  # row remap / page retirement pending
    nvlink_window: str = "10m"
    nvlink_errors: int = 50  # NVLink errors (all links and types) per nvlink_window
    nvlink_for: str = "10m"
    nvlink_down_for: str = "5m"
    pcie_replay_window: str = "10m"
    pcie_replays: int = 10  # PCIe replays per pcie_replay_window
    pcie_replay_for: str = "10m"
    pcie_busy_ratio: float = 0.5  # a PCIe link is judged only while the GPU is busier than this
    pcie_degraded_for: str = "10m"
    hw_slowdown_for: str = "2m"
    capping_window: str = "15m"  # rate() window of the thermal and power violation counters
    thermal_capping_ratio: float = 0.5  # fraction of time
    thermal_capping_for: str = "15m"
    power_capping_ratio: float = 0.8  # fraction of time
    power_capping_for: str = "30m"
    # Degrees below the slowdown / HBM maximum threshold; the status page warns from the same margin.
    temperature_margin: float = definitions.TEMPERATURE_MARGIN_CELSIUS
    temperature_for: str = "5m"
    idle_ratio: float = 0.05  # GpuAllocatedIdle: utilisation below this at every scrape is idle
    idle_interactive_for: str = "4h"  # ... for this long
    idle_batch_ratio: float = 0.01  # GpuBatchJobStuck: utilisation below this at every scrape is stuck
    idle_batch_for: str = "1h"  # ... for this long
    batch_kinds: str = "Job|CronJob"  # workload_kind regex of batch work; every other kind is interactive
    memory_full_ratio: float = 0.95  # of the memory of the container's GPU or MIG instance
    memory_full_for: str = "15m"
    busy_unallocated_ratio: float = 0.1  # GpuBusyWithoutPod: utilisation above this with no pod holding the GPU
    busy_unallocated_for: str = "15m"
    agent_down_for: str = "5m"
    agent_absent_for: str = "15m"
    nvml_down_for: str = "5m"
    collector_failing_for: str = "15m"
    snapshot_stale_for: str = "5m"
    kubelet_for: str = "5m"
    apiserver_for: str = "10m"
    unknown_ids_for: str = "15m"
    notifications_for: str = "10m"
    in_use_ratio: float = 0.05  # a GPU counts as in use above this utilisation (recording rules)
