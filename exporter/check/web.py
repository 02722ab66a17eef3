"""The web rows (``--web.config.file``): the file valid as it is now, and its certificates'
expiry: the serving certificate and the CA that verifies client certificates.

A certificate is ``degraded`` ("expiring") when less than ``min(a third of its lifetime,
EXPIRING_DAYS)`` is left: cert-manager renews at two thirds of the lifetime by default, so a
certificate past that point has missed its renewal; ``failed`` when expired or not valid yet.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from ..config import Config, webconfig
from .report import DEGRADED, FAILED, OK, SKIPPED, Check

EXPIRING_DAYS = 30
_AUTH = {0: "none", 1: "optional (VerifyClientCertIfGiven)", 2: "required (RequireAndVerifyClientCert)"}


def check_web(config: Config, now: datetime.datetime | None = None) -> list[Check]:
    path = config.web_config_file
    if not path:
        return [Check("web.config", "web config", SKIPPED, "no --web.config.file: plain HTTP, no authentication")]
    try:
        web = webconfig.load(path)
    except webconfig.WebConfigError as exc:
        return [Check("web.config", "web config", FAILED, "; ".join(exc.problems),
                      "the file changed since the agent started, and is invalid now",
                      "fix the file: the agent validates it at start and exits 2 otherwise (docs/security.md)")]
    parts = []
    if web.tls is not None:
        version = web.tls.min_version.name.removeprefix("TLSv").replace("_", ".")
        parts.append(f"TLS {version}+, client certificates {_AUTH[int(web.tls.verify_mode)]}")
    else:
        parts.append("plain HTTP")
    parts.append(f"basic auth: {len(web.basic_auth_users)} user{'s' if len(web.basic_auth_users) != 1 else ''}"
                 if web.basic_auth_users else "no basic auth")
    if web.headers:
        parts.append("headers: " + ", ".join(sorted(web.headers)))
    rows = [Check("web.config", "web config", OK, f"{path} valid: " + "; ".join(parts))]
    if web.tls is not None:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        rows.append(certificate_check("web.certificate", "web certificate", web.tls.cert_file, now,
                                      "the certificate the agent serves"))
        if web.tls.client_ca_file is not None:
            rows.append(certificate_check("web.client_ca", "web client CA", web.tls.client_ca_file, now,
                                          "the CA that verifies scrapers' client certificates"))
    return rows


def certificate_check(id_: str, title: str, path: Path, now: datetime.datetime, what: str) -> Check:
    """The certificate of ``path`` that expires first (a bundle may hold several)."""
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Check(id_, title, FAILED, f"cannot read {path}: {exc}", f"{what} is gone or not PEM",
                     "the Secret mounted with the web config (docs/deploy.md#tls-and-authentication)")
    first = min(certificates, key=lambda c: c.not_valid_after_utc)
    start, end = first.not_valid_before_utc, first.not_valid_after_utc
    left = end - now
    subject = first.subject.rfc4514_string() or "(no subject)"
    seen = f"{path}: {subject}, valid {start:%Y-%m-%d} to {end:%Y-%m-%d %H:%M} UTC"
    details = {"path": str(path), "subject": subject, "not_before": start.isoformat(), "not_after": end.isoformat(),
               "seconds_left": int(left.total_seconds())}
    renew = ("renew it: with cert-manager, look at the Certificate's status and events (`kubectl describe "
             "certificate`); the agent reloads the files when they change, no restart needed")
    if now < start:
        return Check(id_, title, FAILED, f"{seen}: not valid yet", f"{what} is not valid before {start:%Y-%m-%d %H:%M}"
                     " UTC (a clock out of step, or a certificate issued ahead)", "check the node's clock (NTP)",
                     details=details)
    if left.total_seconds() <= 0:
        return Check(id_, title, FAILED, f"{seen}: expired", f"{what} has expired: scrapers refuse the TLS handshake",
                     renew, details=details)
    lifetime = end - start
    if left < min(lifetime / 3, datetime.timedelta(days=EXPIRING_DAYS)):
        return Check(id_, title, DEGRADED, f"{seen}: expires in {_span(left)}",
                     f"{what} is past the point where it should have been renewed", renew, details=details)
    return Check(id_, title, OK, f"{seen}: {_span(left)} left", details=details)


def _span(delta: datetime.timedelta) -> str:
    if delta.days >= 2:
        return f"{delta.days} days"
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f} hours" if hours >= 2 else f"{delta.total_seconds() / 60:.0f} minutes"
