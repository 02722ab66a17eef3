"""exporter.sources.kube.api loads only the kubernetes modules it uses, and the package stays whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("kubernetes.client.models", "kubernetes.client.api_client", "kubernetes.watch", "kubernetes.dynamic",
         "kubernetes.stream", "pydantic")


def run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_kubeconfig_loads_without_the_models(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
        users: [{name: u, user: {token: t}}]
        contexts: [{name: x, context: {cluster: c, user: u}}]
        current-context: x
        """))
    run(f"""
        import sys
        from exporter.sources.kube.api import KubeApi, Watch
        api = KubeApi({str(kubeconfig)!r}, 1.0)
        Watch(return_type="object")
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
        # The rest of the package still works for anyone who asks for it
        from kubernetes import client, watch
        assert client.CoreV1Api and client.ApiClient.__module__ == "kubernetes.client.api_client"
        assert watch.Watch
        from kubernetes.config import load_kube_config
    """)


def test_in_cluster_loads_without_the_models(tmp_path):
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("not read before a connection")
    run(f"""
        import os, sys
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"] = "127.0.0.1", "1"
        from exporter.sources.kube.api import KubeApi, _kubernetes
        incluster = _kubernetes("kubernetes.config.incluster_config")["kubernetes.config.incluster_config"]
        incluster.SERVICE_TOKEN_FILENAME = {str(tmp_path / "token")!r}
        incluster.SERVICE_CERT_FILENAME = {str(tmp_path / "ca.crt")!r}
        api = KubeApi(None, 1.0)
        assert api._config.auth_settings()["BearerToken"]["value"].lower() == "bearer t"
        heavy = [m for m in {HEAVY + ("kubernetes.config.kube_config", "oauthlib")!r} if m in sys.modules]
        assert not heavy, heavy
    """)
