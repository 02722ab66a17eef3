"""The push path: after each cycle, post the active GPU alerts to Alertmanager's v2 API.

``update`` runs on the event loop right after a cycle has rendered; it only computes the alerts
(``EventTracker``) and puts a batch in each Alertmanager's queue. One task per Alertmanager
drains its queue: ``POST <url>/api/v2/alerts`` with retries and exponential backoff. Collection
and scrapes never wait on it: a slow or dead Alertmanager costs queue slots (bounded; the oldest
batch is dropped first), counted in
``kube_gpu_exporter_alertmanager_notifications_total{alertmanager, result="sent|failed|dropped"}``.

Like Prometheus, the agent sends a batch when an alert starts or resolves, and re-sends the
active ones every ``resend_interval`` with ``endsAt`` four intervals ahead, so that alerts of an
agent that died resolve by themselves. A resolved alert is sent once with ``endsAt`` = now. An
active alert whose annotations changed (its holders, its XID codes) is sent again at once under
the same labels and start: Alertmanager updates it, it does not see a new alert.
Credentials and the CA are files, read at each post (rotated tokens work).

The notifier is a component of the agent: it is told of every cycle (``update``), starts and
stops with the agent's loop, and its self-metrics (``self_metrics``) are rendered with the cycle's.
Everything here runs on the event loop; ``self_metrics`` reads only ``_figures``, plain values the
loop computes after every change of the queues or counts (replaced whole, never mutated), so that
it is safe from any thread and never iterates a deque the loop is popping ("deque mutated during
iteration" would fail the whole rendering).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Iterable, NamedTuple

import aiohttp

from .. import catalog
from ..attribution import Attribution
from ..config import Config, httpauth
from ..model.gpu import GpuSnapshot, Sample
from .events import ActiveAlert, EventTracker, LabelSet

log = logging.getLogger(__name__)

RESULTS = ("sent", "failed", "dropped")
API_PATH = "/api/v2/alerts"


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def auth_headers(config: Config) -> dict[str, str]:
    """The Authorization header the --alertmanager.*-file flags ask for, from the files as they are now."""
    return httpauth.auth_headers(config.alertmanager_basic_auth_file, config.alertmanager_bearer_token_file)


def client_session(config: Config) -> aiohttp.ClientSession:
    """A session with --alertmanager.timeout and, for https://, --alertmanager.tls-ca-file."""
    return httpauth.client_session(config.alertmanager_tls_ca_file, config.alertmanager_timeout)


def payload(alert: ActiveAlert, ends_at: float) -> dict[str, Any]:
    return {"labels": dict(alert.labels), "annotations": dict(alert.annotations),
            "startsAt": _iso(alert.starts_at), "endsAt": _iso(ends_at)}


class _Figures(NamedTuple):
    """One Alertmanager's self-metrics at one moment: plain values, safe to read from any thread."""

    url: str
    counts: tuple[int, ...]  # by RESULTS
    queued: int


class _Target:
    """One Alertmanager: its queue of batches and the task that posts them."""

    def __init__(self, url: str, max_batches: int) -> None:
        self.url = url
        self.endpoint = url.rstrip("/") + API_PATH
        self.queue: deque[list[dict[str, Any]]] = deque()
        self.max_batches = max_batches
        self.wakeup = asyncio.Event()
        self.counts = dict.fromkeys(RESULTS, 0)
        self.failing = False
        self.task: asyncio.Task[None] | None = None

    def enqueue(self, batch: list[dict[str, Any]]) -> None:
        if len(self.queue) >= self.max_batches:
            dropped = self.queue.popleft()
            self.counts["dropped"] += len(dropped)
            log.warning("alertmanager %s: queue full, dropped the oldest batch of %d alerts", self.url, len(dropped))
        self.queue.append(batch)
        self.wakeup.set()

    def figures(self) -> _Figures:
        """Call on the event loop only (the loop is what changes the queue)."""
        return _Figures(self.url, tuple(self.counts[r] for r in RESULTS), sum(len(batch) for batch in self.queue))


