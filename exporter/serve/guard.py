"""HTTP that no client can wedge: the limits, the request guard and the listening site.

What aiohttp gives is used as it is: bounded request line, header size and count, and its
keep-alive timer, which closes a connection that has no complete request in hand (idle between
requests, or still sending its headers: slowloris) once ``idle_timeout`` has passed since it opened
or since its last response. What it lacks is added here, small:

- ``guard``, a middleware: GET and HEAD only, only paths with a route (derived from the router,
  so a route added later is allowed with no change here), no request body, basic auth and client
  certificate names from the web config, the configured response headers, and a deadline to send
  the response (a client that does not read is cut off, not waited for).
- ``GuardedSite``: the listener, with a TLS handshake deadline and a cap on open connections. At
  the cap, a new connection closes the oldest connection with no request in progress (idle
  clients cannot lock Prometheus out); only when every connection is busy is the new one refused.

A client's mistake is answered with a short status line and logged at debug level, never with a
stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .. import catalog
from ..model.gpu import Sample
from ..config.webconfig import WebConfig
from .security import BasicAuth, ReloadingTls, peer_allowed

log = logging.getLogger(__name__)

ALLOWED_METHODS = frozenset({"GET", "HEAD"})
#: Kubelet probes carry no credentials (neither a password nor a client certificate): these paths
#: skip basic auth and ``client_allowed_sans`` and tell only "ok" or why not ready.
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
REJECTION_REASONS = ("method", "path", "body", "unauthorized", "client_certificate", "write_timeout",
                     "connection_limit")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int = 256
    #: Idle keep-alive connections and requests still arriving are closed after this long.
    idle_timeout: float = 5.0
    #: A response not taken by the client within this long is abandoned and its connection closed.
    write_timeout: float = 10.0
    tls_handshake_timeout: float = 5.0
    max_line_size: int = 4096
    max_field_size: int = 8190
    max_headers: int = 64

    def handler_args(self) -> dict[str, float | int]:
        """aiohttp's own per-connection knobs (``web.AppRunner(**handler_args)``)."""
        return {"keepalive_timeout": self.idle_timeout, "max_line_size": self.max_line_size,
                "max_field_size": self.max_field_size, "max_headers": self.max_headers,
                "lingering_time": 0.0, "logger": protocol_log}


class _ClientMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (a line too long, garbage, TLS on the plain port) as an
    error with a stack trace; it is the client's mistake: one debug line, without the trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        if not protocol_log.isEnabledFor(logging.DEBUG):
            return False
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg, record.args = "bad request from %s: %s", (peer, str(error.message)[:200])
        record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.DEBUG, "DEBUG"
        return True


