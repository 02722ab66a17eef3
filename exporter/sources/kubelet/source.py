"""The kubelet as a source of the cycle: one ``List`` + ``GetAllocatableResources`` per cycle.

Over ``client.PodResourcesClient`` on a node; over anything with the same ``list_resources``,
``close`` and ``error_kinds`` under ``--simulate`` and in tests.
"""

from __future__ import annotations

import logging
from typing import Mapping, Protocol

from ...model.gpu import GpuSnapshot
from ...model.kube import PodResources
from ..base import ErrorTally, Outcome, Source

log = logging.getLogger(__name__)


class PodResourcesLister(Protocol):
    #: Kinds of its failures (``exc.kind``), present at 0 from the start.
    error_kinds: tuple[str, ...]

    async def list_resources(self) -> PodResources:
        """Raises on failure; an exception with ``resources`` holds the allocations that were read
        (``List`` answered, ``GetAllocatableResources`` did not)."""

    async def close(self) -> None: ...


class KubeletSource(Source[PodResources]):
    """The allocations of this node's pods, from the kubelet. A failure is counted by its kind and
    logged once per distinct message; what was read before it failed (the ``List`` without the
    ``GetAllocatableResources``) is still used, the read only not ``ok``."""

    name = "kubelet"
    title = "kubelet pod-resources API"
    provides = "pod_resources"

    def __init__(self, client: PodResourcesLister) -> None:
        self.client = client
        # unknown_device_id: an id in the kubelet's answer that matches no GPU, which only the join
        # with the GPUs tells; the agent counts it from attribution.
        self.error_kinds = ("unknown_device_id", *client.error_kinds)
        self._errors = ErrorTally(self.error_kinds, log)

    async def read(self, gpus: GpuSnapshot | None) -> Outcome[PodResources]:
        try:
            resources = await self.client.list_resources()
        except Exception as exc:  # noqa: BLE001 - any failure costs attribution only
            kind = getattr(exc, "kind", type(exc).__name__.lower())
            self._errors.count(kind, f"pod-resources call failed ({kind}): {exc}")
            return Outcome(getattr(exc, "resources", None), ok=False)
        return Outcome(resources, ok=True)

    async def stop(self) -> None:
        await self.client.close()

    def error_counts(self) -> Mapping[str, int]:
        return self._errors.counts()
