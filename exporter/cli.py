"""Entry point: parse and validate the config, build the sources, run the loop and the server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Sequence

from aiohttp import web

from . import __version__
from .agent import Agent
from .config import Config, ConfigError, parse_config
from .server import make_app

log = logging.getLogger("exporter")

EXIT_USAGE = 2
EXIT_NVML = 1
#: How long ``--once`` waits for the API server's first pod list before its one cycle.
ONCE_SYNC_TIMEOUT_SECONDS = 5.0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    # Keep the libraries' chatter at warning unless we debug.
    for noisy in ("aiohttp.access", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if config.log_level == "debug" else logging.WARNING)


def build_agent(config: Config) -> Agent:
    """Pick the backend and the Kubernetes sources the config asks for.

    Under ``--simulate`` the scenario plays NVML, the kubelet, the API server and procfs; the
    kubelet and API server flags switch the simulated sources exactly as they switch the real ones.
    """
    if config.simulate:
        from . import simulate

        backend = simulate.SimulatedBackend(simulate.load_scenario(config.scenario))
        log.warning("SIMULATED node: no real GPU is read (scenario %s)", config.scenario or "built-in")
        return Agent(
            config,
            backend,
            pod_resources=simulate.SimulatedPodResources(backend.cluster) if config.kubelet_enabled else None,
            pod_metadata=simulate.SimulatedPodMetadata(backend.cluster) if config.kubernetes_enabled else None,
            process_owners=simulate.process_owners(backend.cluster),
        )

    from .nvml import NvmlBackend

    pod_resources = None
    if config.kubelet_enabled:
        from .kubelet import PodResourcesClient

        pod_resources = PodResourcesClient(
            config.kubelet_socket,
            timeout_seconds=config.kubelet_timeout,
            resource_names=config.resource_names,
            resource_prefixes=config.resource_prefixes,
        )
    pod_metadata = None
    if config.kubernetes_enabled:
        from .kube import PodWatcher

        pod_metadata = PodWatcher(config.node_name, kubeconfig=config.kubeconfig, label_allowlist=config.pod_labels)
    return Agent(config, NvmlBackend(), pod_resources=pod_resources, pod_metadata=pod_metadata)


async def run_once(agent: Agent) -> int:
    """One cycle, printed. The pod watch (if enabled) gets one list before the cycle, within the
    kubelet timeout, so that ``--once --kubernetes.enabled`` shows workloads too."""
    await agent.start_sources(sync_timeout=ONCE_SYNC_TIMEOUT_SECONDS)
    exposition = await agent.collect_once()
    state = agent.gpus.state
    await agent.stop()
    if not state.up:
        print(f"kube-gpu-exporter: NVML could not start: {state.error}", file=sys.stderr)
        return EXIT_NVML
    sys.stdout.write(exposition.text.decode())
    return 0


async def serve(agent: Agent, config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    runner = web.AppRunner(make_app(agent), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    host = config.listen_host or None  # "" = every interface
    site = web.TCPSite(runner, host, config.listen_port)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.listen_host, config.listen_port, exc)
        await runner.cleanup()
        return EXIT_USAGE
    await agent.start()
    log.info("serving on http://%s:%d/metrics", config.listen_host or "0.0.0.0", config.listen_port)
    await stop.wait()
    log.info("shutting down")
    await agent.stop()
    await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # grpc core logs reconnects (a kubelet restart) straight to stderr at INFO; we count those.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"kube-gpu-exporter: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        agent = build_agent(config)
    except Exception as exc:  # noqa: BLE001 - a scenario file with problems, most likely
        problems = getattr(exc, "problems", None)
        if problems is None:
            raise
        listing = "\n".join(f"  - {p}" for p in problems)
        print(f"kube-gpu-exporter: invalid scenario {config.scenario}:\n{listing}", file=sys.stderr)
        return EXIT_USAGE
    log.info("kube-gpu-exporter %s starting with %s", __version__, json.dumps(config.as_log_dict()))
    if config.once:
        return asyncio.run(run_once(agent))
    return asyncio.run(serve(agent, config))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
