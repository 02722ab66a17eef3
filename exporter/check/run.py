"""``kube-gpu-exporter check [flags of the agent] [--output text|json]``.

Reads every dependency the configuration asks for once, each within its own deadline, and
prints one row per check (``report.py`` says what the statuses and the exit code mean). The
sections run at once: NVML (whose GPUs the process and kubelet-id rows then use), the kubelet,
the API server, Alertmanager and the web config. Nothing is changed: NVML is read, the kubelet is
listed, the API server and Alertmanager get GETs and access reviews.

Work that may block without end runs in daemon threads (NVML, procfs, a kubeconfig exec plugin)
and the event loop's executor makes daemon threads too (aiohttp's DNS look-ups): a call that
hangs costs its row, never the command's exit.

Run inside the agent's container with no flag of the agent (``kubectl exec ds/kube-gpu-exporter
-- kube-gpu-exporter check``), it takes the running agent's flags from its command line
(``/proc/1/cmdline``, or the agent's process in the same mount namespace under ``hostPID: true``):
the environment is the container's already, so the check sees exactly the running configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import datetime
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from .. import __version__
from ..config import ENV_PREFIX, Config, ConfigError, get_parser, parse_config
from ..model.gpu import GpuSnapshot
from . import output
from .alertmanager import check_alertmanager
from .apiserver import check_api_server
from .kubelet import check_kubelet
from .nvml import CallLog, NvmlResult, check_nvml
from .processes import check_processes
from .report import DEGRADED, FAILED, OK, SECTIONS, Check, Report, Section
from .web import check_web

EXIT_USAGE = 2
PROG = "kube-gpu-exporter check"
FROM_COMMAND_LINE, FROM_AGENT = "command line", "running agent"
#: The agent's NVML backend polls for XID registrations this often (ms): the check waits for them.
XID_POLL_MS = 100


def _parser(with_agent_flags: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False, add_help=False, parents=[get_parser()] if with_agent_flags else [],
        description="Check what the agent needs on this node, with the agent's flags and environment: NVML and "
        "each GPU, process attribution, the kubelet, the API server, Alertmanager, the web config. One row per "
        "check (ok, degraded, failed, skipped); exit 0 when no row failed, 1 when one did, 2 for bad flags. "
        "Without any agent flag, inside the agent's container, the running agent's flags are used.")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="text (default) or json "
                        "(docs/check.schema.json)")
    if not with_agent_flags:
        parser.add_argument("-h", "--help", action="store_true")
    return parser


def _agent_args(proc: str, pid: str) -> list[str] | None:
    """The flags of process ``pid`` if it is the agent (not a ``check``), else None."""
    try:
        raw = Path(proc, pid, "cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "kube-gpu-exporter":
            rest = argv[i + 1:]
            break
        if arg == "-m" and argv[i + 1:i + 2] == ["exporter"]:
            rest = argv[i + 2:]
            break
    else:
        return None
    return None if rest[:1] == ["check"] else rest


def _mount_namespace(proc: str, pid: str) -> str | None:
    try:
        return os.readlink(os.path.join(proc, pid, "ns", "mnt"))
    except OSError:
        return None


def running_agent_args(proc: str = "/proc") -> tuple[list[str], int] | None:
    """The flags and pid of the agent running beside this command: pid 1 of its container, or,
    where the container shares the host's pid namespace (``hostPID: true``), the agent process
    in this process's mount namespace (the same container). None when there is none."""
    own = _mount_namespace(proc, "self")
    try:
        others = sorted((p for p in os.listdir(proc) if p.isdigit() and p != "1"), key=int)
    except OSError:
        others = []
    for pid in ["1", *others]:
        if int(pid) == os.getpid():
            continue
        args = _agent_args(proc, pid)
        if args is not None and (pid == "1" or (own is not None and _mount_namespace(proc, pid) == own)):
            return args, int(pid)
    return None


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call in a daemon thread of its own: what the loop hands to its executor (a DNS
    look-up) cannot hold up the exit, as a ``ThreadPoolExecutor``'s joined threads would. (A
    subclass only because the loop takes no other kind.)"""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting side
                future.set_exception(exc)

        threading.Thread(target=run, name="check-worker", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for: a thread still running is a call that hangs."""


async def _guarded(section: str, work: Awaitable[list[Check]]) -> list[Check]:
    """A section's rows; a bug in the check itself is a row too, not a crash of the command."""
    try:
        return await work
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).debug("the %s checks failed", section, exc_info=True)
        return [Check(f"{section.lower().replace(' ', '_')}.error", f"{section} checks", FAILED,
                      f"the check itself failed: {type(exc).__name__}: {exc}", "a bug in kube-gpu-exporter check",
                      "report it with this output and the traceback that --log.level=debug prints")]


