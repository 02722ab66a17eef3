"""GET requests to the API server, answered as plain JSON.

Of the ``kubernetes`` package only the configuration loading, the ``ApiClient``'s low-level
request path (``param_serialize`` + ``call_api``, kubernetes >= 37) and ``watch.Watch`` are used,
never the generated ``CoreV1Api``/``AppsV1Api``/``BatchV1Api`` methods: since kubernetes 37
those are pydantic ``@validate_call`` functions whose validation schemas, built on the first
call, cost about 20 MB of memory. Responses are read as JSON, never turned into models.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


class InvalidResponse(Exception):
    """The API server answered something that is not what the API promises."""


class KubeApi:
    """Authenticated GETs with the configuration of a kubeconfig file, or the in-cluster one
    (the pod's service account) when ``kubeconfig`` is None. Loading it raises when it cannot
    (no service account, a bad kubeconfig)."""

    def __init__(self, kubeconfig: str | None, request_timeout: float) -> None:
        from kubernetes import client, config  # lazily: only when the feature is on

        cfg = client.Configuration()
        # No urllib3-level retries (each logs a warning): the watch loop retries with backoff.
        cfg.retries = False
        if kubeconfig is None:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self._client = client.ApiClient(configuration=cfg)
        self.request_timeout = request_timeout

    def get(
        self,
        resource_path: str,
        *,
        path_params: Mapping[str, str] | None = None,
        query: list[tuple[str, str]] | None = None,
        request_timeout: Any = None,
    ) -> Any:
        """GET through the ApiClient's low-level path (auth, TLS, proxy from the loaded config)
        and return the urllib3 response, body unread: the caller reads ``.data`` or streams it,
        then releases it. A status other than 2xx raises ``ApiException`` (body read, connection
        released), as the generated API methods do."""
        from kubernetes.client.exceptions import ApiException

        request = self._client.param_serialize(
            method="GET",
            resource_path=resource_path,
            path_params=dict(path_params) if path_params else None,
            query_params=list(query or ()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],  # the name Configuration.auth_settings() uses
        )
        resp = self._client.call_api(*request, _request_timeout=request_timeout).response
        if not 200 <= resp.status <= 299:
            try:  # NotFoundException, ForbiddenException, ... (ApiException subclasses)
                raise ApiException.from_response(http_resp=resp, body=None, data=None)
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
        self._client.close()
