"""What the API-server client imports: nothing of the ``kubernetes`` package in-cluster; the
package, imported normally and whole, for a kubeconfig file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_in_cluster_imports_nothing_of_the_kubernetes_package(tmp_path):
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("")
    run(f"""
        import asyncio, sys
        from exporter.sources.kube import KubeApi, PodWatcher, SliceWatcher
        from exporter.sources.kube.api import InCluster
        creds = InCluster({{"KUBERNETES_SERVICE_HOST": "::1", "KUBERNETES_SERVICE_PORT": "6443"}}, {str(tmp_path)!r})
        assert creds.server == "https://[::1]:6443"
        assert asyncio.run(creds.headers()) == {{"Authorization": "Bearer t"}}
        loaded = [m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")]
        assert not loaded, loaded
    """)


@pytest.mark.integration
def test_a_kubeconfig_imports_the_package_normally(tmp_path):
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
        import asyncio, sys, types
        from exporter.sources.kube.api import Kubeconfig
        creds = Kubeconfig({str(kubeconfig)!r})
        assert creds.server == "http://127.0.0.1:1"
        assert asyncio.run(creds.headers()) == {{"authorization": "Bearer t"}}
        # No stand-in anywhere: the package is what it says it is, for anyone else in the process.
        import kubernetes
        assert type(sys.modules["kubernetes"]) is types.ModuleType and kubernetes.__version__
        namespace = {{}}
        exec("from kubernetes.client import *", namespace)
        assert "CoreV1Api" in namespace and "ApiClient" in namespace
    """)
