"""Client of the kubelet pod-resources API: which GPU devices the kubelet gave to which container.

The kubelet serves ``v1.PodResourcesLister`` on a unix socket
(``/var/lib/kubelet/pod-resources/kubelet.sock``). It rate-limits the whole API to 100 requests/s
with a burst of 10, shared by every client on the node (device-plugin monitors, NFD, topology
exporters, ...). A rejected request fails with RESOURCE_EXHAUSTED, for us and for the others. That
is why this client is called once per collection cycle (one ``List`` + one
``GetAllocatableResources``), never per scrape, and why it does not retry answered requests: the
next cycle is the retry. (The one exception, a ``List`` on a stale channel after a kubelet
restart, is retried on a fresh connection; see ``PodResourcesClient``.)

The client only transports: device ids (``GPU-<uuid>``, ``MIG-<uuid>``, ``GPU-<uuid>::<n>``,
``nvidia0``, ...) are handed on untouched; mapping them to GPUs is done elsewhere. So are the
devices of DRA ResourceClaims (``dynamic_resources``, Kubernetes >= 1.34 with the
``KubeletPodResourcesDynamicResources`` gate, on by default): their ``(driver, pool, device)``
names are resolved against the drivers' ResourceSlices by attribution.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from google.protobuf.message import DecodeError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import ProtocolError as H2ProtocolError

from ...model import vocabulary
from ...model.kube import ClaimDevice, ContainerDevices, PodResources
from .podresources.v1 import api_pb2
from .podresources.v1.api_grpc import PodResourcesListerStub

log = logging.getLogger(__name__)


# Transport: grpclib, gRPC in pure Python on the agent's own event loop, through the stub that
# `make protos` generates (podresources/v1/api_grpc.py). Not grpcio: its C core starts a thread
# pool sized by the host's core count, not the container's CPU limit, with no knob to bound it
# (grpc/grpc#40991), and costs more memory; two unary calls per cycle on a unix socket need none
# of it (docs/performance.md).


class KubeletError(Exception):
    """A failed exchange with the kubelet.

    ``kind`` is one of ``KINDS``, fit for a metric label:

    * ``unavailable``: socket absent, connection refused, kubelet restarting;
    * ``timeout``: no answer within the client's timeout (DEADLINE_EXCEEDED);
    * ``rpc_error``: any other gRPC status (e.g. RESOURCE_EXHAUSTED from the kubelet's rate limit);
    * ``invalid_response``: an answer that cannot be decoded or lacks pod/container names;
    * ``allocatable``: ``List`` answered but ``GetAllocatableResources`` failed (for any of the
      reasons above; the message says which). ``resources`` then holds the good ``List`` with
      the allocatable devices of the last good answer: the allocations stand, only the count of
      allocatable devices may be old.
    """

    KINDS = frozenset({"unavailable", "timeout", "rpc_error", "invalid_response", "allocatable"})

    def __init__(self, kind: str, message: str, resources: PodResources | None = None) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown KubeletError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.resources = resources

    def __repr__(self) -> str:
        return f"KubeletError({self.kind!r}, {self.message!r})"


class PodResourcesClient:
    """Reads device assignments from the kubelet's pod-resources socket.

    One grpclib channel (one HTTP/2 connection, no thread) is created lazily on the first call
    and reused; it is bound to the event loop running that call, so use one client per loop.
    After UNAVAILABLE or a broken connection the channel is dropped and the next call opens a
    new one, and a ``List`` failing UNAVAILABLE on a channel from an earlier cycle is retried
    once on a fresh channel: a kubelet restarted between two cycles costs no failed cycle, one
    still down costs one failed cycle per cycle.

    Devices are kept when their resource name is in ``resource_names`` or starts with one of
    ``resource_prefixes`` (MIG ``mixed`` strategy: ``nvidia.com/mig-1g.10gb``, ...); DRA claim
    devices when their driver is one of ``dra_drivers``.
    """

    #: Kinds of the errors this client raises, for kube_gpu_exporter_collector_errors_total.
    error_kinds: tuple[str, ...] = tuple(sorted(KubeletError.KINDS))

    def __init__(
        self,
        socket_path: str = vocabulary.DEFAULT_POD_RESOURCES_SOCKET,
        timeout_seconds: float = 5.0,
        resource_names: tuple[str, ...] = vocabulary.DEFAULT_RESOURCE_NAMES,
        resource_prefixes: tuple[str, ...] = vocabulary.DEFAULT_RESOURCE_PREFIXES,
        dra_drivers: tuple[str, ...] = vocabulary.DEFAULT_DRA_DRIVERS,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be > 0")
        self.socket_path = socket_path
        self.timeout_seconds = float(timeout_seconds)
        self.resource_names = frozenset(resource_names)
        self.resource_prefixes = tuple(resource_prefixes)
        self.dra_drivers = frozenset(dra_drivers)
        self._channel: Channel | None = None
        self._stub: PodResourcesListerStub | None = None
        self._allocatable_unsupported_logged = False
        self._allocatable: dict[str, tuple[str, ...]] = {}  # the last good GetAllocatableResources

    def wants(self, resource_name: str) -> bool:
        """True when devices of ``resource_name`` are GPU devices this client reports."""
        return resource_name in self.resource_names or any(
            resource_name.startswith(p) for p in self.resource_prefixes
        )

    def _get_stub(self) -> PodResourcesListerStub:
        if self._stub is None:
            self._channel = Channel(path=self.socket_path)
            self._stub = PodResourcesListerStub(self._channel)
        return self._stub

    async def _drop_channel(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # closing a broken channel must not hide the original error
                pass

    async def list_resources(self) -> PodResources:
        """One ``List`` and one ``GetAllocatableResources``; returns the GPU devices only.

        Call once per collection cycle (see the module docstring on the kubelet's rate limit).
        Both calls share one deadline of ``timeout_seconds``, so this returns within about that
        time whatever the kubelet does. Rows are merged per (namespace, pod, container, resource)
        — the kubelet sends one entry per device and NUMA node — with ids de-duplicated and
        sorted, and rows sorted, so equal assignments give equal results from cycle to cycle.
        Containers without a matching device are left out. A kubelet without
        ``GetAllocatableResources`` (UNIMPLEMENTED, or disabled by its feature gate) gives an
        empty ``allocatable``, logged once per client.

        Raises ``KubeletError``; logs nothing per call (the caller logs and counts). A failed
        ``GetAllocatableResources`` after a good ``List`` raises kind ``allocatable`` with the
        ``List`` in ``resources``: one failed call does not cost the other's answer.
        """
        deadline = time.monotonic() + self.timeout_seconds
        reused = self._stub is not None
        try:
            listed = await self._call("List", deadline)
        except KubeletError as exc:
            if exc.kind != "unavailable" or not reused:
                raise
            # The kubelet restarted since the last cycle and the event loop has not yet seen
            # the old connection close: the call failed on it although the new socket already
            # accepts. One retry on a fresh channel (the old one was dropped) avoids a failed
            # cycle. A refused connection never reaches the kubelet's rate limiter, so this
            # costs it nothing.
            listed = await self._call("List", deadline)
        containers = self._containers(listed)
        claim_devices = self._claim_devices(listed)
        try:
            alloc = await self._call("GetAllocatableResources", deadline)
        except KubeletError as exc:
            kept = PodResources(containers=containers, allocatable=self._allocatable, claim_devices=claim_devices)
            raise KubeletError("allocatable", exc.message, resources=kept) from None
        except _AllocatableUnsupported as exc:
            self._allocatable = {}
            if not self._allocatable_unsupported_logged:
                self._allocatable_unsupported_logged = True
                log.info(
                    "kubelet at %s does not serve GetAllocatableResources (%s); "
                    "allocatable devices will not be reported",
                    self.socket_path,
                    exc,
                )
        else:
            self._allocatable = self._allocatable_devices(alloc.devices)
        return PodResources(containers=containers, allocatable=self._allocatable, claim_devices=claim_devices)

    async def _call(self, name: str, deadline: float):
        method = getattr(self._get_stub(), name)
        where = f"kubelet pod-resources {name} at {self.socket_path}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KubeletError("timeout", f"{where}: no time left of the {self.timeout_seconds:g}s timeout")
        try:
            return await method(method.request_type(), timeout=remaining)
        except GRPCError as exc:
            code, details = exc.status, exc.message or ""
            if name == "GetAllocatableResources" and (
                code == Status.UNIMPLEMENTED or (code == Status.UNKNOWN and "disabled" in details)
            ):
                raise _AllocatableUnsupported(f"{code.name}: {details}") from None
            if code == Status.UNAVAILABLE:
                # A fresh channel next time: cheap, and sure to see a socket created again.
                await self._drop_channel()
                raise KubeletError("unavailable", f"{where}: unavailable: {details}") from None
            if code == Status.DEADLINE_EXCEEDED:
                raise KubeletError("timeout", f"{where}: no answer within {self.timeout_seconds:g}s") from None
            raise KubeletError("rpc_error", f"{where}: {code.name}: {details}") from None
        except TimeoutError:  # grpclib's own deadline (asyncio.TimeoutError is TimeoutError)
            raise KubeletError("timeout", f"{where}: no answer within {self.timeout_seconds:g}s") from None
        except (OSError, StreamTerminatedError, ProtocolError, H2ProtocolError) as exc:
            # No socket, connection refused or reset, the kubelet gone mid-call.
            await self._drop_channel()
            raise KubeletError("unavailable", f"{where}: unavailable: {exc or type(exc).__name__}") from None
        except DecodeError as exc:  # from the stub's codec, decoding the answer
            raise KubeletError("invalid_response", f"{where}: undecodable response: {exc}") from None

    def _containers(self, resp: api_pb2.ListPodResourcesResponse) -> tuple[ContainerDevices, ...]:
        rows: dict[tuple[str, str, str, str], set[str]] = {}
        for pod in resp.pod_resources:
            for container in pod.containers:
                for dev in container.devices:
                    if not self.wants(dev.resource_name):
                        continue
                    self._require_names(pod, container, f"{dev.resource_name} devices {list(dev.device_ids)}")
                    key = (pod.namespace, pod.name, container.name, dev.resource_name)
                    rows.setdefault(key, set()).update(i for i in dev.device_ids if i)
        return tuple(
            ContainerDevices(ns, pod, ctr, res, tuple(sorted(ids)))
            for (ns, pod, ctr, res), ids in sorted(rows.items())
            if ids
        )

    def _claim_devices(self, resp: api_pb2.ListPodResourcesResponse) -> tuple[ClaimDevice, ...]:
        """Devices of the wanted DRA drivers, one row per (container, claim, device), sorted and
        de-duplicated. A device without a pool or device name cannot be resolved: it is an
        invalid answer, like a device plugin id without a container name."""
        rows: dict[tuple[str, ...], set[str]] = {}
        for pod in resp.pod_resources:
            for container in pod.containers:
                for claim in container.dynamic_resources:
                    for res in claim.claim_resources:
                        if res.driver_name not in self.dra_drivers:
                            continue
                        what = (f"{res.driver_name} device {res.pool_name}/{res.device_name} "
                                f"of claim {claim.claim_name!r}")
                        self._require_names(pod, container, what)
                        if not (claim.claim_name and res.pool_name and res.device_name):
                            raise KubeletError(
                                "invalid_response",
                                f"kubelet pod-resources List at {self.socket_path}: {what} "
                                f"(pod {pod.namespace}/{pod.name}) lacks a claim, pool or device name",
                            )
                        key = (pod.namespace, pod.name, container.name, claim.claim_namespace or pod.namespace,
                               claim.claim_name, res.driver_name, res.pool_name, res.device_name)
                        rows.setdefault(key, set()).update(d.name for d in res.cdi_devices if d.name)
        return tuple(ClaimDevice(*key, cdi_devices=tuple(sorted(cdi))) for key, cdi in sorted(rows.items()))

    def _require_names(self, pod: api_pb2.PodResources, container: api_pb2.ContainerResources, what: str) -> None:
        if not (pod.namespace and pod.name and container.name):
            raise KubeletError(
                "invalid_response",
                f"kubelet pod-resources List at {self.socket_path}: {what} assigned to a "
                f"container without a name (namespace={pod.namespace!r}, "
                f"pod={pod.name!r}, container={container.name!r})",
            )

    def _allocatable_devices(self, devices: Iterable[api_pb2.ContainerDevices]) -> dict[str, tuple[str, ...]]:
        by_resource: dict[str, set[str]] = {}
        for dev in devices:
            if self.wants(dev.resource_name):
                by_resource.setdefault(dev.resource_name, set()).update(i for i in dev.device_ids if i)
        return {res: tuple(sorted(ids)) for res, ids in sorted(by_resource.items())}

    async def close(self) -> None:
        """Close the channel; the client may be used again afterwards (a new channel opens)."""
        await self._drop_channel()

    async def __aenter__(self) -> "PodResourcesClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


class _AllocatableUnsupported(Exception):
    """GetAllocatableResources not served by this kubelet (internal)."""
