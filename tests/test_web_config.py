"""--web.config.file: the exporter-toolkit format, validated at start; TLS (client auth, versions,
certificate reload without dropping the listener), basic auth with bcrypt, response headers.

Certificates are made in the test (``cryptography``); the server is the real listener
(``exporter.serve.guard.start_server``) on loopback, the clients are Python's ``ssl`` and urllib.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import logging
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from conftest import wait_until, wait_until_async
from e2e import AgentProcess

from exporter import cli
from exporter.config import webconfig
from exporter.serve import security
from exporter.serve.guard import Guard, HttpLimits, start_server

HASH_OF_SECRET = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


# -- certificates ---------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_pair(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class Pki:
    """A CA in ``directory`` that signs server and client certificates on demand."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        (directory / "ca.crt").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, cn: str, sans: list[str | x509.GeneralName]) -> x509.Certificate:
        """A certificate named ``cn`` with these SANs (a string is a DNS name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(s) if isinstance(s, str) else s for s in sans]), critical=False)
                .sign(self.key, hashes.SHA256()))
        _write_pair(self.dir, stem, cert, key)
        return cert

    def client_context(self, client: str | None = None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        if client:
            context.load_cert_chain(self.dir / f"{client}.crt", self.dir / f"{client}.key")
        if maximum:
            context.maximum_version = maximum
        return context


@pytest.fixture
def pki(tmp_path) -> Pki:
    pki = Pki(tmp_path)
    pki.issue("server", "localhost", ["localhost"])
    pki.issue("client", "prometheus", ["prometheus.monitoring"])
    pki.issue("other", "intruder", ["intruder"])
    return pki


def write_config(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text)
    return path


# -- the server under test --------------------------------------------------------------------------


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


class Served:
    def __init__(self, config: webconfig.WebConfig, limits: HttpLimits = HttpLimits()) -> None:
        self.config, self.limits = config, limits

    async def __aenter__(self) -> "Served":
        self.guard = Guard(self.config, self.limits)
        app = web.Application(middlewares=[self.guard.middleware])
        for path in ("/metrics", "/healthz", "/readyz"):
            app.router.add_get(path, ok)
        self.runner, self.site = await start_server(app, "127.0.0.1", 0, guard=self.guard)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def get(self, path: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
                  source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request on a fresh connection (TLS when ``context``) from the loopback
        address ``source``: status, headers, body."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.site.port, ssl=context,
                                                       server_hostname="localhost" if context else None,
                                                       local_addr=(source, 0))
        try:
            lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            raw = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        return int(status_line.split()[1]), dict(h.split(": ", 1) for h in header_lines), body

    async def certificate_serial(self, context: ssl.SSLContext) -> int:
        _, writer = await asyncio.open_connection("127.0.0.1", self.site.port, ssl=context,
                                                  server_hostname="localhost")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- validation -------------------------------------------------------------------------------------


def test_a_full_file_loads_with_paths_relative_to_it(pki):
    path = write_config(pki.dir, f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_ca_file: ca.crt
  client_auth_type: RequireAndVerifyClientCert
  min_version: TLS13
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
  client_allowed_sans: [prometheus.monitoring]
basic_auth_users:
  prometheus: "{HASH_OF_SECRET}"
http_server_config:
  headers:
    X-Frame-Options: deny
""")
    config = webconfig.load(path)
    assert config.tls.cert_file == pki.dir / "server.crt"
    assert config.tls.verify_mode == ssl.CERT_REQUIRED and config.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)
    assert config.basic_auth_users == {"prometheus": HASH_OF_SECRET.encode()}
    assert config.headers == {"X-Frame-Options": "deny"}


def test_an_empty_file_is_plain_http_without_auth(tmp_path):
    assert webconfig.load(write_config(tmp_path, "")) == webconfig.WebConfig()


