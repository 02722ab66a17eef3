"""The API server, spoken to on the event loop with aiohttp: GETs answered as JSON, and watches
streamed as JSON lines.

Two ways to find and authenticate to it:

* **In-cluster** (the DaemonSet; no ``kubernetes`` package needed): ``https://$KUBERNETES_SERVICE_HOST:
  $KUBERNETES_SERVICE_PORT`` (an IPv6 address is put in brackets), the service account's CA
  certificate and bearer token from ``/var/run/secrets/kubernetes.io/serviceaccount``. The token
  is a bound token that the kubelet rotates in the file (it expires): it is read again every
  minute, as client-go does, and at once after a 401, after which the request is retried once.
  The CA file is read again with it, so a rotated cluster CA is picked up by the next connection.
  Proxies from the environment (``HTTPS_PROXY``) are not used: the service address is reached
  directly, as from any pod.
* **A kubeconfig file** (``--kubernetes.kubeconfig``, for development): the ``kubernetes``
  package, imported normally, loads it (contexts, exec plugins, OIDC, client certificates);
  its configuration's server, TLS files, proxy and authorization header (refreshed by its own
  hook) are then used by the same aiohttp client.

Responses are read as JSON and never turned into models. A status other than 2xx raises
:class:`ApiError` with the ``Status`` the API server sent; a body that is not what the API
promises raises :class:`InvalidResponse`. One :class:`KubeApi` is shared by the pod and the
ResourceSlice watches (one connection pool, one token reader).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

import aiohttp

from ... import __version__

__all__ = ["ApiError", "InvalidResponse", "KubeApi", "WatchStream", "InCluster", "Kubeconfig", "in_cluster_server",
           "SERVICE_ACCOUNT_DIR", "TOKEN_REFRESH_SECONDS"]

#: Where a pod's service account is mounted.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How often the token (and the CA certificate) are read again, as client-go does.
TOKEN_REFRESH_SECONDS = 60.0
#: The longest line of a watch stream (one event: a pod is a few KiB, a ResourceSlice up to ~1 MiB).
MAX_EVENT_BYTES = 16 << 20

_log = logging.getLogger(__name__)

Query = Sequence[tuple[str, str]]


class InvalidResponse(Exception):
    """The API server answered something that is not what the API promises."""


class ApiError(Exception):
    """A status other than 2xx, with what its ``Status`` body says."""

    def __init__(self, status: int, reason: str = "", message: str = "", causes: Sequence[str] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}".strip(": "))
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = tuple(causes)  # details.causes[].reason, e.g. ResourceVersionTooLarge

    @classmethod
    def from_status(cls, status: int, body: Any) -> "ApiError":
        if not isinstance(body, Mapping):
            return cls(status)
        details = body.get("details") if isinstance(body.get("details"), Mapping) else {}
        causes = [str(c.get("reason")) for c in details.get("causes") or () if isinstance(c, Mapping)]
        return cls(int(body.get("code") or status), str(body.get("reason") or ""), str(body.get("message") or ""),
                   causes)


def in_cluster_server(environ: Mapping[str, str]) -> str:
    """``https://host:port`` from ``KUBERNETES_SERVICE_HOST``/``_PORT``; an IPv6 address in brackets."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise RuntimeError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set "
                           "(use --kubernetes.kubeconfig outside one)")
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            host = f"[{host.strip('[]')}]"
    except ValueError:
        pass  # a name
    return f"https://{host}:{port}"


class Credentials:
    """Where the API server is and how to authenticate to it."""

    server: str = ""
    proxy: str | None = None  # an HTTP proxy (a kubeconfig's proxy-url)
    server_hostname: str | None = None  # the name to verify the certificate against (tls-server-name)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for new connections (None: plain HTTP, or the default)."""
        return None

    async def headers(self) -> dict[str, str]:
        """The authentication headers of the next request."""
        return {}

    def unauthorized(self) -> bool:
        """A request got 401: forget what may be stale. True if retrying may help."""
        return False


