"""NVML backend: real GPUs read through pynvml, XID events counted by a thread."""

from .backend import GpuReadError, NvmlBackend

__all__ = ["GpuReadError", "NvmlBackend"]
