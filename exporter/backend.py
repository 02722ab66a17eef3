"""The contract between a GPU backend (NVML, simulated) and the collection loop.

A backend is synchronous and blocking on purpose: the loop calls it from worker threads with
deadlines (see ``gpu_collector.py``), one GPU per call, so that a GPU whose calls hang or fail
costs only its own series.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from .snapshot import Gpu


class BackendUnavailable(Exception):
    """The backend cannot start (NVML library missing, driver not loaded, ...). Retried later."""


class GpuBackend(Protocol):
    #: True for the simulated backend; shown on kube_gpu_exporter_build_info.
    simulated: bool

    def start(self) -> None:
        """Initialise (``nvmlInit``) and start event watching; raise ``BackendUnavailable``."""

    def device_count(self) -> int:
        """Number of GPUs; indexes 0..count-1 are passed to ``read_gpu``."""

    def read_gpu(self, index: int) -> Gpu:
        """Read everything about one GPU.

        Metrics a GPU does not support are omitted (not an error). Raising means the GPU is
        lost or broken: the caller reports it with ``up=0`` and tries again next cycle.
        """

    def xid_counts(self) -> Mapping[tuple[str, int], int]:
        """XID events seen since start, by (GPU uuid, XID code); cumulative, never reset.

        Kept apart from ``read_gpu`` on purpose: the XIDs that matter most (79, 48, 119) come
        right before a GPU is lost, and must stay visible while its reads fail.
        """

    def stop(self) -> None:
        """Stop event watching and shut NVML down. Safe to call twice or after a failed start."""
