"""The data of a cycle, immutable, and the words for it. Nothing here does I/O or imports a stage.

    gpu.py         what was read from each GPU and MIG instance (``Gpu``, ``MigDevice``) and the
                   snapshot of them; ``Readings``: a device's values by metric and label names
    kube.py        the Kubernetes side: allocations, pods, DRA devices, the GPU processes' containers
    cycle.py       what the sources observed in one cycle (``Observations``) and the agent's status
    vocabulary.py  label values, NVML's units and sentinels, the Kubernetes defaults
    xid.py         what an XID code means (its tier)
    health.py      the thresholds the rules, the push path and the status page share

The metrics themselves are named in ``exporter/catalog.py``: readings are keyed by them.
"""
