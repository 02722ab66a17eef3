"""HTTP that no client can wedge: the limits, the request guard and the listening site.

What aiohttp gives is used as it is: bounded request line, header size and count, and its
keep-alive timer, set to ``idle_timeout`` (120 s): a connection waits that long for its next
request, longer than any usual scrape interval, so that Prometheus' next scrape reuses its
connection (and its TLS session) instead of opening a new one. What it lacks is added here, small:

- ``_Connection``: aiohttp's connection handler with a second read deadline, Go's
  ``ReadHeaderTimeout``: a request's line and headers must be in within ``read_timeout`` (5 s) of
  the connection's start, or of the first byte of a later request on it. A client that sends
  nothing, or its headers a byte at a time (slowloris), is cut off then.
- ``Guard``, a middleware: GET and HEAD only, only paths with a route (derived from the router,
  so a route added later is allowed with no change here), no request body, basic auth and client
  certificate names from the web config, the configured response headers, and a deadline to send
  the response (a client that does not read is cut off, not waited for).
- ``GuardedSite``: the listener, with a TLS handshake deadline and a cap on open connections. At
  the cap, a new connection closes the connection idle the longest (no request in hand: idle
  clients cannot lock Prometheus out), else one whose request still waits on its password
  check; only when every connection is answering a request is the new one refused.

A client's mistake is answered with a short status line and logged at debug level, never with a
stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .. import catalog
from ..model.gpu import Sample
from ..config.webconfig import WebConfig
from .security import AuthThrottled, BasicAuth, ReloadingTls, peer_allowed

log = logging.getLogger(__name__)

ALLOWED_METHODS = frozenset({"GET", "HEAD"})
#: Kubelet probes carry no credentials (neither a password nor a client certificate): these paths
#: skip basic auth and ``client_allowed_sans`` and tell only "ok" or why not ready.
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
REJECTION_REASONS = ("method", "path", "body", "unauthorized", "auth_rate_limit", "client_certificate",
                     "write_timeout", "connection_limit")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int = 256
    #: A keep-alive connection waiting for its next request is closed after this long
    #: (``--web.idle-timeout``): above the longest usual scrape interval.
    idle_timeout: float = 120.0
    #: A request's line and headers must arrive within this long of the connection's start, or of
    #: the first byte of a later request on it (slowloris).
    read_timeout: float = 5.0
    #: A response not taken by the client within this long is abandoned and its connection closed.
    write_timeout: float = 10.0
    tls_handshake_timeout: float = 5.0
    max_line_size: int = 4096
    max_field_size: int = 8190
    max_headers: int = 64

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own per-connection knobs (``web.AppRunner(**handler_args)``)."""
        return {"keepalive_timeout": self.idle_timeout, "max_line_size": self.max_line_size,
                "max_field_size": self.max_field_size, "max_headers": self.max_headers,
                "lingering_time": 0.0, "logger": protocol_log, "access_log": None}


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


