"""Kubelet pod-resources API: which devices are assigned to which container on this node."""

from .client import KubeletError, PodResourcesClient

__all__ = ["KubeletError", "PodResourcesClient"]
