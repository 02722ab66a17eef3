"""The command line's flags and the environment variables that set them.

Every flag can also be set from the environment: ``--collector.interval`` reads
``KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL``; a flag on the command line wins. A
``KUBE_GPU_EXPORTER_*`` variable that no flag reads is not an error but a warning, with the
closest known name when there is one. ``parse_config`` (``config/__init__.py``) validates what
they say.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Iterable, NoReturn, Sequence

from .. import __version__, catalog
from ..model import vocabulary
from ..model.health import EVENT_WINDOW_SECONDS
from .alertmanager import Repeatable

ENV_PREFIX = "KUBE_GPU_EXPORTER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def env_name(flag: str) -> str:
    """``--collector.interval`` -> ``KUBE_GPU_EXPORTER_COLLECTOR_INTERVAL``."""
    return ENV_PREFIX + re.sub(r"[.-]", "_", flag.lstrip("-")).upper()


def env_bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    return None


def closest(name: str, known: Iterable[str], separator: str) -> list[str]:
    """The known names ``name`` likely means: those it is the last part of (``node-name`` for
    ``kubernetes.node-name``), else the one closest in spelling, if any is close."""
    known = list(known)
    return [k for k in known if k.endswith(separator + name)] or difflib.get_close_matches(name, known, n=1)


class FlagParser(argparse.ArgumentParser):
    """argparse, with a mistake told in one line (the usage is for ``--help``) and an unknown
    flag answered with the closest known ones, as an unknown variable is."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                   ) -> argparse.Namespace:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.exit(2, f"{self.prog}: {self._unknown(extras)}\n")
        return ns

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the flags)\n")

    def _unknown(self, extras: list[str]) -> str:
        flags = [arg.partition("=")[0] for arg in extras if arg.startswith("-")]
        if not flags:  # a stray word: no flag takes it
            return f"unexpected argument {extras[0]!r} (--help lists the flags)"
        known = [s[2:] for a in self._actions for s in a.option_strings if s.startswith("--")]
        told = []
        for flag in flags:
            meant = closest(flag.lstrip("-"), known, ".")
            hint = f", did you mean {' or '.join('--' + m for m in meant)}?" if meant else " (--help lists the flags)"
            told.append(f"unknown flag {flag}{hint}")
        return "; ".join(told)


def collector_dest(group: str) -> str:
    """``nvlink.links`` -> ``collector_nvlink_links``: the destination of its flag."""
    return "collector_" + group.replace(".", "_")


