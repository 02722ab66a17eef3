"""Snapshot + attribution + the agent's status -> the metric families and the exposition bytes,
once per collection cycle.

Metric families are built fresh every cycle (client_python's custom-collector pattern), so the
series of a GPU or pod that is gone simply are not there next time; names, types and help come
from ``catalog.py``, and families are written in its order. The result is rendered in both formats
and gzipped (``exposition.py``), so that serving a scrape is a dictionary lookup.
"""

from __future__ import annotations

import platform
from collections import Counter
from typing import AbstractSet, Iterable, Mapping

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample as PromSample

from .. import __version__, catalog
from ..attribution import Attribution
from ..catalog import MetricSpec
from ..model.gpu import Gpu, GpuSnapshot, MigDevice, Sample
from ..model import xid
from ..model.cycle import AgentStatus
from .exposition import Exposition

_CATALOG_ORDER = {spec: i for i, spec in enumerate(catalog.all_metrics())}


class _Families:
    """Metric families of one cycle, in catalog order, built from ``(spec, labels, value)``; the
    samples of a collector group that is off are dropped here, whatever a source read."""

    def __init__(self, collectors: AbstractSet[str]) -> None:
        self._by_spec: dict[MetricSpec, Metric] = {}
        self._collectors = collectors

    def add(self, spec: MetricSpec, labels: Mapping[str, str], value: float) -> None:
        if spec.group not in self._collectors:
            return
        family = self._by_spec.get(spec)
        if family is None:
            name = spec.name[: -len("_total")] if spec.kind == "counter" else spec.name
            family = self._by_spec[spec] = Metric(name, spec.help, spec.kind)
        family.samples.append(PromSample(spec.name, dict(labels), float(value)))

    def metrics(self) -> list[Metric]:
        return [self._by_spec[s] for s in sorted(self._by_spec, key=_CATALOG_ORDER.__getitem__)]


def _add_samples(out: _Families, identity: dict[str, str], samples: Iterable[Sample]) -> None:
    for sample in samples:
        labels = dict(identity)
        if sample.metric.scope == "device":  # profiling counts per GPU instance, not compute instance
            labels.pop("compute_instance_id", None)
        labels.update(zip(sample.metric.labels, sample.labels))
        out.add(sample.metric, labels, sample.value)


def _mig_identity(gpu: Gpu, mig: MigDevice) -> dict[str, str]:
    return {
        "gpu": str(gpu.index),
        "uuid": gpu.uuid,
        "gpu_instance_id": str(mig.gpu_instance_id),
        "compute_instance_id": str(mig.compute_instance_id),
    }


def _device_families(out: _Families, snapshot: GpuSnapshot, attribution: Attribution) -> None:
    """Device series carry the device's identity only, whoever holds it; holders are joined in
    through nvidia_gpu_allocation_info (see docs/attribution.md)."""
    xids: dict[str, list[tuple[int, int]]] = {}
    for (uuid, code), count in sorted(snapshot.xids.items()):
        xids.setdefault(uuid, []).append((code, count))
    for gpu in snapshot.gpus:
        identity = {"gpu": str(gpu.index), "uuid": gpu.uuid}
        if gpu.info:
            out.add(catalog.GPU_INFO, identity | {k: gpu.info.get(k, "") for k in catalog.GPU_INFO.labels}, 1)
        out.add(catalog.GPU_UP, identity, 1 if gpu.up else 0)
        _add_samples(out, identity, gpu.samples)
        if gpu.uuid:  # XIDs are counted by uuid: a GPU never identified has none
            _add_xids(out, identity, xids.get(gpu.uuid, []))
        _add_holders(out, identity | {"gpu_instance_id": "", "compute_instance_id": ""}, gpu.uuid, attribution)
        for mig in gpu.mig_devices:
            mig_id = _mig_identity(gpu, mig)
            out.add(catalog.MIG_INFO, mig_id | {"mig_uuid": mig.uuid, "profile": mig.profile}, 1)
            _add_samples(out, mig_id, mig.samples)
            _add_holders(out, mig_id, mig.uuid, attribution)


def _add_xids(out: _Families, identity: dict[str, str], counts: list[tuple[int, int]]) -> None:
    """The XID counters of one GPU. Both exist at 0 before the first event, so that increase()
    sees it: every tier, and the per-code series of the codes whose recurrence the alerts judge
    (a bounded set, not one series per code NVIDIA may ever add)."""
    tiers = dict.fromkeys(xid.XID_TIERS, 0)
    by_code = dict.fromkeys(xid.XID_ZERO_CODES, 0)
    for code, count in counts:
        tiers[xid.xid_tier(code)] += count
        by_code[code] = count
    for tier, count in tiers.items():
        out.add(catalog.XID_EVENTS, identity | {"tier": tier}, count)
    for code, count in sorted(by_code.items()):
        out.add(catalog.XID_ERRORS, identity | {"xid": str(code)}, count)


