"""Entry point: parse and validate the config, build the sources and components, run one cycle
(``--once``) or the loop and the server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import signal
import sys
from typing import Any, Callable, Sequence

from . import __version__
from .agent import Agent, Component
from .config import Config, ConfigError, parse_config
from .model.kube import ProcessOwners
from .serve.guard import Guard, HttpLimits, start_server
from .serve.routes import make_app, make_dcgm_app
from .sources.backend import GpuBackend
from .sources.base import Off, Source
from .sources.gpus import GpuSource
from .sources.grace import KeptWhileDown
from .sources.kubelet.source import KubeletSource, PodResourcesLister
from .sources.procfs import ProcfsSource
# Light: naming the API server's watches loads none of their modules (only --kubernetes.enabled does).
from .sources.watches import PodSource, SliceSource, Watch

log = logging.getLogger("exporter")

EXIT_USAGE = 2
EXIT_NVML = 1
#: How long ``--once`` waits for the API server's first pod list before its one cycle.
ONCE_SYNC_TIMEOUT_SECONDS = 5.0


def fields(**values: Any) -> dict[str, Any]:
    """``extra`` for a log call whose values are data: ``log.info("starting", extra=fields(config={...}))``.
    In JSON each becomes a key of the line's object; in text each follows the message as key=JSON."""
    return {"fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return "".join([line] + [f" {key}={json.dumps(value)}" for key, value in getattr(record, "fields", {}).items()])


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    # Keep the libraries' chatter at warning unless we debug.
    for noisy in ("aiohttp.access", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if config.log_level == "debug" else logging.WARNING)


def build_sources(
    config: Config,
    backend: GpuBackend,
    *,
    kubelet: PodResourcesLister | None = None,
    pods: Watch | None = None,
    slices: Watch | None = None,
    process_owners: Callable[[Sequence[int]], ProcessOwners] | None = None,
) -> tuple[GpuSource, list[Source]]:
    """The agent's sources over these clients, as the config wants them: the GPUs through
    ``backend``; the kubelet where given, kept for ``--attribution.grace-period`` while it fails;
    the pod watch and the ResourceSlice watch where given, kept for as long as the API server is
    away (sources/grace.py); procfs through ``process_owners``, or the host's at
    ``--path.procfs`` (off when that is empty). A source switched off is there as ``Off``: the
    status page lists every source, enabled or not. Adding a source is one line here."""

    def kept(kind: type[Any], client: object | None, what: str, grace: float | None) -> Source:
        return Off(kind) if client is None else KeptWhileDown(kind(client), grace, what)

    if process_owners is not None:
        procfs: Source = ProcfsSource(process_owners, config.procfs)
    else:
        procfs = ProcfsSource.host(config.procfs) if config.procfs else Off(ProcfsSource)
    sources = [kept(KubeletSource, kubelet, "allocations", config.attribution_grace_period),
               kept(PodSource, pods, "workloads", None), kept(SliceSource, slices, "DRA devices", None), procfs]
    return GpuSource.configured(backend, config), sources


def build_agent(config: Config, *, guard: Guard | None = None,
                simulated_clock: Callable[[], float] | None = None) -> Agent:
    """The agent the config asks for: its backend and Kubernetes clients, as sources, and its
    components (``guard``, the HTTP guard, when given; the Alertmanager notifier with
    ``--alertmanager.url``), the same for ``--once`` and the server.

    Under ``--simulate`` the scenario plays NVML, the kubelet, the API server and procfs; the
    kubelet and API server flags switch the simulated sources exactly as they switch the real ones.
    ``simulated_clock`` replaces the simulated node's monotonic clock (a recorded history plays
    a day in seconds: dashboards/history.py).
    """
    # DRA claims are read from the kubelet; the API server's ResourceSlices name their devices.
    watch_slices = config.kubelet_enabled and config.kubernetes_enabled and bool(config.dra_drivers)
    if config.simulate:
        from .sources import simulate

        scenario = simulate.load_scenario(config.scenario)
        backend = (simulate.SimulatedBackend(scenario) if simulated_clock is None
                   else simulate.SimulatedBackend(scenario, clock=simulated_clock))
        log.warning("SIMULATED node: no real GPU is read (scenario %s)", config.scenario or "built-in")
        # The simulated node has a name of its own (the status page and pushed alerts show it),
        # unless --kubernetes.node-name says otherwise.
        config = dataclasses.replace(config, node_name=config.node_name or backend.scenario.node.name)
        cluster = backend.cluster
        sources = build_sources(
            config, backend,
            kubelet=simulate.SimulatedPodResources(cluster, config.dra_drivers) if config.kubelet_enabled else None,
            pods=simulate.SimulatedPodMetadata(cluster) if config.kubernetes_enabled else None,
            slices=simulate.SimulatedDeviceSlices(cluster) if watch_slices else None,
            process_owners=simulate.process_owners(cluster),
        )
        return Agent(config, *sources, components=_components(config, guard))

    from .sources.nvml import NvmlBackend

    kubelet = None
    if config.kubelet_enabled:
        from .sources.kubelet.client import PodResourcesClient

        kubelet = PodResourcesClient(
            config.kubelet_socket,
            timeout_seconds=config.kubelet_timeout,
            resource_names=config.resource_names,
            resource_prefixes=config.resource_prefixes,
            dra_drivers=config.dra_drivers,
        )
    pods = slices = None
    if config.kubernetes_enabled:
        from .sources.kube import KubeApi, PodWatcher, SliceWatcher

        api = KubeApi(config.kubeconfig)  # one client, one connection pool for both watches
        pods = PodWatcher(config.node_name, api=api, label_allowlist=config.pod_labels)
        if watch_slices:
            slices = SliceWatcher(config.node_name, config.dra_drivers, api=api)
    backend = NvmlBackend.configured(config, collectors=read_collectors(config))
    return Agent(config, *build_sources(config, backend, kubelet=kubelet, pods=pods, slices=slices),
                 components=_components(config, guard))


def read_collectors(config: Config) -> frozenset[str]:
    """The collector groups read from NVML: those on, and with --compat.dcgm-exporter the groups its
    DCGM_FI_* fields are read from (their native series stay as --collector.<group> says)."""
    if not config.compat_dcgm:
        return config.collectors
    from .render.dcgm import READ_GROUPS  # only with the flag: the compat renderer is not loaded otherwise
    return config.collectors | READ_GROUPS


def _components(config: Config, guard: Guard | None) -> list[Component]:
    components: list[Component] = [guard] if guard is not None else []
    if config.alertmanager_urls:
        from .push.notifier import AlertmanagerNotifier

        components.append(AlertmanagerNotifier(config))
    return components


#: Worker threads of the event loop's default executor (``asyncio.to_thread``: process cgroups,
#: rendering, the first pod list), all used one at a time. Python's default grows to
#: min(32, cpus + 4) under concurrent calls: bounded so that threads never follow the host's
#: core count (docs/performance.md).
EXECUTOR_THREADS = 4


def bound_default_executor() -> None:
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="kge-worker"))


