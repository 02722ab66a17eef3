"""The collection loop: sources -> snapshot -> attribution -> render, once per interval.

Each source fails alone. NVML trouble costs GPU series (and only those of the GPU in trouble);
a missing kubelet socket or API server costs attribution, never device series, and not even
attribution at first: the last good answer of either is kept for ``--attribution.grace-period``
so that a kubelet restart does not resolve every alert about an allocated GPU. Every failure is
logged once per distinct message and counted in
``kube_gpu_exporter_collector_errors_total{collector, kind}``; losing and regaining a source is
logged once each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Generic, Mapping, Protocol, Sequence, TypeVar

from .attribution import Attribution, attribute
from .config import Config
from .model.gpu import GpuSnapshot
from .model.kube import PodMeta, PodResources, ProcessOwners, PublishedDevices
from .render.families import AgentStatus, CollectorStatus, Exposition, Renderer
from .render.status import StatusPage
from .render.status import render as render_status_page
from .sources.backend import GpuBackend
from .sources.gpus import ERROR_KINDS as NVML_ERROR_KINDS
from .sources.gpus import GpuCollector, run_in_daemon_thread
from .sources.procfs import Procfs

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Readings of a GPU whose reads hang are served (with up=0) for this many intervals, then dropped.
HOLD_CYCLES = 3
#: Error kinds the agent itself counts, present at 0 from the start for each enabled collector.
AGENT_ERROR_KINDS: Mapping[str, tuple[str, ...]] = {
    "kubelet": ("unknown_device_id",),
    "kubernetes": ("config",),
    "resourceslices": ("config",),
    # read: procfs (or a pid's cgroup file) cannot be read; unresolved_pid: a GPU process whose pid
    # procfs does not show (docs/deploy.md#shared-gpus-and-hostpid)
    "procfs": ("read", "unresolved_pid"),
    "agent": ("cycle",),
}


class PodResourcesSource(Protocol):
    #: Error kinds its failures carry (``exc.kind``), present at 0 from the start.
    ERROR_KINDS: tuple[str, ...]

    async def list_resources(self) -> PodResources: ...
    async def close(self) -> None: ...


class PodMetadataSource(Protocol):
    connected: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait_synced(self, timeout: float) -> bool: ...
    def pods(self) -> Mapping[str, PodMeta]: ...
    def error_counts(self) -> Mapping[str, int]: ...


class CycleListener(Protocol):
    """Told about every cycle's snapshot and attribution (exporter/alerting/notifier.py); must not block."""

    def update(self, snapshot: GpuSnapshot, attribution: Attribution) -> None: ...


class DeviceSliceSource(Protocol):
    """The DRA devices this node's drivers publish (ResourceSlices), watched like the pods."""

    connected: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait_synced(self, timeout: float) -> bool: ...
    def published(self) -> PublishedDevices: ...
    def error_counts(self) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str


