"""The one source interface: what the agent asks every source the same way, the grace-period
wrapper, the error book, and that a new source needs the agent changed nowhere."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest
from e2e import ROOT, AgentProcess, samples, value
from test_agent import GPU, Kubelet, OneGpu, Watch, make_agent

from exporter import catalog
from exporter.agent import Agent
from exporter.cli import build_sources
from exporter.config import parse_config
from exporter.model.cycle import Observations
from exporter.model.gpu import GpuSnapshot, Sample
from exporter.model.kube import ProcessOwners
from exporter.sources.base import Outcome, Source
from exporter.sources.grace import KeptWhileDown
from exporter.sources.kubelet.source import KubeletSource


async def scrape(agent: Agent) -> str:
    return (await agent.collect_once()).text.decode()


def test_every_source_fills_a_field_of_the_observations_and_has_its_own_name():
    config = parse_config(["--kubernetes.node-name", "n1"], environ={})
    slices = Watch()
    slices.devices = lambda: None
    gpus, sources = build_sources(config, OneGpu(), kubelet=Kubelet(), pods=Watch(), slices=slices,
                                  process_owners=lambda pids: ProcessOwners())
    fields = {f.name for f in dataclasses.fields(Observations)}
    everything = [gpus, *sources]
    assert [s.provides for s in everything] == ["gpus", "pod_resources", "pods", "slices", "process_owners"]
    assert all(s.provides in fields for s in everything)
    assert [s.name for s in everything] == ["nvml", "kubelet", "kubernetes", "resourceslices", "procfs"]
    assert all(s.title for s in everything)


async def test_the_grace_wrapper_keeps_the_last_value_and_logs_loss_and_recovery_once(caplog):
    class Flaky(Source[str]):
        name, title, provides = "flaky", "flaky API", "pods"

        def __init__(self) -> None:
            self.value: str | None = "v1"

        async def read(self, gpus: GpuSnapshot | None) -> Outcome[str]:
            return Outcome(self.value, ok=self.value is not None)

    clock = [0.0]
    inner = Flaky()
    kept = KeptWhileDown(inner, grace=10, kept="things", monotonic=lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert await kept.read(None) == Outcome("v1", True)
        inner.value = None
        clock[0] = 5
        assert await kept.read(None) == Outcome("v1", False)  # within the grace period: kept, not ok
        clock[0] = 10.5
        assert await kept.read(None) == Outcome(None, False)  # past it: nothing rather than something old
        inner.value = "v2"
        assert await kept.read(None) == Outcome("v2", True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["flaky API lost; keeping the last things for 10s", "flaky API answers again"]


async def test_a_partial_answer_is_used_but_not_a_success():
    """The kubelet's List answered and GetAllocatableResources did not: the allocations stand."""

    class Partial(Exception):
        kind = "allocatable"

        def __init__(self, resources) -> None:
            super().__init__("GetAllocatableResources: RESOURCE_EXHAUSTED")
            self.resources = resources

    kubelet = Kubelet()
    good = await kubelet.list_resources()

    async def fails():
        raise Partial(good)

    kubelet.list_resources = fails
    source = KubeletSource(kubelet)
    assert await source.read(None) == Outcome(good, ok=False)
    assert source.error_counts() == {"unknown_device_id": 0, "unavailable": 0, "timeout": 0, "allocatable": 1}


async def test_the_error_book_has_every_known_kind_from_the_start_and_counts_what_the_sources_count():
    kubelet = Kubelet()
    agent = make_agent("60", kubelet=kubelet, pods=Watch())
    assert agent.errors.totals() == {
        ("agent", "cycle"): 0, ("nvml", "init"): 0, ("nvml", "timeout"): 0, ("nvml", "restart"): 0,
        ("nvml", "gpu_is_lost"): 0, ("nvml", "unknown"): 0,
        ("kubelet", "unknown_device_id"): 0, ("kubelet", "unavailable"): 0, ("kubelet", "timeout"): 0,
        ("kubernetes", "config"): 0, ("kubernetes", "unavailable"): 0,  # Watch() counts "unavailable"
        ("procfs", "read"): 0, ("procfs", "unresolved_pid"): 0,
    }
    kubelet.down = True
    body = await scrape(agent)
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="unavailable") == 1
    assert agent.errors.totals()["kubelet", "unavailable"] == 1


