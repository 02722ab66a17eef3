"""Command line and environment -> one validated, frozen ``Config``.

The flags and their environment variables are ``flags.py``; here every value is validated. The
node name also falls back to ``NODE_NAME`` (what the DaemonSet sets from the downward API).

All problems are found in one pass and reported together, each naming where the value came from
(the flag, or the environment variable that set it); the CLI exits with code 2. A
``KUBE_GPU_EXPORTER_*`` variable that no flag reads is not an error but a warning on ``Config``,
with the closest known name when there is one.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import catalog
from ..model import vocabulary
from ..model.health import EVENT_WINDOW_SECONDS
from . import alertmanager, webconfig
from .flags import (
    ENV_PREFIX, LOG_FORMATS, LOG_LEVELS, apply_environment, collector_dest, env_name, flag_actions, get_parser,
    given_on_command_line, unknown_variables,
)

__all__ = ["Config", "ConfigError", "ENV_PREFIX", "env_name", "get_parser", "parse_config"]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-zA-Z0-9.-]+/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one.

    ``warnings`` (unknown variables, web config keys ignored) come along in the message: a misspelt
    variable is often why a value is missing.
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
    web_idle_timeout: float = 120.0  # seconds a keep-alive connection waits for its next request
    collector_slow_interval: float = 30.0  # seconds between reads of slow NVML counters
    # The collector groups on (catalog.GROUPS): always-on ones included; --collector.<group> flags.
    collectors: frozenset[str] = field(default_factory=catalog.default_collectors)
    dra_drivers: tuple[str, ...] = vocabulary.DEFAULT_DRA_DRIVERS  # () = DRA claims not attributed
    alertmanager_urls: tuple[str, ...] = ()  # the push path (exporter/push); () = off
    alertmanager_labels: tuple[tuple[str, str], ...] = ()
    alertmanager_basic_auth_file: str | None = None
    alertmanager_bearer_token_file: str | None = None
    alertmanager_tls_ca_file: str | None = None
    alertmanager_timeout: float = 5.0
    alertmanager_event_window: float = float(EVENT_WINDOW_SECONDS)
    # The dcgm-exporter compatible output (render/dcgm.py): /metrics/dcgm, and a listener of its own
    compat_dcgm: bool = False
    compat_dcgm_listen_host: str = ""
    compat_dcgm_listen_port: int | None = None  # None: no listener of its own
    compat_dcgm_hostname_label: str = "Hostname"  # or "hostname", or "" (none)
    compat_dcgm_exported_holder_labels: bool = False
    compat_dcgm_pod_uid: bool = False
    warnings: tuple[str, ...] = ()  # for the caller to log; not configuration

    def as_log_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["collectors"] = sorted(self.collectors)
        del values["warnings"]
        del values["web_config"]  # hashes and paths; web_config_file names it
        return values


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _path_is(test: Callable[[], bool]) -> bool:
    """``Path.is_file``/``is_dir``, False for a name the system refuses (too long: ENAMETOOLONG)."""
    try:
        return test()
    except (OSError, ValueError):
        return False


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse flags (exits 2 on unknown flags, as argparse does) and validate them together."""
    environ = dict(os.environ if environ is None else environ)
    parser = get_parser()
    from_env = apply_environment(parser, environ)
    ns = parser.parse_args(argv)
    on_command_line = given_on_command_line(argv)
    problems: list[str] = []

    def source(flag: str) -> str:
        """Where a flag's value came from: the variable that set it, else the flag itself."""
        dest = next(a.dest for a in flag_actions(parser) if flag in a.option_strings)
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

    def listen_address(flag: str, address: str) -> tuple[str, int]:
        if ":" not in address:
            problems.append(f"{source(flag)}: {address!r} is not host:port")
            return "", 0
        host, _, port_text = address.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.append(f"{source(flag)}: port {port_text!r} is not a number from 1 to 65535")
            return host.strip("[]"), 0
        return host.strip("[]"), int(port_text)

    host, port = listen_address("--web.listen-address", str(ns.listen_address))
    port = port or 9400

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

    idle_timeout = number("--web.idle-timeout", ns.web_idle_timeout)
    interval = number("--collector.interval", ns.collector_interval)
    if ns.collector_timeout is None:
        timeout = interval / 2
    else:
        timeout = number("--collector.timeout", ns.collector_timeout)
        if timeout > interval:
            problems.append(
                f"{source('--collector.timeout')}: {ns.collector_timeout!r} is longer than "
                f"{source('--collector.interval')} ({ns.collector_interval!r}); a cycle's NVML "
                "work may take at most one interval"
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
    collectors = {g.name for g in catalog.GROUPS.values() if g.default is None} | {
        g.name for g in catalog.switchable_groups()
        if boolean(g.flag, getattr(ns, collector_dest(g.name)), bool(g.default))}
    kubelet_enabled = boolean("--kubelet.enabled", ns.kubelet_enabled, True)
    kubernetes_enabled = boolean("--kubernetes.enabled", ns.kubernetes_enabled, False)
    node_name = ns.node_name or environ.get("NODE_NAME", "")
    # The simulated node plays the API server itself: it needs neither a node name nor the package.
    if kubernetes_enabled and not simulate and not node_name:
        problems.append("--kubernetes.node-name: required with --kubernetes.enabled (or set NODE_NAME)")
    # In-cluster, the agent's own client needs nothing more; a kubeconfig file is read by the package.
    if kubernetes_enabled and not simulate and ns.kubeconfig and importlib.util.find_spec("kubernetes") is None:
        problems.append(f"{source('--kubernetes.kubeconfig')}: the kubernetes package, which reads kubeconfig "
                        "files, is not installed (pip install 'kube-gpu-exporter[kubernetes]')")
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

    compat_dcgm = boolean("--compat.dcgm-exporter", ns.compat_dcgm, False)
    compat_host, compat_port = "", None
    if ns.compat_dcgm_listen_address:
        compat_host, compat_port = listen_address("--compat.dcgm-exporter.listen-address",
                                                  str(ns.compat_dcgm_listen_address))
        if compat_port == port and compat_port:
            problems.append(f"{source('--compat.dcgm-exporter.listen-address')}: port {compat_port} is "
                            f"{source('--web.listen-address')}'s: /metrics/dcgm serves the same bytes there")
    hostname_label = str(ns.compat_dcgm_hostname_label)
    if hostname_label not in ("Hostname", "hostname", "none"):
        problems.append(f"{source('--compat.dcgm-exporter.hostname-label')}: {hostname_label!r} is not one of "
                        "Hostname, hostname, none")
    compat_exported = boolean("--compat.dcgm-exporter.exported-holder-labels", ns.compat_dcgm_exported, False)
    compat_pod_uid = boolean("--compat.dcgm-exporter.pod-uid", ns.compat_dcgm_pod_uid, False)
    if not compat_dcgm:
        given = [flag for flag, value in (("--compat.dcgm-exporter.listen-address", ns.compat_dcgm_listen_address),
                                          ("--compat.dcgm-exporter.exported-holder-labels", ns.compat_dcgm_exported),
                                          ("--compat.dcgm-exporter.pod-uid", ns.compat_dcgm_pod_uid))
                 if value not in (None, "")]
        given += ["--compat.dcgm-exporter.hostname-label"] if hostname_label != "Hostname" else []
        problems += [f"{source(flag)}: needs --compat.dcgm-exporter" for flag in given]

    alertmanager_fields, alertmanager_problems = alertmanager.validate(ns, source, node_name, simulate)
    problems += alertmanager_problems
    alertmanager_timeout = number("--alertmanager.timeout", ns.alertmanager_timeout)
    alertmanager_event_window = number("--alertmanager.event-window", ns.alertmanager_event_window)

    warnings = tuple(f"{source('--web.config.file')}: {w}" for w in web_config.warnings) + tuple(
        unknown_variables(environ))
    if problems:
        raise ConfigError(problems, warnings)
    return Config(
        listen_host=host,
        listen_port=port,
        collector_interval=interval,
        collector_timeout=timeout,
        collector_slow_interval=slow_interval,
        collectors=frozenset(collectors),
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
        web_idle_timeout=idle_timeout,
        dra_drivers=dra_drivers,
        **alertmanager_fields,
        alertmanager_timeout=alertmanager_timeout,
        alertmanager_event_window=alertmanager_event_window,
        compat_dcgm=compat_dcgm,
        compat_dcgm_listen_host=compat_host,
        compat_dcgm_listen_port=compat_port,
        compat_dcgm_hostname_label="" if hostname_label == "none" else hostname_label,
        compat_dcgm_exported_holder_labels=compat_exported,
        compat_dcgm_pod_uid=compat_pod_uid,
        warnings=warnings,
    )
