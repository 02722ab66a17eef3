"""``kube-gpu-exporter report``: GPU-hours held, used and idle per team and workload, energy and
cost, from the efficiency recording rules in Prometheus (``run.py``; docs/efficiency.md)."""

from .run import main

__all__ = ["main"]