@pytest.mark.parametrize("text, problem", [
    ("tls_server_config: {cert_file: server.crt}", "tls_server_config.key_file: required"),
    ("tls_server_config: {cert_file: nope.crt, key_file: server.key}", "nope.crt' does not exist"),
    ("tls_server_config: {cert_file: server.crt, key_file: other.key}", "cannot load the certificate"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS14}", "min_version: 'TLS14'"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_auth_type: RequireAndVerifyClientCert}",
     "client_ca_file: required"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_auth_type: RequestClientCert}",
     "RequestClientCert (a certificate requested but not verified) is not supported"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, cipher_suites: [TLS_FAST]}", "'TLS_FAST'"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS13, max_version: TLS12}",
     "max_version: lower than min_version"),
    ("tls_server_config: {cert: inline}", "tls_server_config.cert: unknown key"),
    ("basic_auth_users: {prometheus: plaintext}", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("basic_auth_users: [prometheus]", "basic_auth_users: must be a mapping"),
    ("http_server_config: {headers: {Set-Cookie: a}}", "headers.Set-Cookie: unknown key"),
    ("tls_config: {}", "tls_config: unknown key"),
    ("basic_auth_users: {a: [", "web.yml: line 1, column 24: invalid YAML: expected the node content, but found "
                                "'<stream end>' (while parsing a flow node)"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, prefer_server_cipher_suites: 1}",
     "tls_server_config.prefer_server_cipher_suites: must be true or false"),
])
def test_each_problem_is_named(pki, text, problem):
    with pytest.raises(webconfig.WebConfigError) as error:
        webconfig.load(write_config(pki.dir, text))
    assert problem in str(error.value)


def test_every_problem_is_listed_and_the_cli_exits_2(pki, capsys):
    path = write_config(pki.dir, "tls_server_config: {key_file: server.key, min_version: SSL3}\n"
                                 "basic_auth_users: {u: x}\n")
    assert cli.main(["--web.config.file", str(path), "--simulate"]) == 2
    err = capsys.readouterr().err
    assert f"--web.config.file: {path}: " in err
    for problem in ("cert_file: required", "min_version: 'SSL3'", "basic_auth_users.u: not a bcrypt hash"):
        assert problem in err
    assert cli.main(["--web.config.file", str(pki.dir / "missing.yml"), "--simulate"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_malformed_yaml_is_one_line_naming_file_line_and_column_as_for_a_scenario(tmp_path, capsys):
    path = write_config(tmp_path, "tls_server_config:\n  cert_file: [server.crt\n  key_file: server.key\n")
    problem = ("line 3, column 11: invalid YAML: expected ',' or ']', but got ':' "
               "(while parsing a flow sequence at line 2, column 14)")
    assert cli.main(["--web.config.file", str(path), "--simulate"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "kube-gpu-exporter: invalid configuration:",
        f"  - --web.config.file: {path}: {problem}",
    ]
    # One function for both files: the scenario loader says the same of the same text.
    from exporter.sources.simulate import ScenarioError, load_scenario

    with pytest.raises(ScenarioError) as error:
        load_scenario(str(path))
    assert error.value.problems == [problem]


@pytest.mark.integration
def test_keys_accepted_but_ignored_warn_once_at_start(pki):
    path = write_config(pki.dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                                 "  prefer_server_cipher_suites: false\nhttp_server_config: {http2: true}\n")
    config = cli.parse_config(["--web.config.file", str(path), "--simulate"], environ={})
    assert config.warnings == (
        f"--web.config.file: {path}: tls_server_config.prefer_server_cipher_suites: false is ignored: the server's "
        "cipher order is always preferred",
        f"--web.config.file: {path}: http_server_config.http2: ignored: the agent serves HTTP/1.1 only",
    )
    result = subprocess.run([sys.executable, "-m", "exporter", "--web.config.file", str(path), "--simulate", "--once"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "WARNING" in line and "web.yml" in line]
    assert [line.split(": ", 1)[1] for line in warned] == list(config.warnings)
    # What the agent does anyway is no warning.
    quiet = write_config(pki.dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                                  "  prefer_server_cipher_suites: true\nhttp_server_config: {http2: false}\n")
    assert cli.parse_config(["--web.config.file", str(quiet), "--simulate"], environ={}).warnings == ()


# -- TLS ------------------------------------------------------------------------------------------


def tls_config(pki: Pki, **extra: str) -> webconfig.WebConfig:
    lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return webconfig.load(write_config(pki.dir, "\n".join(lines) + "\n"))


async def test_tls_serves_and_plain_http_gets_nothing(pki):
    async with Served(tls_config(pki)) as served:
        assert (await served.get("/metrics", context=pki.client_context()))[0] == 200
        with pytest.raises((ConnectionError, ValueError, IndexError, asyncio.IncompleteReadError)):
            await served.get("/metrics")  # the TLS listener does not speak plain HTTP


@pytest.mark.integration
async def test_a_handshake_never_finished_is_dropped(pki):
    async with Served(tls_config(pki), HttpLimits(tls_handshake_timeout=1.0)) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.site.port)  # TCP only, no hello
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, not by the wait
        writer.close()
        assert (await served.get("/metrics", context=pki.client_context()))[0] == 200


@pytest.mark.integration
async def test_a_tls_connection_is_kept_between_requests(pki):
    limits = HttpLimits(read_timeout=1.0, idle_timeout=30.0)
    async with Served(tls_config(pki), limits) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.site.port, ssl=pki.client_context(),
                                                       server_hostname="localhost")
        for _ in range(2):
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"ok\n"), 10)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(limits.read_timeout + 0.5)  # idle longer than a request may take to arrive
        writer.close()
        assert served.site.connections_opened == 1  # one handshake for both


