"""The collection loop: sources -> attribution -> render, once per interval.

One cycle reads every source (``sources/``: the GPUs, and the kubelet, the API server's watches
and procfs where they are on), joins what they observed (``attribution.py``), tells the
components that listen (the Alertmanager notifier, ``push/``) and renders the exposition and the
status page (``render/``), which the HTTP routes (``serve/``) then serve as they are.

Each source fails alone: NVML trouble costs GPU series (and only those of the GPU in trouble); a
missing kubelet socket or API server costs attribution, never device series, and not even that
at first (``sources/grace.py``). Every failure is counted in
``kube_gpu_exporter_collector_errors_total{collector, kind}``, which the agent's ``ErrorBook``
adds up from every source, and logged once.

The agent knows no source by name: sources are given to it (``cli.build_sources``), each behind
the interface of ``sources/base.py``, and what they read arrives as ``model.cycle.Observations``.
Components (the HTTP guard, the notifier) are given to it too, and their self-metrics are
rendered with the cycle's, with ``--once`` as in the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence, runtime_checkable

from .attribution import Attribution, attribute
from .config import Config
from .model.cycle import AgentStatus, CollectorStatus, Observations
from .model.gpu import GpuSnapshot, Sample
from .render.exposition import Exposition
from .render.families import Renderer
from .render.status import StatusPage
from .render.status import render as render_status_page
from .sources.base import Outcome, Source
from .sources.gpus import GpuSource

if TYPE_CHECKING:
    from .render.dcgm import DcgmExposition, DcgmRenderer

log = logging.getLogger(__name__)

#: Error kinds the agent counts as its own collector ("agent"): a cycle that failed.
OWN_ERROR_KINDS = ("cycle",)
#: How long ``stop`` waits for the sources to stop (a thread stuck in a blocking call is left).
STOP_TIMEOUT_SECONDS = 0.5


class Component(Protocol):
    """A part of the agent with metrics of its own (the HTTP guard, the Alertmanager notifier),
    read on the loop after each cycle's reads and rendered with the cycle's families."""

    def self_metrics(self) -> Iterable[Sample]: ...


@runtime_checkable
class CycleListener(Protocol):
    """A component told about every cycle's snapshot and attribution (``push/notifier.py``); it
    must not block, and may start and stop with the agent."""

    def update(self, snapshot: GpuSnapshot, attribution: Attribution) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str


class ErrorBook:
    """Every count of ``kube_gpu_exporter_collector_errors_total{collector, kind}``: each source's
    own (``Source.error_counts``) and those the agent counts itself (a failed cycle; a source that
    cannot start; a device id the kubelet named that matches no GPU), every known kind at 0 from the
    start. Each message the agent counts is logged once (again after 1000 others)."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self._sources = sources
        self._own: Counter[tuple[str, str]] = Counter(dict.fromkeys((("agent", k) for k in OWN_ERROR_KINDS), 0))
        self._logged: set[str] = set()

    def count(self, collector: str, kind: str, message: str | None = None) -> None:
        self._own[collector, kind] += 1
        if message is not None:
            self.warn_once(message)

    def warn_once(self, message: str) -> None:
        if message not in self._logged:
            if len(self._logged) >= 1000:  # bounded: messages can carry ids that churn
                self._logged.clear()
            self._logged.add(message)
            log.warning("%s", message)

    def totals(self) -> dict[tuple[str, str], int]:
        counts: Counter[tuple[str, str]] = Counter()
        for source in self._sources:
            counts.update(dict.fromkeys(((source.name, kind) for kind in source.error_kinds), 0))
            counts.update({(source.name, kind): n for kind, n in source.error_counts().items()})
        counts.update(self._own)
        return dict(counts)


