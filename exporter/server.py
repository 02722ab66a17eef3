"""HTTP endpoints. Handlers only pick bytes rendered by the collection cycle: a scrape never
waits on NVML, the kubelet or the API server."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import __version__
from .agent import Agent, Health
from .metrics import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

AGENT = web.AppKey("agent", Agent)

LANDING_PAGE = """<!doctype html>
<html><head><title>kube-gpu-exporter</title></head>
<body><h1>kube-gpu-exporter {version}</h1>
<p>GPU metrics of this node, attributed to pods.</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="healthz">/healthz</a>: liveness (the collection loop runs)</li>
<li><a href="readyz">/readyz</a>: readiness (NVML is up and a collection succeeded)</li>
</ul></body></html>
"""


async def metrics(request: web.Request) -> web.Response:
    """The bytes rendered by the last cycle, in the format and encoding the scraper asked for
    (content negotiation by client_python's own helpers)."""
    exposition = request.app[AGENT].exposition
    if exposition is None:
        return web.Response(status=503, text="no collection has finished yet\n")
    _, negotiated = choose_encoder(request.headers.get("Accept", ""))
    openmetrics = negotiated.startswith("application/openmetrics-text")
    use_gzip = gzip_accepted(request.headers.get("Accept-Encoding", ""))
    if openmetrics:
        body = exposition.openmetrics_gzip if use_gzip else exposition.openmetrics
        content_type = OPENMETRICS_CONTENT_TYPE
    else:
        body = exposition.text_gzip if use_gzip else exposition.text
        content_type = TEXT_CONTENT_TYPE
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


def _health_response(health: Health) -> web.Response:
    return web.Response(status=200 if health.ok else 503, text=health.reason + "\n")


async def healthz(request: web.Request) -> web.Response:
    return _health_response(request.app[AGENT].liveness())


async def readyz(request: web.Request) -> web.Response:
    return _health_response(request.app[AGENT].readiness())


async def landing(request: web.Request) -> web.Response:
    return web.Response(text=LANDING_PAGE.format(version=__version__), content_type="text/html")


def make_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[AGENT] = agent
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    return app