async def test_min_version_refuses_an_older_client(pki):
    async with Served(tls_config(pki, min_version="TLS13")) as served:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served.get("/metrics", context=pki.client_context(maximum=ssl.TLSVersion.TLSv1_2))
        assert (await served.get("/metrics", context=pki.client_context()))[0] == 200


async def test_client_certificates_required_verified_and_their_names_allowed(pki):
    config = tls_config(pki, client_ca_file="ca.crt", client_auth_type="RequireAndVerifyClientCert",
                        client_allowed_sans="[prometheus.monitoring]")
    async with Served(config) as served:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, IndexError)):
            await served.get("/metrics", context=pki.client_context())  # no client certificate
        assert (await served.get("/metrics", context=pki.client_context("client")))[0] == 200
        assert (await served.get("/metrics", context=pki.client_context("other")))[0] == 403
        assert (await served.get("/healthz", context=pki.client_context("other")))[0] == 200


async def test_client_allowed_sans_match_a_san_of_any_type(pki):
    """As in exporter-toolkit: a DNS name, an IP address (written as Go prints it), an email address
    or a URI of the client's certificate allows it; a certificate with none of them is refused."""
    allowed = ["prometheus.monitoring", "10.0.0.7", "2001:db8::7", "prometheus@example.com",
               "spiffe://cluster.local/ns/monitoring/sa/prometheus"]
    pki.issue("by-ipv4", "a", [x509.IPAddress(ipaddress.ip_address("10.0.0.7"))])
    pki.issue("by-ipv6", "b", [x509.IPAddress(ipaddress.ip_address("2001:db8:0::7"))])
    pki.issue("by-email", "c", [x509.RFC822Name("prometheus@example.com")])
    pki.issue("by-uri", "d", [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/monitoring/sa/prometheus")])
    pki.issue("by-none", "prometheus.monitoring", [x509.IPAddress(ipaddress.ip_address("10.0.0.8")),
                                                   x509.RFC822Name("intruder@example.com")])
    config = tls_config(pki, client_ca_file="ca.crt", client_auth_type="RequireAndVerifyClientCert",
                        client_allowed_sans=json.dumps(allowed))
    async with Served(config) as served:
        for client in ("client", "by-ipv4", "by-ipv6", "by-email", "by-uri"):
            assert (await served.get("/metrics", context=pki.client_context(client)))[0] == 200, client
        # the common name is not a SAN, and other SANs of the same types do not match
        assert (await served.get("/metrics", context=pki.client_context("by-none")))[0] == 403


async def test_probes_without_a_certificate_when_one_is_verified_if_given(pki):
    config = tls_config(pki, client_ca_file="ca.crt", client_auth_type="VerifyClientCertIfGiven",
                        client_allowed_sans="[prometheus.monitoring]")
    async with Served(config) as served:
        assert (await served.get("/healthz", context=pki.client_context()))[0] == 200  # the kubelet's probe
        assert (await served.get("/readyz", context=pki.client_context()))[0] == 200
        assert (await served.get("/metrics", context=pki.client_context()))[0] == 403
        assert (await served.get("/metrics", context=pki.client_context("client")))[0] == 200


@pytest.mark.integration
async def test_a_rotated_certificate_is_served_without_dropping_the_listener(pki, caplog):
    caplog.set_level(logging.INFO, logger="exporter.serve.security")
    config = tls_config(pki)
    async with Served(config) as served:
        context = pki.client_context()
        first = await served.certificate_serial(context)
        kept_alive = await asyncio.open_connection("127.0.0.1", served.site.port, ssl=context,
                                                   server_hostname="localhost")

        # A rotation caught half-way (a new certificate, the old key) keeps the old pair.
        new_key_bytes = (pki.dir / "server.key").read_bytes()
        pki.issue("server", "localhost", ["localhost"])
        rotated_key = (pki.dir / "server.key").read_bytes()
        (pki.dir / "server.key").write_bytes(new_key_bytes)
        async def reload_failed() -> bool:
            await served.certificate_serial(context)  # a handshake triggers the reload check
            return "does not load" in caplog.text

        await wait_until_async(reload_failed, interval=0.2, message="the failed reload to be logged")
        assert await served.certificate_serial(context) == first

        (pki.dir / "server.key").write_bytes(rotated_key)  # the rotation completes
        async def rotated() -> bool:
            return await served.certificate_serial(context) != first

        await wait_until_async(rotated, interval=0.2, message="the new certificate")
        assert "TLS certificate reloaded" in caplog.text
        assert caplog.text.count("does not load") == 1  # logged once, not per handshake

        reader, writer = kept_alive  # the connection made before the rotation still works
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200")
        writer.close()


# -- basic auth and headers -------------------------------------------------------------------------


def auth_config(tmp_path: Path) -> webconfig.WebConfig:
    return webconfig.load(write_config(tmp_path, f"""
basic_auth_users:
  prometheus: "{HASH_OF_SECRET}"
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
"""))


async def test_basic_auth_everywhere_but_the_probes(tmp_path):
    async with Served(auth_config(tmp_path)) as served:
        status, headers, _ = await served.get("/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert (await served.get("/metrics", headers=basic("prometheus", "wrong")))[0] == 401
        assert (await served.get("/metrics", headers=basic("nobody", "s3cret")))[0] == 401
        assert (await served.get("/metrics", headers={"Authorization": "Basic !!!"}))[0] == 401
        assert (await served.get("/metrics", headers=basic("prometheus", "s3cret")))[0] == 200
        assert (await served.get("/healthz"))[0] == 200 and (await served.get("/readyz"))[0] == 200
        assert (await served.get("/nope"))[0] == 401  # which paths exist is not told to strangers


async def test_verified_credentials_are_cached_and_wrong_ones_never(tmp_path, monkeypatch):
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, hashed: calls.append(pw) or real(pw, hashed))
    async with Served(auth_config(tmp_path)) as served:
        for _ in range(5):
            assert (await served.get("/metrics", headers=basic("prometheus", "s3cret")))[0] == 200
        assert len(calls) == 1
        for _ in range(3):
            assert (await served.get("/metrics", headers=basic("prometheus", "s3cret2")))[0] == 401
        assert len(calls) == 4


async def test_wrong_passwords_are_limited_per_peer_and_never_the_verified_pair(tmp_path):
    async with Served(auth_config(tmp_path)) as served:
        assert (await served.get("/metrics", headers=basic("prometheus", "s3cret")))[0] == 200
        answers = [await served.get("/metrics", headers=basic("prometheus", f"guess {i}"))
                   for i in range(security.AUTH_FAILURES_PER_PEER + 1)]
        assert [status for status, _, _ in answers] == [401] * security.AUTH_FAILURES_PER_PEER + [429]
        assert int(answers[-1][1]["Retry-After"]) >= 1
        # the pair that verified is answered from the same peer; another peer's guess is still checked
        assert (await served.get("/metrics", headers=basic("prometheus", "s3cret")))[0] == 200
        assert (await served.get("/metrics", headers=basic("prometheus", "guess"), source="127.0.0.2"))[0] == 401
        assert served.guard.rejected["auth_rate_limit"] == 1
        assert served.guard.rejected["unauthorized"] == security.AUTH_FAILURES_PER_PEER + 1


#: A real cost (bcrypt's default is 10, htpasswd -B's 5): a check takes tens of ms, so a flood queues.
SLOW_HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()


async def test_a_flood_of_wrong_passwords_keeps_no_scraper_with_the_right_one_out(tmp_path):
    config = webconfig.load(write_config(tmp_path, f'basic_auth_users: {{prometheus: "{SLOW_HASH}"}}\n'))
    wrong = ("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
             f"Authorization: {basic('prometheus', 'guess')['Authorization']}\r\n\r\n").encode()
    async with Served(config) as served:  # the default limits: 256 connections
        flood = []
        for _ in range(256):  # in flight: sent, none of the answers read yet
            reader, writer = await asyncio.open_connection("127.0.0.1", served.site.port, local_addr=("127.0.0.2", 0))
            writer.write(wrong)
            flood.append((reader, writer))
        # A scraper whose password was never checked yet (a restart), from its own address.
        status, _, _ = await asyncio.wait_for(served.get("/metrics", headers=basic("prometheus", "s3cret")), 30)
        assert status == 200
        answers = [await asyncio.wait_for(reader.read(), 30) for reader, _ in flood]
        for _, writer in flood:
            writer.close()
    statuses = [int(answer.split()[1]) for answer in answers]
    assert set(statuses) <= {401, 429}
    assert statuses.count(429) >= 256 - security.AUTH_FAILURES_PER_PEER  # not checked: answered at once
    assert served.guard.rejected["unauthorized"] + served.guard.rejected["auth_rate_limit"] == 256
    assert served.guard.rejected["connection_limit"] == 0


@pytest.mark.integration
async def test_a_flood_from_many_peers_delays_only_a_scraper_not_verified_yet(tmp_path):
    """The limit of a flood from more peers than ``MAX_PENDING_CHECKS`` (docs/security.md): the
    checker's queue is full, so a scraper whose pair was never checked is answered 429 with
    Retry-After (Prometheus tries again at its next scrape), while one whose pair verified before
    is answered 200 at once."""
    slow = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=12)).decode()  # ~0.25 s a check: they queue
    config = webconfig.load(write_config(tmp_path, f'basic_auth_users: {{prometheus: "{slow}", grafana: "{slow}"}}\n'))
    wrong = ("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
             f"Authorization: {basic('prometheus', 'guess')['Authorization']}\r\n\r\n").encode()
    async with Served(config) as served:
        assert (await served.get("/metrics", headers=basic("prometheus", "s3cret")))[0] == 200
        flood = []
        for i in range(security.MAX_PENDING_CHECKS + 8):  # one guess from each of 24 peers
            reader, writer = await asyncio.open_connection("127.0.0.1", served.site.port,
                                                           local_addr=(f"127.0.1.{i + 1}", 0))
            writer.write(wrong)
            flood.append((reader, writer))
        await wait_until_async(lambda: len(served.guard.authenticating) >= security.MAX_PENDING_CHECKS,
                               timeout=20, interval=0.01, message="the checks to queue")
        assert (await served.get("/metrics", headers=basic("prometheus", "s3cret")))[0] == 200
        status, headers, _ = await served.get("/metrics", headers=basic("grafana", "s3cret"))
        assert status == 429 and int(headers["Retry-After"]) >= 1
        for _, writer in flood:
            writer.close()


