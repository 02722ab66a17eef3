"""A source's last good value, served after it fails: for ``--attribution.grace-period`` (the
kubelet), or for as long as the failure lasts (the API server's watches).

The kubelet restarts: without this, every alert about an allocated GPU would resolve (its holders
gone) and fire again a minute later. The kubelet's last good value is kept for ``grace`` seconds
after it came; past that, nothing is known rather than something possibly wrong (a pod that ended
meanwhile would still hold its GPU).

The API server's answers are kept with no limit (``grace`` None): what they add to the kubelet's
pods (workloads, labels, which GPU a DRA device is) is still true of every pod the kubelet
lists, and the kubelet alone says which pods are there. A control-plane upgrade of an hour thus
changes no allocation series of the fleet, where dropping the workloads after the grace period
would change every one of them twice. The loss and the recovery of a source are logged once each.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Generic, Iterable, Mapping, TypeVar

from ..model.gpu import GpuSnapshot, Sample
from .base import Outcome, Source

T = TypeVar("T")
log = logging.getLogger(__name__)


class KeptWhileDown(Source[T], Generic[T]):
    """``source``, whose last good value (``kept``: "allocations", "workloads", ... for the log
    line) stands in for ``grace`` seconds while it has none (None: until it has one again). The
    outcome stays not ``ok``: the source's success metric tells that it fails while its value is
    still served."""

    def __init__(self, source: Source[T], grace: float | None, kept: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.grace = grace
        self.kept = kept
        self.name, self.title, self.provides = source.name, source.title, source.provides
        self.error_kinds, self.after_gpus, self.background = source.error_kinds, source.after_gpus, source.background
        self._monotonic = monotonic
        self._last: T | None = None
        self._last_at = float("-inf")  # monotonic time of the last good value
        self._up: bool | None = None  # None until the first read: its failure is no "loss"

    async def read(self, gpus: GpuSnapshot | None) -> Outcome[T]:
        outcome = await self.source.read(gpus)
        now = self._monotonic()
        if outcome.value is not None:
            self._last, self._last_at = outcome.value, now
            self._changed(True)
            return outcome
        self._changed(False)
        kept = self.grace is None or now - self._last_at <= self.grace
        return Outcome(self._last if kept else None, ok=False)

    def _changed(self, up: bool) -> None:
        before, self._up = self._up, up
        if before is not None and before != up:
            if up:
                log.info("%s answers again", self.title)
            else:
                log.warning("%s lost; keeping the last %s %s", self.title, self.kept,
                            "until it answers again" if self.grace is None else f"for {self.grace:g}s")

    async def start(self) -> None:
        await self.source.start()

    async def wait_ready(self, timeout: float) -> bool:
        return await self.source.wait_ready(timeout)

    async def stop(self) -> None:
        await self.source.stop()

    def error_counts(self) -> Mapping[str, int]:
        return self.source.error_counts()

    def self_metrics(self) -> Iterable[Sample]:
        return self.source.self_metrics()