#: The logger aiohttp's connection handler gets, with client mistakes demoted.
protocol_log = logging.getLogger("exporter.serve.protocol")
protocol_log.addFilter(_ClientMistakes())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """The request middleware and the state it shares with the site: connections busy with a
    request, and rejections counted by reason (``rejected``, the agent's
    ``kube_gpu_exporter_http_rejected_total``: the guard is one of its components)."""

    def __init__(self, web_config: WebConfig, limits: HttpLimits) -> None:
        self.web_config = web_config
        self.limits = limits
        self.auth = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
        self.busy: set[RequestHandler] = set()
        self.rejected: Counter[str] = Counter(dict.fromkeys(REJECTION_REASONS, 0))

    def self_metrics(self) -> Iterable[Sample]:
        """kube_gpu_exporter_http_rejected_total, every reason from the start (read on the loop)."""
        return [Sample(catalog.HTTP_REJECTED, count, (reason,)) for reason, count in sorted(self.rejected.items())]

    def _reject(self, reason: str, request: web.Request, status: int, text: str,
                headers: dict[str, str] | None = None) -> web.Response:
        self.rejected[reason] += 1
        log.debug("rejected %s %s from %s: %s", request.method, request.path[:200], request.remote, reason)
        response = web.Response(status=status, text=text + "\n", headers=headers)
        response.force_close()
        return response

    async def _authorized(self, request: web.Request) -> bool:
        assert self.auth is not None
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(sep) and await self.auth.check(user, password)

    async def _check(self, request: web.Request) -> web.StreamResponse | None:
        """The rejection for this request, or None to serve it."""
        if request.method not in ALLOWED_METHODS:
            return self._reject("method", request, 405, "method not allowed", {"Allow": "GET, HEAD"})
        if request.body_exists:
            return self._reject("body", request, 400, "a request body is not accepted")
        if request.path in UNAUTHENTICATED_PATHS:
            return None
        tls = self.web_config.tls
        if tls is not None and not peer_allowed(tls, request.get_extra_info("peercert")):
            return self._reject("client_certificate", request, 403, "client certificate not allowed")
        if self.auth is not None:
            if not await self._authorized(request):
                return self._reject("unauthorized", request, 401, "unauthorized",
                                    {"WWW-Authenticate": 'Basic realm="kube-gpu-exporter"'})
        if isinstance(request.match_info.http_exception, web.HTTPException):
            return self._reject("path", request, 404, "not found")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.busy.add(request.protocol)
        try:
            response = await self._check(request)
            if response is None:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:  # a handler's own 4xx/5xx, as a plain response
                    response = web.Response(status=exc.status, text=exc.text, headers=exc.headers)
            for name, value in self.web_config.headers.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Server", "kube-gpu-exporter")  # not aiohttp's and Python's versions
            if not response.prepared:
                await self._send(request, response)
            return response
        finally:
            self.busy.discard(request.protocol)

    async def _send(self, request: web.Request, response: web.StreamResponse) -> None:
        try:
            await asyncio.wait_for(self._write(request, response), self.limits.write_timeout)
        except ConnectionError:  # the client went away: aiohttp sees it too and ends the connection
            log.debug("%s closed the connection before its response was sent", request.remote)
        except asyncio.TimeoutError:
            self.rejected["write_timeout"] += 1
            log.debug("response to %s not taken within %gs: connection closed", request.remote,
                      self.limits.write_timeout)
            if request.transport is not None:
                request.transport.abort()

    @staticmethod
    async def _write(request: web.Request, response: web.StreamResponse) -> None:
        await response.prepare(request)
        await response.write_eof()


class _Refused(asyncio.Protocol):
    """Closes a connection over the cap as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class GuardedSite(web.BaseSite):
    """A TCP listener with a connection cap and a TLS handshake deadline (see the module doc)."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, guard: Guard,
                 tls: ReloadingTls | None = None) -> None:
        super().__init__(runner, ssl_context=tls.listener_context if tls else None)
        self._host, self._port, self._guard, self._tls = host, port, guard, tls

    @property
    def name(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host or '0.0.0.0'}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.sockets[0].getsockname()[1] if self._server else self._port  # type: ignore[union-attr]

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, ssl=self._ssl_context, backlog=128,
            ssl_handshake_timeout=self._guard.limits.tls_handshake_timeout if self._ssl_context else None,
        )

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        connections = server.connections  # oldest first
        if len(connections) >= self._guard.limits.max_connections:
            idle = next((c for c in connections if c not in self._guard.busy), None)
            if idle is None:
                self._guard.rejected["connection_limit"] += 1
                return _Refused()
            idle.force_close()
        return server()


async def start_server(app: web.Application, host: str | None, port: int, *, guard: Guard,
                       shutdown_timeout: float = 0.5) -> tuple[web.AppRunner, GuardedSite]:
    """Set up the runner and start the guarded listener; raises OSError when the port is taken."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout, **guard.limits.handler_args())
    await runner.setup()
    tls = ReloadingTls(guard.web_config.tls) if guard.web_config.tls is not None else None
    site = GuardedSite(runner, host, port, guard=guard, tls=tls)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site
