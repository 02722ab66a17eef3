"""What an XID code means: the action it calls for (its tier), and which codes' series exist from
the start.

The tier is the ``tier`` label of ``nvidia_gpu_xid_events_total``; the renderer, the status page,
the push path and the alert rules (through ``push/definitions.py``) grade XIDs by it alike.
"""

from __future__ import annotations

from typing import Mapping

#: XID codes by the action they call for (NVIDIA's XID catalog, Ampere and newer).
XID_APPLICATION = (13, 31, 43, 45, 68, 94)  # the application faulted; the GPU stays usable
XID_RESET = (46, 48, 62, 64, 74, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158)  # reset the GPU
XID_REBOOT = (79,)  # fell off the bus: power-cycle the node
XID_INFORMATIONAL = (63, 92)  # row remap recorded, high single-bit ECC rate
#: Reset-tier codes whose recurrence means the GPU should be replaced.
XID_REPLACE_IF_RECURRING = (48, 64, 74, 95)
XID_KNOWN = XID_APPLICATION + XID_RESET + XID_REBOOT + XID_INFORMATIONAL

#: ``tier`` label of nvidia_gpu_xid_events_total, most severe first; "other" is every code the
#: tiers above do not name (new drivers add codes).
XID_TIERS: tuple[str, ...] = ("reboot", "reset", "application", "informational", "other")
_TIER_OF: Mapping[int, str] = {
    **dict.fromkeys(XID_APPLICATION, "application"), **dict.fromkeys(XID_RESET, "reset"),
    **dict.fromkeys(XID_REBOOT, "reboot"), **dict.fromkeys(XID_INFORMATIONAL, "informational"),
}


def xid_tier(code: int) -> str:
    """The tier of an XID code (one of ``XID_TIERS``)."""
    return _TIER_OF.get(code, "other")


#: Codes whose nvidia_gpu_xid_errors_total{xid} series exists at 0 from the start (GpuXidRecurring
#: counts their second event); other codes' series appear with their first event.
XID_ZERO_CODES = XID_REPLACE_IF_RECURRING


#: What each XID code means in a few words: the ``err_msg`` label of the dcgm-exporter compatible
#: ``DCGM_FI_DEV_XID_ERRORS`` (render/dcgm.py). Written here from NVIDIA's public XID catalogue
#: (docs.nvidia.com/deploy/xid-errors); a code not listed reads "Unknown Error", 0 "No Error".
XID_MESSAGES: Mapping[int, str] = {
    0: "No Error",
    8: "GPU stopped processing",
    13: "Graphics engine exception",
    31: "GPU memory page fault",
    32: "Invalid or corrupted push buffer stream",
    38: "Driver firmware error",
    43: "GPU stopped processing (the application hit a software-induced fault)",
    44: "Graphics engine fault during context switch",
    45: "Preemptive cleanup, due to a previous error",
    46: "GPU stopped processing (a watchdog timeout)",
    48: "Double-bit ECC error",
    54: "Auxiliary power is not connected to the GPU board",
    56: "Display engine error",
    57: "Error programming video memory interface",
    58: "Unstable video memory interface detected",
    61: "Internal micro-controller breakpoint or warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapping recording failure",
    65: "Video processor exception",
    68: "Video processor exception (NVDEC)",
    69: "Graphics engine class error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    109: "Context switch timeout",
    110: "Security fault",
    119: "GSP RPC timeout",
    120: "GSP error",
    121: "C2C link corrected error",
    136: "Link training failure",
    140: "Unrecovered ECC error",
    143: "GPU initialisation failure",
    154: "GPU recovery action changed",
    155: "NVLink link down",
    156: "Resource retirement event",
    158: "GPU fatal timeout",
}


def xid_message(code: int) -> str:
    """The ``err_msg`` of an XID code (``XID_MESSAGES``)."""
    return XID_MESSAGES.get(code, "Unknown Error")
