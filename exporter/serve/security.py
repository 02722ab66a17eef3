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
import logging
import os
import secrets
import ssl
import time
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
    """``client_allowed_sans``: the verified client certificate names one of them (any, if unset)."""
    if not tls.client_allowed_sans:
        return True
    names = {value for _, value in (peercert or {}).get("subjectAltName", ())}
    return bool(names & set(tls.client_allowed_sans))


# -- basic auth ----------------------------------------------------------------------------------


class BasicAuth:
    """Checks user and password against the bcrypt hashes.

    bcrypt is slow on purpose (tens of ms): it runs in a worker thread, one check at a time, so a
    flood of wrong passwords cannot take the event loop or more than one core. A pair that verified
    is remembered (as a salted SHA-256, never the password) so that Prometheus, scraping with the
    same credentials every interval, is answered at once. An unknown user costs a bcrypt check too,
    so that timing does not tell which users exist.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        import bcrypt  # only when basic auth is configured

        self._bcrypt = bcrypt
        self._users = dict(users)
        self._salt = secrets.token_bytes(16)
        self._verified: dict[bytes, None] = {}  # insertion-ordered: the oldest goes first
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))
        self._one_at_a_time = asyncio.Lock()

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + user.encode() + b"\0" + password.encode("utf-8", "surrogatepass")).digest()

    async def check(self, user: str, password: str) -> bool:
        key = self._key(user, password)
        if key in self._verified:
            return True
        hashed = self._users.get(user)
        async with self._one_at_a_time:
            ok = await asyncio.to_thread(self._bcrypt.checkpw, password.encode("utf-8", "surrogatepass"),
                                         hashed or self._dummy)
        if ok and hashed is not None:
            if len(self._verified) >= AUTH_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[key] = None
            return True
        return False
