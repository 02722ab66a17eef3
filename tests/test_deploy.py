"""The deployment files: valid, least-privileged, and in agreement with the agent.

- ``daemonset.yaml`` and everything ``kubectl kustomize`` builds validate against the Kubernetes
  schemas (``kubernetes-validate``) and, for prometheus-operator kinds, against the operator's
  CRD schemas shipped in ``tests/deploy/crds`` (strict: an unknown field is an error, as the API
  server's field validation makes it).
- Each security and scheduling property of the DaemonSet is asserted, so that an edit cannot
  drop one silently.
- The agent is started with the DaemonSet's own args and env (simulated backend, host paths and
  the port mapped to temporary ones) and answers the probes on the port the Service names; the
  Dockerfile's ENTRYPOINT plus those args is a command line the agent accepts, and what its build
  stage copies builds the package (no Docker engine here: hadolint lints the Dockerfile).
- The GKE patch applies (`kubectl patch --local`) and gives a valid DaemonSet; the guide shows
  the tested scrape config and links only to what exists.
- A real Prometheus scrapes it through our scrape config and through the ServiceMonitor's
  relabelling: the series carry ``node`` and the holders' ``namespace``/``pod``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import wait_until
from e2e import free_port
from exporter import __version__
from exporter.config import ENV_PREFIX, parse_config

ROOT = Path(__file__).resolve().parent.parent
DAEMONSET_FILE = ROOT / "daemonset.yaml"
SERVICEMONITOR_FILE = ROOT / "deploy" / "servicemonitor.yaml"
SCRAPE_CONFIG_FILE = ROOT / "deploy" / "prometheus-scrape-config.yaml"
CRD_DIR = Path(__file__).resolve().parent / "deploy" / "crds"
# The oldest Kubernetes minor docs/deploy.md supports, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NODE_NAME = "gpu-node-1"  # what the downward API would give NODE_NAME in the tests


def _tool(name: str) -> str:
    """A binary from the test extras (installed next to this Python), else from PATH."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the test extras (pip install -e '.[test]')")
    return found


def _load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def manifest() -> list[dict[str, Any]]:
    return _load_all(DAEMONSET_FILE.read_text())


