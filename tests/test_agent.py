"""The agent's cycle: what survives a kubelet or API-server blip, what is present from the start,
what is logged. Runs the real Agent and Renderer on an in-test backend and scripted sources."""

from __future__ import annotations

import logging

import pytest
from e2e import samples, value

from exporter import catalog
from exporter.agent import Agent
from exporter.cli import build_sources
from exporter.model.kube import ProcessOwners
from exporter.config import parse_config
from exporter.model.gpu import Gpu, GpuIdentity, Sample
from exporter.model.kube import ContainerDevices, PodMeta, PodResources

GPU = "GPU-00000000-1111-2222-3333-444444444444"


class OneGpu:
    simulated = False

    def __init__(self) -> None:
        self.xids: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        pass

    def device_count(self) -> int:
        return 1

    def identify(self, index: int) -> GpuIdentity:
        return GpuIdentity(index, GPU, index, {"model": "H100"})

    def read_gpu(self, index: int) -> Gpu:
        return Gpu(index=0, uuid=GPU, info={"model": "H100"},
                   samples=(Sample(catalog.UTILIZATION, 0.5), Sample(catalog.MEMORY_USED, 1e9)))

    def xid_counts(self) -> dict[tuple[str, int], int]:
        return dict(self.xids)

    def error_counts(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        pass


class Unavailable(Exception):
    kind = "unavailable"


class Kubelet:
    error_kinds = ("unavailable", "timeout")

    def __init__(self) -> None:
        self.down = False
        self.pods = ["train-0"]

    async def list_resources(self) -> PodResources:
        if self.down:
            raise Unavailable("socket gone")
        return PodResources(tuple(ContainerDevices("ml", pod, "c", "nvidia.com/gpu", (GPU,)) for pod in self.pods))

    async def close(self) -> None:
        pass


class Watch:
    def __init__(self) -> None:
        self.connected = True
        self.known = {"u1": PodMeta("ml", "train-0", "u1", "CronJob", "train")}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def wait_synced(self, timeout: float) -> bool:
        return True

    def pods(self):
        return dict(self.known)

    def error_counts(self) -> dict[str, int]:
        return {"unavailable": 0}


def make_agent(grace: str, backend=None, **sources) -> Agent:
    """The agent over ``backend`` (one GPU) and these sources' clients (``cli.build_sources``)."""
    config = parse_config(["--collector.interval", "10", "--attribution.grace-period", grace], environ={})
    sources.setdefault("process_owners", lambda pids: ProcessOwners())
    return Agent(config, *build_sources(config, backend or OneGpu(), **sources))


async def scrape(agent: Agent) -> str:
    return (await agent.collect_once()).text.decode()


async def test_a_kubelet_blip_keeps_the_last_allocations_within_the_grace_period():
    kubelet = Kubelet()
    agent = make_agent("60", kubelet=kubelet)
    before = samples(await scrape(agent), "nvidia_gpu_allocation_info")
    kubelet.down = True
    body = await scrape(agent)
    assert samples(body, "nvidia_gpu_allocation_info") == before
    assert value(body, "kube_gpu_exporter_collector_success", collector="kubelet") == 0
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="kubelet", kind="unavailable") == 1
    # A pod that ended while the kubelet was away is gone at the first good answer.
    kubelet.down, kubelet.pods = False, ["train-1"]
    body = await scrape(agent)
    assert [labels["pod"] for labels, _ in samples(body, "nvidia_gpu_allocation_info")] == ["train-1"]


async def test_after_the_grace_period_the_allocations_go():
    kubelet = Kubelet()
    agent = make_agent("0", kubelet=kubelet)
    assert samples(await scrape(agent), "nvidia_gpu_allocation_info")
    kubelet.down = True
    body = await scrape(agent)
    assert not samples(body, "nvidia_gpu_allocation_info")
    assert not samples(body, "nvidia_gpu_container_utilization_ratio")
    assert value(body, "nvidia_gpu_utilization_ratio", uuid=GPU) == 0.5  # device series never depend on it


async def test_workloads_survive_an_api_server_outage_of_any_length():
    """The API server away (a control-plane upgrade): every pod the kubelet still lists keeps its
    workload and labels, whatever the grace period, which is the kubelet's alone."""
    watch = Watch()
    agent = make_agent("0", kubelet=Kubelet(), pods=watch)
    before = samples(await scrape(agent), "nvidia_gpu_allocation_info")
    (labels, _), = before
    assert (labels["workload_kind"], labels["workload"]) == ("CronJob", "train")
    watch.connected, watch.known = False, {}
    for _ in range(3):
        body = await scrape(agent)
        assert samples(body, "nvidia_gpu_allocation_info") == before
        assert value(body, "kube_gpu_exporter_collector_success", collector="kubernetes") == 0


async def test_a_pod_the_kubelet_no_longer_lists_goes_while_the_api_server_is_away():
    kubelet, watch = Kubelet(), Watch()
    watch.known = {**watch.known, "u2": PodMeta("ml", "train-1", "u2", "Deployment", "web")}
    kubelet.pods = ["train-0", "train-1"]
    agent = make_agent("0", kubelet=kubelet, pods=watch)
    assert len(samples(await scrape(agent), "nvidia_gpu_allocation_info")) == 2
    watch.connected = False
    kubelet.pods = ["train-1"]
    (labels, _), = samples(await scrape(agent), "nvidia_gpu_allocation_info")
    assert (labels["pod"], labels["workload_kind"], labels["workload"]) == ("train-1", "Deployment", "web")


