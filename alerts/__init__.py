"""The alert and recording rules of kube-gpu-exporter: the source (rules.py) and its generator."""