class AlertmanagerNotifier:
    def __init__(self, config: Config, *, resend_interval: float = 60.0, max_batches: int = 100,
                 attempts: int = 5, backoff: float = 0.5, max_backoff: float = 10.0) -> None:
        self.config = config
        self.tracker = EventTracker(config.node_name, dict(config.alertmanager_labels),
                                    config.alertmanager_event_window)
        self.targets = [_Target(url, max_batches) for url in config.alertmanager_urls]
        self.resend_interval = resend_interval
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._active: dict[LabelSet, ActiveAlert] = {}
        self._last_batch = float("-inf")
        self._session: aiohttp.ClientSession | None = None
        self._figures: tuple[_Figures, ...] = ()
        self._refresh_figures()

    # -- from the collection cycle ---------------------------------------------------------------

    def update(self, snapshot: GpuSnapshot, attribution: Attribution) -> None:
        """Queue a batch when an alert started or resolved, or the resend interval passed."""
        now = time.time()
        active = self.tracker.update(snapshot, attribution, now)
        resolved = [alert for key, alert in self._active.items() if key not in active]
        started = [key for key in active if key not in self._active]
        changed = [key for key, alert in active.items()
                   if key in self._active and alert.annotations != self._active[key].annotations]
        self._active = active
        due = active and now - self._last_batch >= self.resend_interval
        if not (started or resolved or changed or due):
            return
        for alert in (self._active[k] for k in started):
            log.info("pushing alert %s", dict(alert.labels))
        batch = [payload(a, now + 4 * self.resend_interval) for a in active.values()]
        batch += [payload(a, now) for a in resolved]
        self._last_batch = now
        for target in self.targets:
            target.enqueue(batch)
        self._refresh_figures()

    def _refresh_figures(self) -> None:
        self._figures = tuple(target.figures() for target in self.targets)

    # -- the senders -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = client_session(self.config)
        for target in self.targets:
            target.task = asyncio.create_task(self._drain(target), name=f"alertmanager {target.url}")
        log.info("pushing critical GPU alerts to %s", ", ".join(target.url for target in self.targets))

    async def stop(self) -> None:
        tasks = [t.task for t in self.targets if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _drain(self, target: _Target) -> None:
        while True:
            await target.wakeup.wait()
            target.wakeup.clear()
            while target.queue:
                batch = target.queue[0]
                ok = await self._post(target, batch)
                if target.queue and target.queue[0] is batch:  # not dropped meanwhile
                    target.queue.popleft()
                    target.counts["sent" if ok else "failed"] += len(batch)
                    self._refresh_figures()

    async def _post(self, target: _Target, batch: list[dict[str, Any]]) -> bool:
        assert self._session is not None
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                headers = auth_headers(self.config)
                async with self._session.post(target.endpoint, json=batch, headers=headers) as response:
                    if response.status < 300:
                        self._state(target, failing=False, reason="")
                        return True
                    reason = f"HTTP {response.status}: {(await response.text())[:200]}"
                    retry = response.status >= 500 or response.status == 429
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                reason, retry = f"{type(exc).__name__}: {exc}", True
            self._state(target, failing=True, reason=reason)
            if not retry or attempt == self.attempts:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        return False

    def _state(self, target: _Target, *, failing: bool, reason: str) -> None:
        """Log a target's failure and recovery once each, not every post."""
        if failing and not target.failing:
            log.warning("alertmanager %s: posting alerts failed (%s); retrying with backoff", target.url, reason)
        elif not failing and target.failing:
            log.info("alertmanager %s: posting alerts works again", target.url)
        target.failing = failing

    # -- self-metrics ------------------------------------------------------------------------------

    def self_metrics(self) -> Iterable[Sample]:
        """Sent, failed and dropped alerts (every result from the start) and the queue length, by
        Alertmanager: from the figures the loop computed, nothing else."""
        figures = self._figures
        return [*(Sample(catalog.ALERTMANAGER_NOTIFICATIONS, count, (f.url, result))
                  for f in figures for result, count in zip(RESULTS, f.counts)),
                *(Sample(catalog.ALERTMANAGER_QUEUE_LENGTH, f.queued, (f.url,)) for f in figures)]
