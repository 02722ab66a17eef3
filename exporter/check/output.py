"""The report as text (one line per check, the cause and the fix under a row that is not ok) or
as JSON (docs/check.schema.json)."""

from __future__ import annotations

import json
from typing import Any

from .report import OK, SKIPPED, Report

_STATUS_WIDTH = 9
_TITLE_WIDTH = 25


def text(report: Report) -> str:
    source = f"the {report.flags_from}" + (f" (pid {report.agent_pid})" if report.agent_pid else "")
    head = (f"kube-gpu-exporter {report.version} check on node {report.node or '(unnamed)'} at {report.time}, flags "
            f"from {source}")
    lines = [head]
    if report.simulated:
        lines.append("simulated node (--simulate): rows marked [simulated] come from the scenario, not from a real "
                     "dependency")
    indent = " " * (2 + _STATUS_WIDTH + 1 + _TITLE_WIDTH + 1)
    for section in report.sections:
        lines += ["", section.name]
        for c in section.checks:
            seen = f"[simulated] {c.seen}" if c.simulated else c.seen
            lines.append(f"  {c.status:<{_STATUS_WIDTH}} {c.title:<{_TITLE_WIDTH}} {seen}")
            if c.status not in (OK, SKIPPED):
                lines.append(f"{indent}cause: {c.cause}")
                lines.append(f"{indent}fix:   {c.fix}")
    counts = report.counts()
    verdict = "everything required works" if report.exit_code == 0 else "something required does not work"
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items()) + f" in {report.seconds:.1f}s: exit "
              f"{report.exit_code} ({verdict})"]
    return "\n".join(lines) + "\n"


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "version": report.version,
        "node": report.node,
        "time": report.time,
        "seconds": round(report.seconds, 3),
        "simulated": report.simulated,
        "flags": {"from": report.flags_from, "pid": report.agent_pid, "args": list(report.args)},
        "status": report.status,
        "exit_code": report.exit_code,
        "counts": report.counts(),
        "checks": [{"id": c.id, "section": s.name, "title": c.title, "status": c.status, "seen": c.seen,
                    "cause": c.cause, "fix": c.fix, "simulated": c.simulated, "details": dict(c.details)}
                   for s in report.sections for c in s.checks],
    }


def as_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2, default=str) + "\n"
