"""What the web config (``config/webconfig.py``) asks of the HTTP server at run time: TLS whose
certificate follows the files on disk, the client certificate names allowed, and basic auth.

The certificate and key files are re-read when they change on disk (cert-manager rotates them):
each TLS handshake checks their mtimes, at most once per ``RELOAD_CHECK_SECONDS``, and switches the
handshake to a fresh ``SSLContext`` built from the new files; the listener is never closed. A
rotation caught half-written (a key that does not match its certificate) keeps the previous pair
and is retried at the next check.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import secrets
import ssl
import time
from collections import OrderedDict
from typing import Any, Mapping

from ..config.webconfig import TlsConfig, tls_context

log = logging.getLogger(__name__)

#: How often, at most, a handshake looks at the certificate files' mtimes.
RELOAD_CHECK_SECONDS = 2.0
#: Verified credentials kept so that a scrape does not pay bcrypt each time.
AUTH_CACHE_SIZE = 64


class ReloadingTls:
    """The listener's ``SSLContext``, whose handshakes use the newest good certificate.

    The listener keeps the first context for its whole life; its ``sni_callback`` runs at the start
    of every handshake and hands the handshake the context built from the files as they are now.
    """

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.listener_context = tls_context(tls)
        self._current = self.listener_context
        self._stamp = self._mtimes()
        self._checked = time.monotonic()
        self._failing = False
        self.listener_context.sni_callback = self._on_handshake

    def _mtimes(self) -> tuple[int, ...]:
        files = [self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file]
        try:
            return tuple(os.stat(f).st_mtime_ns for f in files if f is not None)
        except OSError:
            return ()

    def reload_if_changed(self) -> None:
        """Build a new context when a file changed; keep the old one if the new files do not load."""
        self._checked = time.monotonic()
        stamp = self._mtimes()
        if stamp == self._stamp or not stamp:
            return
        try:
            fresh = tls_context(self.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            if not self._failing:
                log.warning("TLS certificate changed but does not load, keeping the previous one: %s", exc)
            self._failing = True
            return
        fresh.sni_callback = self._on_handshake
        self._current, self._stamp, self._failing = fresh, stamp, False
        log.info("TLS certificate reloaded from %s", self.tls.cert_file)

    def _on_handshake(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                      context: ssl.SSLContext) -> None:
        if time.monotonic() - self._checked >= RELOAD_CHECK_SECONDS:
            self.reload_if_changed()
        if connection.context is not self._current:
            connection.context = self._current
        return None


def peer_allowed(tls: TlsConfig, peercert: Mapping[str, Any] | None) -> bool:
    """``client_allowed_sans``: a Subject Alternative Name of the verified client certificate, of any
    type (DNS name, IP address, email address, URI), is one of them (any certificate, if unset), as
    in exporter-toolkit, which compares each SAN as Go prints it: an IP address canonical
    (``2001:db8::1``, where Python's ssl gives ``2001:DB8:0:0:0:0:0:1``)."""
    if not tls.client_allowed_sans:
        return True
    names = {_san_text(kind, value) for kind, value in (peercert or {}).get("subjectAltName", ())}
    return bool(names & set(tls.client_allowed_sans))


def _san_text(kind: str, value: Any) -> Any:
    if kind == "IP Address":
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            return value
        mapped = getattr(ip, "ipv4_mapped", None)  # Go prints an IPv4-mapped address as IPv4
        return str(mapped or ip)
    return value


# -- basic auth ----------------------------------------------------------------------------------

#: Wrong passwords a peer may try at once; then one more every AUTH_FAILURE_RECOVERY_SECONDS.
AUTH_FAILURES_PER_PEER = 10
AUTH_FAILURE_RECOVERY_SECONDS = 5.0
#: Password checks waiting for the checker at most, one per peer; any more are answered at once.
MAX_PENDING_CHECKS = 16
#: Peers whose failures are remembered (the least recent is forgotten first).
PEERS_REMEMBERED = 4096


class AuthThrottled(Exception):
    """The credentials were not checked: the peer failed too often, or too many checks wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.1f}s")
        self.retry_after = retry_after


def peer_of(remote: str | None) -> str:
    """Whose failures a request counts against: its IP address, an IPv6 peer's /64."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureBudget:
    """Failed logins per peer as a leaky bucket (GCRA): ``burst`` at once, then one every
    ``recovery`` seconds. One float per peer that failed lately, at most ``PEERS_REMEMBERED``."""

    def __init__(self, burst: int = AUTH_FAILURES_PER_PEER, recovery: float = AUTH_FAILURE_RECOVERY_SECONDS) -> None:
        self._recovery = recovery
        self._tolerance = (burst - 1) * recovery
        self._full_at: OrderedDict[str, float] = OrderedDict()  # peer -> when its budget is whole again

    def wait(self, peer: str, now: float) -> float:
        """Seconds until ``peer`` may fail again (0: now)."""
        return max(0.0, self._full_at.get(peer, now) - now - self._tolerance)

    def spend(self, peer: str, now: float) -> None:
        self._full_at[peer] = max(self._full_at.get(peer, now), now) + self._recovery
        self._full_at.move_to_end(peer)
        while len(self._full_at) > PEERS_REMEMBERED:
            self._full_at.popitem(last=False)


class BasicAuth:
    """Checks user and password against the bcrypt hashes, so that no flood of wrong passwords
    keeps a scraper with the right ones out.

    bcrypt is slow on purpose (tens of ms): it runs in a worker thread, one check at a time, so a
    flood cannot take the event loop or more than one core. A pair that verified is remembered (as
    a salted SHA-256, never the password) so that Prometheus, scraping with the same credentials
    every interval, is answered at once, before any limit below. Any other request waits for the
    checker only if its peer (IP address; an IPv6 /64) has no check waiting already, has failed
    fewer than ``AUTH_FAILURES_PER_PEER`` times lately (one more allowed every
    ``AUTH_FAILURE_RECOVERY_SECONDS``), and fewer than ``MAX_PENDING_CHECKS`` peers wait: else it
    is answered at once (``AuthThrottled``: 429). So a new scraper with the right password waits
    behind one check per other peer at most. An unknown user costs a bcrypt check too, so that
    timing does not tell which users exist.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        import bcrypt  # only when basic auth is configured

        self._bcrypt = bcrypt
        self._users = dict(users)
        self._salt = secrets.token_bytes(16)
        self._verified: dict[bytes, None] = {}  # insertion-ordered: the oldest goes first
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))
        self._one_at_a_time = asyncio.Lock()
        self._pending: set[str] = set()  # peers with a check waiting or running
        self.failures = FailureBudget()

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + user.encode() + b"\0" + password.encode("utf-8", "surrogatepass")).digest()

    async def check(self, user: str, password: str, remote: str | None = None) -> bool:
        """Whether the pair verifies; raises ``AuthThrottled`` when it was not checked."""
        key = self._key(user, password)
        if key in self._verified:
            return True
        peer = peer_of(remote)
        wait = self.failures.wait(peer, time.monotonic())
        if wait > 0:
            raise AuthThrottled(wait)
        if peer in self._pending or len(self._pending) >= MAX_PENDING_CHECKS:
            raise AuthThrottled(1.0)
        hashed = self._users.get(user)
        self._pending.add(peer)
        try:
            async with self._one_at_a_time:
                ok = await asyncio.to_thread(self._bcrypt.checkpw, password.encode("utf-8", "surrogatepass"),
                                             hashed or self._dummy)
        finally:
            self._pending.discard(peer)
        if ok and hashed is not None:
            if len(self._verified) >= AUTH_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[key] = None
            return True
        self.failures.spend(peer, time.monotonic())
        return False
