"""The promtool test cases of the alerts: how a case is written, and the promtool tests it becomes.

A ``Case`` gives input series in promtool's notation (``"0x4 1x40"``: 0 for five samples, then 1
for forty-one; ``stale``; ``_`` for no sample) and the minute from which the alert's expression
holds; ``promtool_tests`` turns it into checks that the alert is silent one minute before its
``for:`` runs out and firing at that minute with exactly the expected labels and annotations.
Cases also carry healthy series (another GPU, another node) on which the alert must stay silent.

The fixture world: node gpu-node-1, its agent scraped as target 10.0.0.1:9400 whose own
``namespace``/``pod`` labels every rule must drop; gpu-node-2's agent is 10.0.0.2:9400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from alerts.params import Params, minutes
from exporter.push.definitions import HOLDERS_ANNOTATION, XIDS_ANNOTATION, holders_text, render, xids_text

if TYPE_CHECKING:
    from alerts.alert import Alert


@dataclass(frozen=True)
class Case:
    """A promtool test of one alert: input series (one sample per ``interval``), the minute from
    which the expression holds, the labels it fires with. ``checks`` adds (minute, firing?) checks,
    e.g. for the traps. The expected ``holders`` annotation of a check is computed from the case's
    ``nvidia_gpu_allocation_info`` series present at that minute; ``xids`` is the expected ``xids``
    annotation's codes, the same at every firing check of the case."""

    series: Mapping[str, str]
    active_from: int  # the minute from which the expression holds (the alert pending)
    labels: Mapping[str, str] = field(default_factory=dict)
    checks: tuple[tuple[int, bool], ...] = ()
    boundary_checks: bool = True  # also check silent one minute before for: runs out, firing at it
    name: str = ""
    xids: tuple[int, ...] = ()
    interval: str = "1m"


# -- Series of the fixture world -------------------------------------------------------------

NODE = "gpu-node-1"
_TARGET = 'instance="10.0.0.1:9400",job="kube-gpu-exporter"'


def series(metric: str, labels: str) -> str:
    """A series in promtool's notation: ``metric{labels}``."""
    return f"{metric}{{{labels}}}"


def agent(*, node: str = NODE, **extra: str) -> str:
    """The labels of a series of the agent of ``node`` (gpu-node-2's is target 10.0.0.2:9400)."""
    target = _TARGET if node == NODE else _TARGET.replace("10.0.0.1", "10.0.0.2")
    return f'node="{node}",{target},namespace="monitoring",pod="kube-gpu-exporter-7xk2p"' + "".join(
        f',{k}="{v}"' for k, v in extra.items())


def gpu(i: int, *, node: str = NODE, **extra: str) -> str:
    """The labels of a series of GPU i (``gpu="i"``, ``uuid="GPU-i"``) from the agent of ``node``."""
    return agent(node=node, gpu=str(i), uuid=f"GPU-{i}", **extra)


def container(i: int, namespace: str, pod: str, name: str, **extra: str) -> str:
    """The labels of a container series of GPU i: the holder's namespace and pod (the agent's
    own, the scrape target's, are overwritten: honor_labels)."""
    return (f'node="{NODE}",{_TARGET},namespace="{namespace}",pod="{pod}",container="{name}",gpu="{i}",'
            f'uuid="GPU-{i}"') + "".join(f',{k}="{v}"' for k, v in extra.items())


def nvml_up(values: str, node: str = NODE) -> dict[str, str]:
    """kube_gpu_exporter_nvml_up of the agent of ``node``."""
    return {series("kube_gpu_exporter_nvml_up", agent(node=node)): values}


def allocation(i: int, namespace: str, pod: str, *, container: str = "main", kind: str = "Deployment",
               workload: str = "app", gi: str = "", shared: str = "false", resource: str = "nvidia.com/gpu") -> str:
    """The nvidia_gpu_allocation_info series of a container holding GPU i (MIG instance ``gi``)."""
    mig = f',gpu_instance_id="{gi}",compute_instance_id="0"' if gi else ""
    return (f'nvidia_gpu_allocation_info{{node="{NODE}",{_TARGET},gpu="{i}",uuid="GPU-{i}"{mig},'
            f'namespace="{namespace}",pod="{pod}",container="{container}",resource="{resource}",'
            f'shared="{shared}",workload_kind="{kind}",workload="{workload}"}}')


def expect_gpu(i: int, **extra: str) -> dict[str, str]:
    """The labels a device alert on GPU i fires with (severity aside)."""
    return {"node": NODE, "gpu": str(i), "uuid": f"GPU-{i}", **extra}


#: GPU 0 held by one Job's pod, ml/train-0 (nvidia_gpu_allocation_info series and their values).
EXCLUSIVE = {allocation(0, "ml", "train-0", kind="Job", workload="train"): "1x300"}
#: The agent drops the allocations once the kubelet has been away past --attribution.grace-period.
EXCLUSIVE_UNTIL_20 = {allocation(0, "ml", "train-0", kind="Job", workload="train"): "1x19 stale"}
#: GPU 2's MIG instances 1 and 2 held by two pods.
TWO_MIG_HOLDERS = {
    allocation(2, "ml", "eval-0", gi="1", kind="StatefulSet", workload="eval"): "1x300",
    allocation(2, "serving", "embed-0", gi="2", workload="embed"): "1x300",
}
#: GPU 2's MIG instances 1 and 2 held by two containers of one pod.
ONE_POD_TWO_MIG = {
    allocation(2, "ml", "eval-0", gi="1", container="a", kind="StatefulSet", workload="eval"): "1x300",
    allocation(2, "ml", "eval-0", gi="2", container="b", kind="StatefulSet", workload="eval"): "1x300",
}


