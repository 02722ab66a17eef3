"""The series budget and the collector groups, on the built-in simulated node as a scrape sees it:
the default flags keep every GPU within ``sizing.BUDGET_PER_GPU``; a group off shows none of its
metrics, a group on shows them; docs/metrics.md's sizing table is what the node counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter import catalog, sizing

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def default() -> sizing.Node:
    return sizing.collect()


@pytest.fixture(scope="module")
def everything() -> sizing.Node:
    return sizing.collect(sizing.EVERYTHING)


@pytest.fixture(scope="module")
def compat() -> sizing.Node:
    return sizing.collect(["--compat.dcgm-exporter"])


def groups_shown(node: sizing.Node) -> set[str]:
    return {s.group for s in node.series}


def test_the_default_built_in_node_is_within_the_series_budget(default: sizing.Node) -> None:
    per_gpu = default.per_gpu()
    assert len(per_gpu) == 4 and all(per_gpu.values())
    over = {uuid: n for uuid, n in per_gpu.items() if n > sizing.BUDGET_PER_GPU}
    assert not over, f"GPUs over the budget of {sizing.BUDGET_PER_GPU} series with the default flags: {over}"


def test_the_budget_counts_what_it_says(default: sizing.Node, everything: sizing.Node) -> None:
    """Every group on takes the node over the budget (so the check can fail), and the count
    leaves out the holders' series but keeps the MIG instances'."""
    assert max(everything.per_gpu().values()) > sizing.BUDGET_PER_GPU
    mig_gpu = default.gpus[2]
    own = [s for s in default.series if s.labels.get("uuid") == mig_gpu and s.group != "allocation"]
    assert any(s.labels.get("gpu_instance_id") for s in own)
    assert default.per_gpu()[mig_gpu] == len(own)
    assert any(s.group == "allocation" and s.labels.get("uuid") == mig_gpu for s in default.series)


def test_the_default_shows_exactly_the_default_groups(default: sizing.Node) -> None:
    assert groups_shown(default) == catalog.default_collectors()


def test_every_group_on_shows_every_group(everything: sizing.Node) -> None:
    assert groups_shown(everything) == catalog.all_collectors()
    names = {s.name for s in everything.series}
    # the built-in node has no page retirement (H100: row remapping): the one metric it cannot show
    missing = {m.name for m in catalog.all_metrics() if m.scope != "agent"} - names
    assert missing <= {catalog.RETIRED_PAGES.name, catalog.RETIRED_PAGES_PENDING.name, catalog.FAN_SPEED.name,
                       catalog.UNRESOLVED_CLAIM_DEVICES.name}, missing


def test_every_group_off_leaves_the_always_on_ones() -> None:
    node = sizing.collect([f"--no-collector.{g.name}" for g in catalog.switchable_groups()])
    assert groups_shown(node) == {g.name for g in catalog.GROUPS.values() if g.default is None}
    assert {"nvidia_gpu_allocation_info", "nvidia_gpu_container_memory_used_bytes",
            "nvidia_gpu_xid_events_total", "nvidia_gpu_up"} <= {s.name for s in node.series}


def test_nvlink_is_per_gpu_by_default_and_per_link_on_request(default: sizing.Node, everything: sizing.Node) -> None:
    def nvlink(node: sizing.Node) -> dict[str, int]:
        first = [s for s in node.series if s.labels.get("uuid") == node.gpus[0] and "nvlink" in s.name]
        return {name: sum(1 for s in first if s.name == name) for name in sorted({s.name for s in first})}

    assert nvlink(default) == {"nvidia_gpu_nvlink_data_bytes_total": 2, "nvidia_gpu_nvlink_errors_total": 4,
                               "nvidia_gpu_nvlink_links": 1, "nvidia_gpu_nvlink_links_up": 1}
    assert nvlink(everything)["nvidia_gpu_nvlink_link_errors_total"] == 18 * 4
    assert nvlink(everything)["nvidia_gpu_nvlink_link_up"] == 18


def test_the_compat_output_is_counted_beside_and_changes_nothing_native(default: sizing.Node,
                                                                         compat: sizing.Node) -> None:
    assert default.dcgm == {} and set(compat.dcgm) == set(compat.gpus)
    assert compat.per_gpu() == default.per_gpu()  # the native series: the same with the compat output on
    # a time-sliced GPU has its holders' GPU_UTIL and FB_USED besides its device series; a MIG GPU its instances'
    assert compat.dcgm[compat.gpus[1]] == compat.dcgm[compat.gpus[0]] + 4
    assert compat.dcgm[compat.gpus[2]] > compat.dcgm[compat.gpus[3]]


def test_the_sizing_table_in_the_docs_is_the_nodes(default: sizing.Node, everything: sizing.Node,
                                                   compat: sizing.Node) -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    documented = text.partition(sizing.BEGIN_MARK)[2].partition(sizing.END_MARK)[0]
    assert documented.strip() == sizing.markdown_table(default, everything, compat).strip(), (
        "docs/metrics.md's sizing table is out of date: run `make docs`")