async def test_device_series_carry_no_pod_labels_and_the_holder_gets_the_devices_usage():
    body = await scrape(make_agent("60", kubelet=Kubelet(), pods=Watch()))
    for labels, _ in samples(body, ""):
        if labels["__name__"].startswith("nvidia_gpu_") and "container" not in labels["__name__"] \
                and "allocation" not in labels["__name__"]:
            assert not {"namespace", "pod", "container"} & set(labels), labels
    assert value(body, "nvidia_gpu_container_utilization_ratio", pod="train-0", uuid=GPU) == 0.5
    assert value(body, "nvidia_gpu_container_memory_used_bytes", pod="train-0", uuid=GPU) == 1e9


async def test_counters_alerts_watch_exist_before_their_first_event():
    backend = OneGpu()
    agent = make_agent("30", backend, kubelet=Kubelet())
    body = await scrape(agent)
    assert xid_series(body) == ZERO_XID_SERIES
    for collector, kind in [("kubelet", "unknown_device_id"), ("kubelet", "unavailable"), ("nvml", "gpu_is_lost"),
                            ("nvml", "timeout"), ("procfs", "read")]:
        assert value(body, "kube_gpu_exporter_collector_errors_total", collector=collector, kind=kind) == 0
    backend.xids = {(GPU, 79): 1, (GPU, 48): 2, (GPU, 13): 1, (GPU, 999): 1}
    body = await scrape(agent)
    assert xid_series(body) == ZERO_XID_SERIES | {
        ("events", "reboot"): 1, ("events", "reset"): 2, ("events", "application"): 1, ("events", "other"): 1,
        ("errors", "48"): 2, ("errors", "79"): 1, ("errors", "13"): 1, ("errors", "999"): 1}


#: Every GPU's XID series before its first event: each tier, and the codes of definitions.XID_ZERO_CODES.
ZERO_XID_SERIES = {**{("events", tier): 0 for tier in ("reboot", "reset", "application", "informational", "other")},
                   **{("errors", code): 0 for code in ("48", "64", "74", "95")}}


def xid_series(body: str, uuid: str = GPU) -> dict[tuple[str, str], float]:
    """(events, tier) and (errors, code) -> value of the XID counters of one GPU."""
    found = {("events", labels["tier"]): v for labels, v in samples(body, "nvidia_gpu_xid_events_total", uuid=uuid)}
    found |= {("errors", labels["xid"]): v for labels, v in samples(body, "nvidia_gpu_xid_errors_total", uuid=uuid)}
    return found


async def test_the_simulated_node_has_the_same_zero_xid_series():
    from exporter.cli import build_agent

    agent = build_agent(parse_config(["--simulate", "--no-kubelet.enabled"], environ={}))
    body = await scrape(agent)
    uuids = {labels["uuid"] for labels, _ in samples(body, "nvidia_gpu_up")}
    assert len(uuids) == 4
    for uuid in uuids:
        assert xid_series(body, uuid) == ZERO_XID_SERIES


async def test_a_failed_xid_read_keeps_the_last_counts():
    class XidReadFailsOnce(OneGpu):
        fail = False

        def xid_counts(self) -> dict[tuple[str, int], int]:
            if self.fail:
                self.fail = False
                raise RuntimeError("event thread gone")
            return super().xid_counts()

    backend = XidReadFailsOnce()
    agent = make_agent("30", backend)
    backend.xids = {(GPU, 79): 2}
    before = xid_series(await scrape(agent))
    assert before[("events", "reboot")] == before[("errors", "79")] == 2
    backend.fail = True
    body = await scrape(agent)
    assert xid_series(body) == before  # not 0 or absent: Prometheus would read a counter reset
    assert value(body, "kube_gpu_exporter_collector_errors_total", collector="nvml", kind="unknown") == 1
    assert xid_series(await scrape(agent)) == before


async def test_losing_and_regaining_the_kubelet_is_logged_once_each(caplog):
    kubelet = Kubelet()
    agent = make_agent("60", kubelet=kubelet)
    await scrape(agent)
    with caplog.at_level(logging.INFO, logger="exporter"):
        kubelet.down = True
        for _ in range(3):
            await scrape(agent)
        kubelet.down = False
        for _ in range(3):
            await scrape(agent)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("pod-resources API lost" in m for m in messages) == 1
    assert sum("pod-resources API answers again" in m for m in messages) == 1


@pytest.mark.parametrize("flag", ["--no-kubelet.enabled", "--kubernetes.enabled"])
def test_simulated_sources_follow_the_kubelet_and_kubernetes_flags(flag):
    from exporter.cli import build_agent

    agent = build_agent(parse_config(["--simulate", flag], environ={}))
    names = {source.name for source in agent.sources}
    if flag == "--no-kubelet.enabled":
        assert names == {"nvml", "procfs"}
    else:
        assert names == {"nvml", "kubelet", "kubernetes", "resourceslices", "procfs"}


class LostGpu(OneGpu):
    def read_gpu(self, index: int) -> Gpu:
        raise RuntimeError("GPU is lost")


async def test_ready_once_a_cycle_with_nvml_has_finished_whatever_the_gpus_and_the_kubelet():
    """docs/reliability.md: /readyz fails while NVML is not initialised and until the first cycle
    with NVML up has finished; a GPU that cannot be read or a kubelet away does not make it fail."""
    kubelet = Kubelet()
    kubelet.down = True
    agent = make_agent("60", LostGpu(), kubelet=kubelet)
    assert not agent.readiness().ok
    body = await scrape(agent)
    assert value(body, "nvidia_gpu_up", uuid=GPU) == 0
    assert value(body, "kube_gpu_exporter_collector_success", collector="kubelet") == 0
    assert agent.readiness().ok and agent.readiness().reason == "ok"
