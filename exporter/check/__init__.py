"""``kube-gpu-exporter check``: what works on this node, what does not, and why (``run.py``)."""

from .run import main

__all__ = ["main"]
