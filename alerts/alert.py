"""What one alert of the rule set is made of: ``Alert``.

The rule (name, severity, expression, ``for:``, annotations), the lines docs/alerts.md shows
(threshold, why) and its promtool test cases (alerts/cases.py). Its runbook is Markdown,
``alerts/runbooks/<name>.md``; its rule group is where alerts/rules.py lists its module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from alerts.params import Params
from alerts.promql import HOLDERS_TEMPLATE, xids_template
from exporter.push import definitions

if TYPE_CHECKING:
    from alerts.cases import Case


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str  # critical (pages), warning (a ticket), info (dashboards and the owner's channel)
    expr: str
    for_: str
    summary: str  # static (no template): the same words for every GPU it fires on
    description: str  # a template on the alert's labels
    threshold: str  # for the docs
    why: str  # why this expression, threshold and for:
    cases: tuple[Case, ...]
    # Labelled by the device only (node, gpu, uuid): the holders annotation names the pods holding it.
    device_alert: bool = False
    xid_matcher: str = ""  # an XID tier alert: the xids annotation lists its codes (a matcher on xid)

    def annotations(self, p: Params) -> dict[str, str]:
        runbook_url = definitions.AlertText(self.name, self.severity, "", "").runbook_url(p.runbook_base)
        annotations = {"summary": self.summary, "description": self.description, "runbook_url": runbook_url}
        if self.device_alert:
            annotations[definitions.HOLDERS_ANNOTATION] = HOLDERS_TEMPLATE
        if self.xid_matcher:
            annotations[definitions.XIDS_ANNOTATION] = xids_template(self.xid_matcher, p)
        return annotations


def pushed_text(text: definitions.AlertText) -> dict[str, str]:
    """The name, severity, summary and description of an alert the agent also pushes: the agent's
    (exporter/push/definitions.py), so that Alertmanager sees one alert from two sources."""
    return {"name": text.name, "severity": text.severity, "summary": text.summary, "description": text.description}
