"""The agent imports only what its configuration uses: start-up time is mostly imports.

Each case runs what ``exporter.cli.main`` does before it serves (parse the flags, build the guard,
the agent and the routes) in a fresh interpreter, and reads its ``sys.modules``. The modules each
option brings are absent without it, and present with it (so that the absence means something).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from exporter import cli
from exporter.serve.routes import make_app

config = cli.parse_config(sys.argv[1:], environ={})
guard = cli.Guard(config.web_config, cli.HttpLimits())
make_app(cli.build_agent(config, guard=guard), guard)
print(json.dumps(sorted(sys.modules)))
"""

#: What each option brings: a module, or a package (its modules too).
OPTIONAL = {
    "api server": ("exporter.sources.kube", "kubernetes"),
    "alertmanager": ("exporter.push.notifier",),
    "basic auth": ("bcrypt",),
    "web config": ("yaml",),
    "simulation": ("exporter.sources.simulate",),
}


def imported(*flags: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *flags], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


@pytest.fixture(scope="module")
def web_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("web") / "web.yml"
    path.write_text(f"basic_auth_users: {{prometheus: '{bcrypt.hashpw(b'x', bcrypt.gensalt(4)).decode()}'}}\n")
    return path


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    return path


def test_the_defaults_load_none_of_the_optional_parts():
    modules = imported()
    assert loaded(modules, "exporter.sources.nvml") and loaded(modules, "exporter.sources.kubelet.client")
    for option, names in OPTIONAL.items():
        for name in names:
            assert not loaded(modules, name), f"{name} is imported without the {option}"


def test_each_option_loads_its_own_parts_and_no_other(web_config, kubeconfig):
    cases = {
        "api server": ["--kubernetes.enabled", "--kubernetes.node-name", "n", "--kubernetes.kubeconfig", str(kubeconfig)],
        "alertmanager": ["--alertmanager.url", "http://127.0.0.1:9", "--kubernetes.node-name", "n"],
        "basic auth": ["--web.config.file", str(web_config)],
    }
    for option, flags in cases.items():
        modules = imported(*flags)
        assert loaded(modules, OPTIONAL[option][0]), f"{option}: {OPTIONAL[option][0]} not imported"
        others = [n for o, names in OPTIONAL.items() if o not in (option, "web config") for n in names]
        assert not [n for n in others if loaded(modules, n)], option


def test_the_simulated_node_loads_neither_nvml_nor_the_kubelet_client():
    modules = imported("--simulate", "--kubernetes.enabled")
    assert loaded(modules, "exporter.sources.simulate")
    # The simulated node times its reads in NVML's query groups (exporter/sources/nvml/cost.py, no
    # NVML in it): the NVML backend itself and pynvml stay out.
    for name in ("pynvml", "exporter.sources.nvml.backend", "exporter.sources.nvml.reader",
                 "exporter.sources.kubelet.client", "grpclib", "kubernetes", "bcrypt", "exporter.push.notifier"):
        assert not loaded(modules, name), name