class InCluster(Credentials):
    """The pod's service account (see the module docstring). Raises when it is not there."""

    def __init__(self, environ: Mapping[str, str] | None = None, directory: Path | str | None = None,
                 refresh_seconds: float = TOKEN_REFRESH_SECONDS) -> None:
        self.server = in_cluster_server(os.environ if environ is None else environ)
        directory = Path(directory or SERVICE_ACCOUNT_DIR)
        self._token_path, self._ca_path = directory / "token", directory / "ca.crt"
        self._refresh = refresh_seconds
        self._token = self._read_token()  # raises: no service account
        self._ca = self._ca_path.read_bytes()
        self._context = _context(cadata=self._ca.decode("ascii", "replace"))
        self._read_at = time.monotonic()
        self._warned = False

    def _read_token(self) -> str:
        token = self._token_path.read_text().strip()
        if not token:
            raise RuntimeError(f"{self._token_path} is empty")
        return token

    def _reread(self) -> None:
        self._read_at = time.monotonic()
        try:
            token, ca = self._read_token(), self._ca_path.read_bytes()
        except (OSError, RuntimeError) as exc:  # mid-rotation, say: the last ones still stand
            if not self._warned:
                _log.warning("cannot read the service account's token or CA certificate again (%s); "
                             "going on with the last ones", exc)
                self._warned = True
            return
        self._token = token
        if ca != self._ca:
            try:
                self._context = _context(cadata=ca.decode("ascii", "replace"))
                self._ca = ca
                _log.info("the cluster's CA certificate changed: new connections use the new one")
            except ssl.SSLError as exc:
                _log.warning("the service account's CA certificate is unusable (%s); keeping the last one", exc)

    def ssl_context(self) -> ssl.SSLContext:
        return self._context

    async def headers(self) -> dict[str, str]:
        if time.monotonic() - self._read_at >= self._refresh:
            self._reread()
        return {"Authorization": f"Bearer {self._token}"}

    def unauthorized(self) -> bool:
        before = self._token
        self._reread()
        return self._token != before


class Kubeconfig(Credentials):
    """A kubeconfig file, loaded by the ``kubernetes`` package (development only)."""

    def __init__(self, path: str) -> None:
        from kubernetes import client, config  # imported normally; only this path needs the package

        cfg = client.Configuration()
        config.load_kube_config(config_file=path, client_configuration=cfg)
        self._cfg = cfg
        self.server = cfg.host.rstrip("/")
        self.proxy = getattr(cfg, "proxy", None) or None
        self.server_hostname = getattr(cfg, "tls_server_name", None) or None
        self._context: ssl.SSLContext | None = None
        if self.server.startswith("https://"):
            self._context = _context(cafile=cfg.ssl_ca_cert, cadata=getattr(cfg, "ca_cert_data", None),
                                     certfile=cfg.cert_file, keyfile=cfg.key_file)
            if not cfg.verify_ssl:  # insecure-skip-tls-verify
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE

    def ssl_context(self) -> ssl.SSLContext | None:
        return self._context

    async def headers(self) -> dict[str, str]:
        # auth_settings() runs the configuration's refresh hook (exec plugins, OIDC): maybe a
        # subprocess, so not on the loop.
        settings = await asyncio.to_thread(self._cfg.auth_settings)
        out = {auth["key"]: auth["value"] for auth in settings.values() if auth.get("in") == "header" and auth["value"]}
        if self._cfg.username or self._cfg.password:
            out.setdefault("authorization", self._cfg.get_basic_auth_token())
        return out


def _context(*, cafile: str | None = None, cadata: str | None = None, certfile: str | None = None,
             keyfile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile or None, cadata=cadata or None)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile or None)
    return ctx