def one_faulty_gpu(metric: str, faulty: str, healthy: str, active_from: int,
                   labels: Mapping[str, str] | None = None) -> Case:
    """``metric`` of GPU 0 turns faulty, GPU 1's stays healthy; the alert fires on GPU 0."""
    extra = dict(labels or {})
    return Case({series(metric, gpu(0, **extra)): faulty, series(metric, gpu(1, **extra)): healthy}, active_from,
                expect_gpu(0))


def one_faulty_agent(metric: str, labels: Mapping[str, str], faulty: str, active_from: int,
                     expect: Mapping[str, str] | None = None) -> Case:
    """The agent of gpu-node-1 turns faulty; gpu-node-2's stays healthy (its first value)."""
    extra = dict(labels)
    healthy = faulty.split()[0].split("x")[0].split("+")[0]
    return Case({series(metric, agent(**extra)): faulty,
                 f'{metric}{{node="gpu-node-2",instance="10.0.0.2:9400",job="kube-gpu-exporter"'
                 + "".join(f',{k}="{v}"' for k, v in extra.items()) + f"}}": f"{healthy}x45"},
                active_from, {"node": NODE, **(expect or {})})


# -- What a case checks ------------------------------------------------------------------------

_SERIES = re.compile(r"^(\w+)\{(.*)\}$")  # metric{labels}
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_EXPANDING = re.compile(r"^([^x]+?)(?:([+-][^x]+))?x(\d+)$")  # a+bxn: a, a+b, ... a+n*b
LOOKBACK_MINUTES = 5  # Prometheus' lookback delta
DEFAULT_NAME = "fires after its for:, not before; the healthy series stay silent"


def checks(case: Case, for_: str) -> list[tuple[int, bool]]:
    """(minute, firing?) of every check of the case, sorted."""
    found = list(case.checks)
    if case.boundary_checks:
        due = case.active_from + minutes(for_)
        if due - 1 >= 0:
            found.append((due - 1, False))
        found.append((due, True))
    return sorted(set(found))


def samples(values: str) -> list[float | str | None]:
    """promtool's series notation, one entry per interval: a value, "stale", or None (``_``)."""
    out: list[float | str | None] = []
    for token in values.split():
        if token == "stale":
            out.append("stale")
        elif match := re.fullmatch(r"_(?:x(\d+))?", token):
            out += [None] * int(match[1] or 1)
        elif match := _EXPANDING.match(token):
            start, step = float(match[1]), float(match[2] or 0)
            out += [start + k * step for k in range(int(match[3]) + 1)]
        else:
            out.append(float(token))
    return out


def present(values: str, minute: int, interval: str) -> bool:
    """Whether an instant query at ``minute`` sees the series: its latest sample within the
    lookback is a value, not a stale marker."""
    step = minutes(interval) if interval.endswith(("m", "h", "d")) else int(interval[:-1]) / 60
    latest = None
    for k, value in enumerate(samples(values)):
        if k * step > minute:
            break
        if value is not None and minute - k * step <= LOOKBACK_MINUTES:  # inclusive before Prometheus 3
            latest = value
    return latest is not None and latest != "stale"


def expected_holders(case: Case, labels: Mapping[str, str], minute: int) -> str:
    """The ``holders`` annotation the rules must give at ``minute``: the pods of the case's
    nvidia_gpu_allocation_info series of the alert's node and uuid present then."""
    pods = []
    for name, values in case.series.items():
        match = _SERIES.match(name)
        if match and match[1] == "nvidia_gpu_allocation_info":
            series_labels = dict(_LABEL.findall(match[2]))
            if all(series_labels.get(k) == labels.get(k) for k in ("node", "uuid")) \
                    and present(values, minute, case.interval):
                pods.append((series_labels["namespace"], series_labels["pod"]))
    return holders_text(pods)


def expected_annotations(alert: Alert, case: Case, minute: int, p: Params) -> dict[str, str]:
    """What promtool must see: the Go templates rendered by Python's ``render``, the holders from
    the input series (``definitions.holders_text``), the xids of the case (``definitions.xids_text``)."""
    annotations = {k: render(v, case.labels) for k, v in alert.annotations(p).items()}
    if HOLDERS_ANNOTATION in annotations:
        annotations[HOLDERS_ANNOTATION] = expected_holders(case, case.labels, minute)
    if XIDS_ANNOTATION in annotations:
        annotations[XIDS_ANNOTATION] = xids_text(case.xids)
    return annotations


def promtool_tests(alerts: list[Alert], p: Params) -> list[dict[str, Any]]:
    """The ``tests:`` of a promtool test file: one per case of every alert."""
    tests = []
    for alert in alerts:
        for n, case in enumerate(alert.cases):
            labels = {"severity": alert.severity, **case.labels}
            tests.append({
                "name": f"{alert.name}: {case.name or DEFAULT_NAME}"
                        + (f" ({n + 1})" if len(alert.cases) > 1 and not case.name else ""),
                "interval": case.interval,
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [{
                    "eval_time": f"{minute}m",
                    "alertname": alert.name,
                    "exp_alerts": [{"exp_labels": labels,
                                    "exp_annotations": expected_annotations(alert, case, minute, p)}]
                    if firing else [],
                } for minute, firing in checks(case, alert.for_)],
            })
    return tests
