"""XID alerts: one per GPU and tier of the driver's XID errors, and GpuXidRecurring per code.

The tiers (the action a code calls for) are ``definitions.XID_TIERS``, shared with the agent's
``tier`` label and its pushed alerts. Each tier alert reads ``nvidia_gpu_xid_events_total{tier}``
and lists the codes behind it in its ``xids`` annotation.
"""

from __future__ import annotations

from typing import Mapping

from alerts.alert import Alert, pushed_text
from alerts.cases import EXCLUSIVE, TWO_MIG_HOLDERS, Case, expect_gpu, gpu, series
from alerts.params import Params, minutes
from alerts.promql import one_of
from alerts.recording import xid_recent, xid_recurring_counters
from exporter.push import definitions
from exporter.push.definitions import GPU_DESCRIPTION

#: The codes of each tier of definitions.XID_TIERS; "other" is every code the others do not name.
XID_TIER_CODES: Mapping[str, tuple[int, ...] | None] = {
    "reboot": definitions.XID_REBOOT, "reset": definitions.XID_RESET, "application": definitions.XID_APPLICATION,
    "informational": definitions.XID_INFORMATIONAL, "other": None,
}
#: XID tier alerts: tier -> the codes its xids annotation lists, as a matcher on ``xid``.
XID_MATCHERS: Mapping[str, str] = {
    tier: f'xid=~"{one_of(tier_codes)}"' if tier_codes else f'xid!~"{one_of(definitions.XID_KNOWN)}"'
    for tier, tier_codes in XID_TIER_CODES.items()
}


def tier_expr(tier: str, p: Params) -> str:
    """XID events of one tier in the event window, per GPU. The tier's series is there at 0 from
    the start, so ``increase()`` sees the first event; a series first seen already above 0 (a
    Prometheus that starts scraping an agent that saw an XID an hour ago) shows no increase."""
    return (f"max by (node, gpu, uuid) (\n  increase(nvidia_gpu_xid_events_total{{tier=\"{tier}\"}}"
            f"[{p.event_window}])\n) > 0")


def tier_threshold(tier: str, p: Params) -> str:
    xids = XID_TIER_CODES[tier]
    named = f"any XID of {', '.join(map(str, xids))}" if xids else "any XID the tiers above do not name"
    return f"{named} in {p.event_window}"


def tier_series(i: int, values: Mapping[str, str], rest: str = "0x45") -> dict[str, str]:
    """nvidia_gpu_xid_events_total of GPU i, one series per tier: ``values`` by tier, ``rest`` for
    the others (the agent exports every tier at 0 from the start)."""
    return {series("nvidia_gpu_xid_events_total", gpu(i, tier=t)): values.get(t, rest) for t in definitions.XID_TIERS}


def code_series(i: int, code: int, before: int, after: str) -> dict[str, str]:
    """nvidia_gpu_xid_errors_total{xid=code} of GPU i: ``before`` samples before the first event
    (at 0 for the codes of XID_ZERO_CODES, absent for the others), then ``after``."""
    born = f"0x{before - 1}" if code in definitions.XID_ZERO_CODES else f"_x{before}"
    return {series("nvidia_gpu_xid_errors_total", gpu(i, xid=str(code))): f"{born} {after}"}


def tier_cases(tier: str, code: int, second: int | None, other: tuple[str, int]) -> tuple[Case, ...]:
    """The first event of a tier fires, resolves after the event window; two codes at once are
    both listed; an event of another tier is neither an alert of this tier nor listed; an agent
    restart fires nothing; a GPU whose old events Prometheus first sees stays silent."""
    other_tier, other_code = other
    both = (code,) if second is None else (code, second)
    at_once = {k: v for c in both for k, v in code_series(2, c, 8, "1x40").items()}
    after_restart = "0x8" if code in definitions.XID_ZERO_CODES else "_x9"
    return (
        Case({**tier_series(0, {tier: "0x4 1x40"}), **code_series(0, code, 5, "1x40"), **tier_series(1, {}),
              **EXCLUSIVE},
             5, expect_gpu(0), checks=((15, False),), xids=(code,),
             name="the first event of the tier, on an exclusively held GPU; silent again after the event window"),
        Case({**tier_series(2, {other_tier: "0x4 1x40", tier: f"0x7 {len(both)}x40"}),
              **code_series(2, other_code, 5, "1x40"), **at_once, **TWO_MIG_HOLDERS},
             8, expect_gpu(2), xids=both,
             name="codes of the tier at once on a GPU two pods share; another tier's earlier event is not listed"),
        Case({**tier_series(0, {tier: "0x4 1x14 stale 0x8 1x10"}, rest="0x19 stale 0x19"),
              **code_series(0, code, 5, f"1x14 stale {after_restart} 1x10"),
              **tier_series(1, {tier: "3x45"}), series("nvidia_gpu_xid_errors_total", gpu(1, xid=str(code))): "3x45"},
             30, expect_gpu(0), checks=((16, False), (22, False), (29, False), (30, True)), boundary_checks=False,
             xids=(code,), name="an agent restart fires nothing, the first event after it does; "
                                "old events seen for the first time fire nothing"),
    )


def tier_alert(tier: str, p: Params, **fields: object) -> Alert:
    """The alert of one XID tier: per GPU, its codes in the xids annotation."""
    return Alert(for_=p.xid_for, device_alert=True, xid_matcher=XID_MATCHERS[tier], expr=tier_expr(tier, p),
                 threshold=tier_threshold(tier, p), **fields)  # type: ignore[arg-type]