class KubeApi:
    """GETs and watches with the credentials of ``kubeconfig`` (a path), or the in-cluster ones
    when it is None. Shared by the watches: each :meth:`acquire` s it when it starts (the first
    loads the credentials, and raises when it cannot: no service account, a bad kubeconfig) and
    :meth:`release` s it when it stops (the last closes the connections)."""

    def __init__(self, kubeconfig: str | None = None, *, request_timeout: float = 10.0,
                 credentials: Credentials | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.request_timeout = request_timeout
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._users = 0

    async def acquire(self) -> None:
        if self.credentials is None:
            kubeconfig = self.kubeconfig
            # Reading files; a kubeconfig imports the kubernetes package (a second): off the loop.
            self.credentials = await asyncio.to_thread(lambda: Kubeconfig(kubeconfig) if kubeconfig else InCluster())
        self._users += 1

    async def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json", "User-Agent": f"kube-gpu-exporter/{__version__}"},
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                trust_env=False,  # a proxy comes from the kubeconfig only, never from the environment
            )
        return self._session

    async def _open(self, path: str, query: Query, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """A GET, its response open (headers read). Retried once after a 401 when the credentials
        changed (a rotated token); a status other than 2xx raises :class:`ApiError`."""
        if self.credentials is None:
            raise RuntimeError("KubeApi used before acquire()")
        creds = self.credentials
        for attempt in (1, 2):
            headers = await creds.headers()
            extra: dict[str, Any] = {}
            if creds.proxy:
                extra["proxy"] = creds.proxy
            if creds.server_hostname:
                extra["server_hostname"] = creds.server_hostname
            resp = await self._client().get(creds.server + path, params=list(query), headers=headers,
                                            ssl=creds.ssl_context() or True, timeout=timeout, **extra)
            if 200 <= resp.status <= 299:
                return resp
            try:
                body = await resp.content.read(1 << 16)
            finally:
                resp.release()
            if resp.status == 401 and attempt == 1 and creds.unauthorized():
                continue
            try:
                status = json.loads(body)
            except ValueError:
                status = None
            raise ApiError.from_status(resp.status, status)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_json(self, path: str, query: Query = ()) -> Any:
        """GET ``path`` within the request timeout; the body parsed as JSON."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        resp = await self._open(path, query, timeout)
        try:
            data = await resp.read()
        finally:
            resp.release()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidResponse(f"{path} is not JSON: {exc}") from exc

    async def watch(self, path: str, query: Query, *, read_timeout: float) -> "WatchStream":
        """Open a watch request (``watch=true`` is added) and return its stream once the server
        has answered 200 (else :class:`ApiError`)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout, sock_read=read_timeout)
        return WatchStream(await self._open(path, [*query, ("watch", "true")], timeout))


class WatchStream:
    """The events of an open watch, as dicts with ``type`` and ``object``: ``async for`` them,
    then :meth:`close`. The iteration ends when the server ends the stream; nothing arriving
    within the read timeout (the API server sends a bookmark every minute) raises
    ``asyncio.TimeoutError``; a line that is no event raises :class:`InvalidResponse`."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        buffer = bytearray()
        async for chunk in self._resp.content.iter_any():
            buffer.extend(chunk)
            start = 0
            while (end := buffer.find(b"\n", start)) != -1:
                line = bytes(buffer[start:end]).strip()
                start = end + 1
                if line:
                    yield _event(line)
            del buffer[:start]
            if len(buffer) > MAX_EVENT_BYTES:
                raise InvalidResponse(f"a watch event longer than {MAX_EVENT_BYTES} bytes")
        self._ended = True
        if buffer.strip():
            yield _event(bytes(buffer).strip())

    def close(self) -> None:
        if self._ended:
            self._resp.release()  # read to its end: the connection serves the next request
        else:
            self._resp.close()  # mid-stream: the connection cannot be reused


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
        if isinstance(event, dict) and isinstance(event.get("type"), str) and isinstance(event.get("object"), dict):
            return event
    except ValueError:
        pass
    raise InvalidResponse(f"watch event is not an event: {line[:200]!r}")
