"""The agent as an alerting source: it posts the GPU events that cannot wait for Prometheus
(a critical XID, a lost GPU, an uncorrectable ECC error) to Alertmanager itself.

``definitions`` names those alerts once, for the push path and for the rule generator in
``alerts/`` alike, so that both paths produce the same label set and Alertmanager merges them;
``events`` turns collection cycles into active alerts; ``notifier`` posts them.
"""
