"""PromQL and annotation-template building blocks shared by the recording rules and the alert groups."""

from __future__ import annotations

from alerts.params import Params

#: The labels a device alert aggregates to (``max by (BY_GPU) (...)``): the device, never its holder.
BY_GPU = "node, gpu, uuid"


def last_value(metric: str, p: Params) -> str:
    """A gauge's last value within ``p.scrape_gap_tolerance``, staleness markers ignored: a failed
    scrape must not resolve an alert that is still true (and restart its ``for:``)."""
    return f"last_over_time({metric}[{p.scrape_gap_tolerance}])"


def grew_within(counter: str, window: str) -> str:
    """The counter grew in the window, or its series appeared in it above 0 (a per-code XID series
    of a code outside ``XID_ZERO_CODES`` is born at 1 with its first event)."""
    return f"increase({counter}[{window}]) > 0 or ({counter} > 0 unless {counter} offset {window})"


def one_of(values: tuple[int, ...]) -> str:
    """A regex matching any of ``values`` (``48|64|74``), for ``=~`` and ``!~``."""
    return "|".join(str(v) for v in values)


def label_values_template(label: str, query: str) -> str:
    """An annotation template: the values of ``label`` in the result of ``query`` (a Go format
    string given the alert's ``node`` and ``uuid`` as ``%[1]q`` and ``%[2]q``), sorted as text
    and joined by ", "; "" when the query returns nothing. Prometheus runs the query at each
    evaluation for each active (pending or firing) alert only: its cost grows with the alerts
    active, not with the nodes, unlike a join in the alert's expression."""
    return (f'{{{{ range $i, $s := sortByLabel "{label}" (query (printf `{query}` $labels.node $labels.uuid)) }}}}'
            f"{{{{ if $i }}}}, {{{{ end }}}}{{{{ $s.Labels.{label} }}}}{{{{ end }}}}")


#: The ``holders`` annotation (definitions.HOLDERS_ANNOTATION): distinct ``namespace/pod`` of the
#: pods holding the GPU or any of its MIG instances or replicas, as ``definitions.holders_text``.
HOLDERS_TEMPLATE = label_values_template("holder", "count by (holder) (label_join(nvidia_gpu_allocation_info"
                                                   '{node=%[1]q, uuid=%[2]q}, "holder", "/", "namespace", "pod"))')


def xids_template(matcher: str, p: Params) -> str:
    """The ``xids`` annotation (definitions.XIDS_ANNOTATION) of an XID alert: the codes of its tier
    (``matcher`` on ``xid``) with an event in the event window, as ``definitions.xids_text``."""
    series = f"nvidia_gpu_xid_errors_total{{node=%[1]q, uuid=%[2]q, {matcher}}}"
    return label_values_template("xid", f"max by (xid) ({grew_within(series, p.event_window)})")
