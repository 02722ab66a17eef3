"""kube-gpu-exporter: Prometheus metrics for the GPUs of a Kubernetes node, attributed to pods."""

__version__ = "0.1.0"
