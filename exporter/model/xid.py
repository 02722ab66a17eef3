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
