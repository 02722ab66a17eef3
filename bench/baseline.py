"""The exporter as most people would write it, to compare with: ``baseline.py [agent flags]``.

prometheus-client ``Gauge``s with labels, set by a loop from the same collection the agent does
(the same backend, the same attribution, so the same series), served by ``start_http_server``:
client_python's stock path, which renders the registry (and gzips it) on every scrape. Like most
hand-written exporters it never removes the children of pods that are gone.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import Gauge, start_http_server  # noqa: E402

from exporter.cli import build_agent  # noqa: E402
from exporter.config import parse_config  # noqa: E402


class GaugeExporter:
    def __init__(self) -> None:
        self.gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}

    def update(self, families) -> None:  # noqa: ANN001 - prometheus_client Metric objects
        for family in families:
            for sample in family.samples:
                gauge, names = self.gauges.get(sample.name) or self._gauge(sample.name, family, family.samples)
                if names:
                    gauge = gauge.labels(*(sample.labels.get(n, "") for n in names))
                gauge.set(sample.value)

    def _gauge(self, name: str, family, samples) -> tuple[Gauge, tuple[str, ...]]:  # noqa: ANN001
        names = tuple(sorted({k for s in samples if s.name == name for k in s.labels}))
        entry = self.gauges[name] = (Gauge(name, family.documentation, names), names)
        return entry


async def loop(agent, exporter: GaugeExporter, interval: float) -> None:  # noqa: ANN001
    while True:
        await agent.collect_once()
        exporter.update(agent.renderer.collect())
        await asyncio.sleep(interval)


def main() -> int:
    config = parse_config(sys.argv[1:])  # the agent's own flags: the same node, port, interval
    agent = build_agent(config)
    start_http_server(config.listen_port, addr=config.listen_host or "0.0.0.0")
    asyncio.run(loop(agent, GaugeExporter(), config.collector_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
