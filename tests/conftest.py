"""Shared test setup. Each fake lives in its own module, registered here as a pytest plugin.

Also here: the one way a test waits for something (``wait_until`` and its async twin), and the
two tiers of the suite. A test that starts a real server (Prometheus, Alertmanager, chromium, the
agent as a process), runs a real tool for seconds (promtool's rule tests) or waits on real time is
marked ``integration``. ``make check`` runs the others, the fast tier of the edit loop, and says
how long they took; ``make test`` (CI) runs everything. An unmarked test that starts one of those
servers fails, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

pytest_plugins = ["fakenvml", "fakekubelet", "fakekubeapi"]


# -- waiting ------------------------------------------------------------------------------------------

Message = str | Callable[[], str]


def _failure(message: Message, predicate: Callable[..., Any], timeout: float, error: BaseException | None) -> str:
    what = message() if callable(message) else message or getattr(predicate, "__qualname__", repr(predicate))
    last = f" (last error: {type(error).__name__}: {error})" if error is not None else ""
    return f"timed out after {timeout:g} s waiting for {what}{last}"


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, message: Message = "",
               ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``predicate`` until it returns something true, and return that.

    It is called once more after the deadline has passed, so a slow last call is not lost. At the
    deadline an ``AssertionError`` says what was awaited: ``message``, or what it returns when it
    is a function (e.g. to show the last value seen). An exception of a type in ``ignore`` counts
    as "not yet" (a server still starting: ``ignore=(OSError,)``); any other is raised at once,
    so a predicate can end the wait early by failing (a process that exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        error = None
        try:
            result = predicate()
        except ignore as caught:
            result, error = None, caught
        if result:
            return result
        if expired:
            raise AssertionError(_failure(message, predicate, timeout, error))
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 15.0,
                           interval: float = 0.05, message: Message = "",
                           ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """``wait_until`` on the event loop: sleeps without blocking it, and ``predicate`` may be a
    coroutine function (its result is awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        error = None
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
        except ignore as caught:
            result, error = None, caught
        if result:
            return result
        if expired:
            raise AssertionError(_failure(message, predicate, timeout, error))
        await asyncio.sleep(interval)


# -- the tiers --------------------------------------------------------------------------------------

INTEGRATION = "integration"
#: The programs that make a test ``integration``, besides the agent.
SERVERS = frozenset({"prometheus", "alertmanager", "prometheus-alertmanager", "chromium", "chromium-browser"})


def _server(args: Any, shell: bool) -> str | None:
    """The real server a command line starts, if it starts one; the agent as a process counts,
    whatever it is asked (it imports for a second before it does anything)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = shlex.split(os.fsdecode(args)) if shell else [args]
    words = [os.fsdecode(a) for a in args]
    for i, word in enumerate(words):
        name = Path(word).name
        if name in SERVERS:
            return name
        if name == "kube-gpu-exporter" or words[i:i + 2] == ["-m", "exporter"]:
            return "the agent as a process"
    return None


@contextlib.contextmanager
def _no_server_unless_marked(item: pytest.Item) -> Iterator[None]:
    """Keeps the fast tier fast: an unmarked test that starts a real server, in itself or in a
    fixture of any scope, fails saying so."""
    if item.get_closest_marker(INTEGRATION):
        yield
        return
    popen_init = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        server = _server(args, kwargs.get("shell", False))
        if server is not None:
            pytest.fail(f"{item.nodeid} starts {server}: mark it @pytest.mark.{INTEGRATION}", pytrace=False)
        popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _no_server_unless_marked(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _no_server_unless_marked(item):
        return (yield)


_STARTED = pytest.StashKey[float]()
_SELECTED = pytest.StashKey[int]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STARTED] = time.monotonic()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_SELECTED] = len(session.items)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Says how long the fast tier took, collection included (printed, never asserted: the
    machine's load is no failure). Under pytest-xdist the workers collect, so the tests are
    counted from their reports."""
    if config.getoption("markexpr", "") != f"not {INTEGRATION}" or _STARTED not in config.stash:
        return
    took = time.monotonic() - config.stash[_STARTED]
    ran = config.stash.get(_SELECTED, 0) or sum(
        len(terminalreporter.stats.get(outcome, ())) for outcome in ("passed", "failed", "skipped", "error"))
    left = len(terminalreporter.stats.get("deselected", ()))  # none reported under xdist
    terminalreporter.write_line(f"fast tier: {ran} tests in {took:.1f} s; "
                                f"`make test` also runs the {left or 'tests'} marked {INTEGRATION}")
