"""NVML backend: real GPUs read through pynvml, XID events counted by a thread."""

from ..backend import GpuReadError
from .backend import NvmlBackend

__all__ = ["GpuReadError", "NvmlBackend"]
