"""kube-gpu-exporter: Prometheus metrics for the GPUs of a Kubernetes node, attributed to pods.

The tree follows the data, one way (docs/architecture.md has the whole map)::

    cli.py  agent.py    the entry point; the loop, one cycle through the stages
    config/             flags and environment -> one validated, frozen Config
    catalog.py          every metric: name, type, help, labels ("where metrics are defined")
    model/              the data of a cycle: GPU readings and snapshot, Kubernetes types, vocabulary
    sources/            everything the agent reads, behind one interface: GPUs, kubelet, API server, procfs
    attribution.py      devices -> the containers holding them, and what each uses
    render/             the metric families, the exposition bytes, the status page
    serve/              HTTP: the routes ("where a scrape is answered"), the guard
    push/               alerts posted to Alertmanager

    sources -> model -> attribution -> render -> serve
                                    \\-> push
"""

__version__ = "0.1.0"