class _Kept(Generic[T]):
    """The last good answer of a source, usable for ``grace`` seconds after it came."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.value: T | None = None
        self.at = float("-inf")  # monotonic

    def good(self, value: T, now: float) -> T:
        self.value, self.at = value, now
        return value

    def current(self, now: float) -> T | None:
        return self.value if now - self.at <= self.grace else None


class Agent:
    def __init__(
        self,
        config: Config,
        backend: GpuBackend,
        *,
        pod_resources: PodResourcesSource | None = None,
        pod_metadata: PodMetadataSource | None = None,
        device_slices: DeviceSliceSource | None = None,
        process_owners: Callable[[Sequence[int]], ProcessOwners] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.gpus = GpuCollector(
            backend, timeout=config.collector_timeout, hold_seconds=HOLD_CYCLES * config.collector_interval)
        self.pod_resources = pod_resources
        self.pod_metadata = pod_metadata
        self.device_slices = device_slices
        # procfs: the host's, unless a source stands in for it (--simulate, tests); none with
        # --path.procfs="" (no GPU process is placed in a container)
        self._procfs = Procfs(config.procfs) if process_owners is None and config.procfs else None
        self.process_owners = process_owners or (self._procfs.owners if self._procfs else None)
        self._unresolved_gpu_processes: int | None = 0 if self.process_owners else None
        self._pid_namespace_logged = False
        self._missing_pids_logged = False
        self.renderer = Renderer()
        self.exposition: Exposition | None = None
        self.status_page: StatusPage | None = None  # / and /api/v1/status, rendered with the exposition
        self.notifier: CycleListener | None = None  # the push path to Alertmanager, set by the CLI
        #: Requests the HTTP guard refused, by reason (exporter/http.py), set by the CLI when it serves.
        self.http_rejected: Mapping[str, int] = {}
        self.errors: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for collector, kinds in self._known_error_kinds().items():
            self.errors[collector].update(dict.fromkeys(kinds, 0))
        self._logged: set[str] = set()
        self._collectors: dict[str, CollectorStatus] = {}
        self._last_success: dict[str, float] = {}  # collector -> unix time of its last full success
        self._source_up: dict[str, bool] = {}  # for one log line per loss and per recovery
        self._resources = _Kept[PodResources](config.attribution_grace_period)
        self._pods = _Kept[Mapping[str, PodMeta]](config.attribution_grace_period)
        self._published = _Kept[PublishedDevices](config.attribution_grace_period)
        self._ready_once = False
        self._loop_tick = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def _known_error_kinds(self) -> dict[str, tuple[str, ...]]:
        known = {"nvml": NVML_ERROR_KINDS, "agent": AGENT_ERROR_KINDS["agent"]}
        if self.process_owners is not None:
            known["procfs"] = AGENT_ERROR_KINDS["procfs"]
        if self.pod_resources is not None:
            known["kubelet"] = AGENT_ERROR_KINDS["kubelet"] + tuple(self.pod_resources.ERROR_KINDS)
        if self.pod_metadata is not None:
            known["kubernetes"] = AGENT_ERROR_KINDS["kubernetes"]
        if self.device_slices is not None:
            known["resourceslices"] = AGENT_ERROR_KINDS["resourceslices"]
        return known

    # -- one cycle ---------------------------------------------------------------------------

    async def collect_once(self) -> Exposition:
        started = time.monotonic()
        # NVML and the kubelet are independent: wait for both at once.
        snapshot, resources = await asyncio.gather(
            self._timed("nvml", self._collect_gpus),
            self._timed("kubelet", self._list_pod_resources) if self.pod_resources else _none(),
        )
        pods = self._pod_metadata()
        owners = await self._timed("procfs", self._process_owners, snapshot) if self.process_owners else ProcessOwners()
        attribution = attribute(snapshot, resources, pods, owners, self.config.pod_labels,
                                published=self._published_devices())
        if self.gpus.state.up:  # without NVML every id is "unknown": that is not the kubelet's fault
            self._count_unknown_ids(attribution)
            self._log_unresolved_claims(attribution)

        now = time.monotonic()
        status = AgentStatus(
            simulated=self.backend.simulated,
            nvml_up=self.gpus.state.up,
            collectors=dict(self._collectors),
            errors=self._error_counts(),
            cycle_timestamp=time.time(),
            cycle_duration_seconds=now - started,
            gpu_snapshot_age_seconds=max(0.0, now - snapshot.taken),
            gpu_snapshot_stale=snapshot.stale,
            kubelet_enabled=self.pod_resources is not None,
            unresolved_gpu_processes=self._unresolved_gpu_processes,
            nvml_query_seconds=_nvml_query_seconds(snapshot),
            http_rejected=dict(self.http_rejected),
        )
        if self.notifier is not None:
            # On the loop, before rendering: it only queues (posting happens in the notifier's own
            # tasks) and leaves its self-metrics as plain figures for the render thread to read.
            try:
                self.notifier.update(snapshot, attribution)
            except Exception:  # noqa: BLE001 - a push-path bug must not cost the cycle
                log.exception("computing the alerts to push failed")
        exposition = await asyncio.to_thread(self.renderer.render, snapshot, attribution, status)
        self.exposition = exposition
        self.status_page = await asyncio.to_thread(
            render_status_page, snapshot, attribution, status, node=self.config.node_name,
            interval_seconds=self.config.collector_interval, event_window=self.config.alertmanager_event_window)
        self._ready_once = self._ready_once or self.gpus.state.up
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "cycle: %d GPUs (%d up), %d held devices, %d containers with usage, %.1f ms",
                len(snapshot.gpus), sum(g.up for g in snapshot.gpus), len(attribution.holders),
                sum(len(u) for u in attribution.usage.values()), (time.monotonic() - started) * 1000,
            )
        return exposition

    async def _timed(self, name: str, fn: Callable, *args):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        result, ok = await fn(*args)
        self._record(name, ok, time.monotonic() - start)
        return result

    def _record(self, name: str, ok: bool, duration: float | None) -> None:
        if ok:
            self._last_success[name] = time.time()
        self._collectors[name] = CollectorStatus(ok, duration, self._last_success.get(name))

    async def _collect_gpus(self) -> tuple[GpuSnapshot, bool]:
        snapshot = await self.gpus.collect()
        ok = self.gpus.state.up and not snapshot.stale and all(g.up for g in snapshot.gpus)
        return snapshot, ok

    async def _list_pod_resources(self) -> tuple[PodResources | None, bool]:
        """The kubelet's answer; on failure the last good one, within the grace period."""
        assert self.pod_resources is not None
        now = time.monotonic()
        try:
            resources = await self.pod_resources.list_resources()
        except Exception as exc:  # noqa: BLE001 - any failure costs attribution only
            kind = getattr(exc, "kind", type(exc).__name__.lower())
            self._error("kubelet", kind, f"pod-resources call failed ({kind}): {exc}")
            if (listed := getattr(exc, "resources", None)) is not None:
                # List answered, GetAllocatableResources did not: the allocations are good.
                self._source_changed("kubelet", True, "kubelet pod-resources API answers again")
                return self._resources.good(listed, now), False
            kept = self._resources.current(now)
            self._source_changed("kubelet", False, "kubelet pod-resources API lost; "
                                 f"keeping the last allocations for {self._resources.grace:g}s")
            return kept, False
        self._source_changed("kubelet", True, "kubelet pod-resources API answers again")
        return self._resources.good(resources, now), True

    async def _process_owners(self, snapshot: GpuSnapshot) -> tuple[ProcessOwners, bool]:
        """Where each GPU process runs, from procfs; every cycle, processes or not, so that a
        procfs that cannot be read fails the collector (and its alert) at once.

        A process whose pid procfs does not show cannot be attributed: it is counted
        (``unresolved_pid``, and ``kube_gpu_exporter_unresolved_gpu_processes`` over the processes
        of this cycle's readings), and the first time said in one line that names the fix."""
        entries = [p.pid for g in snapshot.gpus if g.up for p in g.processes] + [
            p.pid for g in snapshot.gpus if g.up for m in g.mig_devices for p in m.processes]
        pids = sorted({p.pid for g in snapshot.gpus for p in g.processes}
                      | {p.pid for g in snapshot.gpus for m in g.mig_devices for p in m.processes})
        self._log_pid_namespace_once()
        assert self.process_owners is not None
        try:
            owners = await asyncio.to_thread(self.process_owners, pids)
        except Exception as exc:  # noqa: BLE001 - any failure costs the process split only
            self._error("procfs", "read", f"procfs at {self.config.procfs} cannot be read ({exc}); GPU processes "
                        "are not attributed to containers: check the /host/proc mount and --path.procfs")
            self._unresolved_gpu_processes = len(entries)
            return ProcessOwners(), False
        for pid, why in sorted(owners.unreadable.items()):
            self._error("procfs", "read", f"cannot read the cgroup of GPU process {pid}: {why}")
        missing = [pid for pid in entries if pid in owners.missing]
        if missing:
            self.errors["procfs"]["unresolved_pid"] += len(missing)
            self._log_unresolved_once(sorted(set(missing)))
        self._unresolved_gpu_processes = sum(not owners.placed(pid) for pid in entries)
        return owners, not self._unresolved_gpu_processes

    def _log_pid_namespace_once(self) -> None:
        """Say once, at info, that the agent runs in a pid namespace of its own: drivers that
        translate GPU pids into it hide every other container's process from NVML's lists."""
        if self._pid_namespace_logged or self._procfs is None or self._procfs.shares_pid_namespace is not False:
            return
        self._pid_namespace_logged = True
        log.info("the agent runs in a pid namespace of its own (hostPID: false). A driver that translates GPU "
                 "pids into it leaves other containers' processes out of NVML's lists, so idle holders of shared "
                 "GPUs are reported at 0 only once NVML has listed a pid that %s places in a container (a driver "
                 "that reports host pids); else see docs/deploy.md#shared-gpus-and-hostpid", self.config.procfs)

    def _log_unresolved_once(self, pids: list[int]) -> None:
        """Processes NVML lists that procfs does not have: in the host's pid namespace they just
        exited (counted, not worth a line); otherwise the agent sees another pid namespace."""
        if self._missing_pids_logged or (self._procfs is not None and self._procfs.shares_pid_namespace):
            return
        self._missing_pids_logged = True
        shown = ", ".join(map(str, pids[:10])) + (", ..." if len(pids) > 10 else "")
        log.warning("NVML lists GPU processes that %s does not show (pids %s): the agent looks to run in a pid "
                    "namespace of its own, into which the driver translates pids. Their containers are unknown, and "
                    "idle holders of shared GPUs are not reported. Fix: run the agent with hostPID: true "
                    "(deploy/hostpid.patch.yaml, docs/deploy.md#shared-gpus-and-hostpid)", self.config.procfs, shown)

    def _pod_metadata(self) -> Mapping[str, PodMeta]:
        """Pods from the API server's watch (see ``_watched``); none when that is off or too old:
        workloads unknown rather than possibly wrong."""
        if self.pod_metadata is None:
            return {}
        watch = self.pod_metadata
        return self._watched("kubernetes", "pod watch", "workloads", watch.connected, watch.pods, self._pods) or {}

    def _published_devices(self) -> PublishedDevices | None:
        """The DRA devices from the ResourceSlice watch (see ``_watched``); None: claims are
        resolved only from what is local."""
        if self.device_slices is None:
            return None
        watch = self.device_slices
        return self._watched("resourceslices", "ResourceSlice watch", "DRA devices", watch.connected,
                             watch.published, self._published)

    def _watched(self, collector: str, what: str, kept_what: str, connected: bool,
                 read: Callable[[], T], kept: _Kept[T]) -> T | None:
        """What a background watch of the API server knows: its current view while it is
        connected; while it is not, the last one within the grace period, then None."""
        now = time.monotonic()
        self._record(collector, bool(connected), None)
        if connected:
            self._source_changed(collector, True, f"API server {what} connected")
            return kept.good(read(), now)
        self._source_changed(collector, False, f"API server {what} lost; "
                             f"keeping the last {kept_what} for {kept.grace:g}s")
        return kept.current(now)

    def _source_changed(self, source: str, up: bool, message: str) -> None:
        """Log a source's loss or recovery once (not its first success)."""
        before = self._source_up.get(source)
        self._source_up[source] = up
        if before is not None and before != up:
            (log.info if up else log.warning)(message)

    def _count_unknown_ids(self, attribution: Attribution) -> None:
        for device_id in attribution.unknown_ids:
            self._error("kubelet", "unknown_device_id", f"device id {device_id!r} matches no GPU or MIG device")

    def _log_unresolved_claims(self, attribution: Attribution) -> None:
        for d in attribution.unresolved:
            self._warn_once(f"DRA claim {d.claim_namespace}/{d.claim_name}: device {d.driver}/{d.pool}/{d.device} "
                            f"of {d.namespace}/{d.pod}/{d.container} is named by no known ResourceSlice; not "
                            "attributed (see kube_gpu_exporter_unresolved_claim_devices)")

    def _error(self, collector: str, kind: str, message: str) -> None:
        """Count every error; log each distinct message once (then again after 1000 others)."""
        self.errors[collector][kind] += 1
        self._warn_once(message)

    def _warn_once(self, message: str) -> None:
        if message not in self._logged:
            if len(self._logged) >= 1000:  # bounded: messages can carry ids that churn
                self._logged.clear()
            self._logged.add(message)
            log.warning(message)

    def _error_counts(self) -> dict[tuple[str, str], int]:
        counts: Counter[tuple[str, str]] = Counter(
            {(c, k): n for c, kinds in self.errors.items() for k, n in kinds.items()})
        counts.update({("nvml", k): n for k, n in self.gpus.errors.items()})
        counts.update({("nvml", k): n for k, n in self.backend.error_counts().items()})
        if self.pod_metadata is not None:
            counts.update({("kubernetes", k): n for k, n in self.pod_metadata.error_counts().items()})
        if self.device_slices is not None:
            counts.update({("resourceslices", k): n for k, n in self.device_slices.error_counts().items()})
        return dict(counts)

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
                self.errors["agent"]["cycle"] += 1
                log.exception("collection cycle failed")
            self._loop_tick = time.monotonic()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def start_sources(self, *, sync_timeout: float = 0.0) -> None:
        """Start the pod and ResourceSlice watches; with ``sync_timeout``, wait up to that long
        for their first lists (``--once`` does, so that a single cycle sees workloads and DRA
        devices)."""
        watches = [("kubernetes", self.pod_metadata, "pod watch", "workloads"),
                   ("resourceslices", self.device_slices, "ResourceSlice watch", "DRA claims")]
        started = []
        for collector, source, what, unknown in watches:
            if source is None:
                continue
            try:
                source.start()
            except Exception as exc:  # noqa: BLE001 - no API config: attribution goes on without it
                self._error(collector, "config", f"cannot start the {what}: {exc}")
                continue
            started.append((source, what, unknown))
        if sync_timeout > 0:
            synced = await asyncio.gather(*(asyncio.to_thread(s.wait_synced, sync_timeout) for s, _, _ in started))
            for (_, what, unknown), ok in zip(started, synced):
                if not ok:
                    log.warning("the API server's first answer to the %s did not arrive within %gs; %s stay "
                                "unknown", what, sync_timeout, unknown)

    async def start(self) -> None:
        await self.start_sources()
        self._task = asyncio.create_task(self.run(), name="collection-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.pod_resources is not None:
            await self.pod_resources.close()
        # Both stops join threads that may sit in a blocking call (a watch, an NVML event wait);
        # they are daemon threads, so bound the wait and let the process exit regardless.
        stops = [run_in_daemon_thread(self.gpus.stop, name="nvml-stop")]
        if self.pod_metadata is not None:
            stops.append(run_in_daemon_thread(self.pod_metadata.stop, name="watch-stop"))
        if self.device_slices is not None:
            stops.append(run_in_daemon_thread(self.device_slices.stop, name="slice-watch-stop"))
        await asyncio.wait(stops, timeout=0.5)

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
    """NVML time by query group over this cycle's fresh readings (held ones cost nothing now)."""
    total: Counter[str] = Counter()
    for gpu in snapshot.gpus:
        if gpu.up:
            total.update(gpu.nvml_seconds)
    return dict(total)


async def _none() -> None:
    return None