@pytest.mark.integration
async def test_a_connection_waiting_on_its_password_check_is_not_busy(tmp_path):
    """At the connection cap, a request still waiting for bcrypt makes room; it is not refused."""
    slow = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=13)).decode()  # ~0.5 s a check: they queue
    config = webconfig.load(write_config(tmp_path, f'basic_auth_users: {{prometheus: "{slow}"}}\n'))
    wrong = ("GET /metrics HTTP/1.1\r\nHost: localhost\r\n"
             f"Authorization: {basic('prometheus', 'guess')['Authorization']}\r\n\r\n").encode()
    async with Served(config, HttpLimits(max_connections=4)) as served:
        waiting = []
        for i in range(4):  # four peers, each with a check queued or running
            reader, writer = await asyncio.open_connection("127.0.0.1", served.site.port,
                                                           local_addr=(f"127.0.0.{i + 2}", 0))
            writer.write(wrong)
            waiting.append((reader, writer))
        await wait_until_async(lambda: len(served.guard.authenticating) >= 4, interval=0.01,
                               message="the checks to queue")
        assert (await served.get("/healthz"))[0] == 200  # a fifth connection, at the cap
        assert served.guard.rejected["connection_limit"] == 0
        for _, writer in waiting:
            writer.close()


def test_failures_recover_one_per_interval_and_each_peer_has_its_own():
    budget = security.FailureBudget(burst=3, recovery=5.0)
    for _ in range(3):
        assert budget.wait("10.0.0.1", 100.0) == 0
        budget.spend("10.0.0.1", 100.0)
    assert budget.wait("10.0.0.1", 100.0) == 5.0
    assert budget.wait("10.0.0.2", 100.0) == 0
    assert budget.wait("10.0.0.1", 105.0) == 0
    budget.spend("10.0.0.1", 105.0)
    assert budget.wait("10.0.0.1", 105.0) == 5.0
    assert budget.wait("10.0.0.1", 200.0) == 0


