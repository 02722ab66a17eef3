"""The docs that list things (metrics, flags) stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import catalog
from exporter.config import get_parser

ROOT = Path(__file__).resolve().parent.parent


def test_metric_reference_matches_the_catalog():
    text = (ROOT / "docs" / "metrics.md").read_text()
    generated = text.partition(catalog.BEGIN_MARK)[2].partition(catalog.END_MARK)[0]
    assert generated.strip() == catalog.markdown_table().strip(), "docs/metrics.md is out of date: run `make docs`"


def test_metric_names_follow_the_conventions():
    for spec in catalog.all_metrics():
        assert re.fullmatch(r"(nvidia_gpu|kube_gpu_exporter)_[a-z0-9_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name


def test_readme_documents_every_flag():
    readme = (ROOT / "README.md").read_text()
    for action in get_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-") and flag not in ("--help", "--version"):
                assert f"{flag}" in readme, f"README.md does not document {flag}"
