"""NVML backend: real GPUs read through pynvml, XID events counted by a thread.

``NvmlBackend`` is imported on first use: the simulated backend times its reads with
``cost.QueryTimer`` in NVML's query groups, and needs neither pynvml nor the reader for that.
"""

from typing import TYPE_CHECKING, Any

from ..backend import GpuReadError

if TYPE_CHECKING:
    from .backend import NvmlBackend

__all__ = ["GpuReadError", "NvmlBackend"]


def __getattr__(name: str) -> Any:
    if name == "NvmlBackend":
        from .backend import NvmlBackend

        return NvmlBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
