"""exporter.exposition writes exactly what client_python writes, in both formats."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily, Metric)
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.render import exposition
from exporter.cli import build_agent
from exporter.config import parse_config


def stock(registry) -> tuple[bytes, bytes]:  # noqa: ANN001
    return generate_latest(registry), openmetrics.generate_latest(registry)


class Fixed:
    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self):  # noqa: ANN201
        return self.families


def registry_of(*families: Metric) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(*families))
    return registry


def test_the_simulated_node_renders_as_client_python_does():
    agent = build_agent(parse_config(["--simulate", "--kubernetes.enabled"]))
    asyncio.run(agent.collect_once())
    fixed = registry_of(*agent.renderer.registry.collect())  # process metrics change between collections
    assert exposition.write(fixed) == stock(fixed)


def test_process_platform_and_gc_collectors():
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    families = list(registry.collect())  # fixed values: two collections would differ
    fixed = registry_of(*families)
    assert exposition.write(fixed) == stock(fixed)


def test_escaping_units_special_values():
    gauge = GaugeMetricFamily("g_bytes", 'help with "quotes", a \\ and\na newline', labels=["a", "b"], unit="bytes")
    gauge.add_metric(['quote " and \\ and\nnewline', ""], 1.0)
    gauge.add_metric(["inf", "x"], math.inf)
    gauge.add_metric(["-inf", "x"], -math.inf)
    gauge.add_metric(["nan", "x"], math.nan)
    gauge.add_metric(["big", "x"], 123456789012.0)
    gauge.add_metric(["small", "x"], 1e-9)
    gauge.add_metric(["neg", "x"], -2.5e12)
    counter = CounterMetricFamily("events", "events", labels=["z", "a"])
    counter.add_metric(["1", "2"], 7)
    info = InfoMetricFamily("build", "build facts", value={"version": "1.0", "ünïcode": "ok"})
    plain = GaugeMetricFamily("plain", "no labels", value=0)
    registry = registry_of(gauge, counter, info, plain)
    assert exposition.write(registry) == stock(registry)


@pytest.mark.parametrize("family", [
    HistogramMetricFamily("h", "a histogram", buckets=[("1", 1), ("+Inf", 2)], sum_value=3),
    GaugeMetricFamily("with:colon", "a colon", value=1),
    CounterMetricFamily("created", "with created", value=1, created=1700000000.0),
])
def test_what_the_fast_path_does_not_cover_falls_back(family):
    registry = registry_of(GaugeMetricFamily("before", "before", value=1), family)
    assert exposition.write(registry) == stock(registry)
