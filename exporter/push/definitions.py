"""What the pushed alerts are called and say, shared with the rule generator (``alerts/``).

**Labels identify the device, never its holder.** The generated rules for these alerts aggregate
to exactly the label set the agent pushes (``alertname, severity, node, gpu, uuid`` plus the
external labels), so that Alertmanager sees one alert from two sources and sends one
notification. A pod never goes into an alert's labels: a holder change (a Job's next pod, a
time-sliced replica moving) or a kubelet outage would otherwise end the alert and start a new
one, restarting its ``for:`` and paging twice. Who holds the device is said in the ``holders``
annotation (``namespace/pod, ...``), which the rules fill from ``nvidia_gpu_allocation_info``
with a template query and the agent from its own attribution, in the same format.

XIDs are alerted on per tier (the action a code calls for), from
``nvidia_gpu_xid_events_total{tier}``, which the agent exports for every tier at 0 from the
start so that ``increase()`` sees the first event; the codes behind an alert are in its ``xids``
annotation. The per-code ``nvidia_gpu_xid_errors_total{xid}`` is at 0 from the start only for
the codes whose recurrence the rules judge (``XID_ZERO_CODES``): bounded, whatever NVIDIA adds.

Annotations use a small subset of Prometheus' Go templates, ``{{ $labels.x }}`` and
``{{ if $labels.x }}...{{ end }}``, which ``render`` evaluates the same way in Python: for the
pushed alerts and for the expected annotations of the promtool tests (which check that Go and
Python agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

# The XID tiers and the shared thresholds are the model's (the renderer and the status page use
# them too); they are named here as well, so that the rules see the whole contract in one module.
from ..model.health import EVENT_WINDOW_SECONDS, GPU_LOST_FOR_SECONDS, TEMPERATURE_MARGIN_CELSIUS, THROTTLE_REASONS
from ..model.xid import (
    XID_APPLICATION, XID_INFORMATIONAL, XID_KNOWN, XID_REBOOT, XID_REPLACE_IF_RECURRING, XID_RESET, XID_TIERS,
    XID_ZERO_CODES, xid_tier,
)

__all__ = [
    "EVENT_WINDOW_SECONDS", "GPU_LOST_FOR_SECONDS", "TEMPERATURE_MARGIN_CELSIUS", "THROTTLE_REASONS",
    "XID_APPLICATION", "XID_INFORMATIONAL", "XID_KNOWN", "XID_REBOOT", "XID_REPLACE_IF_RECURRING", "XID_RESET",
    "XID_TIERS", "XID_ZERO_CODES", "xid_tier",
    "RUNBOOK_BASE", "GPU_DESCRIPTION", "HOLDERS_ANNOTATION", "XIDS_ANNOTATION", "holders_text", "xids_text",
    "AlertText", "XID_RESET_REQUIRED", "XID_REBOOT_REQUIRED", "GPU_LOST", "ECC_UNCORRECTABLE", "PUSHED", "render",
]

#: Where runbook_url points; the rules' ``Params.runbook_base`` defaults to it.
RUNBOOK_BASE = "https://github.com/kube-gpu-exporter/kube-gpu-exporter/blob/main/docs/runbooks.md"

GPU_DESCRIPTION = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on node {{ $labels.node }}"

#: Annotation keys beside summary, description and runbook_url.
HOLDERS_ANNOTATION = "holders"  # "namespace/pod, ..." of the pods holding the GPU or its MIG instances
XIDS_ANNOTATION = "xids"  # "code, ..." of an XID alert's tier with an event in the event window


def holders_text(pods: Iterable[tuple[str, str]]) -> str:
    """The ``holders`` annotation: distinct ``namespace/pod`` sorted as text, joined by ", "
    ("" when nobody holds the device). The rules' template sorts the same way (sortByLabel)."""
    return ", ".join(sorted({f"{namespace}/{pod}" for namespace, pod in pods}))


def xids_text(codes: Iterable[int]) -> str:
    """The ``xids`` annotation: distinct codes sorted as text (as sortByLabel sorts), joined by ", "."""
    return ", ".join(sorted({str(code) for code in codes}))


@dataclass(frozen=True, slots=True)
class AlertText:
    """The fixed part of an alert: its name, severity and annotations (templates)."""

    name: str
    severity: str
    summary: str
    description: str

    def runbook_url(self, base: str) -> str:
        return f"{base}#{self.name.lower()}"


XID_RESET_REQUIRED = AlertText(
    "GpuXidResetRequired", "critical",
    "A GPU reported an XID error that needs a GPU reset.",
    GPU_DESCRIPTION + " reported an XID error after which the GPU needs a reset (drain the node, then "
    "nvidia-smi -r) before it can be trusted again; the codes are in the xids annotation.",
)
XID_REBOOT_REQUIRED = AlertText(
    "GpuXidRebootRequired", "critical",
    "A GPU reported an XID error that needs a node reboot.",
    GPU_DESCRIPTION + " fell off the bus (XID 79): drain and power-cycle the node.",
)
GPU_LOST = AlertText(
    "GpuLost", "critical",
    "A GPU does not answer NVML.",
    GPU_DESCRIPTION + " does not answer NVML (lost, failed or hung reads).",
)
ECC_UNCORRECTABLE = AlertText(
    "GpuEccUncorrectableErrors", "critical",
    "A GPU reported uncorrectable ECC errors.",
    GPU_DESCRIPTION + " reported uncorrectable ECC memory errors: the data of the work on it may be corrupt.",
)

#: Every alert the agent pushes, by name.
PUSHED: Mapping[str, AlertText] = {
    a.name: a for a in (XID_RESET_REQUIRED, XID_REBOOT_REQUIRED, GPU_LOST, ECC_UNCORRECTABLE)
}

_TEMPLATE = re.compile(r"\{\{\s*(if\s+\$labels\.(\w+)|end|\$labels\.(\w+))\s*\}\}")


def render(template: str, labels: Mapping[str, str]) -> str:
    """Evaluate ``{{ $labels.x }}`` and ``{{ if $labels.x }}...{{ end }}`` (no nesting), as
    Prometheus does: a missing label is the empty string, and the empty string is false."""
    out: list[str] = []
    pos = 0
    skipping = False
    for match in _TEMPLATE.finditer(template):
        if not skipping:
            out.append(template[pos:match.start()])
        pos = match.end()
        if match[2] is not None:  # {{ if $labels.x }}
            skipping = not labels.get(match[2], "")
        elif match[1] == "end":
            skipping = False
        elif not skipping:
            out.append(labels.get(match[3], ""))
    out.append(template[pos:])
    return "".join(out)