async def run_once(agent: Agent) -> int:
    """One cycle, printed. The pod watch (if enabled) gets one list before the cycle, within
    ``ONCE_SYNC_TIMEOUT_SECONDS`` (whatever ``--kubelet.timeout`` says), so that
    ``--once --kubernetes.enabled`` shows workloads too."""
    bound_default_executor()
    await agent.start_sources(sync_timeout=ONCE_SYNC_TIMEOUT_SECONDS)
    exposition = await agent.collect_once()
    state = agent.gpus.state
    await agent.stop()
    if not state.up:
        print(f"kube-gpu-exporter: NVML could not start: {state.error}", file=sys.stderr)
        return EXIT_NVML
    sys.stdout.write(exposition.text.decode())
    return 0


async def serve(agent: Agent, guard: Guard, config: Config) -> int:
    bound_default_executor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    host = config.listen_host or None  # "" = every interface
    try:
        runner, site = await start_server(make_app(agent, guard), host, config.listen_port, guard=guard)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.listen_host, config.listen_port, exc)
        return EXIT_USAGE
    runners = [runner]
    if config.compat_dcgm_listen_port is not None:
        try:
            dcgm_runner, dcgm_site = await start_server(make_dcgm_app(agent, guard), config.compat_dcgm_listen_host
                                                        or None, config.compat_dcgm_listen_port, guard=guard)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.compat_dcgm_listen_host, config.compat_dcgm_listen_port,
                      exc)
            await runner.cleanup()
            return EXIT_USAGE
        runners.append(dcgm_runner)
        log.info("serving the dcgm-exporter compatible output on %s/metrics", dcgm_site.name)
    await agent.start()
    log.info("serving on %s/metrics%s%s", site.name, " (basic auth)" if guard.auth else "",
             " and /metrics/dcgm" if config.compat_dcgm else "")
    await stop.wait()
    log.info("shutting down")
    await agent.stop()
    for r in runners:
        await r.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:  # kube-gpu-exporter check [flags]: exporter/check/
        from .check import main as check

        return check(argv[1:], setup_logging=setup_logging)
    if argv[:1] == ["report"]:  # kube-gpu-exporter report [flags]: exporter/report/
        from .report import main as report

        return report(argv[1:])
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"kube-gpu-exporter: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    # The guard exists with --once too: its (zero) counts are part of what a scrape shows.
    guard = Guard(config.web_config, HttpLimits(max_connections=config.web_max_connections,
                                                idle_timeout=config.web_idle_timeout))
    try:
        agent = build_agent(config, guard=guard)
    except Exception as exc:  # noqa: BLE001 - a scenario file with problems, most likely
        problems = getattr(exc, "problems", None)
        if problems is None:
            raise
        listing = "\n".join(f"  - {p}" for p in problems)
        print(f"kube-gpu-exporter: invalid scenario {config.scenario}:\n{listing}", file=sys.stderr)
        return EXIT_USAGE
    # The agent's config: what build_agent resolved (the simulated node's name) is what runs.
    log.info("kube-gpu-exporter %s starting", __version__, extra=fields(config=agent.config.as_log_dict()))
    if config.once:
        return asyncio.run(run_once(agent))
    return asyncio.run(serve(agent, guard, config))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
