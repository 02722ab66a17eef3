"""The docs that list things (metrics, flags) stay true to the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from exporter import catalog
from exporter.config import get_parser

ROOT = Path(__file__).resolve().parent.parent


def test_metric_reference_matches_the_catalog():
    text = (ROOT / "docs" / "metrics.md").read_text()
    generated = text.partition(catalog.BEGIN_MARK)[2].partition(catalog.END_MARK)[0]
    assert generated.strip() == catalog.markdown_table().strip(), "docs/metrics.md is out of date: run `make docs`"


# Units that are not Prometheus base units, as they would appear in a name (clock_hz, power_mw,
# memory_mib, duration_ms, ...): the base unit goes in the name and the conversion in the code.
NON_BASE_UNITS = re.compile(
    r"_(hz|khz|mhz|ghz|kb|mb|gb|kib|mib|gib|kbps|mbps|ms|us|ns|milliseconds|microseconds|minutes|hours|days"
    r"|mw|kw|milliwatts|mj|kj|millijoules|percent|pct|fahrenheit|kelvin)(_|$)"
)


def test_metric_names_follow_the_conventions():
    for spec in catalog.all_metrics():
        assert re.fullmatch(r"(nvidia_gpu|kube_gpu_exporter)_[a-z0-9_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert not NON_BASE_UNITS.search(spec.name), f"{spec.name}: use the base unit (hertz, bytes, seconds...)"


def test_the_unit_check_catches_what_it_is_for():
    for bad in ("nvidia_gpu_clock_hz", "nvidia_gpu_memory_used_mib", "x_latency_ms_total", "x_power_mw"):
        assert NON_BASE_UNITS.search(bad), bad
    for good in ("nvidia_gpu_clock_hertz", "nvidia_gpu_memory_used_bytes", "nvidia_gpu_power_watts"):
        assert not NON_BASE_UNITS.search(good), good


def test_attribution_queries_are_the_ones_promtool_tests():
    documented = [q.strip() for q in re.findall(r"```promql\n(.*?)```", (ROOT / "docs" / "attribution.md").read_text(),
                                                re.S)]
    spec = yaml.safe_load((ROOT / "tests" / "promql" / "attribution.yaml").read_text())
    tested = [t["expr"].strip() for group in spec["tests"] for t in group["promql_expr_test"]]
    assert documented == tested, "docs/attribution.md and tests/promql/attribution.yaml differ"


def test_attribution_queries_hold_in_every_allocation_mode():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    result = subprocess.run([promtool, "test", "rules", str(ROOT / "tests" / "promql" / "attribution.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_documents_every_flag():
    readme = (ROOT / "README.md").read_text()
    for action in get_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-") and flag not in ("--help", "--version"):
                assert f"{flag}" in readme, f"README.md does not document {flag}"


#: A path of the tree named in prose; a hidden folder (``tests/.build/``, a cache the tests make) is
#: not part of the tree and not checked.
NAMED_PATH = re.compile(r"(?<![\w./-])((?:exporter|alerts|dashboards|deploy|tests|bench)/[\w./-]*[\w/])")


def test_every_path_the_docs_name_in_the_tree_exists():
    """README.md and docs/*.md name files of the tree (``exporter/render/exposition.py``, ...): each
    one is there, so that a move cannot leave a doc pointing nowhere."""
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in sorted(set(NAMED_PATH.findall(doc.read_text()))):
            if not any(part.startswith(".") for part in Path(path).parts) and not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "docs name paths that do not exist:\n" + "\n".join(missing)


def test_the_path_check_finds_paths():
    named = NAMED_PATH
    assert named.findall("see `exporter/render/exposition.py`, and tests/test_docs.py.") == [
        "exporter/render/exposition.py", "tests/test_docs.py"]
    assert not named.findall("/etc/kube-gpu-exporter/web.yml and kube-gpu-exporter/blob/main")


def test_no_file_names_a_path_of_the_development_machine():
    """What is committed stands on its own: no file cites a path outside the repository of the
    machine it was written on (its workspace and shared notes)."""
    workspace = "/" + "work" + "/"  # spelt in two parts so that this file does not name it
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    naming = []
    for name in filter(None, tracked.stdout.split("\0")):
        path = ROOT / name
        if path.is_file() and path.suffix in {".md", ".py", ".yaml", ".yml", ".json", ".sh", ".c", ".toml", ""}:
            if workspace in path.read_text(errors="replace"):
                naming.append(name)
    assert not naming, f"files naming {workspace}...: {naming}"
