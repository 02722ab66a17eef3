"""Collection cycles -> the alerts the agent pushes, with the label sets the rules produce.

Pure bookkeeping, no I/O: ``EventTracker.update`` is called once per cycle with the cycle's
snapshot and attribution and returns the alerts active now. An XID of a reset- or reboot-tier
code and a rise of the uncorrectable ECC count are events: their alert stays active for the
event window after the last one (the rules' ``event_window``). A lost GPU is a state: active
while ``up`` is false.

The agent sees every XID since it started (the counter starts at 0 with the agent), so the
first cycle needs no baseline for XIDs. ECC counts come from the driver: the first reading of a
GPU is the baseline, and a count that drops (a driver reload) is a new baseline, as increase()
treats a counter reset in the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .. import catalog
from ..attribution import Attribution
from ..snapshot import Gpu, GpuSnapshot
from . import definitions as D

LabelSet = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: the alert's identity


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float  # unix time

    @property
    def key(self) -> LabelSet:
        return tuple(sorted(self.labels.items()))


class EventTracker:
    def __init__(self, node: str, extra_labels: Mapping[str, str], event_window: float,
                 runbook_base: str = D.RUNBOOK_BASE) -> None:
        self.node = node
        self.extra_labels = dict(extra_labels)
        self.event_window = event_window
        self.runbook_base = runbook_base
        self._xid_seen: dict[tuple[str, int], int] = {}
        self._xid_last: dict[tuple[str, int], float] = {}  # (uuid, code) -> unix time of the last event
        self._ecc_seen: dict[str, float] = {}
        self._ecc_last: dict[str, float] = {}
        self._index: dict[str, int] = {}  # uuid -> gpu index, kept while a GPU is gone
        self._since: dict[LabelSet, float] = {}

    def update(self, snapshot: GpuSnapshot, attribution: Attribution, now: float) -> dict[LabelSet, ActiveAlert]:
        for gpu in snapshot.gpus:
            if gpu.uuid:
                self._index[gpu.uuid] = gpu.index
        holders = _sole_holders(snapshot, attribution)
        found: list[tuple[D.AlertText, str, dict[str, str]]] = []

        for (uuid, code), count in snapshot.xids.items():
            tier = D.XID_RESET_REQUIRED if code in D.XID_RESET else D.XID_REBOOT_REQUIRED if code in D.XID_REBOOT else None
            if tier is None:
                continue
            if count > self._xid_seen.get((uuid, code), 0):
                self._xid_last[uuid, code] = now
            self._xid_seen[uuid, code] = count
            if now - self._xid_last.get((uuid, code), float("-inf")) <= self.event_window:
                found.append((tier, uuid, {"xid": str(code)}))

        for gpu in snapshot.gpus:
            if not gpu.uuid:
                continue
            if not gpu.up:
                found.append((D.GPU_LOST, gpu.uuid, {}))
            uncorrected = _uncorrected_ecc(gpu)
            if uncorrected is not None:
                before = self._ecc_seen.get(gpu.uuid)
                if before is not None and uncorrected > before:
                    self._ecc_last[gpu.uuid] = now
                self._ecc_seen[gpu.uuid] = uncorrected
            if now - self._ecc_last.get(gpu.uuid, float("-inf")) <= self.event_window:
                found.append((D.ECC_UNCORRECTABLE, gpu.uuid, {}))

        active: dict[LabelSet, ActiveAlert] = {}
        for text, uuid, extra in found:
            if uuid not in self._index:
                continue  # an XID of a GPU never identified: no index to name it by
            labels = {"gpu": str(self._index[uuid]), "uuid": uuid, "node": self.node, **extra}
            if (holder := holders.get(uuid)) is not None:
                labels["namespace"], labels["pod"] = holder
            annotations = {"summary": text.summary, "description": D.render(text.description, labels),
                           "runbook_url": text.runbook_url(self.runbook_base)}
            labels = {"alertname": text.name, "severity": text.severity, **labels, **self.extra_labels}
            key = tuple(sorted(labels.items()))
            active[key] = ActiveAlert(labels, annotations, self._since.get(key, now))
        self._since = {key: alert.starts_at for key, alert in active.items()}
        return active


def _uncorrected_ecc(gpu: Gpu) -> float | None:
    return next((s.value for s in gpu.samples if s.metric is catalog.ECC_ERRORS and s.labels == ("uncorrected",)),
                None)


def _sole_holders(snapshot: GpuSnapshot, attribution: Attribution) -> dict[str, tuple[str, str]]:
    """GPU uuid -> (namespace, pod) when exactly one pod holds the GPU or its MIG instances."""
    result = {}
    for gpu in snapshot.gpus:
        pods = {(h.namespace, h.pod) for device in (gpu.uuid, *(m.uuid for m in gpu.mig_devices))
                for h in attribution.holders.get(device, ())}
        if len(pods) == 1:
            result[gpu.uuid] = next(iter(pods))
    return result
