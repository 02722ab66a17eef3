"""Where a scrape is answered: the HTTP endpoints. Handlers only pick bytes rendered by the
collection cycle (``render/``): a scrape never waits on NVML, the kubelet or the API server."""

from __future__ import annotations

import asyncio
import functools

from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ..agent import Agent, Health
from ..render.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from ..render.status import favicon, starting_page
from .guard import Guard

AGENT = web.AppKey("agent", Agent)


async def metrics(request: web.Request) -> web.Response:
    """The bytes rendered by the last cycle, in the format and encoding the scraper asked for
    (content negotiation by client_python's own helpers). OpenMetrics is rendered with the cycle;
    the text format on its first request in the cycle (``render/exposition.py``)."""
    exposition = request.app[AGENT].exposition
    if exposition is None:
        return web.Response(status=503, text="no collection has finished yet\n")
    openmetrics, use_gzip = _negotiate(request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", ""))
    if openmetrics:
        body = exposition.openmetrics_gzip if use_gzip else exposition.openmetrics
        content_type = OPENMETRICS_CONTENT_TYPE
    else:
        if not exposition.text_ready(use_gzip):  # its first request this cycle: written off the loop
            await asyncio.to_thread(lambda: exposition.text_gzip if use_gzip else exposition.text)
        body = exposition.text_gzip if use_gzip else exposition.text
        content_type = TEXT_CONTENT_TYPE
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def dcgm_metrics(request: web.Request) -> web.Response:
    """The dcgm-exporter compatible output of the last cycle (--compat.dcgm-exporter; render/dcgm.py):
    text format 0.0.4 whatever the Accept header says, as dcgm-exporter never serves OpenMetrics
    (its counters have no _total, which OpenMetrics requires)."""
    exposition = request.app[AGENT].dcgm_exposition
    if exposition is None:
        return web.Response(status=503, text="no collection has finished yet\n")
    use_gzip = _negotiate("", request.headers.get("Accept-Encoding", ""))[1]
    headers = {"Content-Type": TEXT_CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=exposition.text_gzip if use_gzip else exposition.text, headers=headers)


@functools.lru_cache(maxsize=64)  # a scraper sends the same headers every time
def _negotiate(accept: str, accept_encoding: str) -> tuple[bool, bool]:
    """(OpenMetrics?, gzip?) for these headers, as client_python negotiates them."""
    return choose_encoder(accept)[1].startswith("application/openmetrics-text"), gzip_accepted(accept_encoding)


def _health_response(health: Health) -> web.Response:
    return web.Response(status=200 if health.ok else 503, text=health.reason + "\n")


async def healthz(request: web.Request) -> web.Response:
    return _health_response(request.app[AGENT].liveness())


async def readyz(request: web.Request) -> web.Response:
    return _health_response(request.app[AGENT].readiness())


async def status_page(request: web.Request) -> web.Response:
    """The node's status page, rendered by the last cycle (a short page with the links before it)."""
    page = request.app[AGENT].status_page
    if page is None:
        return web.Response(status=503, text=starting_page(), content_type="text/html")
    return web.Response(body=page.html, content_type="text/html", charset="utf-8")


async def status_json(request: web.Request) -> web.Response:
    """The status page as JSON, for scripts (schema: docs/dashboards.md#the-status-page)."""
    page = request.app[AGENT].status_page
    if page is None:
        return web.json_response({"error": "no collection has finished yet"}, status=503)
    return web.Response(body=page.json, content_type="application/json")


async def icon(request: web.Request) -> web.Response:
    """The icon a browser asks for with each page it shows: served, so that viewing the page is not
    a refused path (``kube_gpu_exporter_http_rejected_total{reason="path"}``)."""
    return web.Response(body=favicon(), content_type="image/vnd.microsoft.icon",
                        headers={"Cache-Control": "max-age=86400"})


def make_app(agent: Agent, guard: Guard | None = None) -> web.Application:
    """The routes; ``guard`` (``guard.py``) adds methods, paths, auth and headers."""
    app = web.Application(middlewares=[guard.middleware] if guard else [])
    app[AGENT] = agent
    app.router.add_get("/metrics", metrics)
    if agent.dcgm is not None:
        app.router.add_get("/metrics/dcgm", dcgm_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", status_page)
    app.router.add_get("/api/v1/status", status_json)
    app.router.add_get("/favicon.ico", icon)
    return app


def make_dcgm_app(agent: Agent, guard: Guard | None = None) -> web.Application:
    """The listener of its own of the dcgm-exporter compatible output
    (--compat.dcgm-exporter.listen-address): its bytes at /metrics, where dcgm-exporter's
    scrapers look, and the probes; the same guard (TLS, auth, limits) as the agent's listener."""
    app = web.Application(middlewares=[guard.middleware] if guard else [])
    app[AGENT] = agent
    app.router.add_get("/metrics", dcgm_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
