"""The API server's watches as sources of the cycle: what a watch knows, while it is connected.

Kept out of ``sources/kube/`` (the client and the watchers) so that the sources can be named,
switched off and listed without importing the API server's modules (start-up imports only what the
flags use).

A watch (``PodWatcher``, ``SliceWatcher``, or the simulated node's stand-ins) lists and watches in
the background, on the event loop; a read costs nothing and returns its current view while it is
connected, nothing while it is not (the agent keeps the last view for as long as the API server
is away, see ``sources/grace.py``). Errors are the watch's own counts, by kind.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Mapping, Protocol, TypeVar

from ..model.gpu import GpuSnapshot
from ..model.kube import PodMeta, SliceDevices
from .base import Outcome, Source

T = TypeVar("T")


class Watch(Protocol):
    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_synced(self, timeout: float) -> bool: ...
    def error_counts(self) -> Mapping[str, int]: ...


class WatchSource(Source[T], Generic[T]):
    """A watch of the API server, read through ``view`` (the watcher's current objects)."""

    background = True

    def __init__(self, watch: Watch, view: Callable[[], T]) -> None:
        self.watch = watch
        self._view = view
        # config: the watch cannot start (no in-cluster service account, a bad kubeconfig)
        self.error_kinds = ("config", *getattr(watch, "error_kinds", ()))

    async def start(self) -> None:
        await self.watch.start()

    async def wait_ready(self, timeout: float) -> bool:
        return await self.watch.wait_synced(timeout)

    async def read(self, gpus: GpuSnapshot | None) -> Outcome[T]:
        if self.watch.connected:
            return Outcome(self._view(), ok=True)
        return Outcome(None, ok=False)

    async def stop(self) -> None:
        await self.watch.stop()

    def error_counts(self) -> Mapping[str, int]:
        return self.watch.error_counts()


class PodSource(WatchSource[Mapping[str, PodMeta]]):
    """The pods of this node and their workloads (``PodWatcher``: ``pods()``)."""

    name, title, provides = "kubernetes", "API server pod watch", "pods"

    def __init__(self, watch: Any) -> None:
        super().__init__(watch, watch.pods)


class SliceSource(WatchSource[SliceDevices]):
    """The DRA devices this node's drivers publish (``SliceWatcher``: ``devices()``)."""

    name, title, provides = "resourceslices", "API server ResourceSlice watch", "slices"

    def __init__(self, watch: Any) -> None:
        super().__init__(watch, watch.devices)
