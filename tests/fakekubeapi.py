"""A fake Kubernetes API server, just enough of it for the agent's client (and a kubeconfig
file for the ``kubernetes`` package).

It serves, over plain HTTP on 127.0.0.1 (or ``host``, ``"::1"`` say) with an ephemeral port, from
a background thread with its own event loop (so sync tests, async tests and a separately
started CLI process can all use it):

* ``GET /api/v1/pods`` and ``GET /api/v1/namespaces/{ns}/pods`` -- a ``PodList`` with
  ``metadata.resourceVersion``; ``fieldSelector`` (``spec.nodeName=X``, ``metadata.name=X``,
  ``metadata.namespace=X``, ``status.phase=X``; ``=``, ``==`` and ``!=``, comma separated) and
  ``labelSelector`` (equality only) are honoured. ``resourceVersion``: unset is a quorum read
  (etcd, on a real server), ``0`` or a version not newer than the newest is served "from the
  watch cache"; a newer one gets 504 with the cause ``ResourceVersionTooLarge``.
* the same with ``watch=true`` -- newline-delimited JSON watch events (``{"type": "ADDED",
  "object": {...}}``) after ``resourceVersion`` (all current objects as ``ADDED`` first when it
  is empty or ``"0"``), until ``timeoutSeconds``; a ``resourceVersion`` older than the retained
  history gets an ``ERROR`` event with a 410 ``Status``, like the real thing. With
  ``allowWatchBookmarks=true``, a ``BOOKMARK`` with the newest resourceVersion every
  ``bookmark_seconds`` and right before the timeout, as the API server sends one a minute.
* ``GET /apis/resource.k8s.io/v1/resourceslices``, with and without ``watch=true``, the same way
  (DRA ResourceSlices are cluster-scoped; ``fieldSelector=spec.nodeName=X,spec.driver=Y``).
* ``GET /api/v1/namespaces/{ns}/pods/{name}``,
  ``GET /apis/apps/v1/namespaces/{ns}/{replicasets,deployments,statefulsets,daemonsets}/{name}``,
  ``GET /apis/batch/v1/namespaces/{ns}/{jobs,cronjobs}/{name}`` -- the object, or a 404
  ``Status``.
* ``GET /version`` (``.version``); ``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews``
  -- allowed, unless ``deny("replicasets", "get")`` (no verb: every verb) or
  ``set_resource_error(plural, 401 or 403)`` says otherwise (each review's attributes are kept in
  ``.access_reviews``); ``POST /apis/authentication.k8s.io/v1/selfsubjectreviews`` -- ``.username``.

Failure switches: ``set_down(True)`` drops every connection (open watches included) until
``set_down(False)``; ``set_down(True, status=500)`` (or 403, 401...) answers that status with a
``Status`` body instead; ``set_resource_error("replicasets", 403)`` fails one resource only;
``expire_watches()`` forgets the event history and ends open watches, so the next watch from an
old resourceVersion gets 410 Gone; ``drop_watches()`` cuts open watches (a disconnect: the
history stays, a watch resumes); ``stall_watches(True)`` keeps them open but silent (no event,
no bookmark); ``end_watches_at_once(True)`` answers new ones with an empty stream; ``hold("jobs")`` keeps GETs of one resource waiting until ``release("jobs")``.

Observation: ``requests`` (every request's method and path); ``calls`` (every request as a
:class:`Call`: verb ``list``/``watch``/``get``, resource, resourceVersion asked for) and
``count(verb, resource)``; ``request_count(prefix)``; ``open_watches()``; ``watching_since(rv)`` (a watch is open
from ``rv`` or later: a list since then has finished); ``max_in_flight[resource]`` (the most GETs
of a resource answered at once); ``bookmarks_sent``.

Authentication: ``FakeKubeApi(token="t")`` answers 401 to every request without the header
``Authorization: Bearer t`` (the scheme in any case; ``accept_tokens(...)`` changes the tokens it
takes, as a rotation does); ``FakeKubeApi(tls_dir=dir)`` serves HTTPS with a self-signed
certificate for 127.0.0.1 and ::1 that it writes to ``dir`` (``.ca_cert_path``; needs the
``openssl`` command), as an in-cluster API server does. The ``Authorization`` header of every
request is kept in ``.authorizations``.

Use the ``fake_kube_api`` fixture (a started :class:`FakeKubeApi`, with ``.kubeconfig_path``),
and :func:`make_pod` / :func:`make_owned` / :func:`make_resource_slice` to build objects
(``add_object`` / ``delete_object("ResourceSlice", "", name)`` for slices).
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import subprocess
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest
from aiohttp import web

# kind -> (apiVersion, plural) of the objects the fake knows
KINDS: dict[str, tuple[str, str]] = {
    "Pod": ("v1", "pods"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "Job": ("batch/v1", "jobs"),
    "CronJob": ("batch/v1", "cronjobs"),
    "ResourceSlice": ("resource.k8s.io/v1", "resourceslices"),
}
# kinds whose changes are kept as watch events
_WATCHED = ("Pod", "ResourceSlice")
_PLURAL_TO_KIND = {plural: kind for kind, (_, plural) in KINDS.items()}


def _owner_ref(owner: tuple[str, str] | None, api_version: str | None = None) -> list[dict]:
    if owner is None:
        return []
    kind, name = owner
    return [
        {
            "apiVersion": api_version or KINDS.get(kind, ("example.com/v1", ""))[0],
            "kind": kind,
            "name": name,
            "uid": str(uuid.uuid4()),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def make_pod(
    namespace: str,
    name: str,
    uid: str | None = None,
    node: str | None = "node-a",
    owner: tuple[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    containers: Mapping[str, str] | None = None,
    *,
    init_containers: Mapping[str, str] | None = None,
    ephemeral_containers: Mapping[str, str] | None = None,
    phase: str = "Running",
    owner_api_version: str | None = None,
) -> dict[str, Any]:
    """A pod as the API server returns it (a JSON dict).

    ``owner`` is the controller ``(kind, name)`` in ``ownerReferences`` (None: a bare pod);
    ``containers`` maps container name -> container id, either bare (``"abc"``, then
    ``containerd://`` is prepended) or with its runtime prefix (``"cri-o://abc"``); a None id
    leaves the status without ``containerID`` (a container not started yet).
    """
    uid = uid or str(uuid.uuid4())
    containers = dict(containers if containers is not None else {"main": uuid.uuid4().hex * 2})

    def statuses(spec: Mapping[str, str] | None) -> list[dict]:
        out = []
        for cname, cid in (spec or {}).items():
            st: dict[str, Any] = {"name": cname, "image": "busybox", "imageID": "", "ready": True,
                                  "restartCount": 0, "state": {"running": {}}}
            if cid is not None:
                st["containerID"] = cid if "://" in cid else f"containerd://{cid}"
            out.append(st)
        return out

    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": uid,
            "labels": dict(labels or {}),
            "ownerReferences": _owner_ref(owner, owner_api_version),
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": "busybox"} for c in containers],
        },
        "status": {
            "phase": phase,
            "containerStatuses": statuses(containers),
        },
    }
    if not pod["metadata"]["ownerReferences"]:
        del pod["metadata"]["ownerReferences"]
    if node is None:
        del pod["spec"]["nodeName"]
    if init_containers:
        pod["spec"]["initContainers"] = [{"name": c, "image": "busybox"} for c in init_containers]
        pod["status"]["initContainerStatuses"] = statuses(init_containers)
    if ephemeral_containers:
        pod["spec"]["ephemeralContainers"] = [
            {"name": c, "image": "busybox"} for c in ephemeral_containers
        ]
        pod["status"]["ephemeralContainerStatuses"] = statuses(ephemeral_containers)
    return pod


def make_owned(kind: str, namespace: str, name: str, owner: tuple[str, str] | None = None) -> dict:
    """A workload object (ReplicaSet, Job, ...) with an optional controller owner."""
    api_version = KINDS[kind][0]
    obj: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name, "uid": str(uuid.uuid4())},
        "spec": {},
    }
    if owner is not None:
        obj["metadata"]["ownerReferences"] = _owner_ref(owner)
    return obj


def make_resource_slice(
    node: str,
    devices: Mapping[str, str | None],
    *,
    driver: str = "gpu.nvidia.com",
    pool: str | None = None,
    generation: int = 1,
    name: str | None = None,
) -> dict[str, Any]:
    """A ResourceSlice (``resource.k8s.io/v1``) as a DRA driver publishes it: ``devices`` maps
    device name -> its ``uuid`` attribute (None: no uuid attribute); pool defaults to the node."""
    pool = pool or node
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name or f"{node}-{driver}-{pool}-{generation}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": pool, "generation": generation, "resourceSliceCount": 1},
            "devices": [
                {"name": dev, "attributes": {"type": {"string": "mig" if "-mig-" in dev else "gpu"},
                                             **({"uuid": {"string": uuid}} if uuid else {})},
                 "capacity": {"memory": {"value": "80Gi"}}}
                for dev, uuid in devices.items()
            ],
        },
    }


def _status(code: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> dict:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": message, "reason": reason, "code": code}
    if causes:
        status["details"] = {"causes": [{"reason": c, "message": message} for c in causes]}
    return status


@dataclass(frozen=True)
class Call:
    """One request, as the API server's request metrics would count it."""

    verb: str  # list, watch, get
    resource: str  # pods, resourceslices, replicasets, jobs, ...
    resource_version: str | None  # the resourceVersion asked for (None: not given)
    path: str
    query: dict[str, str]


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 410: "Expired",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


def _field_value(obj: Mapping, key: str) -> str:
    cur: Any = obj
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return "" if cur is None else str(cur)


def _parse_selector(text: str) -> list[tuple[str, str, str]]:
    """``a=b,c!=d`` -> [(a, '=', b), (c, '!=', d)]."""
    terms = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                key, value = term.split(op, 1)
                terms.append((key.strip(), "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            raise ValueError(f"unsupported selector term {term!r}")
    return terms


def _matches(obj: Mapping, fields: list, labels: list) -> bool:
    for key, op, value in fields:
        if (_field_value(obj, key) == value) != (op == "="):
            return False
    obj_labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, value in labels:
        if (obj_labels.get(key) == value) != (op == "="):
            return False
    return True


class FakeKubeApi:
    """The fake API server. All state lives in the server's loop thread; public methods are
    called from any other thread and run there."""

    def __init__(self, *, token: str | None = None, tls_dir: str | Path | None = None, host: str = "127.0.0.1",
                 bookmark_seconds: float = 1.0) -> None:
        self.url = ""
        self.host = host
        self.port = 0
        self.bookmark_seconds = bookmark_seconds
        self.kubeconfig_path: Path | None = None
        self.token = token  # when set, requests need "Authorization: Bearer <token>"
        self.tokens: frozenset[str] = frozenset([token] if token else ())
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self.ca_cert_path: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        if tls_dir is not None:
            self._ssl = self._make_tls(Path(tls_dir))
        # (kind, namespace, name) -> object
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._rv = 1000
        self._history: list[tuple[int, str, dict]] = []  # (rv, type, object) of _WATCHED kinds' events
        self._history_floor = self._rv  # watches from below this get 410
        self._watchers: set[asyncio.Queue] = set()
        self._open_watches: dict[int, web.Request] = {}  # id -> request
        self._down = False
        self._down_status: int | None = None
        self._resource_errors: dict[str, int] = {}
        self._denied: set[tuple[str, str]] = set()  # (plural, verb); verb "*": all verbs
        self.access_reviews: list[dict[str, str]] = []  # spec.resourceAttributes of each review
        self.username = "system:serviceaccount:kube-gpu-exporter:kube-gpu-exporter"
        self.version = {"major": "1", "minor": "34", "gitVersion": "v1.34.1-fake", "platform": "linux/amd64"}
        self._held: dict[str, asyncio.Event] = {}
        self._in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self._stalled = False
        self._short_watches = False
        self.bookmarks_sent = 0
        self.requests: list[tuple[str, str]] = []  # (method, path_qs), for assertions
        self.calls: list[Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeKubeApi":
        started = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-kube-api", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    def _make_tls(self, tls_dir: Path) -> ssl.SSLContext:
        """A self-signed certificate for 127.0.0.1 (also its own CA), made with openssl."""
        tls_dir.mkdir(parents=True, exist_ok=True)
        cert, key = tls_dir / "ca.crt", tls_dir / "server.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,IP:::1"],
            check=True, capture_output=True,
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.ca_cert_path = cert
        return ctx

    async def _start_server(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v1/pods", self._list_pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._list_pods)
        app.router.add_get("/apis/resource.k8s.io/v1/resourceslices", self._list_slices)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get_object)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/{plural}/{name}", self._get_object)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/{plural}/{name}", self._get_object)
        app.router.add_get("/version", self._version)
        app.router.add_post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", self._access_review)
        app.router.add_post("/apis/authentication.k8s.io/v1/selfsubjectreviews", self._self_review)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self._ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self._ssl else 'http'}://{host}:{self.port}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self._close_watches)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def write_kubeconfig(self, path: str | Path, *, token: str | None = None) -> Path:
        """Write a kubeconfig pointing at this server (with its CA certificate when it serves
        HTTPS; with a bearer ``token`` when given); returns its path."""
        path = Path(path)
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_cert_path is not None:
            cluster["certificate-authority"] = str(self.ca_cert_path)
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": cluster}],
                    "users": [{"name": "fake", "user": {"token": token} if token else {}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        self.kubeconfig_path = path
        return path

    def _call(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` in the loop thread and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    # -- state changes (any thread) ------------------------------------------------------------

    def add_pod(self, pod: dict) -> dict:
        """Add a pod (or replace one with the same namespace/name: MODIFIED)."""
        return self._call(self._put, "Pod", copy.deepcopy(pod))

    update_pod = add_pod

    def delete_pod(self, namespace: str, name: str) -> bool:
        return self._call(self._delete, "Pod", namespace, name)

    def add_replicaset(self, namespace: str, name: str, owner: tuple[str, str] | None = None) -> dict:
        """A ReplicaSet; ``owner=("Deployment", "web")`` makes it a Deployment's."""
        return self._call(self._put, "ReplicaSet", make_owned("ReplicaSet", namespace, name, owner))

    def add_job(self, namespace: str, name: str, owner: tuple[str, str] | None = None) -> dict:
        """A Job; ``owner=("CronJob", "nightly")`` makes it a CronJob's."""
        return self._call(self._put, "Job", make_owned("Job", namespace, name, owner))

    def add_object(self, obj: dict) -> dict:
        """Any object of a kind in :data:`KINDS`."""
        return self._call(self._put, obj["kind"], copy.deepcopy(obj))

    def delete_object(self, kind: str, namespace: str, name: str) -> bool:
        return self._call(self._delete, kind, namespace, name)

    def set_down(self, down: bool = True, *, status: int | None = None) -> None:
        """API server down: drop connections (``status=None``) or answer ``status`` to every
        request. Open watches are cut either way. ``set_down(False)`` brings it back."""
        self._call(self._set_down, down, status)

    def set_resource_error(self, plural: str, status: int | None) -> None:
        """Answer ``status`` (e.g. 403) to GETs of one resource ("replicasets", "jobs",
        "pods"...); None clears it."""
        def change() -> None:
            if status:
                self._resource_errors[plural] = status
            else:
                self._resource_errors.pop(plural, None)

        self._call(change)

    def deny(self, plural: str, *verbs: str) -> None:
        """SelfSubjectAccessReviews of ``verbs`` (all verbs when none) on ``plural`` answer not
        allowed, as for a ClusterRole without that rule."""
        self._call(self._denied.update, {(plural, verb) for verb in verbs or ("*",)})

    def expire_watches(self) -> None:
        """Forget the event history and end open watches: the next watch from an older
        resourceVersion gets 410 Gone (what a compacted etcd does)."""
        self._call(self._expire)

    def drop_watches(self) -> None:
        """Cut every open watch's connection (a disconnect; the history stays)."""
        self._call(self._close_watches)

    def end_watches_at_once(self, short: bool = True) -> None:
        """New watches are answered 200 and ended at once, without an event (a broken proxy)."""
        def change() -> None:
            self._short_watches = short

        self._call(change)

    def stall_watches(self, stalled: bool = True) -> None:
        """Open watches (and new ones) send nothing, not even bookmarks, until unstalled."""
        def change() -> None:
            self._stalled = stalled

        self._call(change)

    def hold(self, plural: str) -> None:
        """GETs of one resource ("jobs", "replicasets") wait until :meth:`release`."""
        self._call(lambda: self._held.setdefault(plural, asyncio.Event()))

    def release(self, plural: str) -> None:
        def change() -> None:
            event = self._held.pop(plural, None)
            if event is not None:
                event.set()

        self._call(change)

    def accept_tokens(self, *tokens: str) -> None:
        """The bearer tokens it takes from now on (a rotation: the new one, then the old one no more)."""
        def change() -> None:
            self.tokens = frozenset(tokens)
            self.token = tokens[0] if tokens else None

        self._call(change)

    def count(self, verb: str | None = None, resource: str | None = None) -> int:
        """Requests of a verb (list, watch, get) and resource so far; None: any."""
        return sum(1 for c in list(self.calls)
                   if (verb is None or c.verb == verb) and (resource is None or c.resource == resource))

    def counts(self) -> Counter[tuple[str, str]]:
        """(verb, resource) -> requests so far."""
        return Counter((c.verb, c.resource) for c in list(self.calls))

    def pods(self) -> list[dict]:
        return self._call(lambda: [copy.deepcopy(o) for (k, _, _), o in self._objects.items()
                                   if k == "Pod"])

    @property
    def resource_version(self) -> int:
        return self._rv

    def request_count(self, path_prefix: str) -> int:
        return sum(1 for _, p in list(self.requests) if p.startswith(path_prefix))

    def watching_since(self, resource_version: int) -> bool:
        """Whether a pod watch is open from ``resource_version`` or later. A client that lists,
        then watches from the list's resourceVersion, has thus finished a list made since the
        server was at ``resource_version``."""
        return self._call(lambda: any(
            int(r.query.get("resourceVersion") or 0) >= resource_version
            for r in self._open_watches.values() if r.path.endswith("/pods")
        ))

    def open_watches(self) -> int:
        """Watches open now (what the API server holds for its clients)."""
        return self._call(lambda: len(self._open_watches))

    def watching_slices_since(self, resource_version: int) -> bool:
        """:meth:`watching_since` for the ResourceSlice watch."""
        return self._call(lambda: any(
            int(r.query.get("resourceVersion") or 0) >= resource_version
            for r in self._open_watches.values() if r.path.endswith("/resourceslices")
        ))

    # -- loop-thread internals -------------------------------------------------------------

    def _put(self, kind: str, obj: dict) -> dict:
        obj.setdefault("kind", kind)  # watches tell kinds apart by it
        meta = obj.setdefault("metadata", {})
        key = (kind, meta.get("namespace", ""), meta["name"])
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("uid", str(uuid.uuid4()))
        event = "MODIFIED" if key in self._objects else "ADDED"
        self._objects[key] = obj
        if kind in _WATCHED:
            self._emit(event, obj)
        return copy.deepcopy(obj)

    def _delete(self, kind: str, namespace: str, name: str) -> bool:
        obj = self._objects.pop((kind, namespace, name), None)
        if obj is None:
            return False
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if kind in _WATCHED:
            self._emit("DELETED", obj)
        return True

    def _emit(self, event_type: str, obj: dict) -> None:
        item = (self._rv, event_type, copy.deepcopy(obj))
        self._history.append(item)
        for queue in self._watchers:
            queue.put_nowait(item)

    def _expire(self) -> None:
        self._history.clear()
        self._rv += 1  # as if other objects changed since: any client's rv is now too old
        self._history_floor = self._rv
        for queue in self._watchers:
            queue.put_nowait(None)  # end of stream

    def _set_down(self, down: bool, status: int | None) -> None:
        self._down = down
        self._down_status = status
        if down:
            self._close_watches()

    def _close_watches(self) -> None:
        for request in list(self._open_watches.values()):
            if request.transport is not None:
                request.transport.abort()
        for queue in self._watchers:
            queue.put_nowait(None)

    # -- HTTP ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.calls.append(self._classify(request))
        auth = request.headers.get("Authorization")
        self.authorizations.append(auth)
        scheme, _, credentials = (auth or "").partition(" ")
        if self.tokens and (scheme.lower() != "bearer" or credentials not in self.tokens):
            return self._error(401, "Unauthorized")
        if self._down:
            if self._down_status is None:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=503)  # never reaches the client
            return self._error(self._down_status, "fake API server failure")
        return await handler(request)

    @staticmethod
    def _classify(request: web.Request) -> Call:
        parts = request.path.strip("/").split("/")
        query = dict(request.query)
        if "name" in request.match_info:
            verb, resource = "get", request.match_info.get("plural", "pods")
        else:
            verb = "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
            resource = parts[-1] if parts else ""
        return Call(verb, resource, query.get("resourceVersion"), request.path, query)

    @staticmethod
    def _error(code: int, message: str, causes: tuple[str, ...] = ()) -> web.Response:
        return web.json_response(_status(code, _REASONS.get(code, "Unknown"), message, causes), status=code)

    async def _get_object(self, request: web.Request) -> web.Response:
        plural = request.match_info.get("plural", "pods")
        kind = _PLURAL_TO_KIND.get(plural)
        ns, name = request.match_info["ns"], request.match_info["name"]
        self._in_flight[plural] += 1
        self.max_in_flight[plural] = max(self.max_in_flight[plural], self._in_flight[plural])
        try:
            while (held := self._held.get(plural)) is not None:
                await held.wait()
        finally:
            self._in_flight[plural] -= 1
        if plural in self._resource_errors:
            return self._error(self._resource_errors[plural], f"{plural} is not allowed")
        obj = self._objects.get((kind, ns, name)) if kind else None
        if obj is None:
            return self._error(404, f'{plural} "{name}" not found')
        return web.json_response(obj)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(self.version)

    async def _access_review(self, request: web.Request) -> web.Response:
        review = await request.json()
        attributes = review["spec"]["resourceAttributes"]
        self.access_reviews.append(dict(attributes))
        plural, verb = attributes.get("resource", ""), attributes.get("verb", "")
        denied = ({(plural, verb), (plural, "*")} & self._denied
                  or self._resource_errors.get(plural) in (401, 403))
        review["status"] = {"allowed": not denied}
        if denied:
            review["status"]["reason"] = f'no rule grants {verb} on {plural}'
        return web.json_response(review, status=201)

    async def _self_review(self, request: web.Request) -> web.Response:
        review = await request.json()
        review["status"] = {"userInfo": {"username": self.username, "groups": ["system:serviceaccounts"]}}
        return web.json_response(review, status=201)

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "Pod")

    async def _list_slices(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "ResourceSlice")

    async def _list(self, request: web.Request, kind: str) -> web.StreamResponse:
        api_version, plural = KINDS[kind]
        if plural in self._resource_errors:
            return self._error(self._resource_errors[plural], f"{plural} is not allowed")
        q = request.query
        try:
            fields = _parse_selector(q.get("fieldSelector", ""))
            labels = _parse_selector(q.get("labelSelector", ""))
        except ValueError as exc:
            return self._error(400, str(exc))
        ns = request.match_info.get("ns")
        if ns is not None:
            fields.append(("metadata.namespace", "=", ns))

        def selected(obj: dict) -> bool:
            return obj.get("kind") == kind and _matches(obj, fields, labels)

        if q.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request, selected, kind)
        rv_text = q.get("resourceVersion", "")
        if rv_text not in ("", "0"):
            try:
                too_large = int(rv_text) > self._rv
            except ValueError:
                return self._error(400, f"bad resourceVersion {rv_text!r}")
            if too_large:
                return self._error(504, "Too large resource version", ("ResourceVersionTooLarge",))
        items = [o for (k, _, _), o in sorted(self._objects.items()) if k == kind and selected(o)]
        return web.json_response(
            {"apiVersion": api_version, "kind": f"{kind}List",
             "metadata": {"resourceVersion": str(self._rv)}, "items": items}
        )

    async def _watch(self, request: web.Request, selected: Callable[[dict], bool], kind: str) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        try:
            timeout = float(request.query.get("timeoutSeconds", "1800"))
        except ValueError:
            return self._error(400, "bad timeoutSeconds")
        queue: asyncio.Queue = asyncio.Queue()
        # Everything up to registering the queue runs without awaiting: no event is missed.
        if rv_text in ("", "0"):
            backlog = [(self._rv, "ADDED", copy.deepcopy(o))
                       for (k, _, _), o in sorted(self._objects.items()) if k in _WATCHED]
            gone = False
        else:
            try:
                rv = int(rv_text)
            except ValueError:
                return self._error(400, f"bad resourceVersion {rv_text!r}")
            gone = rv < self._history_floor
            backlog = [item for item in self._history if item[0] > rv]
        self._watchers.add(queue)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        self._open_watches[id(request)] = request
        try:
            await resp.prepare(request)
            if self._short_watches:
                await resp.write_eof()
                return resp
            if gone:
                status = _status(410, "Expired", f"too old resource version: {rv_text}")
                await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                return resp
            for _, etype, obj in backlog:
                if selected(obj):
                    await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
            loop = asyncio.get_running_loop()
            bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_seconds
            while True:
                while self._stalled and loop.time() < deadline:
                    await asyncio.sleep(0.02)
                now = loop.time()
                if now >= deadline:
                    break
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, wait))
                except asyncio.TimeoutError:
                    if bookmarks and not self._stalled:
                        await self._bookmark(resp, kind)
                        next_bookmark = loop.time() + self.bookmark_seconds
                    continue
                if item is None:
                    break
                _, etype, obj = item
                if selected(obj):
                    await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
            if bookmarks and not self._stalled and loop.time() >= deadline:
                await self._bookmark(resp, kind)  # the API server sends one right before the end
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self._watchers.discard(queue)
            self._open_watches.pop(id(request), None)
        return resp


    async def _bookmark(self, resp: web.StreamResponse, kind: str) -> None:
        api_version = KINDS[kind][0]
        event = {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                                                 "metadata": {"resourceVersion": str(self._rv)}}}
        await resp.write(json.dumps(event).encode() + b"\n")
        self.bookmarks_sent += 1


@pytest.fixture
def fake_kube_api(tmp_path_factory: pytest.TempPathFactory):
    """A started :class:`FakeKubeApi` with ``.url`` and ``.kubeconfig_path`` set."""
    api = FakeKubeApi().start()
    api.write_kubeconfig(tmp_path_factory.mktemp("kubeapi") / "kubeconfig")
    try:
        yield api
    finally:
        api.stop()