def alerts(p: Params) -> list[Alert]:
    rules = [
        tier_alert(
            "reset", p, **pushed_text(definitions.XID_RESET_REQUIRED),
            why="XIDs are events: the alert is active for the event window after the last one. It reads the "
                "tier's count, which the agent exports at 0 from the start: `increase()` sees the first event, "
                "an agent restart (counts back to 0) is a counter reset and fires nothing, and a Prometheus "
                "that first scrapes an agent with old events sees no increase. One alert per GPU and tier, "
                "whatever the codes: they are in the `xids` annotation. Also pushed by the agent.",
            cases=tier_cases("reset", 48, 62, ("application", 13))),
        tier_alert(
            "reboot", p, **pushed_text(definitions.XID_REBOOT_REQUIRED),
            why="As GpuXidResetRequired. 79 (the GPU fell off the bus) needs the node power-cycled; it explains "
                "the GpuLost that follows, so Alertmanager's example configuration lets it inhibit GpuLost on "
                "the same GPU (and the application-tier XIDs of the node), never the reverse. Also pushed by "
                "the agent.",
            cases=tier_cases("reboot", 79, None, ("reset", 48))),
        tier_alert(
            "application", p, name="GpuXidApplicationError", severity="info",
            summary="A GPU reported an application-level XID error.",
            description=GPU_DESCRIPTION + " reported an application fault (bad memory access, illegal instruction, "
                                          "a killed context; the codes are in the xids annotation); the GPU itself "
                                          "is fine.",
            why="Information for the workload's owner, not the platform: the GPU stays usable. Kept at info so "
                "that it lands on dashboards and in the namespace owner's channel, never in the pager.",
            cases=tier_cases("application", 13, 43, ("reset", 62))),
        tier_alert(
            "informational", p, name="GpuXidInformational", severity="info",
            summary="A GPU reported an informational XID.",
            description=GPU_DESCRIPTION + " reported an informational XID (63: a row remap was recorded; 92: high "
                                          "single-bit ECC rate; the codes are in the xids annotation).",
            why="Early signs of memory wear: worth a look, not an action on their own.",
            cases=tier_cases("informational", 63, 92, ("application", 13))),
        tier_alert(
            "other", p, name="GpuXidOther", severity="info",
            summary="A GPU reported an XID that the rules do not classify.",
            description=GPU_DESCRIPTION + " reported an XID that is not in the rules' tiers (the codes are in the "
                                          "xids annotation).",
            why="New drivers add codes; an unknown code must be seen, and classified in "
                "exporter/model/xid.py (the agent counts it in the `other` tier until then).",
            cases=tier_cases("other", 998, 999, ("application", 13))),
    ]

    recent = xid_recent(p)
    # An event now is read from the counters, not from the recording: this group may be evaluated
    # just before the recording's group, and would then read the recording of a minute ago, still
    # holding an event that the 24 h before (offset by the window) also holds: one event would page.
    now = f"max by (node, gpu, uuid, xid) (increase({xid_recurring_counters()}[{p.event_window}])) > 0"
    rules.append(Alert(
        device_alert=True, name="GpuXidRecurring", severity="warning", for_="0s",
        summary="A GPU keeps reporting the same hardware XID: replace it.",
        description=GPU_DESCRIPTION + " reported XID {{ $labels.xid }} again within " + p.xid_recurring_window
                    + ": resets do not cure it; the GPU should be replaced.",
        expr=f"{recent} >= 2\nor\n  {now}\n  and on (node, uuid, xid)\n"
             f"    count_over_time({recent}[{p.xid_recurring_window}] offset {p.event_window})",
        threshold=f"an event of one of {', '.join(map(str, definitions.XID_REPLACE_IF_RECURRING))} in "
                  f"{p.event_window} with another of the same code in the {p.xid_recurring_window} before "
                  "(or two at once)",
        why="The agent exports the per-code series of these codes at 0 from the start "
            "(`XID_ZERO_CODES`), so `increase()` over the event window sees every event, also the first after "
            f"an agent restart (a counter reset). The recording `{recent}` holds a GPU's code only while it "
            f"had an event in the window: the {p.xid_recurring_window} before it cost what the events cost, "
            f"where `increase()` over {p.xid_recurring_window} of every GPU's counters read "
            f"{minutes(p.xid_recurring_window) * 6:,} samples per series at 10 s scrapes, each evaluation "
            "(docs/scaling.md). The event now is read from the counters themselves: the recording's group runs "
            "apart from this one, and its value of a minute ago would still hold a lone event that the day "
            "before also holds. Active for the event window after the second event, as the XID alerts are. A "
            "ticket, not a page: GpuXidResetRequired already paged.",
        cases=(Case({**code_series(0, 48, 5, "1x9 2x30"), **code_series(1, 48, 5, "1x40"), **EXCLUSIVE},
                    15, expect_gpu(0, xid="48"), name="the second event within the window; one event is silent"),
               Case({**code_series(0, 64, 5, "1x9 stale 0x3 1x20"), **code_series(1, 64, 5, "1x9 stale 0x25")},
                    20, expect_gpu(0, xid="64"),
                    name="an agent restart between two events; an agent restart after one event is silent"))))
    return rules