async def configuration_rows(config: Config, flags_from: str, agent_pid: int | None) -> list[Check]:
    """The flags were valid (or the command exited 2); a ``KUBE_GPU_EXPORTER_*`` variable that no
    flag reads is often why a value is not what was meant."""
    source = "the running agent's flags" + (f" (pid {agent_pid})" if agent_pid else "") if flags_from == FROM_AGENT \
        else "the command line's flags"
    variables = sorted(k for k in os.environ if k.startswith(ENV_PREFIX))
    seen = f"valid: {source}" + (f" and {', '.join(variables)}" if variables else ", no KUBE_GPU_EXPORTER_* variable")
    if config.warnings:
        return [Check("config", "flags and environment", DEGRADED, f"{seen}; " + "; ".join(config.warnings),
                      "an environment variable that no flag reads: a typo, or a flag of another version",
                      "rename it as the message suggests, or remove it (README.md: Flags)")]
    return [Check("config", "flags and environment", OK, seen)]


async def run_checks(config: Config, *, scenario: Any = None, flags_from: str = FROM_COMMAND_LINE,
                     agent_pid: int | None = None, args: Sequence[str] = ()) -> Report:
    """Every section's rows. ``scenario``: the loaded scenario of ``--simulate`` (loaded here if None)."""
    asyncio.get_running_loop().set_default_executor(DaemonExecutor())
    started = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    lister = owners = None
    node = config.node_name
    calls = CallLog()
    if config.simulate:
        from ..sources import simulate

        backend: Any = simulate.SimulatedBackend(scenario or simulate.load_scenario(config.scenario))
        cluster = backend.cluster
        node = node or backend.scenario.node.name
        lister = simulate.SimulatedPodResources(cluster, config.dra_drivers)
        owners = simulate.process_owners(cluster)
    else:
        from ..sources.nvml import NvmlBackend

        backend = NvmlBackend.configured(config, observer=calls, xid_event_timeout_ms=XID_POLL_MS)

    nvml = asyncio.create_task(check_nvml(config, backend, calls))

    async def snapshot() -> GpuSnapshot | None:
        try:
            result: NvmlResult = await asyncio.shield(nvml)
        except Exception:  # noqa: BLE001 - the NVML section reports it
            return None
        return result.snapshot

    async def nvml_rows() -> list[Check]:
        return (await nvml).checks

    async def process_rows() -> list[Check]:
        return await check_processes(config, await snapshot(), owners)

    async def web_rows() -> list[Check]:
        return check_web(config, now)

    rows = await asyncio.gather(
        _guarded("configuration", configuration_rows(config, flags_from, agent_pid)),
        _guarded("NVML", nvml_rows()),
        _guarded("processes", process_rows()),
        _guarded("kubelet", check_kubelet(config, snapshot, lister)),
        _guarded("API server", check_api_server(config, simulated=config.simulate)),
        _guarded("Alertmanager", check_alertmanager(config)),
        _guarded("web", web_rows()),
    )
    return Report(version=__version__, node=node, simulated=config.simulate, flags_from=flags_from,
                  agent_pid=agent_pid, args=tuple(args), time=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  seconds=time.monotonic() - started,
                  sections=tuple(Section(name, tuple(checks)) for name, checks in zip(SECTIONS, rows, strict=True)))


def main(argv: Sequence[str], *, setup_logging: Callable[[Config], None] | None = None) -> int:
    own, agent_args = _parser(with_agent_flags=False).parse_known_args(list(argv))
    if own.help:
        _parser(with_agent_flags=True).print_help()
        return 0
    flags_from, agent_pid = FROM_COMMAND_LINE, None
    if not agent_args and (running := running_agent_args()) is not None:
        (agent_args, agent_pid), flags_from = running, FROM_AGENT
    try:
        config = parse_config(agent_args)
    except ConfigError as exc:
        print(f"{PROG}: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    scenario = None
    if config.simulate:
        from ..sources.simulate import ScenarioError, load_scenario

        try:
            scenario = load_scenario(config.scenario)
        except ScenarioError as exc:
            listing = "\n".join(f"  - {p}" for p in exc.problems)
            print(f"{PROG}: invalid scenario {config.scenario}:\n{listing}", file=sys.stderr)
            return EXIT_USAGE
    # The rows say what the log would: only errors go to stderr, unless --log.level=debug.
    if setup_logging is not None:
        setup_logging(dataclasses.replace(config, log_level="debug" if config.log_level == "debug" else "error"))
    report = asyncio.run(run_checks(config, scenario=scenario, flags_from=flags_from, agent_pid=agent_pid,
                                    args=agent_args))
    sys.stdout.write(output.as_json(report) if own.output == "json" else output.text(report))
    sys.stdout.flush()
    return report.exit_code
