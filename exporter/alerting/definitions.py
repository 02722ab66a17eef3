"""What the pushed alerts are called and say, shared with the rule generator (``alerts/rules.py``).

The generated Prometheus rules for these alerts aggregate to exactly the label set the agent
pushes (``alertname, severity, node, gpu, uuid[, xid][, namespace, pod]`` plus the external
labels), so that Alertmanager sees one alert from two sources and sends one notification.

A device is labelled with ``namespace`` and ``pod`` when exactly one pod holds it (the whole
GPU, or every held MIG instance or replica of it). A GPU shared by several pods carries no pod
labels: one alert per GPU, whose description says where to find the holders. (One alert per
holder cannot be written in PromQL for a GPU with several XID codes at once: that would be a
many-to-many join.)

Annotations use a small subset of Prometheus' Go templates, ``{{ $labels.x }}`` and
``{{ if $labels.x }}...{{ end }}``, which ``render`` evaluates the same way in Python: for the
pushed alerts and for the expected annotations of the promtool tests (which check that Go and
Python agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

#: XID codes by the action they call for (NVIDIA's XID catalog, Ampere and newer).
XID_APPLICATION = (13, 31, 43, 45, 68, 94)  # the application faulted; the GPU stays usable
XID_RESET = (46, 48, 62, 64, 74, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158)  # reset the GPU
XID_REBOOT = (79,)  # fell off the bus: power-cycle the node
XID_INFORMATIONAL = (63, 92)  # row remap recorded, high single-bit ECC rate
#: Reset-tier codes whose recurrence means the GPU should be replaced.
XID_REPLACE_IF_RECURRING = (48, 64, 74, 95)
XID_KNOWN = XID_APPLICATION + XID_RESET + XID_REBOOT + XID_INFORMATIONAL

#: Where runbook_url points; the rules' ``Params.runbook_base`` defaults to it.
RUNBOOK_BASE = "https://github.com/kube-gpu-exporter/kube-gpu-exporter/blob/main/docs/runbooks.md"

HOLDER_DESCRIPTION = (
    "{{ if $labels.pod }} It is held by pod {{ $labels.namespace }}/{{ $labels.pod }}.{{ end }}"
)
GPU_DESCRIPTION = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on node {{ $labels.node }}"


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
    GPU_DESCRIPTION + " reported XID {{ $labels.xid }}: the GPU needs a reset (drain the node, then "
    "nvidia-smi -r) before it can be trusted again." + HOLDER_DESCRIPTION,
)
XID_REBOOT_REQUIRED = AlertText(
    "GpuXidRebootRequired", "critical",
    "A GPU reported an XID error that needs a node reboot.",
    GPU_DESCRIPTION + " reported XID {{ $labels.xid }}: the GPU fell off the bus; drain and "
    "power-cycle the node." + HOLDER_DESCRIPTION,
)
GPU_LOST = AlertText(
    "GpuLost", "critical",
    "A GPU does not answer NVML.",
    GPU_DESCRIPTION + " does not answer NVML (lost, failed or hung reads)." + HOLDER_DESCRIPTION,
)
ECC_UNCORRECTABLE = AlertText(
    "GpuEccUncorrectableErrors", "critical",
    "A GPU reported uncorrectable ECC errors.",
    GPU_DESCRIPTION + " reported uncorrectable ECC memory errors: the data of the work on it may be "
    "corrupt." + HOLDER_DESCRIPTION,
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
