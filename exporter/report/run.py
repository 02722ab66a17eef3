"""``kube-gpu-exporter report``: who held the GPUs over a range, how much of it they used, and what
the idle part cost, from the efficiency rules' records in Prometheus (docs/efficiency.md).

Exit status: 0 the report was written; 2 bad flags or price file; 3 Prometheus unreachable or
refusing (TLS, credentials, not a Prometheus); 4 nothing held in the range; 5 the efficiency
rules are not loaded (the agent's series are there, their records are not).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from ..config import httpauth
from ..config.alertmanager import Repeatable
from . import figures, output, prometheus

PROG = "kube-gpu-exporter report"
EXIT_USAGE, EXIT_PROMETHEUS, EXIT_NO_DATA, EXIT_MISSING_RULES = 2, 3, 4, 5
OUTPUTS = ("table", "csv", "json", "html")
#: alerts/params.py ``efficiency_interval``: how often the efficiency rules record.
DEFAULT_INTERVAL = "1m"
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class UsageError(Exception):
    pass


def duration(text: str) -> float:
    """A Prometheus duration (``7d``, ``36h``, ``1w2d``, ``90s``) in seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"{text!r} is not a duration such as 7d, 36h or 90m")
    w, d, h, m, s = (int(g or 0) for g in match.groups())
    return float((((w * 7 + d) * 24 + h) * 60 + m) * 60 + s)


def instant(text: str) -> float:
    """RFC 3339 (``2026-12-01T08:00:00Z``, an offset or UTC) or a date (``2026-12-01``, midnight UTC)."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{text!r} is not a date (2026-12-01) or an RFC 3339 time (2026-12-01T08:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _price(text: str, where: str) -> tuple[str, float]:
    model, sep, price = text.rpartition("=")
    try:
        value = float(price)
    except ValueError:
        value = -1.0
    if not sep or not model.strip() or value < 0:
        raise UsageError(f"{where}: {text!r} is not MODEL=PRICE (a price per GPU-hour, >= 0)")
    return model.strip(), value


def load_prices(path: str | None, flags: Sequence[str]) -> tuple[dict[str, float], str]:
    """Prices per GPU-hour by model (or glob) and the currency: ``--price-file`` (YAML: ``currency:``,
    ``prices: {MODEL: PRICE}``), then each ``--price`` (which wins)."""
    import yaml

    prices: dict[str, float] = {}
    currency = ""
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise UsageError(f"--price-file: cannot read {path!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"--price-file: {path!r} is not YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("prices"), dict) \
                or not set(data) <= {"prices", "currency"}:
            raise UsageError(f"--price-file: {path!r} must be a mapping with prices: {{MODEL: PRICE}} and "
                             "optionally currency:")
        currency = str(data.get("currency") or "")
        for model, price in data["prices"].items():
            prices.update([_price(f"{model}={price}", f"--price-file {path}")])
    for flag in flags:
        prices.update([_price(flag, "--price")])
    return prices, currency


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1])
    add = p.add_argument
    add("--prometheus.url", dest="url", required=True, help="the Prometheus that evaluates the efficiency rules "
        "(with its route prefix, e.g. http://prometheus:9090)")
    add("--prometheus.basic-auth-file", dest="basic_auth_file", help="a file holding username:password")
    add("--prometheus.bearer-token-file", dest="bearer_token_file", help="a file holding a bearer token")
    add("--prometheus.tls-ca-file", dest="tls_ca_file", help="the CA of an https:// Prometheus (default: the system's)")
    add("--prometheus.timeout", dest="timeout", default="60s", help="per query (default 60s)")
    add("--since", default="7d", help="the range: this long up to --to (default 7d)")
    add("--from", dest="start", help="the range's start: a date (midnight UTC) or RFC 3339 time; overrides --since")
    add("--to", dest="end", help="the range's end (default: now)")
    add("--rules.interval", dest="interval", default=DEFAULT_INTERVAL,
        help="the efficiency rules' evaluation interval (Params.efficiency_interval; default 1m)")
    add("--price", dest="prices", action=Repeatable, default=[], metavar="MODEL=PRICE",
        help="price per GPU-hour of a GPU model (nvidia_gpu_info's model, or a glob such as '*H100*'); repeatable")
    add("--price-file", help="YAML: prices: {MODEL: PRICE}, currency: (optional); --price wins")
    add("--output", choices=OUTPUTS, default="table", help="table (default), csv, json (docs/report.schema.json) "
        "or html (one self-contained page)")
    add("--out", help="write to this file instead of stdout")
    add("--top", type=int, default=10, help="entries of the idle-holder and inefficient-batch lists (default 10)")
    return p


def _range(args: argparse.Namespace, now: float) -> tuple[float, float]:
    end = min(instant(args.end), now) if args.end else now
    start = instant(args.start) if args.start else end - duration(args.since)
    if start >= end:
        raise UsageError("the range is empty: --from must come before --to, and before now")
    return start, end


def _progress(stream: Any) -> Callable[[int, int], None]:
    if not stream.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        stream.write(f"\r{PROG}: querying Prometheus {done}/{total}" + ("\n" if done == total else ""))
        stream.flush()

    return show


async def _fetch(connection: prometheus.Connection, spans: list[prometheus.Span], interval: float,
                 progress: Callable[[int, int], None]) -> list[dict[str, Any]]:
    async with prometheus.Prometheus(connection) as client:
        per_span = await prometheus.integrals(client, spans, interval, progress)
        if not any(per_span_figures["held"] for per_span_figures in per_span):
            raise await prometheus.explain_empty(client, spans[0].start, spans[-1].end)
        late = await prometheus.rules_started_late(client, spans, per_span)
    if late is not None:
        print(f"{PROG}: warning: the efficiency rules have no data before {output.timestamp(late.start)} while the "
              f"agent's allocations have: the figures start there (the rules record from when they are loaded)",
              file=sys.stderr)
    return per_span


def main(argv: Sequence[str], *, now: Callable[[], float] = time.time) -> int:
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code == 0 else EXIT_USAGE
    try:
        parts = urlsplit(args.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--prometheus.url: {args.url!r} is not an http(s):// URL")
        problems = httpauth.file_problems(("--prometheus.basic-auth-file", args.basic_auth_file),
                                          ("--prometheus.bearer-token-file", args.bearer_token_file),
                                          ("--prometheus.tls-ca-file", args.tls_ca_file))
        if problems:
            raise UsageError("\n".join(problems))
        start, end = _range(args, now())
        interval = duration(args.interval)
        timeout = duration(args.timeout)
        if not interval or not timeout:
            raise UsageError("--rules.interval and --prometheus.timeout must be more than 0s")
        prices, currency = load_prices(args.price_file, args.prices)
        if args.top < 1:
            raise UsageError("--top must be at least 1")
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    connection = prometheus.Connection(args.url, args.basic_auth_file, args.bearer_token_file, args.tls_ca_file,
                                       timeout)
    spans = prometheus.days(start, end)
    try:
        per_span = asyncio.run(_fetch(connection, spans, interval, _progress(sys.stderr)))
    except prometheus.PrometheusError as exc:
        print(f"{PROG}: Prometheus: {exc}", file=sys.stderr)
        return EXIT_PROMETHEUS
    except prometheus.NoData as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_NO_DATA
    except prometheus.MissingRules as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_MISSING_RULES
    report = figures.build(spans, per_span, prices, interval, currency, args.top)
    if args.output == "html":
        from .html import to_html

        text = to_html(report)
    else:
        text = {"table": output.table, "csv": output.to_csv, "json": output.to_json}[args.output](report)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
