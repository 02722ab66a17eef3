"""Snapshot, attribution and the agent's status -> what is served, once per cycle.

    families.py    the metric families of a cycle (names, types and help from ``catalog.py``)
    exposition.py  the text and OpenMetrics writer, and the gzipped bytes a scrape is answered with
    status/        the status page: its model (``model.py``, the JSON) apart from its HTML (``html.py``,
                   ``templates/``)
"""
