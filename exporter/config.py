"""Command line and environment -> one validated, frozen ``Config``.

Every flag can also be set from the environment: ``--collector.interval`` reads
``KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL``; a flag on the command line wins. The node name also
falls back to ``NODE_NAME`` (what the DaemonSet sets from the downward API).

All problems are found in one pass and reported together; the CLI exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from . import __version__

ENV_PREFIX = "KUBE_GPU_EXPORTER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_LABEL_KEY = re.compile(r"^([a-zA-Z0-9.-]+/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(f"  - {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str
    listen_port: int
    collector_interval: float
    collector_timeout: float
    simulate: bool
    scenario: str | None  # None = built-in scenario (only meaningful with simulate)
    once: bool
    log_level: str
    log_format: str
    kubelet_enabled: bool
    kubelet_socket: str
    kubelet_timeout: float
    resource_names: tuple[str, ...]
    resource_prefixes: tuple[str, ...]
    kubernetes_enabled: bool
    node_name: str
    kubeconfig: str | None
    pod_labels: tuple[str, ...]
    procfs: str

    def as_log_dict(self) -> dict[str, Any]:
        return asdict(self)


def env_name(flag: str) -> str:
    """``--collector.interval`` -> ``KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL``."""
    return ENV_PREFIX + re.sub(r"[.-]", "_", flag.lstrip("-")).upper()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _env_bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    return None


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kube-gpu-exporter",
        description="Prometheus exporter for the GPUs of a Kubernetes node, attributed to pods. "
        f"Every flag can also be set from the environment ({ENV_PREFIX}<FLAG>, e.g. "
        f"{env_name('--collector.interval')}).",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add("--web.listen-address", dest="listen_address", default=":9400",
        help="host:port to serve /metrics on (default %(default)s)")
    add("--collector.interval", dest="collector_interval", default="10",
        help="seconds between collection cycles (default %(default)s)")
    add("--collector.timeout", dest="collector_timeout", default=None,
        help="seconds an NVML read of one GPU may take before the cycle goes on without it "
        "(default: half the interval)")
    add("--simulate", dest="simulate", nargs="?", const="", default=None, metavar="SCENARIO.yaml",
        help="read a simulated node instead of NVML; without a file, the built-in 4-GPU node")
    add("--once", dest="once", action="store_true", default=None,
        help="collect once, print the exposition and exit")
    add("--log.level", dest="log_level", default="info", help=f"one of {', '.join(LOG_LEVELS)}")
    add("--log.format", dest="log_format", default="text", help=f"one of {', '.join(LOG_FORMATS)}")
    add("--kubelet.enabled", dest="kubelet_enabled", action=argparse.BooleanOptionalAction, default=None,
        help="attribute devices to pods through the kubelet pod-resources API (default true)")
    add("--kubelet.pod-resources-socket", dest="kubelet_socket",
        default="/var/lib/kubelet/pod-resources/kubelet.sock", help="(default %(default)s)")
    add("--kubelet.timeout", dest="kubelet_timeout", default="2",
        help="seconds one pod-resources call may take (default %(default)s)")
    add("--kubelet.resource-names", dest="resource_names", default="nvidia.com/gpu,nvidia.com/gpu.shared",
        help="comma-separated extended resource names that hold GPUs (default %(default)s)")
    add("--kubelet.resource-prefixes", dest="resource_prefixes", default="nvidia.com/mig-",
        help="comma-separated resource name prefixes that hold MIG devices (default %(default)s)")
    add("--kubernetes.enabled", dest="kubernetes_enabled", action=argparse.BooleanOptionalAction,
        default=None, help="add owning workloads and pod labels from the API server (default false)")
    add("--kubernetes.node-name", dest="node_name", default=None,
        help="this node's name, to watch only its pods (default: $NODE_NAME)")
    add("--kubernetes.kubeconfig", dest="kubeconfig", default=None,
        help="kubeconfig file for development; default in-cluster config")
    add("--kubernetes.pod-labels", dest="pod_labels", default="",
        help="comma-separated pod labels copied onto nvidia_gpu_allocation_info as label_<name>")
    add("--path.procfs", dest="procfs", default="/proc",
        help="procfs mount, /host/proc in the DaemonSet (default %(default)s)")
    return parser


def _apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Make each flag's default come from its environment variable, when set."""
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        flag = next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))
        value = environ.get(env_name(flag))
        if value is None or value.strip() == "":
            continue  # unset and empty are the same: a blank templated value must not switch anything
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            parser.set_defaults(**{action.dest: _env_bool(value) if _env_bool(value) is not None else value})
        else:
            parser.set_defaults(**{action.dest: value})


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse flags (exits 2 on unknown flags, as argparse does) and validate them together."""
    environ = dict(os.environ if environ is None else environ)
    parser = get_parser()
    _apply_environment(parser, environ)
    ns = parser.parse_args(argv)
    problems: list[str] = []

    def number(flag: str, raw: Any, *, minimum: float = 0.0) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            problems.append(f"{flag}: {raw!r} is not a number")
            return 1.0
        if not value > minimum:
            problems.append(f"{flag}: must be greater than {minimum:g}, got {raw!r}")
        return value

    def boolean(flag: str, raw: Any, default: bool) -> bool:
        if raw is None:
            return default
        if isinstance(raw, bool):
            return raw
        problems.append(f"{flag}: {raw!r} is not a boolean (true/false)")
        return default

    host, port = "", 9400
    address = str(ns.listen_address)
    if ":" not in address:
        problems.append(f"--web.listen-address: {address!r} is not host:port")
    else:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.append(f"--web.listen-address: port {port_text!r} is not a number from 1 to 65535")
        else:
            port = int(port_text)

    interval = number("--collector.interval", ns.collector_interval)
    timeout = (
        interval / 2 if ns.collector_timeout is None else number("--collector.timeout", ns.collector_timeout)
    )
    kubelet_timeout = number("--kubelet.timeout", ns.kubelet_timeout)

    if ns.log_level.lower() not in LOG_LEVELS:
        problems.append(f"--log.level: {ns.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if ns.log_format.lower() not in LOG_FORMATS:
        problems.append(f"--log.format: {ns.log_format!r} is not one of {', '.join(LOG_FORMATS)}")

    scenario: str | None = None
    if isinstance(ns.simulate, str) and ns.simulate.lower() in ("true", "1", "yes", "on"):
        ns.simulate = ""  # KUBE_GPU_EXPORTER_SIMULATE=true: the built-in node
    elif isinstance(ns.simulate, str) and ns.simulate.lower() in ("false", "0", "no", "off"):
        ns.simulate = None
    simulate = ns.simulate is not None
    if simulate and ns.simulate:
        scenario = ns.simulate
        if not Path(scenario).is_file():
            problems.append(f"--simulate: scenario file {scenario!r} does not exist")

    kubelet_enabled = boolean("--kubelet.enabled", ns.kubelet_enabled, True)
    kubernetes_enabled = boolean("--kubernetes.enabled", ns.kubernetes_enabled, False)
    node_name = ns.node_name or environ.get("NODE_NAME", "")
    if kubernetes_enabled and not simulate and not node_name:
        problems.append("--kubernetes.node-name: required with --kubernetes.enabled (or set NODE_NAME)")
    if kubernetes_enabled and not simulate and importlib.util.find_spec("kubernetes") is None:
        problems.append("--kubernetes.enabled: the kubernetes package is not installed "
                        "(pip install 'kube-gpu-exporter[kubernetes]')")
    if ns.kubeconfig and not Path(ns.kubeconfig).is_file():
        problems.append(f"--kubernetes.kubeconfig: file {ns.kubeconfig!r} does not exist")
    pod_labels = _csv(ns.pod_labels)
    for label in pod_labels:
        if not _LABEL_KEY.match(label):
            problems.append(f"--kubernetes.pod-labels: {label!r} is not a valid Kubernetes label key")
    resource_names = _csv(ns.resource_names)
    resource_prefixes = _csv(ns.resource_prefixes)
    if not resource_names and not resource_prefixes:
        problems.append("--kubelet.resource-names/--kubelet.resource-prefixes: both empty, no device would match")

    if problems:
        raise ConfigError(problems)
    return Config(
        listen_host=host,
        listen_port=port,
        collector_interval=interval,
        collector_timeout=timeout,
        simulate=simulate,
        scenario=scenario,
        once=bool(ns.once),
        log_level=ns.log_level.lower(),
        log_format=ns.log_format.lower(),
        kubelet_enabled=kubelet_enabled,
        kubelet_socket=ns.kubelet_socket,
        kubelet_timeout=kubelet_timeout,
        resource_names=resource_names,
        resource_prefixes=resource_prefixes,
        kubernetes_enabled=kubernetes_enabled,
        node_name=node_name,
        kubeconfig=ns.kubeconfig or None,
        pod_labels=pod_labels,
        procfs=ns.procfs,
    )
