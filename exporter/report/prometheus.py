"""What the report reads from Prometheus: the efficiency rules' integrals over each day of the
range, through the HTTP API (``GET /api/v1/query``), with the ``--prometheus.*`` credentials.

The record names and the rule group are those of ``alerts/efficiency.py`` (the rules are not part
of the installed package; tests/test_report.py holds the two to the same names).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from ..config import httpauth

RULES_FILE = "alerts/kube-gpu-exporter.rules.yaml"
PROMETHEUS_RULE = "alerts/kube-gpu-exporter.prometheusrule.yaml"
GROUP = "kube-gpu-exporter.efficiency"
#: The report's figures and the record each integrates (GPUs, or watts for energy).
RECORDS = {
    "held": "namespace_workload_model:nvidia_gpu_allocated_gpus:sum",
    "used": "namespace_workload_model:nvidia_gpu_used_gpus:sum",
    "sm_active": "namespace_workload_model:nvidia_gpu_sm_active_gpus:sum",
    "idle": "namespace_workload_model:nvidia_gpu_idle_gpus:sum",
    "power": "namespace_workload_model:nvidia_gpu_power_watts:sum",
}
#: The series of the agent that the rules read: present while the records are not means that the
#: rules are not loaded.
ALLOCATIONS = "nvidia_gpu_allocation_info"
KEY = ("namespace", "workload_kind", "workload", "model")

Key = tuple[str, str, str, str]


class PrometheusError(Exception):
    """Prometheus could not be asked, or did not answer (exit 3)."""


class NoData(Exception):
    """Nothing was held in the range (exit 4)."""


class MissingRules(Exception):
    """The agent's series are there, the efficiency rules' records are not (exit 5)."""


@dataclass(frozen=True)
class Connection:
    url: str
    basic_auth_file: str | None = None
    bearer_token_file: str | None = None
    tls_ca_file: str | None = None
    timeout_seconds: float = 60.0


class Prometheus:
    """A client of one Prometheus' query API; a context manager (it holds one aiohttp session)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.endpoint = connection.url.rstrip("/") + "/api/v1/query"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Prometheus":
        self._session = httpauth.client_session(self.connection.tls_ca_file, self.connection.timeout_seconds)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """An instant query's vector at unix time ``at``."""
        assert self._session is not None
        try:
            headers = httpauth.auth_headers(self.connection.basic_auth_file, self.connection.bearer_token_file)
        except OSError as exc:
            raise PrometheusError(f"cannot read the credentials file: {exc.strerror or exc}") from None
        url = self.connection.url
        try:
            async with self._session.post(self.endpoint, data={"query": expr, "time": f"{at:.3f}"},
                                          headers=headers) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                status = response.status
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise PrometheusError(f"{url}: TLS: {exc} (--prometheus.tls-ca-file: the CA that signed its "
                                  "certificate)") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PrometheusError(f"{url}: unreachable: {exc or type(exc).__name__} (--prometheus.timeout "
                                  f"{self.connection.timeout_seconds:g}s)") from None
        if status in (401, 403):
            raise PrometheusError(f"{url}: HTTP {status}: the credentials were refused (--prometheus.basic-auth-file "
                                  "or --prometheus.bearer-token-file)")
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(f"{url}: HTTP {status}: " + (error or "not a Prometheus query API answer "
                                  "(check the URL and its route prefix)"))
        return body["data"]["result"]


@dataclass(frozen=True)
class Span:
    """A part of the range: (start, end] in unix seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def days(start: float, end: float) -> list[Span]:
    """The range cut into spans of a day from ``start`` on (the last one shorter)."""
    out, t = [], start
    while t < end:
        out.append(Span(t, min(t + 86400, end)))
        t += 86400
    return out


def integral(record: str, span: Span, interval_seconds: float) -> str:
    """The sum of ``record``'s samples in (start, end], times the interval: GPU-hours (watt-hours)
    when divided by 3600. The window is a millisecond short of the span so that a sample on the
    boundary counts in one span only (Prometheus 2 closes the window at both ends, 3 at the end)."""
    window = int(round(span.seconds * 1000)) - 1
    return f"sum_over_time({record}[{window}ms]) * {interval_seconds:g} / 3600"


async def integrals(prometheus: Prometheus, spans: list[Span], interval_seconds: float,
                    progress: Callable[[int, int], None] = lambda done, total: None,
                    parallel: int = 4) -> list[dict[str, dict[Key, float]]]:
    """Per span, per figure of ``RECORDS``, per (namespace, workload_kind, workload, model): the
    integral (GPU-hours; watt-hours for power). ``progress(done, total)`` after each query."""
    jobs = [(i, figure, record) for i in range(len(spans)) for figure, record in RECORDS.items()]
    out: list[dict[str, dict[Key, float]]] = [{figure: {} for figure in RECORDS} for _ in spans]
    gate = asyncio.Semaphore(parallel)
    done = 0

    async def one(i: int, figure: str, record: str) -> None:
        nonlocal done
        async with gate:
            result = await prometheus.query(integral(record, spans[i], interval_seconds), spans[i].end)
        for sample in result:
            metric = sample["metric"]
            key = tuple(metric.get(label, "") for label in KEY)
            out[i][figure][key] = out[i][figure].get(key, 0.0) + float(sample["value"][1])  # type: ignore[index]
        done += 1
        progress(done, len(jobs))

    await asyncio.gather(*(one(*job) for job in jobs))
    return out


async def rules_started_late(prometheus: Prometheus, spans: list[Span],
                             per_span: list[dict[str, dict[Key, float]]]) -> Span | None:
    """The first span with figures, when the spans before it have none while the agent's
    allocations are there: the rules were loaded during the range, and the report covers only
    what came after. None when the figures start with the range or there are none."""
    first = next((i for i, figures in enumerate(per_span) if figures["held"]), None)
    if not first:
        return None
    before = Span(spans[0].start, spans[first - 1].end)
    seen = await prometheus.query(f"count(max_over_time({ALLOCATIONS}[{max(1, int(before.seconds))}s]))", before.end)
    return spans[first] if seen else None


async def explain_empty(prometheus: Prometheus, start: float, end: float) -> Exception:
    """Why nothing was held in the range: the rules are not loaded (the agent's allocations are
    there), or there is no data."""
    window = max(1, int(end - start))
    seen = await prometheus.query(f"count(max_over_time({ALLOCATIONS}[{window}s]))", end)
    if seen:
        return MissingRules(
            f"the recording rules of group {GROUP} ({RECORDS['held']} and the others) have no data in the range "
            f"while the agent's {ALLOCATIONS} has: load {RULES_FILE} into Prometheus (rule_files), or apply "
            f"{PROMETHEUS_RULE} (prometheus-operator); a rule records from when it is loaded on")
    return NoData(f"no GPU was held in the range (no {ALLOCATIONS} either): is the range right, and does this "
                  "Prometheus scrape the agent?")
