"""The alert and recording rules of kube-gpu-exporter: their sources, runbooks and generator (rules.py lists them)."""
