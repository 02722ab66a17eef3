"""Command line and environment -> one validated, frozen ``Config``.

Every flag can also be set from the environment: ``--collector.interval`` reads
``KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL``; a flag on the command line wins. The node name also
falls back to ``NODE_NAME`` (what the DaemonSet sets from the downward API).

All problems are found in one pass and reported together, each naming where the value came from
(the flag, or the environment variable that set it); the CLI exits with code 2. A
``KUBE_GPU_EXPORTER_*`` variable that no flag reads is not an error but a warning on ``Config``,
with the closest known name when there is one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..model import vocabulary
from ..model.health import EVENT_WINDOW_SECONDS
from ..serve import webconfig
from . import alertmanager as alerting_settings

ENV_PREFIX = "KUBE_GPU_EXPORTER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-zA-Z0-9.-]+/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one.

    ``warnings`` (unknown variables) come along in the message: a misspelt variable is often why a
    value is missing.
    """

    def __init__(self, problems: list[str], warnings: Sequence[str] = ()):
        lines = [f"  - {p}" for p in problems] + [f"  - (warning) {w}" for w in warnings]
        super().__init__("\n".join(lines))
        self.problems = problems
        self.warnings = tuple(warnings)


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
    attribution_grace_period: float
    web_config_file: str | None = None
    web_config: webconfig.WebConfig = field(default_factory=webconfig.WebConfig)  # what the file says
    web_max_connections: int = 256
    collector_slow_interval: float = 30.0  # seconds between reads of slow NVML counters
    collector_profiling: bool = True  # GPM profiling metrics where the GPU supports them
    dra_drivers: tuple[str, ...] = vocabulary.DEFAULT_DRA_DRIVERS  # () = DRA claims not attributed
    alertmanager_urls: tuple[str, ...] = ()  # the push path (exporter/alerting); () = off
    alertmanager_labels: tuple[tuple[str, str], ...] = ()
    alertmanager_basic_auth_file: str | None = None
    alertmanager_bearer_token_file: str | None = None
    alertmanager_tls_ca_file: str | None = None
    alertmanager_timeout: float = 5.0
    alertmanager_event_window: float = float(EVENT_WINDOW_SECONDS)
    warnings: tuple[str, ...] = ()  # for the caller to log; not configuration

    def as_log_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["warnings"]
        del values["web_config"]  # hashes and paths; web_config_file names it
        return values