class Agent:
    """Runs the cycle over ``gpus`` and ``sources`` (read in this order alongside each other, those
    ``after_gpus`` once the GPUs' snapshot is there), with ``components`` contributing their
    self-metrics and, if they listen, hearing of every cycle."""

    def __init__(self, config: Config, gpus: GpuSource, sources: Sequence[Source] = (), *,
                 components: Sequence[Component] = ()) -> None:
        self.config = config
        self.gpus = gpus
        self.sources: tuple[Source, ...] = (gpus, *(s for s in sources if s.enabled))
        # Those the configuration switches off (``sources.base.Off``): the status page lists them.
        self.switched_off = tuple(s for s in sources if not s.enabled)
        names = [s.name for s in (*self.sources, *self.switched_off)]
        if len(set(names)) != len(names):
            raise ValueError(f"two sources share a name: {names}")
        known = {f.name for f in fields(Observations)}
        if unknown := [f"{s.name}: {s.provides!r}" for s in self.sources if s.provides not in known]:
            raise ValueError(f"sources provide no field of Observations: {', '.join(unknown)}")
        self.components = tuple(components)
        self.errors = ErrorBook(self.sources)
        self.renderer = Renderer(collectors=config.collectors)
        self.exposition: Exposition | None = None
        # --compat.dcgm-exporter: the same cycle written under dcgm-exporter's names (/metrics/dcgm)
        self.dcgm: DcgmRenderer | None = None
        self.dcgm_exposition: DcgmExposition | None = None
        if config.compat_dcgm:
            from .render.dcgm import DcgmRenderer, Options  # only with the flag
            self.dcgm = DcgmRenderer(Options(
                hostname=config.node_name, hostname_label=config.compat_dcgm_hostname_label,
                exported_holder_labels=config.compat_dcgm_exported_holder_labels, pod_uid=config.compat_dcgm_pod_uid))
        self.status_page: StatusPage | None = None  # / and /api/v1/status, rendered with the exposition
        self._collectors: dict[str, CollectorStatus] = {}
        self._last_success: dict[str, float] = {}  # source name -> unix time of its last full success
        self._ready_once = False
        self._loop_tick = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    # -- one cycle ---------------------------------------------------------------------------

    async def collect_once(self) -> Exposition:
        started = time.monotonic()
        observed = await self._observe()
        snapshot = observed.gpus
        attribution = attribute(snapshot, observed.pod_resources, observed.pods, observed.process_owners,
                                self.config.pod_labels, slices=observed.slices)
        if self.gpus.state.up:  # without NVML every id is "unknown": that is not the kubelet's fault
            self._book(attribution)

        now = time.monotonic()
        status = AgentStatus(
            simulated=self.gpus.simulated,
            nvml_up=self.gpus.state.up,
            collectors={s.name: self._collectors[s.name] for s in self.sources},
            switched_off={s.name: s.title for s in self.switched_off},
            errors=self.errors.totals(),
            cycle_timestamp=time.time(),
            cycle_duration_seconds=now - started,
            gpu_snapshot_age_seconds=max(0.0, now - snapshot.taken),
            gpu_snapshot_stale=snapshot.stale,
            nvml_query_seconds=_nvml_query_seconds(snapshot),
            self_metrics=tuple(s for part in (*self.sources, *self.components) for s in part.self_metrics()),
        )
        for listener in self._listeners():
            # On the loop, before rendering: it only queues (posting happens in its own tasks).
            try:
                listener.update(snapshot, attribution)
            except Exception:  # noqa: BLE001 - a push-path bug must not cost the cycle
                log.exception("computing the alerts to push failed")
        exposition = await asyncio.to_thread(self.renderer.render, snapshot, attribution, status)
        self.exposition = exposition
        if self.dcgm is not None:  # the same snapshot and attribution: no second read of anything
            self.dcgm_exposition = await asyncio.to_thread(self.dcgm.render, snapshot, attribution)
        if not self.config.once:  # --once prints the exposition: no page (and Jinja2 is never loaded)
            self.status_page = await asyncio.to_thread(
                render_status_page, snapshot, attribution, status, node=self.config.node_name,
                interval_seconds=self.config.collector_interval, event_window=self.config.alertmanager_event_window)
        self._ready_once = self._ready_once or self.gpus.state.up
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "cycle: %d GPUs (%d up), %d allocated devices, %d containers with usage, %.1f ms",
                len(snapshot.gpus), sum(g.up for g in snapshot.gpus), len(attribution.holders),
                sum(len(u) for u in attribution.usage.values()), (time.monotonic() - started) * 1000,
            )
        return exposition

    async def _observe(self) -> Observations:
        """Read every source: the GPUs and those that do not need them at once, then the others
        with the GPUs' snapshot. Each value goes to the field its source ``provides``."""
        now = [s for s in self.sources if not s.after_gpus]
        outcomes = dict(zip(now, await asyncio.gather(*(self._read(s, None) for s in now))))
        snapshot = outcomes[self.gpus].value
        assert snapshot is not None
        later = [s for s in self.sources if s.after_gpus]
        outcomes.update(zip(later, await asyncio.gather(*(self._read(s, snapshot) for s in later))))
        return Observations(**{s.provides: o.value for s, o in outcomes.items() if o.value is not None})

    async def _read(self, source: Source, gpus: GpuSnapshot | None) -> Outcome:
        started = time.monotonic()
        outcome = await source.read(gpus)
        if outcome.ok:
            self._last_success[source.name] = time.time()
        self._collectors[source.name] = CollectorStatus(
            source.title, outcome.ok, None if source.background else time.monotonic() - started,
            self._last_success.get(source.name))
        return outcome

    def _book(self, attribution: Attribution) -> None:
        """What only the join with the GPUs tells about the Kubernetes sources' answers."""
        kubelet = next((s.name for s in self.sources if s.provides == "pod_resources"), "kubelet")
        for device_id in attribution.unknown_ids:
            self.errors.count(kubelet, "unknown_device_id", f"device id {device_id!r} matches no GPU or MIG device")
        for d in attribution.unresolved:
            self.errors.warn_once(
                f"DRA claim {d.claim_namespace}/{d.claim_name}: device {d.driver}/{d.pool}/{d.device} of "
                f"{d.namespace}/{d.pod}/{d.container} is named by no known ResourceSlice; not attributed (see "
                "kube_gpu_exporter_unresolved_claim_devices)")

    def _listeners(self) -> list[CycleListener]:
        return [c for c in self.components if isinstance(c, CycleListener)]

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Collect every interval until cancelled; a failed cycle is logged and the loop goes on."""
        interval = self.config.collector_interval
        while True:
            started = time.monotonic()
            self._loop_tick = started
            try:
                await self.collect_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive any one cycle
                self.errors.count("agent", "cycle")
                log.exception("collection cycle failed")
            self._loop_tick = time.monotonic()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def start_sources(self, *, sync_timeout: float = 0.0) -> None:
        """Start every source; with ``sync_timeout``, wait up to that long for what their first
        cycle needs (``--once`` does, so that its single cycle sees workloads and DRA devices)."""
        started = []
        for source in self.sources:
            try:
                await source.start()
            except Exception as exc:  # noqa: BLE001 - no API config: attribution goes on without it
                self.errors.count(source.name, "config", f"cannot start the {source.title}: {exc}")
                continue
            started.append(source)
        if sync_timeout > 0:
            ready = await asyncio.gather(*(s.wait_ready(sync_timeout) for s in started))
            for source, ok in zip(started, ready):
                if not ok:
                    log.warning("the %s did not answer within %gs; the first cycle goes on without it",
                                source.title, sync_timeout)

    async def start(self) -> None:
        """Start the sources and the listening components, then the loop."""
        await self.start_sources()
        for listener in self._listeners():
            await listener.start()
        self._task = asyncio.create_task(self.run(), name="collection-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # A source's stop may join a thread that sits in a blocking call (an NVML event wait):
        # those are daemon threads, so the wait is bounded and the process exits regardless.
        stops = [asyncio.ensure_future(s.stop()) for s in self.sources]
        await asyncio.wait(stops, timeout=STOP_TIMEOUT_SECONDS)
        for listener in self._listeners():
            await listener.stop()

    # -- health --------------------------------------------------------------------------------

    def liveness(self) -> Health:
        """The loop is alive: it ticked within a few intervals (a hung cycle stops ticking)."""
        budget = 3 * self.config.collector_interval + self.config.collector_timeout + self.config.kubelet_timeout
        age = time.monotonic() - self._loop_tick
        if self._task is not None and self._task.done():
            return Health(False, "collection loop exited")
        if age > budget:
            return Health(False, f"collection loop has not ticked for {age:.0f}s")
        return Health(True, "ok")

    def readiness(self) -> Health:
        state = self.gpus.state
        if not state.up:
            return Health(False, f"NVML is not initialised: {state.error}")
        if self.exposition is None or not self._ready_once:
            return Health(False, "no collection has succeeded yet")
        return Health(True, "ok")


def _nvml_query_seconds(snapshot: GpuSnapshot) -> dict[str, float]:
    """NVML time by query group over this cycle's fresh readings (stale ones cost nothing now)."""
    total: Counter[str] = Counter()
    for gpu in snapshot.gpus:
        if gpu.up:
            total.update(gpu.nvml_seconds)
    return dict(total)