def _add_holders(out: _Families, identity: dict[str, str], device: str, attribution: Attribution) -> None:
    """nvidia_gpu_allocation_info and the per-container usage of one device."""
    for h in attribution.holders.get(device, ()):
        labels = identity | {
            "namespace": h.namespace, "pod": h.pod, "container": h.container, "resource": h.resource,
            "shared": "true" if h.shared else "false", "workload_kind": h.workload_kind, "workload": h.workload,
            "claim_namespace": h.claim_namespace, "claim_name": h.claim_name, "driver": h.driver, "pool": h.pool,
            "device": h.device,
        }
        labels.update(h.pod_labels)
        out.add(catalog.ALLOCATION_INFO, labels, 1)
    device_identity = {k: v for k, v in identity.items() if v}  # a whole GPU has no instance ids
    for u in attribution.usage.get(device, ()):
        labels = {"namespace": u.namespace, "pod": u.pod, "container": u.container} | device_identity
        if u.memory_used_bytes is not None:
            out.add(catalog.CONTAINER_MEMORY_USED, labels, u.memory_used_bytes)
        if u.utilization_ratio is not None:
            out.add(catalog.CONTAINER_UTILIZATION, labels, min(u.utilization_ratio, 1.0))


def _agent_families(out: _Families, status: AgentStatus, attribution: Attribution) -> None:
    out.add(catalog.BUILD_INFO, {
        "version": __version__,
        "python_version": platform.python_version(),
        "simulated": "true" if status.simulated else "false",
    }, 1)
    for name, collector in sorted(status.collectors.items()):
        labels = {"collector": name}
        out.add(catalog.COLLECTOR_SUCCESS, labels, 1 if collector.success else 0)
        if collector.duration_seconds is not None:
            out.add(catalog.COLLECTOR_DURATION, labels, collector.duration_seconds)
        if collector.last_success_timestamp is not None:
            out.add(catalog.COLLECTOR_LAST_SUCCESS, labels, collector.last_success_timestamp)
    for (collector, kind), count in sorted(status.errors.items()):
        out.add(catalog.COLLECTOR_ERRORS, {"collector": collector, "kind": kind}, count)
    out.add(catalog.LAST_CYCLE, {}, status.cycle_timestamp)
    out.add(catalog.CYCLE_DURATION, {}, status.cycle_duration_seconds)
    out.add(catalog.GPU_SNAPSHOT_AGE, {}, status.gpu_snapshot_age_seconds)
    out.add(catalog.GPU_SNAPSHOT_STALE, {}, 1 if status.gpu_snapshot_stale else 0)
    out.add(catalog.NVML_UP, {}, 1 if status.nvml_up else 0)
    for group, seconds in status.nvml_query_seconds.items():
        out.add(catalog.NVML_QUERY_DURATION, {"group": group}, seconds)
    _add_samples(out, {}, status.self_metrics)
    for resource in sorted(set(attribution.allocatable) | set(attribution.allocated)):
        out.add(catalog.ALLOCATABLE_DEVICES, {"resource": resource}, attribution.allocatable.get(resource, 0))
        out.add(catalog.ALLOCATED_DEVICES, {"resource": resource}, attribution.allocated.get(resource, 0))
    # a claim shared by several containers lists its devices once per container: count each once
    unresolved = Counter((ns, claim, driver) for ns, claim, driver, _, _ in {
        (d.claim_namespace, d.claim_name, d.driver, d.pool, d.device) for d in attribution.unresolved})
    for (claim_namespace, claim_name, driver), count in sorted(unresolved.items()):
        out.add(catalog.UNRESOLVED_CLAIM_DEVICES,
                {"claim_namespace": claim_namespace, "claim_name": claim_name, "driver": driver}, count)


class Renderer:
    """Holds the registry (ours plus client_python's process metrics) and renders it, with the
    metrics of the collector groups ``collectors`` (``catalog.GROUPS``; default: every group)."""

    def __init__(self, *, process_metrics: bool = True, collectors: AbstractSet[str] | None = None) -> None:
        self.collectors = catalog.all_collectors() if collectors is None else frozenset(collectors)
        self._metrics: list[Metric] = []
        self._last: Exposition | None = None  # the formats its scrapers asked for are written with the next
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def collect(self) -> list[Metric]:  # the registry's collector interface
        return self._metrics

    def families(self, snapshot: GpuSnapshot, attribution: Attribution, status: AgentStatus) -> list[Metric]:
        out = _Families(self.collectors)
        _device_families(out, snapshot, attribution)
        _agent_families(out, status, attribution)
        return out.metrics()

    def render(self, snapshot: GpuSnapshot, attribution: Attribution, status: AgentStatus) -> Exposition:
        self._metrics = self.families(snapshot, attribution, status)
        self._last = Exposition.of(self.registry, like=self._last)  # what generate_latest writes, faster
        return self._last

