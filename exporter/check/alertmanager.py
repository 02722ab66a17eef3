"""The Alertmanager rows (``--alertmanager.url``): each one reachable with the configured
credentials and CA, and the API version it serves. One ``GET /api/v2/status`` each (and
``/api/v1/status`` when v2 is not there, to name an Alertmanager too old): nothing is posted."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from ..config import Config
from ..push.notifier import API_PATH, auth_headers, client_session
from .report import FAILED, OK, SKIPPED, Check


async def check_alertmanager(config: Config) -> list[Check]:
    if not config.alertmanager_urls:
        return [Check("alertmanager", "Alertmanager", SKIPPED, "off: no --alertmanager.url (alerts are not pushed)")]
    try:
        headers = auth_headers(config)
    except OSError as exc:
        return [Check(f"alertmanager.{i}", f"Alertmanager {url}", FAILED,
                      f"cannot read the credentials file: {exc.strerror or exc}",
                      "the file named by --alertmanager.basic-auth-file or --alertmanager.bearer-token-file is gone",
                      "mount the Secret that holds it where the flag says")
                for i, url in enumerate(config.alertmanager_urls)]
    async with client_session(config) as session:
        return list(await asyncio.gather(*(_check(session, i, url, headers, config.alertmanager_timeout)
                                           for i, url in enumerate(config.alertmanager_urls))))


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with session.get(url, headers=headers) as response:
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, None


async def _check(session: aiohttp.ClientSession, index: int, url: str, headers: dict[str, str],
                 timeout: float) -> Check:
    id_, title = f"alertmanager.{index}", f"Alertmanager {url}"
    base = url.rstrip("/")
    try:
        status, data = await _get(session, base + "/api/v2/status", headers)
        if status == 404:
            v1, _ = await _get(session, base + "/api/v1/status", headers)
            if v1 == 200:
                return Check(id_, title, FAILED, "serves API v1 only", "an Alertmanager older than 0.16: the agent "
                             f"posts to {API_PATH}", "upgrade Alertmanager (API v2 since 0.16, v1 gone since 0.27)")
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        return Check(id_, title, FAILED, f"TLS: {exc}", "the Alertmanager's certificate is not verified",
                     "--alertmanager.tls-ca-file with the CA that signed it")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Check(id_, title, FAILED, f"unreachable: {exc or type(exc).__name__} (--alertmanager.timeout "
                     f"{timeout:g}s)", "no Alertmanager answers at this URL from the node",
                     "check the URL (scheme, host, port, route prefix) and any NetworkPolicy between the node and "
                     "Alertmanager; meanwhile the agent queues alerts and retries, and Prometheus' rules still fire")
    if status in (401, 403):
        return Check(id_, title, FAILED, f"HTTP {status}: the credentials are refused",
                     "Alertmanager (or a proxy before it) wants other credentials",
                     "--alertmanager.basic-auth-file (username:password) or --alertmanager.bearer-token-file")
    if status != 200 or not isinstance(data, dict):
        return Check(id_, title, FAILED, f"/api/v2/status answered HTTP {status}", "not an Alertmanager at this URL",
                     "check the URL: Alertmanager's address with its --web.route-prefix, nothing else")
    version = (data.get("versionInfo") or {}).get("version", "?")
    cluster = (data.get("cluster") or {}).get("status", "?")
    return Check(id_, title, OK, f"reachable, API v2, Alertmanager {version}, cluster {cluster}",
                 details={"api": "v2", "version": version, "cluster": cluster})
