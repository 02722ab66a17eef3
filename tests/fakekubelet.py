"""A fake kubelet: a real grpc.aio ``v1.PodResourcesLister`` server on a unix socket.

In-process (pytest plugin, registered by conftest.py)
-----------------------------------------------------
``FakeKubelet`` runs its grpc.aio server in a dedicated thread with its own event loop, so sync
tests, async tests and subprocesses (an exporter started by an e2e test) can all talk to it.
Its methods are plain (sync) calls, safe from any thread or loop.

Fixtures:

* ``fake_kubelet``: a started ``FakeKubelet`` with no pods, on a short socket path under /tmp;
  closed (and the directory removed) after the test.
* ``kubelet_socket_path``: a short socket path under /tmp with nothing listening on it.

Controller::

    fake.socket_path                       # str, < 107 chars
    fake.set_pods([Pod(...)] or dicts)     # what List / Get answer (JSON format below)
    fake.set_allocatable({"nvidia.com/gpu": ["GPU-a", "GPU-b"]})
    fake.delay = 2.0                       # seconds each call sleeps before answering
    fake.set_error(grpc.StatusCode.INTERNAL, "boom", method="List")   # method=None: all
    fake.clear_errors()
    fake.calls                             # {"List": n, "GetAllocatableResources": n, "Get": n}
    fake.stop(); fake.start()              # same socket path; the socket file is gone between
    fake.close()

Standalone (for e2e tests running the exporter and the fake in separate processes)
----------------------------------------------------------------------------------
``python tests/fakekubelet.py --socket /tmp/klX/kubelet.sock --pods pods.json [--delay 0.5]
[--error UNAVAILABLE] [--error-method List]``

It prints ``READY <socket>`` on stdout once serving and stops cleanly on SIGTERM/SIGINT
(removing the socket). The pods file is read again whenever its mtime changes, so a test can
change the assignments while both processes run (write a temp file and os.replace it).

Pods JSON format (also accepted by ``set_pods``; ``allocatable`` optional)::

    {
      "pods": [
        {"namespace": "ml", "name": "train-0",
         "containers": [
           {"name": "trainer",
            "devices": [{"resource": "nvidia.com/gpu", "ids": ["GPU-1f0e...", "GPU-2a7c..."]}]}
         ]}
      ],
      "allocatable": {"nvidia.com/gpu": ["GPU-1f0e...", "GPU-2a7c...", "GPU-3b9d..."]}
    }

A bare JSON list is taken as the "pods" list. Each device entry becomes one ``ContainerDevices``
message with all its ids (a real kubelet sends one entry per id; the client accepts both).

DRA claims of a container (``dynamic_resources``; namespace defaults to the pod's, ``cdi`` to
none)::

    {"name": "trainer",
     "claims": [{"name": "train-gpus", "namespace": "ml",
                 "devices": [{"driver": "gpu.nvidia.com", "pool": "node-a", "device": "gpu-0",
                              "cdi": ["k8s.gpu.nvidia.com/device=gpu-0"]}]}]}

(``claim(...)`` and ``claim_device(...)`` build the same in Python.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

if __name__ == "__main__":  # run as a script: make the exporter package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import grpc.aio
import pytest

from exporter.sources.kubelet.podresources.v1 import api_pb2

METHODS = ("List", "GetAllocatableResources", "Get")
_SERVICE = "v1.PodResourcesLister"


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    resource: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class ClaimDevice:
    driver: str
    pool: str
    device: str
    cdi: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A DRA ResourceClaim's devices, as the kubelet lists them for a container."""

    name: str
    namespace: str = ""  # "": the pod's
    devices: tuple[ClaimDevice, ...] = ()


@dataclass(frozen=True)
class Container:
    name: str
    devices: tuple[Device, ...] = ()
    claims: tuple[Claim, ...] = ()


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    containers: tuple[Container, ...] = ()


def pod(namespace: str, name: str, containers: Mapping[str, Mapping[str, Iterable[str]]]) -> Pod:
    """Short form: ``pod("ml", "p0", {"c": {"nvidia.com/gpu": ["GPU-a"]}})``."""
    return Pod(
        namespace,
        name,
        tuple(
            Container(c, tuple(Device(r, tuple(ids)) for r, ids in devs.items()))
            for c, devs in containers.items()
        ),
    )


