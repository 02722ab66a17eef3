"""What the collector groups cost in series, counted on a simulated node: per GPU, per MIG
instance and per holder, for the sizing table of docs/metrics.md and the series budget.

The node is the built-in one (``--simulate``: four H100 SXM with 18 NVLink links each; GPU 2
split into four MIG instances), collected once by the agent itself (``cli.build_agent``) with the
flags given, and counted from the families its renderer writes: what a scrape would show. Which
group a series belongs to is the catalog's word (``catalog.GROUPS``), never a list kept here.

A GPU's series are all those that carry its ``uuid`` except the allocation join (the holders'
series): the GPU's own and its MIG instances'. The agent's own series (``kube_gpu_exporter_*``,
``process_*``, ``python_*``) and the node's allocatable/allocated counts are per node.

    python -m exporter.sizing docs/metrics.md    # rewrite the table (``make docs``)
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import catalog
from .cli import build_agent
from .config import parse_config

#: The series budget of one GPU (its MIG instances included) on the built-in node with the
#: default flags; ``tests/test_sizing.py`` fails when the defaults exceed it.
BUDGET_PER_GPU = 100
#: Flags that switch every collector group on.
EVERYTHING = tuple(g.flag for g in catalog.switchable_groups())

BEGIN_MARK, END_MARK = "<!-- sizing:begin -->", "<!-- sizing:end -->"


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    group: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Node:
    """The series of one collection of the node, and its GPUs in index order."""

    series: tuple[Series, ...]
    gpus: tuple[str, ...]  # uuids
    # with --compat.dcgm-exporter: uuid -> the GPU's DCGM_FI_* series at /metrics/dcgm (its MIG
    # instances' and its holders' included)
    dcgm: Mapping[str, int] = field(default_factory=dict)

    def per_node(self) -> int:
        """Series of the node that name no device: the agent's own, allocatable and allocated devices."""
        return sum(1 for s in self.series if "uuid" not in s.labels and "pod" not in s.labels)

    def per_gpu(self) -> dict[str, int]:
        """uuid -> the GPU's series (its MIG instances' included), the allocation join left out."""
        counts = Counter(s.labels["uuid"] for s in self.series if "uuid" in s.labels and s.group != "allocation")
        return {uuid: counts[uuid] for uuid in self.gpus}

    def by_group(self, unit: str) -> Counter[str]:
        """Series by group of one ``unit``: ``gpu`` (the first GPU, whole and without MIG), ``mig``
        (per MIG instance, averaged over the node's), ``holder`` (per container holding a device:
        the most any holder has)."""
        if unit == "gpu":
            first = self.gpus[0]
            return Counter(s.group for s in self.series if s.labels.get("uuid") == first
                           and not s.labels.get("gpu_instance_id") and s.group != "allocation")
        if unit == "mig":
            instances = {(s.labels["uuid"], s.labels["gpu_instance_id"]) for s in self.series
                         if s.name == catalog.MIG_INFO.name}
            counts = Counter(s.group for s in self.series if s.labels.get("gpu_instance_id") and s.group != "allocation")
            return Counter({g: round(n / len(instances)) for g, n in counts.items()}) if instances else Counter()
        holders: Counter[tuple[str, ...]] = Counter(
            tuple(s.labels.get(k, "") for k in ("namespace", "pod", "container", "uuid", "gpu_instance_id"))
            for s in self.series if s.group == "allocation" and "pod" in s.labels)
        return Counter({"allocation": max(holders.values())}) if holders else Counter()


def collect(flags: Sequence[str] = ()) -> Node:
    """One collection of the built-in simulated node with ``flags`` (default flags otherwise)."""
    config = parse_config(["--simulate", "--kubernetes.enabled", "--log.level", "error", *flags], environ={})
    log = logging.getLogger("exporter")
    level = log.level
    log.setLevel(logging.ERROR)  # "SIMULATED node", said once per run, is no news here
    try:
        agent = build_agent(config)

        async def once() -> None:
            await agent.start_sources(sync_timeout=5.0)
            await agent.collect_once()
            await agent.stop()

        asyncio.run(once())
    finally:
        log.setLevel(level)
    by_name = {spec.name: spec for spec in catalog.all_metrics()}
    # the registry: ours and client_python's process_* and python_* (the agent's too)
    series = tuple(Series(sample.name, by_name[sample.name].group if sample.name in by_name else "agent",
                          dict(sample.labels))
                   for family in agent.renderer.registry.collect() for sample in family.samples)
    gpus = tuple(s.labels["uuid"] for s in series if s.name == catalog.GPU_INFO.name)
    dcgm: Counter[str] = Counter()
    if agent.dcgm_exposition is not None:
        for line in agent.dcgm_exposition.text.decode().splitlines():
            if not line.startswith("#") and 'UUID="' in line:
                dcgm[line.split('UUID="', 1)[1].split('"', 1)[0]] += 1
    return Node(series, gpus, dict(dcgm))


def markdown_table(default: Node, everything: Node, compat: Node | None = None) -> str:
    """The sizing table of docs/metrics.md: each group's series per GPU, MIG instance and holder
    (counted with every group on), and the built-in node's GPUs with the default flags, with
    every group on, and (``compat``) the DCGM_FI_* series of --compat.dcgm-exporter."""
    units = {unit: everything.by_group(unit) for unit in ("gpu", "mig", "holder")}
    rows = ["| group | default | what | per GPU | per MIG instance | per holder | NVML reads it costs (spared when off) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for group in catalog.GROUPS.values():
        if group.name == "agent":
            continue
        when = "always" if group.default is None else ("on" if group.default else "off")
        counts = [units[unit][group.name] or "" for unit in ("gpu", "mig", "holder")]
        rows.append(f"| `{group.name}` | {when} | {group.help} | "
                    + " | ".join(map(str, counts)) + f" | {group.reads} |")
    on = catalog.default_collectors()
    rows.append("| **default** | | | " + " | ".join(
        f"**{sum(n for g, n in units[unit].items() if g in on)}**" for unit in ("gpu", "mig", "holder")) + " | |")
    rows.append("| **everything on** | | | " + " | ".join(
        f"**{sum(units[unit].values())}**" for unit in ("gpu", "mig", "holder")) + " | |")
    lines = ["\n".join(rows), "",
             f"Per node besides its devices: {default.per_node()} series with the default flags, "
             f"{everything.per_node()} with every group on (the agent's own, with its process and Python "
             "metrics; allocatable and allocated devices, 2 per resource name).", "",
             f"The built-in node's GPUs (series per GPU, its MIG instances included; budget {BUDGET_PER_GPU} "
             "with the default flags):", "",
             "| GPU | default flags | every group on | `--compat.dcgm-exporter`: `/metrics/dcgm` (besides) |",
             "| --- | --- | --- | --- |"]
    migs = Counter(s.labels["uuid"] for s in everything.series if s.name == catalog.MIG_INFO.name)
    for i, uuid in enumerate(default.gpus):
        what = f"{i} (MIG, {migs[uuid]} instances)" if migs[uuid] else str(i)
        dcgm = compat.dcgm.get(uuid, "") if compat is not None else ""
        lines.append(f"| {what} | {default.per_gpu()[uuid]} | {everything.per_gpu()[uuid]} | {dcgm} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    table = markdown_table(collect(), collect(EVERYTHING), collect(["--compat.dcgm-exporter"]))
    if not argv:
        sys.stdout.write(table)
        return 0
    catalog.write_between(argv[0], BEGIN_MARK, END_MARK, table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
