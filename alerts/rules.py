"""The rule set: every alert group in order, and the recording rules. Start reading here.

``python -m alerts.generate`` turns it into the plain rule file, the PrometheusRule object, the
promtool tests (their thresholds come from the same ``Params``), docs/alerts.md and
docs/runbooks.md. Where each part lives:

- ``alerts/params.py``: ``Params``, every threshold, window and ``for:``;
- ``alerts/promql.py``: PromQL and annotation-template building blocks;
- ``alerts/recording.py``: the recording rules;
- ``alerts/efficiency.py``: the efficiency rules (GPU-hours held, used, idle; energy), a group of their own;
- ``alerts/groups/*.py``: the alerts, one module per group below (``alerts/alert.py``: what one is);
- ``alerts/cases.py``: the promtool test cases' language and fixtures;
- ``alerts/runbooks/<AlertName>.md``: each alert's runbook, in Markdown.

Label model: Prometheus adds ``node`` to every series of the agent at scrape time (relabelling);
every rule aggregates by the labels it keeps, which drops the scrape target's ``instance``,
``job``, ``pod``, ``namespace``. **Labels identify the device, annotations say who holds it.**
Device alerts are labelled ``node, gpu, uuid`` (plus ``xid`` or ``link`` where the alert is about
one of those), never with a pod: a holder change or a kubelet outage must not end an alert and
start another (restarting its ``for:``, paging twice). Their ``holders`` annotation names the pods
holding the device, filled at notification time by a template query on
``nvidia_gpu_allocation_info``; the agent's pushed alerts carry the same labels and the same
annotation (exporter/push/definitions.py). Container alerts (idle, stuck, memory) are about a
container and keep ``namespace, pod, container``.
"""

from __future__ import annotations

from typing import Callable

from alerts.alert import Alert
from alerts.groups import agent, hardware, interconnect, thermal, usage, xid
from alerts.params import Params
from alerts.recording import recording_rules

__all__ = ["GROUPS", "Params", "alerts", "groups", "interval", "recording_rules"]

#: (rule group, the alerts of one module), in the order of the generated files. The interconnect
#: alerts (warnings with a for: of minutes) have a group of their own, evaluated as seldom as the
#: other non-paging ones; moving an alert to another group loses its pending state (its for:
#: progress) once, at the rule reload that moves it.
GROUPS: tuple[tuple[str, Callable[[Params], list[Alert]]], ...] = (
    ("gpu-xid", xid.alerts),
    ("gpu-hardware", hardware.alerts),
    ("gpu-interconnect", interconnect.alerts),
    ("gpu-thermal", thermal.alerts),
    ("gpu-usage", usage.alerts),
    ("kube-gpu-exporter", agent.alerts),
)


#: The groups of the alerts that page: evaluated every ``Params.urgent_interval``, the others
#: every ``Params.alert_interval``.
URGENT = frozenset({"gpu-xid", "gpu-hardware"})


def interval(group: str, p: Params) -> str:
    """How often the alert group ``group`` is evaluated."""
    return p.urgent_interval if group in URGENT else p.alert_interval


def groups(p: Params) -> dict[str, list[Alert]]:
    """The alerts by rule group (without the ``kube-gpu-exporter.`` prefix of the generated files)."""
    by_group: dict[str, list[Alert]] = {}
    for group, alerts_of in GROUPS:
        by_group.setdefault(group, []).extend(alerts_of(p))
    return by_group


def alerts(p: Params) -> list[Alert]:
    """Every alert, in the order of the generated files and docs."""
    return [alert for group in groups(p).values() for alert in group]
