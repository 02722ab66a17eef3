"""The node's status page (``/``) and its JSON form (``/api/v1/status``).

What a person on the node (``kubectl port-forward``) needs at a glance, without a Prometheus:
every GPU and MIG instance with its model, health, utilisation, memory, temperature and who
holds it, and the agent's own state. Built once per collection cycle from the same snapshot,
attribution and agent status the metric renderer gets, and served as bytes: a request does no
work and never waits on NVML, the kubelet or the API server.

``model.py`` builds what the page says (the JSON document); ``html.py`` writes it as HTML
(Jinja2, the templates in ``templates/``); ``favicon.ico`` is the icon browsers ask for.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import asdict, dataclass

from ...attribution import Attribution
from ...model import health
from ...model.cycle import AgentStatus
from ...model.gpu import GpuSnapshot
from .html import starting_page, to_html
from .model import NodeStatus, build

__all__ = ["NodeStatus", "StatusPage", "build", "favicon", "render", "starting_page", "to_html"]


@dataclass(frozen=True, slots=True)
class StatusPage:
    """The page and its JSON, rendered once per cycle."""

    html: bytes
    json: bytes
    status: NodeStatus


def render(snapshot: GpuSnapshot, attribution: Attribution, status: AgentStatus, *,
           node: str = "", interval_seconds: float = 10.0,
           event_window: float = health.EVENT_WINDOW_SECONDS) -> StatusPage:
    """The status page and its JSON for one cycle (call it where the exposition is rendered)."""
    model = build(snapshot, attribution, status, node=node, interval_seconds=interval_seconds,
                  event_window=event_window)
    document = asdict(model, dict_factory=_json_object)
    return StatusPage(to_html(model).encode(), json.dumps(document, indent=1).encode() + b"\n", model)


@functools.cache
def favicon() -> bytes:
    """The page's icon (a chip; 16 and 32 px): a browser asks for ``/favicon.ico`` with every page
    it shows, ``/metrics`` included."""
    return importlib.resources.files(__package__).joinpath("favicon.ico").read_bytes()


def _json_object(items: list[tuple[str, object]]) -> dict[str, object]:
    """A dataclass as JSON; pod labels (name, value) pairs as an object; a collector's title left
    out (the page's words, not the document's)."""
    return {k: dict(v) if k == "pod_labels" else v for k, v in items if k != "title"}  # type: ignore[call-overload]