class _Connection(RequestHandler):
    """aiohttp's handler of one connection, with Go's two read deadlines instead of its one timer.

    Between requests, aiohttp's keep-alive timer (``keepalive_timeout``: ``idle_timeout``) waits for
    the next request's first byte. From the connection's start, and from that first byte on, the
    request's line and headers must be complete within ``read_timeout``: what the guard's
    middleware is told (``answering``) once aiohttp has parsed them."""

    __slots__ = ("_clock", "_read_timeout", "_read_deadline", "_answering", "idle_since")

    def __init__(self, server: web.Server, *, loop: asyncio.AbstractEventLoop, read_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(server, loop=loop, **kwargs)
        self._clock = loop
        self._read_timeout = read_timeout
        self._read_deadline: asyncio.TimerHandle | None = None
        self._answering = False
        #: loop time since which the connection has had no request in hand (eviction: oldest first)
        self.idle_since = loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._expect_request()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and not self._answering:
            self._expect_request()  # the first byte of a request: its head has read_timeout to arrive
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def answering(self, yes: bool) -> None:
        """A request's head is in (True), or its response is sent (False)."""
        self._answering = yes
        self._stop_deadline()
        if not yes:
            self.idle_since = self._clock.time()

    def _expect_request(self) -> None:
        self._read_deadline = self._clock.call_later(self._read_timeout, self._read_timed_out)

    def _stop_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self._answering:
            protocol_log.debug("no complete request within %gs: connection closed", self._read_timeout)
            self.force_close()


class Guard:
    """The request middleware and the state it shares with the site: connections answering a
    request (``busy``) or waiting on a password check (``authenticating``), and rejections counted
    by reason (``rejected``, the agent's ``kube_gpu_exporter_http_rejected_total``: the guard is one
    of its components)."""

    def __init__(self, web_config: WebConfig, limits: HttpLimits) -> None:
        self.web_config = web_config
        self.limits = limits
        self.auth = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
        self.busy: set[RequestHandler] = set()
        self.authenticating: set[RequestHandler] = set()
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
        """Whether the request's basic auth credentials verify; raises ``AuthThrottled`` when they
        were not checked (its peer failed too often, or the checks queued are many)."""
        assert self.auth is not None
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        # Waiting on bcrypt is not being busy: at the cap such a connection may make room.
        self.authenticating.add(request.protocol)
        try:
            return await self.auth.check(user, password, request.remote)
        finally:
            self.authenticating.discard(request.protocol)

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
            try:
                authorized = await self._authorized(request)
            except AuthThrottled as throttled:
                return self._reject("auth_rate_limit", request, 429, "too many failed logins, try again later",
                                    {"Retry-After": str(max(1, math.ceil(throttled.retry_after)))})
            if not authorized:
                return self._reject("unauthorized", request, 401, "unauthorized",
                                    {"WWW-Authenticate": 'Basic realm="kube-gpu-exporter"'})
        if isinstance(request.match_info.http_exception, web.HTTPException):
            return self._reject("path", request, 404, "not found")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, _Connection):
            connection.answering(True)
        try:
            response = await self._check(request)
            if response is None:
                self.busy.add(connection)
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
            self.busy.discard(connection)
            if isinstance(connection, _Connection):
                connection.answering(False)

    async def _send(self, request: web.Request, response: web.StreamResponse) -> None:
        try:
            async with asyncio.timeout(self.limits.write_timeout):  # no task per response, as wait_for makes
                await response.prepare(request)
                await response.write_eof()
        except ConnectionError:  # the client went away: aiohttp sees it too and ends the connection
            log.debug("%s closed the connection before its response was sent", request.remote)
        except TimeoutError:
            self.rejected["write_timeout"] += 1
            log.debug("response to %s not taken within %gs: connection closed", request.remote,
                      self.limits.write_timeout)
            if request.transport is not None:
                request.transport.abort()


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
        self.connections_opened = 0  # connections taken in (refused ones not counted)

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
        guard, limits = self._guard, self._guard.limits
        connections = [c for c in server.connections if c.transport is not None]  # not those closing
        if len(connections) >= limits.max_connections:
            idle = [c for c in connections if c not in guard.busy and c not in guard.authenticating]
            if idle:  # the one idle the longest: not the scraper that was here a moment ago
                min(idle, key=lambda c: getattr(c, "idle_since", 0.0)).force_close()
            elif waiting := [c for c in connections if c in guard.authenticating]:
                waiting[0].force_close()
            else:
                guard.rejected["connection_limit"] += 1
                return _Refused()
        self.connections_opened += 1
        return _Connection(server, loop=asyncio.get_running_loop(), read_timeout=limits.read_timeout,
                           **limits.handler_args())


async def start_server(app: web.Application, host: str | None, port: int, *, guard: Guard,
                       shutdown_timeout: float = 0.5) -> tuple[web.AppRunner, GuardedSite]:
    """Set up the runner and start the guarded listener; raises OSError when the port is taken."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **guard.limits.handler_args())
    await runner.setup()
    tls = ReloadingTls(guard.web_config.tls) if guard.web_config.tls is not None else None
    site = GuardedSite(runner, host, port, guard=guard, tls=tls)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site