async def test_a_new_source_needs_no_change_to_the_agent():
    """A source the agent has never heard of: it is read, timed, counted and rendered like the
    others, and its value reaches the observations through the field it provides."""

    class Labels(Source[ProcessOwners]):
        name, title, provides = "labels", "a new source", "process_owners"
        error_kinds = ("refused",)
        after_gpus = True

        def __init__(self) -> None:
            self.seen: list[GpuSnapshot] = []

        async def read(self, gpus: GpuSnapshot | None) -> Outcome[ProcessOwners]:
            assert gpus is not None
            self.seen.append(gpus)
            return Outcome(ProcessOwners(), ok=False)

        def self_metrics(self):
            return [Sample(catalog.UNRESOLVED_GPU_PROCESSES, 7)]

    config = parse_config(["--path.procfs", ""], environ={})
    gpus, sources = build_sources(config, OneGpu())
    new = Labels()
    agent = Agent(config, gpus, [*sources, new])
    body = await scrape(agent)
    assert [g.uuid for g in new.seen[0].gpus] == [GPU]  # read after the GPUs, with their snapshot
    assert value(body, "kube_gpu_exporter_collector_success", collector="labels") == 0
    assert value(body, "kube_gpu_exporter_collector_duration_seconds", collector="labels") is not None
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="labels", kind="refused") == 0
    assert value(body, "kube_gpu_exporter_unresolved_gpu_processes") == 7
    # The status page lists it among the collectors (those switched off after them).
    assert agent.status_page is not None
    collectors = agent.status_page.status.agent.collectors
    assert [(name, c.title, c.enabled) for name, c in collectors.items()][:2] == [
        ("nvml", "NVML", True), ("labels", "a new source", True)]


async def test_a_source_switched_off_is_listed_and_never_started_read_or_counted():
    """``build_sources`` gives an ``Off`` for each source the configuration switches off: the
    status page lists it as disabled (by its title), and the agent does nothing else with it."""
    config = parse_config(["--path.procfs", ""], environ={})
    gpus, sources = build_sources(config, OneGpu())
    assert [(s.name, s.enabled) for s in sources] == [
        ("kubelet", False), ("kubernetes", False), ("resourceslices", False), ("procfs", False)]
    agent = Agent(config, gpus, sources)
    await agent.start_sources(sync_timeout=1)
    body = await scrape(agent)
    await agent.stop()
    assert [s.name for s in agent.sources] == ["nvml"]
    assert {labels["collector"] for labels, _ in samples(body, "kube_gpu_exporter_collector_success")} == {"nvml"}
    assert {labels["collector"] for labels, _ in samples(body, "kube_gpu_exporter_collector_errors_total")} <= {
        "nvml", "agent"}
    assert agent.status_page is not None
    assert {name: (c.title, c.enabled, c.success) for name, c in agent.status_page.status.agent.collectors.items()
            if name != "nvml"} == {
        "kubelet": ("kubelet pod-resources API", False, None), "kubernetes": ("API server pod watch", False, None),
        "resourceslices": ("API server ResourceSlice watch", False, None), "procfs": ("procfs", False, None)}


@pytest.mark.integration
def test_once_and_the_server_render_the_same_self_metrics(tmp_path):
    """The HTTP guard and the Alertmanager notifier are components of the agent, built from the
    flags for both: ``--once`` prints the self-metrics a scrape shows."""
    args = ["--simulate", "--kubernetes.enabled", "--kubernetes.node-name", "n1", "--alertmanager.url", "http://127.0.0.1:9"]
    once = subprocess.run([sys.executable, "-m", "exporter", "--once", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    agent = AgentProcess(args, env=None, interval=1)
    try:
        served = agent.wait_for(lambda b: "kube_gpu_exporter_last_cycle_timestamp_seconds" in b, what="a cycle")
    finally:
        agent.stop()

    def self_metrics(body: str) -> set[tuple[str, frozenset]]:
        return {(labels.pop("__name__"), frozenset(labels.items())) for labels, _ in samples(body, "")
                if labels["__name__"].startswith("kube_gpu_exporter_")}

    assert self_metrics(once.stdout) == self_metrics(served)
    for body in (once.stdout, served):
        assert value(body, "kube_gpu_exporter_http_rejected_total", reason="path") == 0
        assert value(body, "kube_gpu_exporter_alertmanager_notifications_total",
                     alertmanager="http://127.0.0.1:9", result="dropped") == 0


def test_a_source_that_provides_no_known_field_is_refused_at_once():
    class Typo(Source[str]):
        name, title, provides = "typo", "a typo", "pod_resource"

    config = parse_config([], environ={})
    gpus, _ = build_sources(config, OneGpu())
    with pytest.raises(ValueError, match="typo: 'pod_resource'"):
        Agent(config, gpus, [Typo()])
