"""GET and watch requests to the API server, answered as plain JSON.

The ``kubernetes`` package is the source of the configuration and the credentials (in-cluster
service account, kubeconfig files with their exec plugins and token refresh) and of the HTTP
request path (``kubernetes.client.rest.RESTClientObject``: urllib3 with the configuration's TLS,
proxy and timeouts). Nothing else of it is used: not the generated API methods (since
kubernetes 37, pydantic ``@validate_call`` functions whose schemas cost ~20 MB on the first
call), not ``ApiClient`` or ``watch.Watch`` (they import every API model: ``import kubernetes``
costs ~20 MB of RSS, more than the rest of the agent's Kubernetes work). Responses are read as
JSON and never turned into models.

To import only those modules, the packages ``kubernetes``, ``kubernetes.client``,
``kubernetes.config`` and ``kubernetes.utils`` are entered without running their ``__init__``
(which imports everything): :func:`_kubernetes` puts lazy package objects in ``sys.modules``
that run the real ``__init__`` the first time any other code asks one of them for a name it
defines, so ``from kubernetes import client; client.CoreV1Api`` elsewhere in the process still
works (and then pays for the whole package). Measured in docs/performance.md: +2 MB in-cluster,
+8 MB with a kubeconfig file, against +21 MB for ``import kubernetes``. kubernetes is pinned
below 38 in pyproject.toml; ``tests/test_kube.py`` runs this path against a fake API server,
``tests/test_kube_imports.py`` checks what it imports and that the package stays whole.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import socket
import sys
import threading
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote, urlencode

from ... import __version__


class InvalidResponse(Exception):
    """The API server answered something that is not what the API promises."""


class KubeApi:
    """Authenticated GETs with the configuration of a kubeconfig file, or the in-cluster one
    (the pod's service account) when ``kubeconfig`` is None. Loading it raises when it cannot
    (no service account, a bad kubeconfig)."""

    def __init__(self, kubeconfig: str | None, request_timeout: float) -> None:
        k = _kubernetes("kubernetes.client.configuration", "kubernetes.client.rest",
                        "kubernetes.client.exceptions",
                        "kubernetes.config.incluster_config" if kubeconfig is None else "kubernetes.config.kube_config")
        cfg = k["kubernetes.client.configuration"].Configuration()
        # No urllib3-level retries (each logs a warning): the watch loop retries with backoff.
        cfg.retries = False
        if kubeconfig is None:
            k["kubernetes.config.incluster_config"].load_incluster_config(client_configuration=cfg)
        else:
            k["kubernetes.config.kube_config"].load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self._config = cfg
        self._rest = k["kubernetes.client.rest"].RESTClientObject(cfg)
        self._api_exception = k["kubernetes.client.exceptions"].ApiException
        self.request_timeout = request_timeout

    def get(
        self,
        resource_path: str,
        *,
        path_params: Mapping[str, str] | None = None,
        query: list[tuple[str, str]] | None = None,
        request_timeout: Any = None,
    ) -> Any:
        """GET with the loaded configuration's auth, TLS and proxy, and return the urllib3
        response, body unread: the caller reads ``.data`` or streams it, then releases it. A
        status other than 2xx raises ``ApiException`` (body read, connection released), as the
        generated API methods do."""
        for name, value in (path_params or {}).items():
            resource_path = resource_path.replace("{%s}" % name, quote(str(value), safe=""))
        url = self._config.host + resource_path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": f"kube-gpu-exporter/{__version__}"}
        for auth in self._config.auth_settings().values():  # calls the token refresh hook
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        resp = self._rest.request("GET", url, headers=headers, _request_timeout=request_timeout).response
        if not 200 <= resp.status <= 299:
            try:  # NotFoundException, ForbiddenException, ... (ApiException subclasses)
                raise self._api_exception.from_response(http_resp=resp, body=None, data=None)
            finally:
                resp.release_conn()
        return resp

    def get_json(self, resource_path: str, **kwargs: Any) -> Any:
        """:meth:`get` within ``request_timeout``, the body parsed as JSON."""
        resp = self.get(resource_path, request_timeout=self.request_timeout, **kwargs)
        try:
            data = resp.data
        finally:
            resp.release_conn()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidResponse(f"{resource_path} is not JSON: {exc}") from exc

    def close(self) -> None:
        self._rest.close()


class Watch:
    """The part of ``kubernetes.watch.Watch`` the watchers use, without the models it imports.

    ``Watch(return_type=...).stream(func, **kwargs)`` calls ``func(watch=True,
    _preload_content=False, **kwargs)`` (a function returning the urllib3 response of a watch
    request, such as one built on :meth:`KubeApi.get`) and yields its events as dicts with
    ``type``, ``object`` and ``raw_object`` (the same dict). An ``ERROR`` event raises
    ``ApiException`` with its code (410 Gone: relist). With ``timeout_seconds`` the stream ends
    when the server ends it; without, it resumes from the last resourceVersion seen (once after
    a 410), as the kubernetes client does. :meth:`stop` ends it from another thread, also while
    it waits for the next event.
    """

    def __init__(self, return_type: Any = None) -> None:  # events are plain dicts whatever the type
        self._stop = False
        self._resp: Any = None
        self.resource_version: str | None = None

    def stream(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        api_exception = _kubernetes("kubernetes.client.exceptions")["kubernetes.client.exceptions"].ApiException
        self._stop = False
        kwargs["watch"] = True
        kwargs["_preload_content"] = False
        self.resource_version = kwargs.get("resource_version")
        resume = "timeout_seconds" not in kwargs  # with a timeout, return within it
        retried_after_gone = False
        while True:
            resp = self._resp = func(*args, **kwargs)
            try:
                for line in _lines(resp):
                    try:
                        event = json.loads(line)
                        event["raw_object"] = obj = event["object"]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise InvalidResponse(f"watch event is not an event: {line[:200]!r}") from exc
                    if event.get("type") == "ERROR":
                        code = obj.get("code") if isinstance(obj, Mapping) else None
                        if resume and not retried_after_gone and code == 410:
                            retried_after_gone = True
                            break
                        reason = f"{obj.get('reason')}: {obj.get('message')}" if isinstance(obj, Mapping) else obj
                        raise api_exception(status=code, reason=reason)
                    retried_after_gone = False
                    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
                    if isinstance(metadata, Mapping) and metadata.get("resourceVersion"):
                        self.resource_version = metadata["resourceVersion"]
                    yield event
                    if self._stop:
                        break
            finally:
                self._resp = None
                resp.close()
                resp.release_conn()
            if self._stop or not resume or self.resource_version is None:
                return
            kwargs["resource_version"] = self.resource_version

    def stop(self) -> None:
        self._stop = True
        resp = self._resp
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            try:  # unblock a read waiting for the next event (a TLS read holds its lock)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _lines(resp: Any) -> Iterator[str]:
    """The non-empty lines of a streamed response (one JSON event each)."""
    buffer = bytearray()
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) != -1:
            line = buffer[:end].decode("utf-8", errors="replace").strip()
            del buffer[:end + 1]
            if line:
                yield line
    if buffer.strip():
        yield buffer.decode("utf-8", errors="replace").strip()


# -- importing a few modules of the kubernetes package ------------------------------------------

_LAZY_PACKAGES = ("kubernetes", "kubernetes.client", "kubernetes.config", "kubernetes.utils")
_import_lock = threading.RLock()  # re-entered when one package's __init__ needs another


class _LazyPackage(types.ModuleType):
    """A package whose ``__init__`` has not run yet: its submodules import without it, and it
    runs (once, in this module's namespace) when code asks the package for any other name."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(name)
        init = directory / "__init__.py"
        self.__path__ = [str(directory)]
        self.__file__ = str(init)
        self.__package__ = name
        self.__spec__ = importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(directory)])

    def __getattr__(self, attr: str) -> Any:
        state = self.__dict__
        if attr.startswith("__") or state.get("_kge_initialised"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        with _import_lock:
            if not state.get("_kge_initialised"):
                state["_kge_initialised"] = True
                code = compile(Path(state["__file__"]).read_bytes(), state["__file__"], "exec")
                exec(code, state)  # noqa: S102 - the package's own __init__, as an import would run it
        if attr in state:
            return state[attr]
        if callable(hook := state.get("__getattr__")):  # the package's own lazy names (PEP 562)
            return hook(attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _ApiClient:
    """Stands for ``kubernetes.client.ApiClient`` (which imports every model) until used:
    ``kube_config`` imports the name but only ``new_client_from_config`` calls it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("kubernetes.client.api_client").ApiClient(*args, **kwargs)


def _kubernetes(*modules: str) -> dict[str, types.ModuleType]:
    """Import ``modules`` (of the kubernetes package) without the packages' ``__init__``."""
    with _import_lock:
        if "kubernetes" not in sys.modules:
            spec = importlib.util.find_spec("kubernetes")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("the kubernetes package is not installed")
            root = Path(list(spec.submodule_search_locations)[0])
            for name in _LAZY_PACKAGES:
                package = _LazyPackage(name, root.joinpath(*name.split(".")[1:]))
                sys.modules[name] = package
                parent, _, child = name.rpartition(".")
                if parent:
                    setattr(sys.modules[parent], child, package)
        client = sys.modules["kubernetes.client"]
        lazy = isinstance(client, _LazyPackage) and not client.__dict__.get("_kge_initialised")
        if lazy:  # what kube_config imports from the package: the class, and a stand-in
            client.Configuration = importlib.import_module(  # type: ignore[attr-defined]
                "kubernetes.client.configuration").Configuration
            client.ApiClient = _ApiClient  # type: ignore[attr-defined]
        try:
            return {name: importlib.import_module(name) for name in modules}
        finally:
            if lazy and client.__dict__.get("ApiClient") is _ApiClient:
                del client.ApiClient  # later users get the real class from the package
