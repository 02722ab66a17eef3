"""Collection cycles -> the alerts the agent pushes, with the label sets the rules produce.

Pure bookkeeping, no I/O: ``EventTracker.update`` is called once per cycle with the cycle's
snapshot and attribution and returns the alerts active now.

**Labels identify the device, never its holder**: ``alertname, severity, node, gpu, uuid`` plus
the external labels, exactly what the rules aggregate to, so that Alertmanager merges the two
copies. Who holds the GPU (or any of its MIG instances or replicas) is the ``holders``
annotation, and the XID codes behind an XID alert the ``xids`` annotation: a Job's next pod, a
replica moving or a kubelet outage changes an annotation, never which alert it is, so the alert
is neither resolved nor sent again as a new one, and its start stays.

* An XID of the reset or reboot tier is an event: its tier's alert stays active for the event
  window after the last one (the rules' ``event_window``), from the time the collector saw the
  count grow (``GpuSnapshot.xid_last_event``; the agent sees every XID since it started, so the
  first cycle needs no baseline).
* A rise of the uncorrectable ECC count is an event too. Those counts come from the driver: the
  first reading of a GPU is the baseline, and a count that drops (a driver reload) is a new
  baseline, as increase() treats a counter reset in the rules.
* A lost GPU is a state, pushed as the ``GpuLost`` rule decides (``for: 1m``, not while NVML as a
  whole is down): at once when NVML says the GPU is lost (GPU_IS_LOST), else once it has been
  down for ``GPU_LOST_FOR_SECONDS`` without a break. A single hung read (past
  ``--collector.timeout``) pages nobody, and neither does an NVML restart (every GPU reads as
  down; that is ``KubeGpuExporterNvmlDown``'s alert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .. import catalog
from ..attribution import Attribution
from ..model.gpu import Gpu, GpuSnapshot
from . import definitions as D

LabelSet = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: the alert's identity

#: The XID tiers the agent pushes (the others are the rules' alone), with their alert.
PUSHED_XID_TIERS: Mapping[str, D.AlertText] = {"reboot": D.XID_REBOOT_REQUIRED, "reset": D.XID_RESET_REQUIRED}


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float  # unix time

    @property
    def key(self) -> LabelSet:
        return tuple(sorted(self.labels.items()))


@dataclass(frozen=True, slots=True)
class _Found:
    text: D.AlertText
    uuid: str
    since: float  # when it became active, unless it already was
    annotations: Mapping[str, str]


class EventTracker:
    def __init__(self, node: str, extra_labels: Mapping[str, str], event_window: float,
                 runbook_base: str = D.RUNBOOK_BASE, lost_after: float = D.GPU_LOST_FOR_SECONDS) -> None:
        self.node = node
        self.extra_labels = dict(extra_labels)
        self.event_window = event_window
        self.runbook_base = runbook_base
        self.lost_after = lost_after
        self._ecc_seen: dict[str, float] = {}
        self._ecc_last: dict[str, float] = {}
        self._index: dict[str, int] = {}  # uuid -> gpu index, kept while a GPU is gone
        self._down_since: dict[str, float] = {}  # uuid -> first cycle of an unbroken down spell (NVML up)
        self._lost: set[str] = set()  # uuids NVML called lost (GPU_IS_LOST) in their current down spell
        self._since: dict[LabelSet, float] = {}

    def update(self, snapshot: GpuSnapshot, attribution: Attribution, now: float) -> dict[LabelSet, ActiveAlert]:
        for gpu in snapshot.gpus:
            if gpu.uuid:
                self._index[gpu.uuid] = gpu.index
        found = [*self._xids(snapshot, now), *self._lost_gpus(snapshot, now)]
        for gpu in snapshot.gpus:
            if gpu.uuid and self._ecc_event(gpu, now):
                found.append(_Found(D.ECC_UNCORRECTABLE, gpu.uuid, now, {}))

        holders = _holders(snapshot, attribution)
        active: dict[LabelSet, ActiveAlert] = {}
        for f in found:
            if f.uuid not in self._index:
                continue  # an XID of a GPU never identified: no index to name it by
            device = {"node": self.node, "gpu": str(self._index[f.uuid]), "uuid": f.uuid}
            annotations = {"summary": f.text.summary, "description": D.render(f.text.description, device),
                           "runbook_url": f.text.runbook_url(self.runbook_base),
                           D.HOLDERS_ANNOTATION: holders.get(f.uuid, ""), **f.annotations}
            labels = {"alertname": f.text.name, "severity": f.text.severity, **device, **self.extra_labels}
            key = tuple(sorted(labels.items()))
            active[key] = ActiveAlert(labels, annotations, self._since.get(key, f.since))
        self._since = {key: alert.starts_at for key, alert in active.items()}
        return active

    def _xids(self, snapshot: GpuSnapshot, now: float) -> list[_Found]:
        """One alert per GPU and pushed tier with an event in the window; its codes in ``xids``."""
        recent: dict[tuple[str, str], set[int]] = {}
        for (uuid, code), at in snapshot.xid_last_event.items():
            tier = D.xid_tier(code)
            if tier in PUSHED_XID_TIERS and now - at <= self.event_window:
                recent.setdefault((uuid, tier), set()).add(code)
        return [_Found(PUSHED_XID_TIERS[tier], uuid, now, {D.XIDS_ANNOTATION: D.xids_text(codes)})
                for (uuid, tier), codes in sorted(recent.items())]

    def _lost_gpus(self, snapshot: GpuSnapshot, now: float) -> list[_Found]:
        """GpuLost as the rule has it: ``nvidia_gpu_up == 0`` for ``lost_after`` unless NVML as a
        whole is down; at once when NVML itself says the GPU is lost. Starts when the spell did."""
        down = {g.uuid: g for g in snapshot.gpus if g.uuid and not g.up} if snapshot.nvml_up else {}
        self._down_since = {uuid: self._down_since.get(uuid, now) for uuid in down}
        self._lost = {uuid for uuid, g in down.items() if uuid in self._lost or g.error_kind == "gpu_is_lost"}
        return [_Found(D.GPU_LOST, uuid, since, {}) for uuid, since in self._down_since.items()
                if uuid in self._lost or now - since >= self.lost_after]

    def _ecc_event(self, gpu: Gpu, now: float) -> bool:
        """Whether an uncorrectable ECC error came within the event window."""
        uncorrected = gpu.readings.get(catalog.ECC_ERRORS, type="uncorrected")
        if uncorrected is not None:
            before = self._ecc_seen.get(gpu.uuid)
            if before is not None and uncorrected > before:
                self._ecc_last[gpu.uuid] = now
            self._ecc_seen[gpu.uuid] = uncorrected
        return now - self._ecc_last.get(gpu.uuid, float("-inf")) <= self.event_window


def _holders(snapshot: GpuSnapshot, attribution: Attribution) -> dict[str, str]:
    """GPU uuid -> the ``holders`` annotation: the pods holding the GPU or any of its MIG instances."""
    return {gpu.uuid: D.holders_text((h.namespace, h.pod)
                                     for device in (gpu.uuid, *(m.uuid for m in gpu.mig_devices))
                                     for h in attribution.holders.get(device, ()))
            for gpu in snapshot.gpus if gpu.uuid}
