"""The API server rows (``--kubernetes.enabled``): the configuration, ``/version``, who the agent
is, and whether it may do what it needs, asked with ``SelfSubjectAccessReview``s.

A few requests of its own, not the agent's watch client: the same configuration (in-cluster: the
pod's service account and ``KUBERNETES_SERVICE_HOST``/``_PORT``; or ``--kubernetes.kubeconfig``,
read with the ``kubernetes`` package) and aiohttp, each request within ``REQUEST_SECONDS``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .. import __version__
from ..config import Config
from ..sources.base import run_in_daemon_thread
from ..sources.kube import api as api_client
from ..sources.kube.api import Credentials
from .report import DEGRADED, FAILED, OK, SKIPPED, Check

#: Seconds one request may take.
REQUEST_SECONDS = 5.0
#: Where the kubelet puts the pod's service account token and the cluster's CA.


@dataclass(frozen=True, slots=True)
class Access:
    """What the agent does with one resource, and what it loses without it."""

    resource: str
    group: str
    verbs: tuple[str, ...]
    required: bool  # without it the source cannot work at all (failed), else degraded
    loses: str

    @property
    def rule(self) -> str:
        verbs = ", ".join(f'"{v}"' for v in self.verbs)
        return f'{{apiGroups: ["{self.group}"], resources: ["{self.resource}"], verbs: [{verbs}]}}'


#: Every request the agent makes, by resource (sources/kube: the pod watch, the owners, the
#: ResourceSlice watch); tests/test_check.py holds daemonset.yaml's ClusterRole to it.
PODS = Access("pods", "", ("list", "watch"), True, "there is no pod watch: no workload and no pod label on any series")
ACCESS = (
    PODS,
    Access("replicasets", "apps", ("get",), False, "a Deployment's pods show their ReplicaSet as the workload"),
    Access("jobs", "batch", ("get",), False, "a CronJob's pods show their Job as the workload"),
)
SLICES = Access("resourceslices", "resource.k8s.io", ("list", "watch"), False,
                "there is no ResourceSlice watch: DRA claim devices on MIG instances cannot be named")


def accesses(config: Config) -> tuple[Access, ...]:
    """What this configuration needs: ResourceSlices only when DRA claims are attributed."""
    slices = config.kubelet_enabled and bool(config.dra_drivers)
    return ACCESS + ((SLICES,) if slices else ())


class ConfigProblem(Exception):
    def __init__(self, seen: str, cause: str, fix: str) -> None:
        super().__init__(seen)
        self.seen, self.cause, self.fix = seen, cause, fix


@dataclass(frozen=True, slots=True)
class Target:
    """Where the check sends its requests: the agent's own credentials (sources/kube/api.py)."""

    url: str
    credentials: Credentials
    how: str  # for the row: "in-cluster (service account ...)", "kubeconfig <path>"


def in_cluster(environ: dict[str, str], directory: str | None = None) -> Target:
    """The pod's own configuration, read as the agent reads it (``InCluster``), each way it can be
    missing turned into its cause and fix."""
    directory = directory or str(api_client.SERVICE_ACCOUNT_DIR)
    try:
        credentials = api_client.InCluster(environ, directory)
    except RuntimeError as exc:  # not in a pod (no KUBERNETES_SERVICE_*), or an empty token
        if "KUBERNETES_SERVICE_HOST" in str(exc):
            raise ConfigProblem("no in-cluster configuration: KUBERNETES_SERVICE_HOST/PORT are not set",
                                "not run inside a pod", "run it in the agent's pod (`kubectl exec "
                                "ds/kube-gpu-exporter -n kube-gpu-exporter -- kube-gpu-exporter check`), or give "
                                "--kubernetes.kubeconfig") from None
        raise ConfigProblem(f"no service account token: {exc}", "the pod has no service account token mounted",
                            "automountServiceAccountToken: true in the pod (daemonset.yaml)") from None
    except OSError as exc:
        what = "token" if str(exc.filename or "").endswith("token") else "CA"
        raise ConfigProblem(f"no service account {what}: {exc.strerror or exc} ({exc.filename})",
                            f"the pod has no service account {what} mounted",
                            "automountServiceAccountToken: true in the pod (daemonset.yaml)") from None
    except ssl.SSLError as exc:
        raise ConfigProblem(f"cannot load the cluster's CA ({directory}/ca.crt): {exc}",
                            "the service account's CA file is not PEM",
                            "automountServiceAccountToken: true in the pod (daemonset.yaml)") from None
    try:
        namespace = Path(directory, "namespace").read_text().strip()
    except OSError:
        namespace = ""
    return Target(credentials.server, credentials, f"in-cluster, service account token of namespace {namespace or '?'}")


