"""The collection loop: sources -> snapshot -> attribution -> render, once per interval.

Each source fails alone. NVML trouble costs GPU series (and only those of the GPU in trouble);
a missing kubelet socket or API server costs attribution labels, never device series. Every
failure is logged once per distinct message and counted in
``kube_gpu_exporter_collector_errors_total{collector, kind}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from . import cgroups
from .attribution import Attribution, attribute
from .backend import GpuBackend
from .config import Config
from .gpu_collector import GpuCollector, run_in_daemon_thread
from .metrics import AgentStatus, CollectorStatus, Exposition, Renderer
from .snapshot import ContainerRef, GpuSnapshot, PodMeta, PodResources

log = logging.getLogger(__name__)


class PodResourcesSource(Protocol):
    async def list_resources(self) -> PodResources: ...
    async def close(self) -> None: ...


class PodMetadataSource(Protocol):
    connected: bool
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pods(self) -> Mapping[str, PodMeta]: ...
    def error_counts(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str


async def _none() -> None:
    return None


class Agent:
    def __init__(
        self,
        config: Config,
        backend: GpuBackend,
        *,
        pod_resources: PodResourcesSource | None = None,
        pod_metadata: PodMetadataSource | None = None,
        process_owners: Callable[[list[int]], Mapping[int, ContainerRef]] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.gpus = GpuCollector(backend, timeout=config.collector_timeout)
        self.pod_resources = pod_resources
        self.pod_metadata = pod_metadata
        self.process_owners = process_owners or (lambda pids: cgroups.containers_of(pids, config.procfs))
        self.renderer = Renderer()
        self.exposition: Exposition | None = None
        self.errors: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._logged: set[str] = set()
        self._collectors: dict[str, CollectorStatus] = {}
        self._kubelet_up: bool | None = None if pod_resources is None else False
        self._last_success = 0.0
        self._loop_tick = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    # -- one cycle ---------------------------------------------------------------------------

    async def collect_once(self) -> Exposition:
        started = time.monotonic()
        # NVML and the kubelet are independent: wait for both at once.
        snapshot, resources = await asyncio.gather(
            self._timed("nvml", self._collect_gpus),
            self._timed("kubelet", self._list_pod_resources) if self.pod_resources else _none(),
        )
        pods = self._pod_metadata()
        owners = await self._timed("procfs", self._process_owners, snapshot)
        attribution = attribute(snapshot, resources, pods, owners or {}, self.config.pod_labels)
        if self.gpus.state.up:  # without NVML every id is "unknown": that is not the kubelet's fault
            self._count_unknown_ids(attribution)

        now = time.time()
        status = AgentStatus(
            simulated=self.backend.simulated,
            nvml_up=self.gpus.state.up,
            collectors=dict(self._collectors),
            errors=self._error_counts(),
            last_collection_timestamp=now,
            collection_duration_seconds=time.monotonic() - started,
            gpu_snapshot_age_seconds=max(0.0, now - snapshot.timestamp),
            gpu_snapshot_stale=snapshot.stale,
            kubelet_up=self._kubelet_up,
            kubernetes_api_up=None if self.pod_metadata is None else bool(self.pod_metadata.connected),
        )
        exposition = await asyncio.to_thread(self.renderer.render, snapshot, attribution, status)
        self.exposition = exposition
        if self.gpus.state.up:
            self._last_success = time.monotonic()
        return exposition

    async def _timed(self, name: str, fn: Callable, *args):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        result, ok = await fn(*args)
        self._collectors[name] = CollectorStatus(ok, time.monotonic() - start)
        return result

    async def _collect_gpus(self) -> tuple[GpuSnapshot, bool]:
        snapshot = await self.gpus.collect()
        ok = self.gpus.state.up and not snapshot.stale and all(g.up for g in snapshot.gpus)
        return snapshot, ok

    async def _list_pod_resources(self) -> tuple[PodResources | None, bool]:
        assert self.pod_resources is not None
        try:
            resources = await self.pod_resources.list_resources()
        except Exception as exc:  # noqa: BLE001 - any failure costs attribution only
            kind = getattr(exc, "kind", type(exc).__name__.lower())
            self._error("kubelet", kind, f"pod-resources call failed ({kind}): {exc}")
            self._kubelet_up = False
            return None, False
        self._kubelet_up = True
        return resources, True

    async def _process_owners(self, snapshot: GpuSnapshot) -> tuple[Mapping[int, ContainerRef], bool]:
        pids = sorted(
            {p.pid for g in snapshot.gpus for p in g.processes}
            | {p.pid for g in snapshot.gpus for m in g.mig_devices for p in m.processes}
        )
        if not pids:
            return {}, True
        try:
            return await asyncio.to_thread(self.process_owners, pids), True
        except Exception as exc:  # noqa: BLE001
            self._error("procfs", "read", f"reading process cgroups failed: {exc}")
            return {}, False

    def _pod_metadata(self) -> Mapping[str, PodMeta]:
        if self.pod_metadata is None:
            return {}
        pods = self.pod_metadata.pods()
        self._collectors["kubernetes"] = CollectorStatus(bool(self.pod_metadata.connected))
        return pods

    def _count_unknown_ids(self, attribution: Attribution) -> None:
        for device_id in attribution.unknown_ids:
            self._error("kubelet", "unknown_device_id", f"device id {device_id!r} matches no GPU or MIG device")

    def _error(self, collector: str, kind: str, message: str) -> None:
        """Count every error; log each distinct message once (then again after 1000 others)."""
        self.errors[collector][kind] += 1
        if message not in self._logged:
            if len(self._logged) >= 1000:  # bounded: messages can carry ids that churn
                self._logged.clear()
            self._logged.add(message)
            log.warning(message)

    def _error_counts(self) -> dict[tuple[str, str], int]:
        counts = {(c, k): n for c, kinds in self.errors.items() for k, n in kinds.items()}
        counts.update({("nvml", k): n for k, n in self.gpus.errors.items()})
        errors_by_kind = getattr(self.backend, "errors_by_kind", None)
        if errors_by_kind is not None:
            for kind, n in errors_by_kind().items():
                counts[("nvml", kind)] = counts.get(("nvml", kind), 0) + n
        if self.pod_metadata is not None:
            counts.update({("kubernetes", k): n for k, n in self.pod_metadata.error_counts().items()})
        return counts

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

    async def start(self) -> None:
        if self.pod_metadata is not None:
            try:
                self.pod_metadata.start()
            except Exception as exc:  # noqa: BLE001 - no API config: attribution goes on without it
                self._error("kubernetes", "config", f"cannot start the pod watch: {exc}")
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
        if self.exposition is None or not self._last_success:
            return Health(False, "no collection has succeeded yet")
        return Health(True, "ok")
