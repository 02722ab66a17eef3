"""Everything the agent reads, each behind one interface (``base.py``: ``Source``).

    base.py       the interface: name (the ``collector`` label), start/stop, ``read`` -> ``Outcome``,
                  error kinds and counts, self-metrics
    grace.py      a failing source's last value, kept for ``--attribution.grace-period`` (the kubelet)
                  or for as long as it fails (the API server)
    gpus.py       the GPUs, through a backend (``backend.py``: NVML in ``nvml/``, or ``simulate/``),
                  read in worker threads with deadlines
    kubelet/      what the kubelet allocated to which container (pod-resources gRPC)
    kube/         the API server: this node's pods and their workloads, DRA ResourceSlices
    procfs.py     which container runs each GPU process
    simulate/     a scenario file playing NVML, the kubelet, the API server and procfs

A new source is a module here implementing ``Source``, a field of ``model.cycle.Observations``
for its value, and a line in ``cli.build_sources``; the agent needs no change.
"""