def from_kubeconfig(path: str) -> Target:
    """The configuration the agent reads from ``path`` with the ``kubernetes`` package (its exec
    plugins too)."""
    try:
        credentials = api_client.Kubeconfig(path)
    except Exception as exc:  # noqa: BLE001 - ConfigException, a YAML error, an exec plugin that failed
        raise ConfigProblem(f"cannot load kubeconfig {path}: {exc}", "the kubeconfig file or its credentials",
                            "`kubectl --kubeconfig <file> version` shows the same problem") from None
    return Target(credentials.server, credentials, f"kubeconfig {path}")


def _skipped(reason: str, config: Config) -> list[Check]:
    rows = [Check("api.config", "API server config", SKIPPED, reason),
            Check("api.version", "API server version", SKIPPED, reason)]
    return rows + [Check(f"api.access.{a.resource}", f"API access {a.resource}", SKIPPED, reason)
                   for a in accesses(config)]


async def check_api_server(config: Config, *, simulated: bool = False,
                           environ: dict[str, str] | None = None) -> list[Check]:
    if not config.kubernetes_enabled:
        return [Check("api", "API server", SKIPPED, "off: --kubernetes.enabled not set (no workloads, no pod labels)")]
    if simulated:
        return [Check("api", "API server", OK, "the scenario plays the API server (its pods and workloads): no "
                      "request is made, no RBAC to check", simulated=True)]
    load = run_in_daemon_thread(
        (lambda: from_kubeconfig(config.kubeconfig)) if config.kubeconfig else
        (lambda: in_cluster(dict(os.environ if environ is None else environ))), name="check-api-config")
    await asyncio.wait([load], timeout=REQUEST_SECONDS)
    if not load.done():
        problem = ConfigProblem(f"loading the configuration did not end within {REQUEST_SECONDS:g}s",
                                "a kubeconfig exec plugin that does not return", "run it by hand and see")
    else:
        problem = load.exception() if isinstance(load.exception(), ConfigProblem) else None
        if load.exception() is not None and problem is None:
            error = load.exception()
            problem = ConfigProblem(f"cannot load the configuration: {error}", "the configuration files",
                                    "see the message")
    if problem is not None:
        rest = _skipped("no configuration", config)[1:]
        return [Check("api.config", "API server config", FAILED, problem.seen, problem.cause, problem.fix), *rest]
    target: Target = load.result()
    rows = [Check("api.config", "API server config", OK, f"{target.how}: {target.url}",
                  details={"url": target.url, "how": target.how})]
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    headers = {**await target.credentials.headers(), "User-Agent": f"kube-gpu-exporter-check/{__version__}",
               "Accept": "application/json"}
    tls = target.credentials.ssl_context()
    async with aiohttp.ClientSession(timeout=timeout, headers=headers,
                                     connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True)) as session:
        api = _Api(session, target.url)
        version = await _version_check(api, target)
        rows.append(version)
        if version.status != OK:
            return rows + _skipped("the API server did not answer", config)[2:]
        rows += await asyncio.gather(*(_access_check(api, a) for a in accesses(config)))
    return rows


@dataclass(frozen=True, slots=True)
class _Api:
    session: aiohttp.ClientSession
    url: str  # the server, perhaps with a path (an API proxy's)


