"""The contract between a GPU backend (NVML, simulated) and the collection loop.

A backend is synchronous and blocking on purpose: the loop calls it from worker threads with
deadlines (see ``gpus.py``), one GPU per call, so that a GPU whose calls hang or fail
costs only its own series.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from ..model.gpu import Gpu, GpuIdentity


class BackendUnavailable(Exception):
    """The backend cannot start (NVML library missing, driver not loaded, ...). Retried later."""


class GpuReadError(RuntimeError):
    """A required read of a GPU failed. ``kind`` names the failure for
    ``kube_gpu_exporter_collector_errors_total{collector="nvml",kind}`` (for NVML, the
    ``NVML_ERROR_*`` name in lower case: ``gpu_is_lost``, ``unknown``, ...). The backend does not
    count it itself: the collector counts each failed read exactly once."""

    def __init__(self, message: str, kind: str = "unknown") -> None:
        super().__init__(message)
        self.kind = kind


class GpuBackend(Protocol):
    #: True for the simulated backend; shown on kube_gpu_exporter_build_info.
    simulated: bool

    def start(self) -> None:
        """Initialise (``nvmlInit``) and start event watching; raise ``BackendUnavailable``."""

    def device_count(self) -> int:
        """Number of GPUs; indexes 0..count-1 are passed to ``identify`` and ``read_gpu``."""

    def identify(self, index: int) -> GpuIdentity:
        """UUID, minor number and the facts of ``nvidia_gpu_info``: read once per GPU (again only
        after the GPU left the device count), before its first ``read_gpu``. Raises
        ``GpuReadError`` when not even the UUID can be read. A GPU identified here is also
        watched for XID events from then on."""

    def read_gpu(self, index: int) -> Gpu:
        """Read everything about one GPU.

        Metrics a GPU does not support are omitted (not an error). Raising ``GpuReadError``
        means the GPU is lost or broken: the caller reports it with ``up=0`` under its known
        identity and tries again next cycle.
        """

    def xid_counts(self) -> Mapping[tuple[str, int], int]:
        """XID events seen since start, by (GPU uuid, XID code); cumulative, never reset.

        Kept apart from ``read_gpu`` on purpose: the XIDs that matter most (79, 48, 119) come
        right before a GPU is lost, and must stay visible while its reads fail.
        """

    def settle_xids(self, timeout: float) -> None:
        """Return once every XID event delivered so far is in ``xid_counts`` (or after
        ``timeout`` seconds). Events are counted as they come; ``--once`` has no next cycle, so
        its only snapshot waits for those that came during its reads."""

    def error_counts(self) -> Mapping[str, int]:
        """Errors of optional reads since start by kind (the read went on without that series);
        failed required reads are raised instead, and counted by the caller."""

    def stop(self) -> None:
        """Stop event watching and shut NVML down. Safe to call twice or after a failed start."""