def claim_device(device: str, pool: str = "node-a", driver: str = "gpu.nvidia.com") -> ClaimDevice:
    """A claim device with the CDI name NVIDIA's driver gives it."""
    return ClaimDevice(driver, pool, device, (f"k8s.{driver}/device={device}",))


def claim(name: str, *devices: ClaimDevice, namespace: str = "") -> Claim:
    return Claim(name, namespace, tuple(devices))


def _claim_from_json(d: Mapping[str, Any]) -> Claim:
    return Claim(d.get("name", ""), d.get("namespace", ""), tuple(
        ClaimDevice(x.get("driver", ""), x.get("pool", ""), x.get("device", ""), tuple(x.get("cdi", ())))
        for x in d.get("devices", ())))


def _pod_from_json(d: Mapping[str, Any]) -> Pod:
    return Pod(
        d.get("namespace", ""),
        d.get("name", ""),
        tuple(
            Container(
                c.get("name", ""),
                tuple(
                    Device(dev["resource"], tuple(dev.get("ids", ())))
                    for dev in c.get("devices", ())
                ),
                tuple(_claim_from_json(x) for x in c.get("claims", ())),
            )
            for c in d.get("containers", ())
        ),
    )


def load_spec(data: Any) -> tuple[list[Pod], dict[str, list[str]] | None]:
    """Parse the JSON format above (already decoded) into pods and allocatable (None: absent)."""
    if isinstance(data, list):
        return [_pod_from_json(p) for p in data], None
    pods = [_pod_from_json(p) for p in data.get("pods", ())]
    alloc = data.get("allocatable")
    return pods, ({k: list(v) for k, v in alloc.items()} if alloc is not None else None)


def _pod_message(p: Pod) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        name=p.name,
        namespace=p.namespace,
        containers=[
            api_pb2.ContainerResources(
                name=c.name,
                devices=[
                    api_pb2.ContainerDevices(resource_name=d.resource, device_ids=list(d.ids))
                    for d in c.devices
                ],
                dynamic_resources=[
                    api_pb2.DynamicResource(
                        claim_name=cl.name,
                        claim_namespace=cl.namespace or p.namespace,
                        claim_resources=[
                            api_pb2.ClaimResource(
                                driver_name=x.driver, pool_name=x.pool, device_name=x.device,
                                cdi_devices=[api_pb2.CDIDevice(name=n) for n in x.cdi],
                            )
                            for x in cl.devices
                        ],
                    )
                    for cl in c.claims
                ],
            )
            for c in p.containers
        ],
    )


# -- server -----------------------------------------------------------------------------------


def _serialize(resp: Any) -> bytes:
    # Raw bytes pass through: lets a test send an undecodable answer.
    return resp if isinstance(resp, bytes) else resp.SerializeToString()


