"""A simulated week of one GPU node for the efficiency report and dashboard: who held what, and
how busy, minute by minute (docs/efficiency.md, "The simulated week").

- GPU 0 (H100): ``research/notebook-alice`` (a Deployment) holds it all week and uses it 10 % of
  the time: each day from 09:00 for 2 h 24 min at 0.6 utilisation, idle (0.0) otherwise.
  350 W busy, 70 W idle.
- GPU 1 (H100, with profiling): ``ml/nightly-train`` (a CronJob) trains from 01:00 to 05:00 each
  night, one pod a night, at 0.95 utilisation and 0.8 SM activity, 650 W; nobody holds it by day.
- GPU 2 (H100, time-sliced): ``serving/inference`` (a Deployment, two replicas) at 0.3 and 0.2 of
  the GPU from 06:00 to midnight, at 0.02 each (idle) from midnight to 06:00; 300 W.
- GPU 3 (A100, MIG): ``ml/eval`` (a StatefulSet) on a 3g.40gb instance that always runs a process;
  ``research/dev-bob`` (a bare Pod) on a 2g.20gb instance that never does; a second 2g.20gb
  instance free. 250 W.

The agent's series are written as it exposes them, one scrape a minute (``STEP_SECONDS``) at
``start + k * 60`` for k = 0 .. 7 * 1440; the state at a scrape is the state of the minute that
starts then. tests/test_report.py computes the report's figures from these facts by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from alerts.efficiency import GROUP  # noqa: E402
from alerts.generate import RECORDING_GROUP, rule_groups  # noqa: E402
from alerts.params import Params  # noqa: E402
from alerts.recording import SHARE  # noqa: E402
from history import Backfill  # noqa: E402
from live import DemoNode  # noqa: E402

NODE = "gpu-node-week-01"
TARGET = {"job": Params().job, "instance": f"{NODE}:9400", "node": NODE}
DAY = 86400
DAYS = 7
WEEK = DAYS * DAY
STEP_SECONDS = 60  # the scrape and the efficiency rules' interval (Params.efficiency_interval)
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
GPUS = ((0, H100), (1, H100), (2, H100), (3, A100))
#: (gpu_instance_id, profile) of GPU 3's MIG instances
MIG = (("1", "3g.40gb"), ("2", "2g.20gb"), ("3", "2g.20gb"))

# The scenario's facts, as tests/test_report.py reads them: minutes of the day [from, to).
NOTEBOOK_BUSY = (9 * 60, 9 * 60 + 144)
NOTEBOOK_UTIL, NOTEBOOK_WATTS = 0.6, (350.0, 70.0)  # busy, idle
TRAIN_HOURS = (1 * 60, 5 * 60)
TRAIN_UTIL, TRAIN_SM, TRAIN_WATTS = 0.95, 0.8, 650.0
INFERENCE_NIGHT = (0, 6 * 60)
INFERENCE_UTIL = {"inference-a": (0.3, 0.02), "inference-b": (0.2, 0.02)}  # day, night
INFERENCE_WATTS = 300.0
MIG_WATTS = 250.0


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _within(minute: int, window: tuple[int, int]) -> bool:
    return window[0] <= minute < window[1]


def exposition(k: int) -> str:
    """The agent's scrape number ``k`` (minute k of the week)."""
    minute, day = k % 1440, k // 1440
    lines: list[str] = ["# TYPE nvidia_gpu_info gauge"]
    lines += [f"nvidia_gpu_info{{{_labels(gpu=str(i), uuid=f'GPU-{i}', model=model)}}} 1" for i, model in GPUS]
    lines += ["# TYPE nvidia_gpu_mig_info gauge"]
    lines += [f"nvidia_gpu_mig_info{{{_labels(gpu='3', uuid='GPU-3', gpu_instance_id=gi, compute_instance_id='0', mig_uuid=f'MIG-{gi}', profile=profile)}}} 1"
              for gi, profile in MIG]
    holders: list[tuple[str, dict[str, str], float | None]] = []  # (gpu, allocation labels, container util)
    busy = _within(minute, NOTEBOOK_BUSY)
    holders.append(("0", dict(namespace="research", pod="notebook-alice-7d9f-x2x", container="jupyter",
                              resource="nvidia.com/gpu", shared="false", workload_kind="Deployment",
                              workload="notebook-alice"), NOTEBOOK_UTIL if busy else 0.0))
    training = _within(minute, TRAIN_HOURS)
    if training:
        holders.append(("1", dict(namespace="ml", pod=f"nightly-train-{29000000 + day}-abcde", container="trainer",
                                  resource="nvidia.com/gpu", shared="false", workload_kind="CronJob",
                                  workload="nightly-train"), TRAIN_UTIL))
    night = _within(minute, INFERENCE_NIGHT)
    for pod, (day_util, night_util) in INFERENCE_UTIL.items():
        holders.append(("2", dict(namespace="serving", pod=f"{pod}", container="server",
                                  resource="nvidia.com/gpu.shared", shared="true", workload_kind="Deployment",
                                  workload="inference"), night_util if night else day_util))
    lines += ["# TYPE nvidia_gpu_allocation_info gauge"]
    for gpu, labels, _ in holders:
        lines.append(f"nvidia_gpu_allocation_info{{{_labels(gpu=gpu, uuid=f'GPU-{gpu}', **labels)}}} 1")
    mig_holders = (("1", dict(namespace="ml", pod="eval-0", container="eval", resource="nvidia.com/mig-3g.40gb",
                              shared="false", workload_kind="StatefulSet", workload="eval")),
                   ("2", dict(namespace="research", pod="dev-bob", container="shell",
                              resource="nvidia.com/mig-2g.20gb", shared="false", workload_kind="Pod",
                              workload="dev-bob")))
    for gi, labels in mig_holders:
        lines.append(f"nvidia_gpu_allocation_info{{{_labels(gpu='3', uuid='GPU-3', gpu_instance_id=gi, compute_instance_id='0', **labels)}}} 1")
    lines += ["# TYPE nvidia_gpu_container_utilization_ratio gauge"]
    for gpu, labels, util in holders:
        lines.append(f"nvidia_gpu_container_utilization_ratio{{{_labels(namespace=labels['namespace'], pod=labels['pod'], container=labels['container'], gpu=gpu, uuid=f'GPU-{gpu}')}}} {util}")
    lines += ["# TYPE nvidia_gpu_utilization_ratio gauge",
              f"nvidia_gpu_utilization_ratio{{gpu=\"0\",uuid=\"GPU-0\"}} {NOTEBOOK_UTIL if busy else 0.0}",
              f"nvidia_gpu_utilization_ratio{{gpu=\"1\",uuid=\"GPU-1\"}} {TRAIN_UTIL if training else 0.0}",
              f"nvidia_gpu_utilization_ratio{{gpu=\"2\",uuid=\"GPU-2\"}} {sum(u[1 if night else 0] for u in INFERENCE_UTIL.values())}",
              "# TYPE nvidia_gpu_mig_processes gauge"]
    lines += [f"nvidia_gpu_mig_processes{{{_labels(gpu='3', uuid='GPU-3', gpu_instance_id=gi, compute_instance_id='0')}}} {1 if gi == '1' else 0}"
              for gi, _ in MIG]
    lines += ["# TYPE nvidia_gpu_sm_active_ratio gauge",
              f"nvidia_gpu_sm_active_ratio{{gpu=\"1\",uuid=\"GPU-1\"}} {TRAIN_SM if training else 0.0}",
              "# TYPE nvidia_gpu_power_watts gauge",
              f"nvidia_gpu_power_watts{{gpu=\"0\",uuid=\"GPU-0\"}} {NOTEBOOK_WATTS[0] if busy else NOTEBOOK_WATTS[1]}",
              f"nvidia_gpu_power_watts{{gpu=\"1\",uuid=\"GPU-1\"}} {TRAIN_WATTS if training else 60.0}",
              f"nvidia_gpu_power_watts{{gpu=\"2\",uuid=\"GPU-2\"}} {INFERENCE_WATTS}",
              f"nvidia_gpu_power_watts{{gpu=\"3\",uuid=\"GPU-3\"}} {MIG_WATTS}", "# EOF"]
    return "\n".join(lines) + "\n"


def record_week(workdir: Path) -> Backfill:
    backfill = Backfill(TARGET)
    for k in range(DAYS * 1440 + 1):
        backfill.scrape(exposition(k), float(k * STEP_SECONDS))
    return backfill


def efficiency_groups(p: Params = Params()) -> list[dict[str, Any]]:
    """The rules the report reads: the holders' share (of the recording group) and the efficiency group."""
    groups = {g["name"]: g for g in rule_groups(p)}
    share = [r for r in groups[RECORDING_GROUP]["rules"] if r["record"] == SHARE]
    return [{"name": RECORDING_GROUP, "rules": share}, groups[GROUP]]


def week_node(end: float, workdir: Path | None = None) -> DemoNode:
    """A Prometheus holding the week that ends at ``end`` (unix seconds), with the efficiency
    rules backfilled every minute, as Prometheus evaluates them. Their backfill runs with a lookback
    just under a minute: a scrape that no longer sees a series writes a staleness marker, which
    OpenMetrics cannot carry, so a pod that ended would otherwise still count for Prometheus'
    5-minute lookback."""
    return DemoNode(workdir, history=record_week, span=WEEK, step=STEP_SECONDS, end=end,
                    groups=efficiency_groups(), lookback="59s", live_rules=False)
