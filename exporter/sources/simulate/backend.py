"""The simulated backend: a ``GpuBackend`` that plays a scenario's GPUs.

Every reading is a pure function of the scenario and of the time elapsed since the backend was
made (``clock() - t0``), so a test with a fake clock can pin values (see ``gpu.py``).
``backend.cluster`` is the Kubernetes side of the same scenario (``sources.py``).

A ``gpu_lost`` fault makes the GPU answer every call with GPU_IS_LOST, as NVML does for a GPU
that fell off the bus, its UUID included: ``identify`` raises too. A GPU lost from the start is
therefore known only by its index until it comes back, exactly as on a real node.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from ..backend import GpuReadError
from ...model.gpu import Gpu, GpuIdentity
from .gpu import SimulatedGpu
from .scenario import DeviceRef, ProcessSpec, Scenario
from .sources import SimulatedCluster

log = logging.getLogger(__name__)

__all__ = ["SimulatedBackend", "SimulatedGpuLost"]


class SimulatedGpuLost(GpuReadError):
    """A call on a GPU while a ``gpu_lost`` fault holds it: NVML's GPU_IS_LOST."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="gpu_is_lost")


class SimulatedBackend:
    """A ``GpuBackend`` playing a scenario. Time 0 is when the backend is made."""

    simulated = True

    def __init__(self, scenario: Scenario, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.scenario = scenario
        self.cluster = SimulatedCluster(scenario)
        self._clock = clock
        self._t0 = clock()
        held: dict[int, list[tuple[ProcessSpec, DeviceRef]]] = {g.index: [] for g in scenario.gpus}
        for pod in scenario.pods:
            for c in pod.containers:
                for p in c.processes:
                    ref = c.devices[p.device]
                    held[ref.gpu].append((p, ref))
        self._gpus = [SimulatedGpu(g, scenario, held[g.index]) for g in scenario.gpus]

    def elapsed(self) -> float:
        """Seconds of scenario time: ``clock() - t0``, never below 0."""
        return max(0.0, self._clock() - self._t0)

    def start(self) -> None:
        """Nothing to initialise: readings depend only on the scenario time. Says once, at debug,
        what each GPU's model does not report (what NVML would answer NOT_SUPPORTED to)."""
        for gpu in self._gpus:
            d = gpu.spec.defaults
            missing = [name for name, has in (("fan speed", d.fan), ("memory temperature", d.memory_temperature),
                                               ("NVLink", gpu.spec.nvlink_links > 0)) if not has]
            if missing:
                log.debug("GPU %d (%s): %s not supported (simulated %s)", gpu.spec.index, gpu.spec.uuid,
                          ", ".join(missing), gpu.spec.model)

    def stop(self) -> None:
        """Nothing to shut down."""

    def device_count(self) -> int:
        return len(self._gpus)

    def identify(self, index: int) -> GpuIdentity:
        return self._answering(index, self.elapsed()).identity

    def read_gpu(self, index: int) -> Gpu:
        t = self.elapsed()
        return self._answering(index, t).read(t)

    def xid_counts(self) -> dict[tuple[str, int], int]:
        t = self.elapsed()
        return {(g.spec.uuid, code): n for g in self._gpus for code, n in g.xid_counts(t).items()}

    def settle_xids(self, timeout: float) -> None:
        """Nothing to wait for: the counts are a function of the scenario time."""

    def error_counts(self) -> Mapping[str, int]:
        """Always empty: a simulated read either works or, under ``gpu_lost``, fails whole."""
        return {}

    def _answering(self, index: int, t: float) -> SimulatedGpu:
        """GPU ``index`` if it answers at ``t``; raise ``SimulatedGpuLost`` if a fault holds it."""
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no GPU {index}; the scenario has {len(self._gpus)}")
        gpu = self._gpus[index]
        if gpu.lost(t):
            raise SimulatedGpuLost(f"GPU {index} has fallen off the bus (simulated gpu_lost fault)")
        return gpu