def get_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="kube-gpu-exporter",
        allow_abbrev=False,  # a flag is its full name, as its variable is: a new flag never breaks a short one
        description="Prometheus exporter for the GPUs of a Kubernetes node, attributed to pods. "
        f"Every flag can also be set from the environment ({ENV_PREFIX}<FLAG>, e.g. "
        f"{env_name('--collector.interval')}).",
        epilog="kube-gpu-exporter check [flags] [--output text|json] checks, with the same flags, what the agent "
        "needs on this node (kube-gpu-exporter check --help).",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add("--web.listen-address", dest="listen_address", default=":9400",
        help="host:port to serve /metrics on (default %(default)s)")
    add("--web.config.file", dest="web_config_file", default=None,
        help="exporter-toolkit web config: TLS, basic auth, response headers (docs/security.md)")
    add("--web.max-connections", dest="web_max_connections", default="256",
        help="open HTTP connections at most; at the cap the one idle the longest is closed (default %(default)s)")
    add("--web.idle-timeout", dest="web_idle_timeout", default="120",
        help="seconds a keep-alive connection waits for its next request: above the scrape interval, so that "
        "each scrape reuses its connection; a request itself must arrive within 5 s (default %(default)s)")
    add("--collector.interval", dest="collector_interval", default="10",
        help="seconds between collection cycles (default %(default)s)")
    add("--collector.timeout", dest="collector_timeout", default=None,
        help="seconds a cycle's NVML work (start, device count, every GPU's read in parallel) may take "
        "before the cycle goes on without what has not returned (default: half the interval; at most the interval)")
    add("--collector.slow-interval", dest="collector_slow_interval", default="30",
        help="seconds between reads of the slow NVML counters (energy, violation times, fields that "
        "prove slow on a GPU); served from their last reading in between (default %(default)s)")
    for group in catalog.switchable_groups():  # --collector.<group> / --no-collector.<group>
        add(group.flag, dest=collector_dest(group.name), action=argparse.BooleanOptionalAction, default=None,
            help=f"collector group {group.name}: {group.help} (default {'on' if group.default else 'off'}; "
            "docs/metrics.md#collector-groups)")
    add("--compat.dcgm-exporter", dest="compat_dcgm", action=argparse.BooleanOptionalAction, default=None,
        help="serve NVIDIA dcgm-exporter's names, units and labels (DCGM_FI_*) at /metrics/dcgm, from the same "
        "cycle; reads the collector groups they need even where their native series are off (default false; "
        "docs/migrate-from-dcgm-exporter.md)")
    add("--compat.dcgm-exporter.listen-address", dest="compat_dcgm_listen_address", default="",
        help="host:port serving the same DCGM_FI_* bytes at /metrics, for scrapers that expect dcgm-exporter's "
        ":9400/metrics; empty: only /metrics/dcgm on --web.listen-address (default empty)")
    add("--compat.dcgm-exporter.hostname-label", dest="compat_dcgm_hostname_label", default="Hostname",
        help="name of the node label of the DCGM_FI_* series: Hostname (dcgm-exporter 4.5 and before), hostname "
        "(its later releases) or none (its --no-hostname) (default %(default)s)")
    add("--compat.dcgm-exporter.exported-holder-labels", dest="compat_dcgm_exported", default=None,
        action=argparse.BooleanOptionalAction,
        help="name the holder labels exported_pod, exported_namespace, exported_container, as consumers built "
        "for dcgm-exporter scraped with honorLabels: false read them (default false)")
    add("--compat.dcgm-exporter.pod-uid", dest="compat_dcgm_pod_uid", default=None,
        action=argparse.BooleanOptionalAction,
        help="add pod_uid to the holder labels of the DCGM_FI_* series (needs --kubernetes.enabled) (default false)")
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
        help="kubeconfig file for development (needs the kubernetes package); default: in-cluster, the pod's "
        "service account")
    add("--kubernetes.pod-labels", dest="pod_labels", default="",
        help="comma-separated pod labels copied onto nvidia_gpu_allocation_info as label_<name>")
    add("--kubernetes.dra-drivers", dest="dra_drivers", default=",".join(vocabulary.DEFAULT_DRA_DRIVERS),
        help="comma-separated DRA drivers whose ResourceClaims hold GPUs: their devices are read from the "
        "kubelet and named through their ResourceSlices; empty: none (default %(default)s)")
    add("--path.procfs", dest="procfs", default="/proc",
        help="the host's procfs, /host/proc in the DaemonSet: which container each GPU process runs in, to "
        "split shared GPUs per container; empty: off (default %(default)s)")
    add("--attribution.grace-period", dest="attribution_grace_period", default=None,
        help="seconds the last known pod allocations are kept while the kubelet does not answer; what the API "
        "server said (workloads, labels, DRA devices) is kept for as long as it is away (default: 3 x the interval)")
    add("--alertmanager.url", dest="alertmanager_urls", action=Repeatable, default=None,
        help="Alertmanager to push critical GPU alerts to (XID, GPU lost, uncorrectable ECC), e.g. "
        "http://alertmanager:9093; repeatable (the variable: comma-separated)")
    add("--alertmanager.label", dest="alertmanager_labels", action=Repeatable, default=None,
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


def long_flag(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]


def apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> dict[str, str]:
    """Make each flag's default come from its environment variable, when set.

    Returns the variable that set each destination, so that a problem can name it.
    """
    from_env: dict[str, str] = {}
    for action in flag_actions(parser):
        variable = env_name(long_flag(action))
        value = environ.get(variable)
        if value is None or value.strip() == "":
            continue  # unset and empty are the same: a blank templated value must not switch anything
        from_env[action.dest] = variable
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            parser.set_defaults(**{action.dest: env_bool(value) if env_bool(value) is not None else value})
        else:
            parser.set_defaults(**{action.dest: value})
    return from_env


def given_on_command_line(argv: Sequence[str] | None) -> set[str]:
    """The destinations the command line itself set (a flag there wins over its variable)."""
    parser = get_parser()
    for action in flag_actions(parser):
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """A warning for each ``KUBE_GPU_EXPORTER_*`` variable no flag reads, with the likely one meant.

    Names are compared without the shared prefix, which would make every pair look alike; a name
    that is the tail of a known one (``NODE_NAME``, ``INTERVAL``) is taken to mean it.
    """
    known = {
        name[len(ENV_PREFIX):]: name for name in (env_name(long_flag(a)) for a in flag_actions(get_parser()))
    }
    warnings = []
    for variable in sorted(v for v in environ if v.startswith(ENV_PREFIX)):
        name = variable[len(ENV_PREFIX):]
        if name in known:
            continue
        meant = [known[short] for short in closest(name, known, "_")]
        hint = f"; did you mean {' or '.join(meant)}?" if meant else ""
        warnings.append(f"{variable}: unknown environment variable, ignored{hint}")
    return warnings
