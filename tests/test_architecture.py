"""The tree says what each stage is, and the data flows one way: sources -> model -> attribution
-> render -> serve, attribution -> push. No module imports a stage downstream of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter"

#: What each part of exporter/ may import from exporter/ besides itself (the package root, for
#: __version__, is open to all). config is the entry's input: any stage may read it; it reads the
#: catalog's collector groups (their flags).
ALLOWED: dict[str, set[str]] = {
    "catalog": set(),
    "model": {"catalog"},
    "config": {"model", "catalog"},
    "sources": {"model", "catalog", "config"},
    "attribution": {"model", "catalog"},
    "render": {"model", "catalog", "attribution"},
    "push": {"model", "catalog", "attribution", "config"},
    "serve": {"model", "catalog", "config", "render", "agent"},
    "agent": {"model", "catalog", "config", "sources", "attribution", "render"},
    # kube-gpu-exporter check: reads the sources as the agent does, joins as attribution does
    "check": {"model", "catalog", "config", "sources", "attribution", "push"},
    "cli": {"model", "catalog", "config", "sources", "attribution", "render", "serve", "push", "agent", "check"},
    # docs/metrics.md's sizing table and the series budget: a simulated node collected by the agent
    "sizing": {"catalog", "config", "cli"},
    "__main__": {"cli"},
}


def part_of(module: str) -> str:
    """``exporter.sources.kube.api`` -> ``sources``; ``exporter.catalog`` -> ``catalog``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported(path: Path) -> set[str]:
    """Every exporter module ``path`` imports, wherever in the file (functions too)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("exporter")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("exporter"):
                continue
            if target == "exporter":  # from exporter import catalog: the names are modules
                found |= {f"exporter.{alias.name}" for alias in node.names}
            else:
                found.add(target)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "podresources" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_stage_imports_a_stage_downstream_of_it(path):
    own = part_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if own in ("__init__", ""):
        return
    allowed = ALLOWED[own] | {own, "", "__version__"}
    wrong = {m for m in imported(path) if part_of(m) not in allowed}
    assert not wrong, f"{path.relative_to(ROOT)} ({own}) imports {sorted(wrong)}"


def test_the_check_resolves_relative_imports():
    assert imported(PACKAGE / "sources" / "kube" / "watch.py") >= {"exporter.model.kube", "exporter.sources.kube.api"}
    assert "exporter.catalog" in imported(PACKAGE / "sources" / "nvml" / "gpm.py")
    assert "exporter.render.status" in imported(PACKAGE / "agent.py")


def test_every_part_of_the_tree_is_a_known_stage():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if not p.name.startswith("__pycache__") and (p.suffix == ".py" or p.is_dir())}
    assert parts - {"__init__"} == set(ALLOWED)