def test_a_peer_is_its_address_and_an_ipv6_peer_its_64():
    assert security.peer_of("10.1.2.3") == "10.1.2.3"
    assert security.peer_of("::ffff:10.1.2.3") == "10.1.2.3"
    assert security.peer_of("2001:db8:1:2::1") == security.peer_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert security.peer_of("2001:db8:1:3::1") != security.peer_of("2001:db8:1:2::1")


async def test_configured_headers_on_every_response(tmp_path):
    async with Served(auth_config(tmp_path)) as served:
        for path, auth in (("/metrics", basic("prometheus", "s3cret")), ("/metrics", {}), ("/healthz", {})):
            _, headers, _ = await served.get(path, headers=auth)
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Strict-Transport-Security"] == "max-age=31536000"
            assert headers["Server"] == "kube-gpu-exporter"


def test_the_logged_config_holds_no_password_hash(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = cli.parse_config(["--web.config.file", str(write_config(tmp_path, f"basic_auth_users: {{p: '{HASH_OF_SECRET}'}}")),
                               "--simulate"])
    assert HASH_OF_SECRET not in str(config.as_log_dict())


@pytest.mark.integration
def test_the_agent_serves_tls_and_basic_auth_from_the_file(pki, fake_nvml):
    path = write_config(pki.dir, f"""
tls_server_config: {{cert_file: server.crt, key_file: server.key}}
basic_auth_users: {{prometheus: "{HASH_OF_SECRET}"}}
""")
    agent = AgentProcess(["--simulate", "--web.config.file", str(path)], fake_nvml.env)
    context = pki.client_context()
    url = f"https://localhost:{agent.port}"
    try:
        def answered() -> bool:
            assert agent.process.poll() is None, agent.stderr()
            request = urllib.request.Request(url + "/metrics", headers=basic("prometheus", "s3cret"))
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    assert response.status == 200 and b"nvidia_gpu_up" in response.read()
                return True
            except urllib.error.HTTPError as error:
                assert error.code == 503, error  # not ready yet; any other status is an answer
                return False

        wait_until(answered, timeout=20, interval=0.2, ignore=(urllib.error.URLError, ConnectionError),
                   message=lambda: f"a TLS answer\n{agent.stderr()}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/metrics", context=context, timeout=5)
        assert refused.value.code == 401
        with urllib.request.urlopen(url + "/healthz", context=context, timeout=5) as response:
            assert response.status == 200
    finally:
        stderr = agent.stop()
    assert "serving on https://" in stderr and HASH_OF_SECRET not in stderr


def test_the_example_in_docs_security_md_loads(pki):
    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    pki.issue("tls", "localhost", ["localhost"])
    config = webconfig.load(write_config(pki.dir, example))
    assert config.tls.verify_mode == ssl.CERT_OPTIONAL and config.tls.client_allowed_sans
    assert bcrypt.checkpw(b"changeme", config.basic_auth_users["prometheus"])


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_bad_idle_timeout_is_named(value):
    with pytest.raises(cli.ConfigError) as error:
        cli.parse_config(["--web.idle-timeout", value, "--simulate"], environ={})
    assert "--web.idle-timeout" in str(error.value)
    assert cli.parse_config(["--simulate"], environ={}).web_idle_timeout == 120
    assert cli.parse_config(["--simulate"], environ={"KUBE_GPU_EXPORTER_WEB_IDLE_TIMEOUT": "300"}).web_idle_timeout == 300


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_a_bad_connection_cap_is_named(value):
    with pytest.raises(cli.ConfigError) as error:
        cli.parse_config(["--web.max-connections", value, "--simulate"], environ={})
    assert "--web.max-connections" in str(error.value)
    assert cli.parse_config(["--web.max-connections", "8", "--simulate"], environ={}).web_max_connections == 8
