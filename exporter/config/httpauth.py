"""Credentials and CA for an HTTP API the agent or its tools call: Alertmanager (``--alertmanager.*``)
and Prometheus (``kube-gpu-exporter report --prometheus.*``). A basic-auth file (``username:password``)
or a bearer-token file, read at each use (a mounted Secret rotates), and a CA file for https://.
Stdlib only at import: aiohttp is imported by ``client_session`` alone."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import aiohttp


def file_problems(basic_auth: tuple[str, str | None], bearer_token: tuple[str, str | None],
                  tls_ca: tuple[str, str | None], source: Callable[[str], str] = str) -> list[str]:
    """The problems with the three files, each given as (flag, path or None): unreadable, a
    basic-auth file without ``username:password``, both kinds of credentials at once."""
    problems: list[str] = []
    for (flag, path), basic in ((basic_auth, True), (bearer_token, False), (tls_ca, False)):
        if path is None:
            continue
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{source(flag)}: cannot read {path!r}: {exc.strerror if isinstance(exc, OSError) else exc}")
        else:
            if basic and ":" not in text:
                problems.append(f"{source(flag)}: {path!r} must hold username:password")
    if basic_auth[1] and bearer_token[1]:
        problems.append(f"{source(basic_auth[0])}/{source(bearer_token[0])}: give one of them, not both")
    return problems


def auth_headers(basic_auth_file: str | None, bearer_token_file: str | None) -> dict[str, str]:
    """The Authorization header for these files, as they are now (OSError when one is gone)."""
    if bearer_token_file:
        return {"Authorization": f"Bearer {Path(bearer_token_file).read_text().strip()}"}
    if basic_auth_file:
        credentials = Path(basic_auth_file).read_text().strip()
        return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
    return {}


def client_session(tls_ca_file: str | None, timeout_seconds: float) -> "aiohttp.ClientSession":
    """A session whose requests time out after ``timeout_seconds`` and that trusts ``tls_ca_file``
    (the system's CAs without it) for https://."""
    import aiohttp

    ssl_context: ssl.SSLContext | bool = ssl.create_default_context(cafile=tls_ca_file) if tls_ca_file else True
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                                 connector=aiohttp.TCPConnector(ssl=ssl_context))