def env_name(flag: str) -> str:
    """``--collector.interval`` -> ``KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL``."""
    return ENV_PREFIX + re.sub(r"[.-]", "_", flag.lstrip("-")).upper()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _path_is(test: Callable[[], bool]) -> bool:
    """``Path.is_file``/``is_dir``, False for a name the system refuses (too long: ENAMETOOLONG)."""
    try:
        return test()
    except (OSError, ValueError):
        return False


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
    add("--web.config.file", dest="web_config_file", default=None,
        help="exporter-toolkit web config: TLS, basic auth, response headers (docs/security.md)")
    add("--web.max-connections", dest="web_max_connections", default="256",
        help="open HTTP connections at most; at the cap the oldest idle one is closed (default %(default)s)")
    add("--collector.interval", dest="collector_interval", default="10",
        help="seconds between collection cycles (default %(default)s)")
    add("--collector.timeout", dest="collector_timeout", default=None,
        help="seconds an NVML read of one GPU may take before the cycle goes on without it "
        "(default: half the interval; at most the interval)")
    add("--collector.slow-interval", dest="collector_slow_interval", default="30",
        help="seconds between reads of the slow NVML counters (energy, violation times, fields that "
        "prove slow on a GPU); served from their last reading in between (default %(default)s)")
    add("--collector.profiling", dest="collector_profiling", action=argparse.BooleanOptionalAction,
        default=None, help="read GPM profiling metrics (SM, tensor, DRAM activity) where the GPU "
        "supports them, Hopper and newer (default true)")
    add("--simulate", dest="simulate", nargs="?", const="", default=None, metavar="SCENARIO.yaml",
        help="read a simulated node instead of NVML; without a file, the built-in 4-GPU node")
    add("--once", dest="once", action="store_true", default=None,
        help="collect once, print the exposition and exit")
    add("--log.level", dest="log_level", default="info", help=f"one of {', '.join(LOG_LEVELS)}")
    add("--log.format", dest="log_format", default="text", help=f"one of {', '.join(LOG_FORMATS)}")
    add("--kubelet.enabled", dest="kubelet_enabled", action=argparse.BooleanOptionalAction, default=None,
        help="attribute devices to pods through the kubelet pod-resources API (default true)")
    add("--kubelet.pod-resources-socket", dest="kubelet_socket",
        default=vocabulary.DEFAULT_POD_RESOURCES_SOCKET, help="(default %(default)s)")
    add("--kubelet.timeout", dest="kubelet_timeout", default="2",
        help="seconds one pod-resources call may take (default %(default)s)")
    add("--kubelet.resource-names", dest="resource_names", default=",".join(vocabulary.DEFAULT_RESOURCE_NAMES),
        help="comma-separated extended resource names that hold GPUs (default %(default)s)")
    add("--kubelet.resource-prefixes", dest="resource_prefixes", default=",".join(vocabulary.DEFAULT_RESOURCE_PREFIXES),
        help="comma-separated resource name prefixes that hold MIG devices (default %(default)s)")
    add("--kubernetes.enabled", dest="kubernetes_enabled", action=argparse.BooleanOptionalAction,
        default=None, help="add owning workloads and pod labels from the API server (default false)")
    add("--kubernetes.node-name", dest="node_name", default=None,
        help="this node's name, to watch only its pods (default: $NODE_NAME)")
    add("--kubernetes.kubeconfig", dest="kubeconfig", default=None,
        help="kubeconfig file for development; default in-cluster config")
    add("--kubernetes.pod-labels", dest="pod_labels", default="",
        help="comma-separated pod labels copied onto nvidia_gpu_allocation_info as label_<name>")
    add("--kubernetes.dra-drivers", dest="dra_drivers", default=",".join(vocabulary.DEFAULT_DRA_DRIVERS),
        help="comma-separated DRA drivers whose ResourceClaims hold GPUs: their devices are read from the "
        "kubelet and named through their ResourceSlices; empty: none (default %(default)s)")
    add("--path.procfs", dest="procfs", default="/proc",
        help="the host's procfs, /host/proc in the DaemonSet: which container each GPU process runs in, to "
        "split shared GPUs per container; empty: off (default %(default)s)")
    add("--attribution.grace-period", dest="attribution_grace_period", default=None,
        help="seconds the last known pod allocations and workloads are kept while the kubelet or "
        "the API server does not answer (default: 3 x the interval)")
    add("--alertmanager.url", dest="alertmanager_urls", action=alerting_settings.Repeatable, default=None,
        help="Alertmanager to push critical GPU alerts to (XID, GPU lost, uncorrectable ECC), e.g. "
        "http://alertmanager:9093; repeatable (the variable: comma-separated)")
    add("--alertmanager.label", dest="alertmanager_labels", action=alerting_settings.Repeatable, default=None,
        help="name=value label added to pushed alerts, as Prometheus' external labels (e.g. cluster=prod); "
        "repeatable (the variable: comma-separated)")
    add("--alertmanager.basic-auth-file", dest="alertmanager_basic_auth_file", default=None,
        help="file holding username:password for Alertmanager")
    add("--alertmanager.bearer-token-file", dest="alertmanager_bearer_token_file", default=None,
        help="file holding a bearer token for Alertmanager (read at each post)")
    add("--alertmanager.tls-ca-file", dest="alertmanager_tls_ca_file", default=None,
        help="CA certificate file to verify an https:// Alertmanager")
    add("--alertmanager.timeout", dest="alertmanager_timeout", default="5",
        help="seconds one post to Alertmanager may take (default %(default)s)")
    add("--alertmanager.event-window", dest="alertmanager_event_window",
        default=str(EVENT_WINDOW_SECONDS),
        help="seconds a pushed XID or ECC alert stays active after its last event, and an XID's mark on the "
        "status page; keep it equal to the rules' event_window (default %(default)s)")
    return parser


def _long_flag(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))


def _flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]


def _apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> dict[str, str]:
    """Make each flag's default come from its environment variable, when set.

    Returns the variable that set each destination, so that a problem can name it.
    """
    from_env: dict[str, str] = {}
    for action in _flag_actions(parser):
        variable = env_name(_long_flag(action))
        value = environ.get(variable)
        if value is None or value.strip() == "":
            continue  # unset and empty are the same: a blank templated value must not switch anything
        from_env[action.dest] = variable
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            parser.set_defaults(**{action.dest: _env_bool(value) if _env_bool(value) is not None else value})
        else:
            parser.set_defaults(**{action.dest: value})
    return from_env


