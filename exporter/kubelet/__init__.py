"""Kubelet pod-resources API: which devices are assigned to which container on this node."""

from .client import DEFAULT_SOCKET_PATH, KubeletError, PodResourcesClient

__all__ = ["DEFAULT_SOCKET_PATH", "KubeletError", "PodResourcesClient"]