@pytest.fixture(scope="module")
def kustomized() -> list[dict[str, Any]]:
    result = subprocess.run([_tool("kubectl"), "kustomize", str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return _load_all(result.stdout)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def daemonset(manifest) -> dict[str, Any]:
    return _one(manifest, "DaemonSet")


@pytest.fixture(scope="module")
def pod(daemonset) -> dict[str, Any]:
    return daemonset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict[str, Any]:
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


# -- Validity ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_documents_validate_against_kubernetes_schemas(kustomized, version):
    built_in = [d for d in kustomized if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in built_in} >= {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                            "Service", "DaemonSet"}
    for doc in built_in:
        kubernetes_validate.validate(doc, version, strict=True)


def test_daemonset_yaml_needs_no_crd(manifest, kustomized):
    """`kubectl apply -f daemonset.yaml` works on a vanilla cluster (every kind is built in: a
    CRD kind has no schema there); the kustomization builds on it unchanged."""
    for doc in manifest:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        assert doc in kustomized, f"{doc['kind']} {doc['metadata']['name']} changed by the kustomization"


def _strict(schema: Any) -> Any:
    """An OpenAPI schema of a CRD with unknown fields refused, as the API server's strict field
    validation (kubectl's default) refuses them."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a validator of the shipped CRD's schema for that version."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object", "required": ["name", "namespace"]}
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            validators[key] = jsonschema.Draft7Validator(schema)
    return validators


def test_prometheus_operator_documents_validate_against_their_crds(kustomized, crd_validators):
    operator_docs = [d for d in kustomized if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert "ServiceMonitor" in {d["kind"] for d in operator_docs}
    for doc in operator_docs:
        validator = crd_validators.get((doc["apiVersion"], doc["kind"]))
        assert validator is not None, f"no CRD schema in {CRD_DIR} for {doc['apiVersion']} {doc['kind']}"
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def test_crd_validation_refuses_a_misspelt_field(crd_validators):
    servicemonitor = yaml.safe_load(SERVICEMONITOR_FILE.read_text())
    servicemonitor["spec"]["endpoints"][0]["honorlabels"] = True
    validator = crd_validators[("monitoring.coreos.com/v1", "ServiceMonitor")]
    assert any("honorlabels" in e.message for e in validator.iter_errors(servicemonitor))


#: Generated objects a user installs on purpose, not with `kubectl apply -k .`: file -> the doc
#: that says how (it must name the file in a kubectl command).
OPT_IN = {"alerts/dcgm-compat.prometheusrule.yaml": "docs/migrate-from-dcgm-exporter.md"}


def test_kustomization_lists_the_generated_rules_and_dashboards():
    """The PrometheusRule generated in alerts/ and the dashboards' ConfigMap in dashboards/ are
    installed by `kubectl apply -k .` as soon as they exist; an opt-in one is not, and its doc
    says how to apply it."""
    resources = yaml.safe_load((ROOT / "kustomization.yaml").read_text())["resources"]
    for path in sorted([*ROOT.glob("alerts/*.yaml"), *ROOT.glob("dashboards/*.yaml")]):
        kinds = {doc.get("kind") for doc in _load_all(path.read_text())}
        if kinds & {"PrometheusRule", "ConfigMap"}:
            relative = path.relative_to(ROOT).as_posix()
            if relative in OPT_IN:
                assert relative not in resources, f"{relative} is opt-in: not in kustomization.yaml"
                assert f"kubectl apply -f {relative}" in (ROOT / OPT_IN[relative]).read_text()
            else:
                assert relative in resources, f"kustomization.yaml: add {relative} under resources"


#: kubectl's client-side apply keeps each object, as JSON, in this annotation; the API server
#: refuses an object whose annotations pass 256 KiB together (TotalAnnotationSizeLimitB).
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ANNOTATIONS_LIMIT_BYTES = 256 * 1024


def _last_applied_annotations_bytes(doc: dict[str, Any]) -> int:
    """The annotations' size once a client-side apply has added its copy of ``doc``: Go's
    json.Marshal, compact, with <, > and & escaped (6 bytes each), as kubectl writes it."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    copy = len(text.encode()) + 5 * sum(text.count(c) for c in "<>&")
    annotations = doc["metadata"].get("annotations", {})
    return len(LAST_APPLIED) + copy + sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def test_every_object_fits_a_client_side_apply(kustomized):
    """docs/deploy.md applies the kustomization without --server-side: each object's copy in the
    last-applied annotation must fit the API server's 256 KiB. The dashboards' ConfigMap is the
    largest (its JSON escaped a second time inside the copy)."""
    sizes = {f"{d['kind']} {d['metadata']['name']}": _last_applied_annotations_bytes(d) for d in kustomized}
    assert max(sizes.values()) < ANNOTATIONS_LIMIT_BYTES, sizes
    configmap = sizes["ConfigMap kube-gpu-exporter-dashboards"]
    assert configmap == max(sizes.values()) and configmap > 64 * 1024, "the measure is of the real object"
    assert "apply --server-side" not in (ROOT / "docs" / "deploy.md").read_text()


def test_guide_shows_the_tested_files(container):
    guide = (ROOT / "docs" / "deploy.md").read_text()
    blocks = []
    for block in re.findall(r"```yaml\n(.*?)```", guide, re.DOTALL):
        try:
            blocks.append(yaml.safe_load(block))
        except yaml.YAMLError:
            continue  # a fragment of a manifest, shown in place
    assert yaml.safe_load(SCRAPE_CONFIG_FILE.read_text()) in blocks, "docs/deploy.md: the scrape config"
    assert f"s|image: {container['image']}|" in guide, "docs/deploy.md: the image replaced by the sed"


def test_one_scrape_job_for_a_plain_prometheus():
    """The scrape job is deploy/prometheus-scrape-config.yaml: the docs that tell a plain Prometheus
    how to scrape the agent (the guide, the alerts' setup, the fleet's settings) point at that file,
    and no doc shows a scrape job of its own (the guide shows the file itself, checked above)."""
    relative = SCRAPE_CONFIG_FILE.relative_to(ROOT).as_posix()
    for name in ("deploy.md", "alerts.md", "scaling.md"):
        assert relative in (ROOT / "docs" / name).read_text(), f"docs/{name} does not point at {relative}"
    file_job = yaml.safe_load(SCRAPE_CONFIG_FILE.read_text())
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.DOTALL):
            if "job_name:" in block:
                assert yaml.safe_load(block) == file_job, f"{doc.relative_to(ROOT)}: a scrape job other than {relative}"


def test_guide_links_resolve():
    """Every relative link of docs/deploy.md names a file that exists, and every #anchor within
    the guide a heading of it (GitHub's slugs)."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    slugs = {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
             for heading in re.findall(r"^#+ (.*)$", guide, re.MULTILINE)}
    for target in re.findall(r"\]\(([^)\s]+)\)", guide):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        if path:
            assert (ROOT / "docs" / path).exists(), f"docs/deploy.md links to a missing {path}"
        elif fragment:
            assert fragment in slugs, f"docs/deploy.md links to a missing heading #{fragment}"


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gke_patch_applies_and_gives_the_driver_from_the_host(daemonset, tmp_path):
    """deploy/gke-managed-drivers.patch.json, applied as docs/deploy.md says (kubectl patch, here
    --local), gives a valid DaemonSet that loads libnvidia-ml from GKE's driver directory."""
    original = tmp_path / "daemonset.yaml"
    original.write_text(yaml.safe_dump(daemonset))
    result = subprocess.run(
        [_tool("kubectl"), "patch", "--local", "-f", str(original), "--type=json",
         f"--patch-file={ROOT / 'deploy' / 'gke-managed-drivers.patch.json'}", "-o", "json"],
        capture_output=True, text=True, timeout=60, env=os.environ | {"KUBECONFIG": os.devnull})
    assert result.returncode == 0, result.stderr
    patched = json.loads(result.stdout)
    kubernetes_validate.validate(patched, KUBERNETES_VERSIONS[-1], strict=True)
    pod = patched["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "runtimeClassName" not in pod and container["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    driver = next(v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == "/home/kubernetes/bin/nvidia")
    assert mounts[driver["name"]]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LD_LIBRARY_PATH"] == mounts[driver["name"]]["mountPath"] + "/lib64"
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert "--patch-file deploy/gke-managed-drivers.patch.json" in guide


def test_hostpid_patch_applies_with_kustomize_and_kubectl_patch_and_changes_only_hostpid(daemonset, tmp_path):
    """deploy/hostpid.patch.yaml, the opt-in of docs/deploy.md#shared-gpus-and-hostpid: added to a
    kustomization beside daemonset.yaml (as the guide says), and through `kubectl patch`, it
    gives a valid DaemonSet that differs from the shipped one in hostPID alone."""
    patch = ROOT / "deploy" / "hostpid.patch.yaml"
    (tmp_path / "deploy").mkdir()
    shutil.copy(DAEMONSET_FILE, tmp_path / "daemonset.yaml")
    shutil.copy(patch, tmp_path / "deploy" / patch.name)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["daemonset.yaml"], "patches": [{"path": f"deploy/{patch.name}"}]}))
    built = subprocess.run([_tool("kubectl"), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    alone = tmp_path / "daemonset-alone.yaml"
    alone.write_text(yaml.safe_dump(daemonset))
    patched_by_kubectl = subprocess.run(
        [_tool("kubectl"), "patch", "--local", "-f", str(alone), f"--patch-file={patch}", "-o", "json"],
        capture_output=True, text=True, timeout=60, env=os.environ | {"KUBECONFIG": os.devnull})
    assert patched_by_kubectl.returncode == 0, patched_by_kubectl.stderr
    for patched in (_one(_load_all(built.stdout), "DaemonSet"), json.loads(patched_by_kubectl.stdout)):
        kubernetes_validate.validate(patched, KUBERNETES_VERSIONS[-1], strict=True)
        assert patched["spec"]["template"]["spec"].pop("hostPID") is True
        expected = json.loads(json.dumps(daemonset))
        del expected["spec"]["template"]["spec"]["hostPID"]
        assert patched == expected


def test_hostpid_is_off_and_every_document_says_why_the_same_way(pod):
    """daemonset.yaml, docs/deploy.md and docs/security.md agree: hostPID false by default, the
    patch as the opt-in, and the trade-off (uid 0 may signal root's processes) written down."""
    assert pod["hostPID"] is False
    anchor = "docs/deploy.md#shared-gpus-and-hostpid"
    manifest = DAEMONSET_FILE.read_text()
    assert anchor in manifest and "deploy/hostpid.patch.yaml" in manifest and "signal" in manifest
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert "\n## Shared GPUs and hostPID\n" in guide
    assert "--patch-file deploy/hostpid.patch.yaml" in guide and "path: deploy/hostpid.patch.yaml" in guide
    assert "every process whose uid is 0" in guide and "non-root uid" in guide
    security = (ROOT / "docs" / "security.md").read_text()
    assert "deploy.md#shared-gpus-and-hostpid" in security and "hostPID: false" in security
    assert "signal every root process of the node" in security
    assert anchor in (ROOT / "deploy" / "hostpid.patch.yaml").read_text()


# -- Policy: every property the deployment promises ------------------------------------------


def test_runs_only_on_gpu_nodes_and_tolerates_their_taint(pod):
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = {expr["key"] for term in terms for expr in term["matchExpressions"]}
    assert {"nvidia.com/gpu.present", "feature.node.kubernetes.io/pci-10de.present"} <= keys
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"


def test_sees_every_gpu_without_requesting_one(pod, container):
    assert pod["runtimeClassName"] == "nvidia"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    resources = container["resources"]
    assert not [name for part in resources.values() for name in part if "nvidia.com" in name]


def test_shares_no_host_namespace(pod):
    for field in ("hostPID", "hostNetwork", "hostIPC"):
        assert not pod.get(field), field
    assert not any("hostPort" in port for port in pod["containers"][0]["ports"])


def test_container_is_locked_down(pod, container):
    security = container["securityContext"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "procMount" not in security


def test_uid_0_only_for_the_kubelet_socket(container):
    """uid 0 (with no capability) is there only to connect to the kubelet's root-owned socket:
    with the pod-resources client switched off, the container must run as non-root."""
    security = container["securityContext"]
    if not parse_config(container["args"], _environment(container)).kubelet_enabled:
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    else:
        assert security["runAsUser"] == 0 and security["capabilities"] == {"drop": ["ALL"]}


def test_host_paths_are_read_only_and_only_those_the_agent_reads(pod, container):
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert sorted(host_paths.values()) == ["/proc", "/var/lib/kubelet/pod-resources"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name in host_paths:
        assert mounts[name]["readOnly"] is True, name
        assert "mountPropagation" not in mounts[name]
    config = parse_config(container["args"], _environment(container))
    assert mounts[_volume_named(pod, "/proc")]["mountPath"] == config.procfs
    socket_dir = mounts[_volume_named(pod, "/var/lib/kubelet/pod-resources")]["mountPath"]
    assert Path(config.kubelet_socket).parent == Path(socket_dir)


def _volume_named(pod: dict[str, Any], host_path: str) -> str:
    return next(v["name"] for v in pod["volumes"] if v.get("hostPath", {}).get("path") == host_path)


def test_resources_have_requests_and_limits(container):
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        assert resource in resources["requests"] and resource in resources["limits"], resource
    assert _mebibytes(resources["requests"]["memory"]) <= _mebibytes(resources["limits"]["memory"])


#: What the real libnvidia-ml adds to a process, which the fake library hides (docs/deploy.md#memory).
REAL_NVML_MIB = 35
MEASURED_MEMORY = re.compile(r"(\d+\.\d) MiB peak on (\d{4}-\d\d-\d\d)")


def test_memory_request_and_limit_follow_from_the_one_measured_figure(container):
    """daemonset.yaml's memory comes from one figure of bench/agent_rss.py, quoted with its date in
    the manifest, docs/deploy.md and docs/performance.md: the request is 1.4x that figure with the
    real libnvidia-ml's share, the limit twice the request (the headroom docs/deploy.md states)."""
    manifest_text = DAEMONSET_FILE.read_text()
    (figure, date), = MEASURED_MEMORY.findall(manifest_text)
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    memory_section = deploy[deploy.index("## Memory"):]
    assert f"{figure} MiB peak on {date}" in memory_section
    performance = (ROOT / "docs" / "performance.md").read_text()
    assert f"{figure} MiB" in performance and date in performance, "docs/performance.md: the measured figure"
    expected = float(figure) + REAL_NVML_MIB
    request = _mebibytes(container["resources"]["requests"]["memory"])
    limit = _mebibytes(container["resources"]["limits"]["memory"])
    assert 1.4 * expected <= request < 1.4 * expected + 16, "request: 1.4x the expected, rounded up"
    assert limit == 2 * request
    assert f"{round(expected)} MiB" in memory_section and f"{request:.0f}Mi" in memory_section


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i)", quantity).groups()
    return float(number) * units[unit]


def test_probes_and_lifecycle(daemonset, pod, container):
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    # The agent stops within about a second of SIGTERM (checked against the real agent below).
    assert 2 <= pod["terminationGracePeriodSeconds"] <= 30
    rolling = daemonset["spec"]["updateStrategy"]["rollingUpdate"]
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert re.fullmatch(r"\d+%", str(rolling["maxUnavailable"])), "a share of the fleet, not a count"
    assert container["image"].endswith(f":{__version__}")


def test_node_name_comes_from_the_downward_api(container):
    node = next(e for e in container["env"] if e["name"] == "NODE_NAME")
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--kubernetes.enabled" in container["args"]


def test_rbac_reads_only_what_the_agent_reads(manifest):
    role = _one(manifest, "ClusterRole")
    rules = {(g, r): tuple(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
             for r in rule["resources"]}
    assert rules == {
        ("", "pods"): ("list", "watch"),  # one list, then a watch: no GET of a pod
        ("apps", "replicasets"): ("get",),
        ("batch", "jobs"): ("get",),
        ("resource.k8s.io", "resourceslices"): ("list", "watch"),  # DRA
    }
    binding = _one(manifest, "ClusterRoleBinding")
    account = _one(manifest, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]


def test_objects_fit_together(manifest, daemonset, pod, container):
    namespace = _one(manifest, "Namespace")["metadata"]["name"]
    namespaced = [d for d in manifest if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {namespace}
    assert pod["serviceAccountName"] == _one(manifest, "ServiceAccount")["metadata"]["name"]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _one(manifest, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    container_port = _container_port(container, port["targetPort"])
    assert service["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(container_port), "prometheus.io/path": "/metrics"}


def _container_port(container: dict[str, Any], port: str | int) -> int:
    """A probe's or Service's port (a name or a number) -> the container port it reaches."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_servicemonitor_keeps_holder_labels_and_adds_node(manifest, daemonset):
    monitor = yaml.safe_load(SERVICEMONITOR_FILE.read_text())
    service = _one(manifest, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} \
        in endpoint["relabelings"]
    scrape = yaml.safe_load(SCRAPE_CONFIG_FILE.read_text())["scrape_configs"][0]
    assert scrape["honor_labels"] is True
    assert {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"} in scrape["relabel_configs"]
    assert scrape["kubernetes_sd_configs"][0]["namespaces"]["names"] == [service["metadata"]["namespace"]]


# -- The manifest and the agent agree ------------------------------------------------------


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet would set it on node NODE_NAME."""
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, entry
            env[entry["name"]] = NODE_NAME
    return env


def _dockerfile_instruction(name: str) -> list[str] | None:
    """The JSON (exec) form of the Dockerfile's last ``name`` instruction, None if absent."""
    found = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith(name + " "):
            found = json.loads(line[len(name) + 1:])
    return found


def test_image_entrypoint_with_the_manifest_args_is_a_command_line_the_agent_accepts(container):
    entrypoint = _dockerfile_instruction("ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["kube-gpu-exporter"] and entrypoint[0] in scripts
    assert _dockerfile_instruction("CMD") is None, "the image passes nothing the DaemonSet does not"
    assert ENV_PREFIX not in (ROOT / "Dockerfile").read_text(), "no flag set by the image's environment"
    assert "command" not in container, "the DaemonSet runs the image's ENTRYPOINT"
    config = parse_config(entrypoint[1:] + container["args"], _environment(container))
    assert config.warnings == ()
    assert not config.simulate and config.kubelet_enabled and config.kubernetes_enabled
    assert config.node_name == NODE_NAME
    assert config.listen_port == _container_port(container, "metrics")


@pytest.mark.integration
def test_image_build_stage_has_what_the_package_needs(tmp_path):
    """The files the Dockerfile's build stage copies build the package, its built-in scenario
    included: the step `pip install .` has what it needs."""
    # .dockerignore excludes everything ("*") and lets each copied path back in ("!path").
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    context = tmp_path / "context"
    context.mkdir()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert source.rstrip("/") in allowed, f".dockerignore keeps {source} out of the build context"
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, context / source)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path / "wheel"), str(context)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheel").glob("kube_gpu_exporter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "exporter/sources/simulate/default.yaml" in names and "exporter/cli.py" in names
    for template in ("status.html", "status.css", "starting.html"):  # the status page's
        assert f"exporter/render/status/templates/{template}" in names
    assert "exporter/render/status/favicon.ico" in names


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def _running(process: subprocess.Popen, probe: Callable[[], Any]) -> Callable[[], Any]:
    """``probe``, for ``wait_until``: the wait fails at once when ``process`` has exited."""
    def probed() -> Any:
        if process.poll() is not None:
            pytest.fail(f"the process exited with {process.returncode}")
        return probe()

    return probed


def _start_agent_as_the_manifest_says(container: dict[str, Any], tmp_path: Path, port: int,
                                      extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    """The agent with the container's args and env, on the simulated node: each mount path
    (and so each host path under it) mapped to a temporary directory, the port to ``port``."""
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"]}
    for directory in mounts.values():
        directory.mkdir()
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        for mount_path, directory in mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                arg = f"{flag}={directory}{value[len(mount_path):]}"
        if flag == "--web.listen-address":
            arg = f"{flag}=127.0.0.1:{port}"
        args.append(arg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | _environment(container)
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "exporter", *args, "--simulate", *extra_args],
                                   cwd=ROOT, env=env, stderr=stderr)
    return process, log


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.integration
def test_agent_answers_the_manifest_probes_on_the_service_port(manifest, pod, container, tmp_path):
    service_port = _one(manifest, "Service")["spec"]["ports"][0]["targetPort"]
    assert parse_config(container["args"], _environment(container)).listen_port == _container_port(
        container, service_port)
    port = free_port()  # the container port, mapped: the test machine's 9400 may be taken
    process, log = _start_agent_as_the_manifest_says(container, tmp_path, port)
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = container[probe]["httpGet"]
            assert _container_port(container, http["port"]) == _container_port(container, service_port)
            url = f"http://127.0.0.1:{port}{http['path']}"
            wait_until(_running(process, lambda url=url: _get(url)[0] == 200), timeout=30, interval=0.1,
                       message=f"{probe} {http['path']} to answer 200")
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert re.search(r'^nvidia_gpu_allocation_info\{.*workload_kind="\w+"', body, re.MULTILINE), \
            "pods and their workloads, as --kubernetes.enabled promises"
        # The kubelet sends SIGTERM and waits terminationGracePeriodSeconds before SIGKILL.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0, log.read_text()
    finally:
        _stop(process)


# -- A real Prometheus scrapes it as the scrape config and the ServiceMonitor say ------------


def _servicemonitor_as_scrape_config(endpoint: dict[str, Any]) -> dict[str, Any]:
    """The part of the scrape config prometheus-operator generates from one endpoint that we set."""
    def snake(name: str) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

    relabel = [{snake(k): v for k, v in rule.items()} for rule in endpoint["relabelings"]]
    return {"honor_labels": endpoint["honorLabels"], "metrics_path": endpoint["path"], "relabel_configs": relabel}


def _prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    status, body = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    return json.loads(body)["data"]["result"] if status == 200 else []


@pytest.mark.integration
def test_prometheus_scrapes_with_node_and_holder_labels(manifest, container, tmp_path):
    """Our scrape config and the ServiceMonitor's relabelling, run by a real Prometheus against
    the agent: Kubernetes service discovery is replaced by a static target carrying the labels
    it would give (the node name; the agent's own pod, namespace and container, which
    prometheus-operator adds before a ServiceMonitor's relabelings)."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus not found: `make test-deps` installs the Debian package")
    agent_port = free_port()
    namespace = _one(manifest, "Namespace")["metadata"]["name"]
    discovered = {"__meta_kubernetes_pod_node_name": NODE_NAME, "__meta_kubernetes_pod_container_port_name": "metrics"}
    plain = yaml.safe_load(SCRAPE_CONFIG_FILE.read_text())["scrape_configs"][0]
    del plain["kubernetes_sd_configs"]
    plain["static_configs"] = [{"targets": [f"127.0.0.1:{agent_port}"], "labels": discovered}]
    (endpoint,) = yaml.safe_load(SERVICEMONITOR_FILE.read_text())["spec"]["endpoints"]
    operator = _servicemonitor_as_scrape_config(endpoint) | {
        "job_name": "servicemonitor",
        "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"], "labels": discovered | {
            "namespace": namespace, "pod": "kube-gpu-exporter-x7k2p", "container": container["name"]}}],
    }
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [plain, operator]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process, _ = _start_agent_as_the_manifest_says(container, tmp_path, agent_port, ("--collector.interval", "0.5"))
    server = None
    try:
        with (tmp_path / "prometheus.log").open("w") as stderr:
            server = subprocess.Popen([prometheus, f"--config.file={config}",
                                       f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=stderr)
        for job in (plain["job_name"], "servicemonitor"):
            held = wait_until(_running(server, lambda job=job: _prometheus_query(
                url, f'nvidia_gpu_allocation_info{{job="{job}"}}')), timeout=30, interval=0.1,
                message=f"allocation series from job {job}")
            for series in (s["metric"] for s in held):
                assert series["node"] == NODE_NAME and series["instance"] == NODE_NAME, series
                assert series["namespace"] != namespace and series["pod"], series
                assert not [label for label in series if label.startswith("exported_")], series
            devices = _prometheus_query(url, f'nvidia_gpu_up{{job="{job}"}}')
            assert devices, job
            for series in (s["metric"] for s in devices):
                assert series["node"] == NODE_NAME
                assert not {"pod", "namespace", "container"} & set(series), series
    finally:
        if server is not None:
            _stop(server)
        _stop(process)