def _given_on_command_line(argv: Sequence[str] | None) -> set[str]:
    """The destinations the command line itself set (a flag there wins over its variable)."""
    parser = get_parser()
    for action in _flag_actions(parser):
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _unknown_variables(environ: dict[str, str]) -> list[str]:
    """A warning for each ``KUBE_GPU_EXPORTER_*`` variable no flag reads, with the likely one meant.

    Names are compared without the shared prefix, which would make every pair look alike; a name
    that is the tail of a known one (``NODE_NAME``, ``INTERVAL``) is taken to mean it.
    """
    known = {
        name[len(ENV_PREFIX):]: name for name in (env_name(_long_flag(a)) for a in _flag_actions(get_parser()))
    }
    warnings = []
    for variable in sorted(v for v in environ if v.startswith(ENV_PREFIX)):
        name = variable[len(ENV_PREFIX):]
        if name in known:
            continue
        meant = [full for short, full in known.items() if short.endswith("_" + name)] or [
            known[short] for short in difflib.get_close_matches(name, list(known), n=1)
        ]
        hint = f"; did you mean {' or '.join(meant)}?" if meant else ""
        warnings.append(f"{variable}: unknown environment variable, ignored{hint}")
    return warnings


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse flags (exits 2 on unknown flags, as argparse does) and validate them together."""
    environ = dict(os.environ if environ is None else environ)
    parser = get_parser()
    from_env = _apply_environment(parser, environ)
    ns = parser.parse_args(argv)
    on_command_line = _given_on_command_line(argv)
    problems: list[str] = []

    def source(flag: str) -> str:
        """Where a flag's value came from: the variable that set it, else the flag itself."""
        dest = next(a.dest for a in _flag_actions(parser) if flag in a.option_strings)
        return from_env[dest] if dest in from_env and dest not in on_command_line else flag

    def number(flag: str, raw: Any, *, zero_ok: bool = False) -> float:
        """Seconds; a bad value is a problem and reads as NaN, which every comparison below skips."""
        try:
            value = float(raw)
        except (TypeError, ValueError):
            problems.append(f"{source(flag)}: {raw!r} is not a number")
            return math.nan
        if not math.isfinite(value):
            problems.append(f"{source(flag)}: {raw!r} is not a finite number")
            return math.nan
        if value < 0 or (value == 0 and not zero_ok):
            problems.append(f"{source(flag)}: must be {'0 or more' if zero_ok else 'greater than 0'}, got {raw!r}")
            return math.nan
        return value

    def boolean(flag: str, raw: Any, default: bool) -> bool:
        if raw is None:
            return default
        if isinstance(raw, bool):
            return raw
        problems.append(f"{source(flag)}: {raw!r} is not a boolean (true/false)")
        return default

    host, port = "", 9400
    address = str(ns.listen_address)
    if ":" not in address:
        problems.append(f"{source('--web.listen-address')}: {address!r} is not host:port")
    else:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.append(
                f"{source('--web.listen-address')}: port {port_text!r} is not a number from 1 to 65535"
            )
        else:
            port = int(port_text)

    web_config = webconfig.WebConfig()
    if ns.web_config_file:
        try:
            web_config = webconfig.load(ns.web_config_file)
        except webconfig.WebConfigError as exc:
            problems.extend(f"{source('--web.config.file')}: {p}" for p in exc.problems)
    max_connections = 256
    if not str(ns.web_max_connections).isdigit() or int(ns.web_max_connections) < 1:
        problems.append(f"{source('--web.max-connections')}: {ns.web_max_connections!r} is not a whole number >= 1")
    else:
        max_connections = int(ns.web_max_connections)

    interval = number("--collector.interval", ns.collector_interval)
    if ns.collector_timeout is None:
        timeout = interval / 2
    else:
        timeout = number("--collector.timeout", ns.collector_timeout)
        if timeout > interval:
            problems.append(
                f"{source('--collector.timeout')}: {ns.collector_timeout!r} is longer than "
                f"{source('--collector.interval')} ({ns.collector_interval!r}); one read may take "
                "at most one interval"
            )
    slow_interval = number("--collector.slow-interval", ns.collector_slow_interval)
    kubelet_timeout = number("--kubelet.timeout", ns.kubelet_timeout)
    if ns.attribution_grace_period is None:
        grace_period = 3 * interval
    else:
        grace_period = number("--attribution.grace-period", ns.attribution_grace_period, zero_ok=True)

    if ns.log_level.lower() not in LOG_LEVELS:
        problems.append(f"{source('--log.level')}: {ns.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if ns.log_format.lower() not in LOG_FORMATS:
        problems.append(f"{source('--log.format')}: {ns.log_format!r} is not one of {', '.join(LOG_FORMATS)}")

    scenario: str | None = None
    if isinstance(ns.simulate, str) and ns.simulate.lower() in ("true", "1", "yes", "on"):
        ns.simulate = ""  # KUBE_GPU_EXPORTER_SIMULATE=true: the built-in node
    elif isinstance(ns.simulate, str) and ns.simulate.lower() in ("false", "0", "no", "off"):
        ns.simulate = None
    simulate = ns.simulate is not None
    if simulate and ns.simulate:
        scenario = ns.simulate
        if _path_is(Path(scenario).is_dir):
            problems.append(f"{source('--simulate')}: scenario {scenario!r} is a directory, not a file")
        elif not _path_is(Path(scenario).is_file):
            problems.append(f"{source('--simulate')}: scenario file {scenario!r} does not exist")

    once = boolean("--once", ns.once, False)
    profiling = boolean("--collector.profiling", ns.collector_profiling, True)
    kubelet_enabled = boolean("--kubelet.enabled", ns.kubelet_enabled, True)
    kubernetes_enabled = boolean("--kubernetes.enabled", ns.kubernetes_enabled, False)
    node_name = ns.node_name or environ.get("NODE_NAME", "")
    # The simulated node plays the API server itself: it needs neither a node name nor the package.
    if kubernetes_enabled and not simulate and not node_name:
        problems.append("--kubernetes.node-name: required with --kubernetes.enabled (or set NODE_NAME)")
    if kubernetes_enabled and not simulate and importlib.util.find_spec("kubernetes") is None:
        problems.append(f"{source('--kubernetes.enabled')}: the kubernetes package is not installed "
                        "(pip install 'kube-gpu-exporter[kubernetes]')")
    if ns.kubeconfig and not _path_is(Path(ns.kubeconfig).is_file):
        problems.append(f"{source('--kubernetes.kubeconfig')}: file {ns.kubeconfig!r} does not exist")
    pod_labels = _csv(ns.pod_labels)
    for label in pod_labels:
        if not _LABEL_KEY.match(label):
            problems.append(f"{source('--kubernetes.pod-labels')}: {label!r} is not a valid Kubernetes label key")
    dra_drivers = _csv(ns.dra_drivers)
    for driver in dra_drivers:
        if not _DNS_SUBDOMAIN.match(driver):
            problems.append(f"{source('--kubernetes.dra-drivers')}: {driver!r} is not a DRA driver name "
                            "(a DNS subdomain such as gpu.nvidia.com)")
    resource_names = _csv(ns.resource_names)
    resource_prefixes = _csv(ns.resource_prefixes)
    if not resource_names and not resource_prefixes:
        problems.append(f"{source('--kubelet.resource-names')}/{source('--kubelet.resource-prefixes')}: "
                        "both empty, no device would match")

    alertmanager, alertmanager_problems = alerting_settings.validate(ns, source, node_name)
    problems += alertmanager_problems
    alertmanager_timeout = number("--alertmanager.timeout", ns.alertmanager_timeout)
    alertmanager_event_window = number("--alertmanager.event-window", ns.alertmanager_event_window)

    warnings = tuple(_unknown_variables(environ))
    if problems:
        raise ConfigError(problems, warnings)
    return Config(
        listen_host=host,
        listen_port=port,
        collector_interval=interval,
        collector_timeout=timeout,
        collector_slow_interval=slow_interval,
        collector_profiling=profiling,
        simulate=simulate,
        scenario=scenario,
        once=once,
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
        attribution_grace_period=grace_period,
        web_config_file=ns.web_config_file or None,
        web_config=web_config,
        web_max_connections=max_connections,
        dra_drivers=dra_drivers,
        **alertmanager,
        alertmanager_timeout=alertmanager_timeout,
        alertmanager_event_window=alertmanager_event_window,
        warnings=warnings,
    )
