"""What ``kube-gpu-exporter check`` found: one ``Check`` per row, in sections, and the exit code.

A row's status is one of ``STATUSES``:

* ``ok``: works as the configuration asks;
* ``degraded``: works, with less than the configuration asks (some series are left out, a
  certificate is about to expire): the agent runs, the row says what is missing and the fix;
* ``failed``: something the configuration asks for cannot work at all (NVML does not start, the
  kubelet's socket cannot be opened, the service account may not list pods, ...);
* ``skipped``: not asked for by the configuration, or not checkable now (a row that depends on one
  that failed).

The exit code is 0 when no row failed, ``EXIT_FAILED`` (1) otherwise: a ``failed`` row is what
the configuration requires and does not get; ``degraded`` rows are optional parts. 2 stays "bad
flags", as for the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

OK, DEGRADED, FAILED, SKIPPED = "ok", "degraded", "failed", "skipped"
STATUSES = (OK, DEGRADED, FAILED, SKIPPED)
#: How bad each status is, to pick the worst of several (skipped counts as nothing wrong).
_RANK = {SKIPPED: 0, OK: 1, DEGRADED: 2, FAILED: 3}
EXIT_OK, EXIT_FAILED = 0, 1

#: The sections, in the order they are printed.
SECTIONS = ("configuration", "NVML", "processes", "kubelet", "API server", "Alertmanager", "web")


@dataclass(frozen=True, slots=True)
class Check:
    """One row: ``id`` is stable for scripts (``gpu.0.profiling``), ``title`` what a person reads.

    ``seen`` says what was found, whatever the status; ``cause`` and ``fix`` are set on rows that
    are not ok (the likely reason, and what to change: a flag, a mount, a capability, an RBAC
    rule, a driver setting). ``simulated`` rows come from the scenario of ``--simulate``, not a
    real dependency. ``details`` holds what scripts may want beyond the text (docs/check.schema.json).
    """

    id: str
    title: str
    status: str
    seen: str
    cause: str = ""
    fix: str = ""
    simulated: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.status in (DEGRADED, FAILED) and not (self.cause and self.fix):
            raise ValueError(f"check {self.id}: a {self.status} row needs its cause and its fix")


def worst(statuses: Iterable[str]) -> str:
    """The worst of ``statuses``; ``skipped`` when there is none or all were skipped."""
    return max(statuses, key=_RANK.__getitem__, default=SKIPPED)


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class Report:
    version: str
    node: str
    simulated: bool
    flags_from: str  # "command line" or "running agent"
    agent_pid: int | None  # the running agent whose flags were taken
    args: tuple[str, ...]
    time: str  # RFC 3339, UTC
    seconds: float
    sections: tuple[Section, ...]

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(c for s in self.sections for c in s.checks)

    @property
    def status(self) -> str:
        return worst([OK, *(c.status for c in self.checks)])  # all skipped: nothing is wrong

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(c.status == FAILED for c in self.checks) else EXIT_OK

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}