class FakeKubelet:
    """A pod-resources server in its own thread and event loop. See the module docstring."""

    def __init__(
        self,
        socket_path: str | None = None,
        pods: Iterable[Pod | Mapping[str, Any]] = (),
        allocatable: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._own_dir: str | None = None
        if socket_path is None:
            # tmp_path can exceed the 107-byte sun_path limit; keep it short.
            self._own_dir = tempfile.mkdtemp(prefix="kl", dir="/tmp")
            socket_path = os.path.join(self._own_dir, "kubelet.sock")
        self.socket_path = socket_path
        self.delay = 0.0
        self.garbage = False  # answer List with bytes that do not decode
        self.calls: dict[str, int] = {m: 0 for m in METHODS}
        self._errors: dict[str | None, tuple[grpc.StatusCode, str]] = {}
        self._lock = threading.Lock()
        self._list = api_pb2.ListPodResourcesResponse()
        self._pods: dict[tuple[str, str], api_pb2.PodResources] = {}
        self._alloc = api_pb2.AllocatableResourcesResponse()
        self._pods_file: str | None = None
        self._pods_mtime: int | None = None
        self.set_pods(pods)
        self.set_allocatable(allocatable or {})
        self._server: grpc.aio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fakekubelet", daemon=True)
        self._thread.start()
        self._closed = False

    # configuration (any thread)

    def set_pods(self, pods: Iterable[Pod | Mapping[str, Any]]) -> None:
        parsed = [p if isinstance(p, Pod) else _pod_from_json(p) for p in pods]
        msgs = [_pod_message(p) for p in parsed]
        with self._lock:
            self._list = api_pb2.ListPodResourcesResponse(pod_resources=msgs)
            self._pods = {(m.namespace, m.name): m for m in msgs}

    def set_allocatable(self, allocatable: Mapping[str, Iterable[str]]) -> None:
        msg = api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=res, device_ids=[i])
                for res, ids in allocatable.items()
                for i in ids  # one entry per device, as the kubelet sends it
            ]
        )
        with self._lock:
            self._alloc = msg

    def set_error(self, code: grpc.StatusCode, details: str = "fake kubelet error", method: str | None = None) -> None:
        """Answer ``method`` (None: every method without its own error) with this status."""
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        with self._lock:
            self._errors[method] = (code, details)

    def clear_errors(self) -> None:
        with self._lock:
            self._errors.clear()

    def load_file(self, path: str) -> None:
        """Serve the pods JSON file at ``path``, read again whenever its mtime changes."""
        self._pods_file = path
        self._pods_mtime = None
        self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        if self._pods_file is None:
            return
        try:
            mtime = os.stat(self._pods_file).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._pods_mtime:
            return
        with open(self._pods_file) as f:
            pods, alloc = load_spec(json.load(f))
        self._pods_mtime = mtime
        self.set_pods(pods)
        if alloc is not None:
            self.set_allocatable(alloc)

    # handlers (server thread)

    async def _prologue(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        self._reload_if_changed()
        with self._lock:
            err = self._errors.get(method) or self._errors.get(None)
        if err is not None:
            await context.abort(err[0], err[1])

    async def _list_handler(self, request, context):
        await self._prologue("List", context)
        if self.garbage:
            return b"\xff\xff\xff\xff"
        with self._lock:
            return self._list

    async def _alloc_handler(self, request, context):
        await self._prologue("GetAllocatableResources", context)
        with self._lock:
            return self._alloc

    async def _get_handler(self, request, context):
        await self._prologue("Get", context)
        with self._lock:
            found = self._pods.get((request.pod_namespace, request.pod_name))
        if found is None:
            # The kubelet's wording for an unknown pod.
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} not found in {request.pod_namespace}",
            )
        return api_pb2.GetPodResourcesResponse(pod_resources=found)

    def _handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, req_type):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_type.FromString, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "List": unary(self._list_handler, api_pb2.ListPodResourcesRequest),
                "GetAllocatableResources": unary(self._alloc_handler, api_pb2.AllocatableResourcesRequest),
                "Get": unary(self._get_handler, api_pb2.GetPodResourcesRequest),
            },
        )

    # lifecycle (any thread except the server's own)

    def _run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        if self._server is not None:
            return
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handler(),))
        if server.add_insecure_port(f"unix://{self.socket_path}") == 0:
            raise RuntimeError(f"fake kubelet: cannot bind unix://{self.socket_path}")
        await server.start()
        self._server = server

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=None)  # cancel calls in flight, like a killed kubelet
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def start(self) -> "FakeKubelet":
        """Serve on ``socket_path`` (again); the socket file exists when this returns."""
        self._run(self._start())
        return self

    def stop(self) -> None:
        """Stop serving and remove the socket file; ``start()`` serves again on the same path."""
        self._run(self._stop())

    @property
    def running(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> "FakeKubelet":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- pytest fixtures --------------------------------------------------------------------------


@pytest.fixture
def fake_kubelet():
    """A started FakeKubelet with no pods on a short socket path; closed after the test."""
    fake = FakeKubelet().start()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def kubelet_socket_path():
    """A short socket path under /tmp with nothing listening on it."""
    d = tempfile.mkdtemp(prefix="kl", dir="/tmp")
    try:
        yield os.path.join(d, "kubelet.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- standalone ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fake kubelet pod-resources server (v1) on a unix socket.")
    ap.add_argument("--socket", required=True, help="unix socket path (< 107 bytes)")
    ap.add_argument("--pods", help="pods JSON file (format: see tests/fakekubelet.py); re-read on change")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds every call waits before answering")
    ap.add_argument("--error", help="answer with this grpc status code name, e.g. UNAVAILABLE")
    ap.add_argument("--error-method", choices=METHODS, help="only for this method (default: all)")
    args = ap.parse_args(argv)

    fake = FakeKubelet(args.socket)
    fake.delay = args.delay
    if args.pods:
        fake.load_file(args.pods)
    if args.error:
        fake.set_error(grpc.StatusCode[args.error.upper()], "fake kubelet error", args.error_method)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    fake.start()
    print(f"READY {fake.socket_path}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