async def _request(api: _Api, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with api.session.request(method, api.url + path, json=body) as response:
        try:
            data = await response.json(content_type=None)
        except ValueError:
            data = None
        return response.status, data


async def _version_check(api: _Api, target: Target) -> Check:
    id_, title = "api.version", "API server version"
    try:
        status, data = await _request(api, "GET", "/version")
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        return Check(id_, title, FAILED, f"TLS: {exc}", "the CA does not verify the API server's certificate",
                     "the service account's ca.crt (projected by the kubelet), or the kubeconfig's "
                     "certificate-authority")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Check(id_, title, FAILED, f"cannot reach {target.url}: {exc or type(exc).__name__}",
                     "no connection to the API server from this pod",
                     "a NetworkPolicy or firewall between the node and the API server; in-cluster, the address of "
                     "the kubernetes Service (KUBERNETES_SERVICE_HOST)")
    if status == 401:
        return Check(id_, title, FAILED, "401 Unauthorized", "the API server does not accept the credentials",
                     "an expired or revoked token (the kubelet rotates the projected token: restart the pod), or "
                     "the kubeconfig's credentials")
    if status != 200 or not isinstance(data, dict):
        return Check(id_, title, FAILED, f"/version answered HTTP {status}", "not a Kubernetes API server, or one "
                     "that refuses even /version", "check the URL and the credentials")
    user = await _username(api)
    seen = f"Kubernetes {data.get('gitVersion', '?')}" + (f", authenticated as {user}" if user else "")
    return Check(id_, title, OK, seen, details={"version": data, "username": user})


async def _username(api: _Api) -> str:
    """Who the credentials are (SelfSubjectReview, Kubernetes 1.28+); "" where it cannot tell."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        status, data = await _request(api, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""
    if status not in (200, 201) or not isinstance(data, dict):
        return ""
    return str(((data.get("status") or {}).get("userInfo") or {}).get("username") or "")


async def _allowed(api: _Api, access: Access, verb: str) -> bool | str:
    """Whether the credentials may ``verb`` the resource in every namespace; a string says why it
    could not be asked."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "group": access.group, "resource": access.resource}}}
    try:
        status, data = await _request(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return f"{exc or type(exc).__name__}"
    if status not in (200, 201) or not isinstance(data, dict):
        return f"HTTP {status}"
    return bool((data.get("status") or {}).get("allowed"))


async def _access_check(api: _Api, access: Access) -> Check:
    id_, title = f"api.access.{access.resource}", f"API access {access.resource}"
    answers = dict(zip(access.verbs, await asyncio.gather(*(_allowed(api, access, v) for v in access.verbs))))
    details = {"group": access.group, "resource": access.resource, "verbs": {
        v: a if isinstance(a, bool) else None for v, a in answers.items()}}
    unknown = {v: a for v, a in answers.items() if not isinstance(a, bool)}
    denied = [v for v, a in answers.items() if a is False]
    where = f"{access.resource}{'.' + access.group if access.group else ''}"
    if unknown:
        why = "; ".join(f"{v}: {a}" for v, a in unknown.items())
        return Check(id_, title, DEGRADED, f"{where}: could not ask ({why})",
                     "the API server did not answer the SelfSubjectAccessReview",
                     "SelfSubjectAccessReviews are open to every authenticated user by default (system:basic-user); "
                     "see the API server's audit log", details=details)
    if denied:
        return Check(id_, title, FAILED if access.required else DEGRADED,
                     f"{where}: {', '.join(denied)} denied" + (
                         f"; {', '.join(v for v in access.verbs if v not in denied)} allowed"
                         if len(denied) < len(access.verbs) else ""),
                     f"the service account may not {'/'.join(denied)} {access.resource}: without it, {access.loses}",
                     f"add {access.rule} to the ClusterRole kube-gpu-exporter and bind it to the agent's service "
                     "account (daemonset.yaml: ClusterRole and ClusterRoleBinding)", details=details)
    return Check(id_, title, OK, f"{where}: {', '.join(access.verbs)} allowed", details=details)
