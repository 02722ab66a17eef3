"""``--web.config.file``: TLS, basic auth and response headers, in the Prometheus exporter-toolkit
format, so that operators reuse the files they already have for node_exporter.

The file is read and validated once at start (every problem listed, exit 2), into a ``WebConfig``
that the HTTP server applies (``serve/security.py``, which also re-reads the certificate files
when they change).

Where Python's ``ssl`` cannot do what the file asks, it is a problem at start, not a silent
downgrade: ``RequestClientCert`` and ``RequireAnyClientCert`` (request a certificate without
verifying it) and ``curve_preferences`` are refused with the alternative named. What it accepts
but does not do (``http2: true``, ``prefer_server_cipher_suites: false``) is a warning at start.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
#: Go's TLS 1.2 cipher suite names (what exporter-toolkit takes) -> OpenSSL's. TLS 1.3 suites are
#: not configurable, in Go as in Python.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
}
#: The response headers exporter-toolkit lets a web config set, and no others.
ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                   "X-XSS-Protection", "Content-Security-Policy")
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "client_allowed_sans", "curve_preferences"}
_HTTP_KEYS = {"headers", "http2"}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}


class WebConfigError(Exception):
    """The web config file has problems; ``problems`` lists every one, each naming the key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in problems))
        self.problems = [f"{path}: {p}" for p in problems]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None
    ciphers: tuple[str, ...] = ()  # OpenSSL names; empty = Python's defaults
    client_allowed_sans: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the file asks for; ``WebConfig()`` is plain HTTP with no auth (no file given)."""

    tls: TlsConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)
    #: What the file asks for that the agent accepts but does not do, each naming the file and key:
    #: logged once at start.
    warnings: tuple[str, ...] = ()


def load(path: str | Path) -> WebConfig:
    """Read and validate the file; raise ``WebConfigError`` listing every problem.

    Relative file names inside it are relative to the file's own directory, as in exporter-toolkit.
    """
    import yaml  # only with --web.config.file (start-up time)

    from . import yamlfile

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_bytes())  # bytes: YAML's own encoding rules and errors
    except OSError as exc:
        raise WebConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise WebConfigError(str(path), [yamlfile.problem(exc)]) from None
    problems: list[str] = []
    warnings: list[str] = []
    config = _parse(data if data is not None else {}, path.parent, problems, warnings)
    if problems:
        raise WebConfigError(str(path), problems)
    config = replace(config, warnings=tuple(f"{path}: {w}" for w in warnings))
    if config.tls is not None:
        try:
            tls_context(config.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError(str(path), [f"tls_server_config: cannot load the certificate: {exc}"]) from None
    return config


def _mapping(value: Any, where: str, allowed: set[str], problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping, got {type(value).__name__}")
        return {}
    for key in sorted(set(map(str, value)) - allowed):
        problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(allowed))})")
    return value


def _parse(data: Any, base: Path, problems: list[str], warnings: list[str]) -> WebConfig:
    top = _mapping(data, "(top level)", _TOP_KEYS, problems)
    tls = (_parse_tls(top["tls_server_config"], base, problems, warnings)
           if top.get("tls_server_config") is not None else None)
    users = _parse_users(top.get("basic_auth_users"), problems)
    http = _mapping(top.get("http_server_config"), "http_server_config", _HTTP_KEYS, problems)
    if http.get("http2") is not None and not isinstance(http["http2"], bool):  # 1 == True: compare types
        problems.append("http_server_config.http2: must be true or false")
    elif http.get("http2"):
        warnings.append("http_server_config.http2: ignored: the agent serves HTTP/1.1 only")
    headers = _mapping(http.get("headers"), "http_server_config.headers", set(ALLOWED_HEADERS), problems)
    for name, text in headers.items():
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            problems.append(f"http_server_config.headers.{name}: must be a one-line string")
    return WebConfig(tls=tls, basic_auth_users=users, headers={str(k): str(v) for k, v in headers.items()})


def _parse_users(value: Any, problems: list[str]) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("basic_auth_users: must be a mapping of user name to bcrypt hash")
        return {}
    users = {}
    for user, hashed in value.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            problems.append(f"{where}: a user name must be a non-empty string without ':'")
        elif not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            problems.append(f"{where}: not a bcrypt hash (htpasswd -nBC 10 \"\" | tr -d ':\\n' makes one)")
        else:
            users[user] = hashed.encode()
    return users


def _parse_tls(value: Any, base: Path, problems: list[str], warnings: list[str]) -> TlsConfig | None:
    where = "tls_server_config"
    tls = _mapping(value, where, _TLS_KEYS, problems)
    before = len(problems)
    if tls.get("prefer_server_cipher_suites") is not None and not isinstance(tls["prefer_server_cipher_suites"], bool):
        problems.append(f"{where}.prefer_server_cipher_suites: must be true or false")
    elif tls.get("prefer_server_cipher_suites") is False:
        # Python's ssl sets OP_CIPHER_SERVER_PREFERENCE, as Go (and so exporter-toolkit) always does since 1.18.
        warnings.append(f"{where}.prefer_server_cipher_suites: false is ignored: the server's cipher order "
                        "is always preferred")

    def file(key: str, required: bool) -> Path | None:
        name = tls.get(key)
        if not name:
            if required:
                problems.append(f"{where}.{key}: required")
            return None
        resolved = base / str(name)
        if not resolved.is_file():
            problems.append(f"{where}.{key}: file {str(resolved)!r} does not exist")
        return resolved

    cert, key = file("cert_file", True), file("key_file", True)
    ca = file("client_ca_file", False)
    auth = tls.get("client_auth_type")
    if auth is None:
        auth = "RequireAndVerifyClientCert" if ca else "NoClientCert"  # exporter-toolkit's default
    verify = ssl.CERT_NONE
    if auth in UNSUPPORTED_CLIENT_AUTH:
        problems.append(f"{where}.client_auth_type: {auth} (a certificate requested but not verified) is not "
                        "supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file")
    elif auth not in CLIENT_AUTH_TYPES:
        problems.append(f"{where}.client_auth_type: {auth!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}")
    else:
        verify = CLIENT_AUTH_TYPES[auth]
        if verify != ssl.CERT_NONE and ca is None:
            problems.append(f"{where}.client_ca_file: required with client_auth_type {auth}")

    def version(key: str) -> ssl.TLSVersion | None:
        name = tls.get(key)
        if name is None:
            return None
        if name not in TLS_VERSIONS:
            problems.append(f"{where}.{key}: {name!r} is not one of {', '.join(TLS_VERSIONS)}")
            return None
        return TLS_VERSIONS[name]

    min_version = version("min_version") or ssl.TLSVersion.TLSv1_2
    max_version = version("max_version")
    if max_version is not None and max_version < min_version:
        problems.append(f"{where}.max_version: lower than min_version")
    ciphers = []
    for suite in tls.get("cipher_suites") or ():
        if suite not in CIPHER_SUITES:
            problems.append(f"{where}.cipher_suites: {suite!r} is not a TLS 1.2 suite this build knows "
                            f"(known: {', '.join(CIPHER_SUITES)})")
        else:
            ciphers.append(CIPHER_SUITES[suite])
    if tls.get("curve_preferences"):
        problems.append(f"{where}.curve_preferences: not supported (Python's ssl picks the curves)")
    sans = tls.get("client_allowed_sans") or ()
    if sans and verify == ssl.CERT_NONE:
        problems.append(f"{where}.client_allowed_sans: needs a verified client certificate (client_auth_type)")
    if len(problems) > before or cert is None or key is None:
        return None
    return TlsConfig(cert_file=cert, key_file=key, verify_mode=verify, client_ca_file=ca, min_version=min_version,
                     max_version=max_version, ciphers=tuple(ciphers), client_allowed_sans=tuple(map(str, sans)))


# -- TLS ---------------------------------------------------------------------------------------


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server ``SSLContext`` as ``tls`` asks for it, from the files as they are now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    if tls.max_version is not None:
        context.maximum_version = tls.max_version
    if tls.ciphers:
        context.set_ciphers(":".join(tls.ciphers))
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.verify_mode = tls.verify_mode
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
    return context
