"""The agent as an alerting source: it posts the GPU events that cannot wait for Prometheus
(a critical XID, a lost GPU, an uncorrectable ECC error) to Alertmanager itself.

    definitions.py  those alerts, named once for the push path and the rule generator (``alerts/``)
                    alike, so that both produce the same label set and Alertmanager merges them
    events.py       collection cycles -> the alerts active now
    notifier.py     posts them, as a component of the agent (told of every cycle)
"""
