"""The summary of a bench/field_check.sh run, as Markdown for docs/validation.md.

    python bench/field_summary.py field-<host>-<time>/ > summary.md

Reads what each mode recorded (``unconstrained/`` and ``constrained/``: the check's JSON, the
agent's exposition after a few cycles, bench/nvml_pids.py's JSON, bench/nvml_cost.py's tables, the
agent's RSS, the process's capabilities) and puts them side by side: each check's result, which
profiling metrics came back, what NVML reported as pids across the pid namespace boundary, the
collection cost per GPU and the RSS.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sources.nvml.gpm import GPM_METRICS  # noqa: E402

MODES = (("unconstrained", "without constraints"), ("constrained", "DaemonSet's constraints"))
#: The profiling metrics (GPM), by name: whether each came back says what works without CAP_SYS_ADMIN.
PROFILING = tuple(dict.fromkeys(spec.metric.name for spec in GPM_METRICS))


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def series(exposition: str, name: str) -> int:
    return sum(1 for line in exposition.splitlines() if re.match(rf"{re.escape(name)}[{{ ]", line))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def checks_table(out: Path) -> str:
    results = {mode: {c["id"]: c for c in (load_json(out / mode / "check.json") or {}).get("checks", [])}
               for mode, _ in MODES}
    ids = list(dict.fromkeys(i for mode, _ in MODES for i in results[mode]))

    def cell(check: dict[str, Any] | None) -> str:
        if check is None:
            return "-"
        return check["status"] if check["status"] in ("ok", "skipped") else f"**{check['status']}**: {check['seen']}"

    return table(["check", *(title for _, title in MODES)],
                 [[i, *(cell(results[mode].get(i)) for mode, _ in MODES)] for i in ids])


def profiling_table(out: Path) -> str:
    expositions = {mode: read(out / mode / "metrics.prom") for mode, _ in MODES}
    return table(["metric", *(f"series, {title}" for _, title in MODES)],
                 [[name, *(str(series(expositions[mode], name)) for mode, _ in MODES)] for name in PROFILING])


def pids_table(out: Path) -> str:
    rows = []
    for mode, title in MODES:
        probe = load_json(out / mode / "nvml_pids.json")
        if not isinstance(probe, dict):
            rows.append([title, "-", "no output (see nvml_pids.log)", "", ""])
            continue
        for gpu in probe.get("gpus", []):
            for listing in ("processes", "mps_processes", "utilization_samples"):
                entries = gpu.get(listing)
                if isinstance(entries, str):
                    rows.append([title, str(gpu["index"]), listing, entries, ""])
                    continue
                for e in entries or []:
                    rows.append([title, str(gpu["index"]), listing, str(e["pid"]),
                                 f"own /proc: {e['in_own_proc']}, host /proc: {e['in_host_proc']}"])
    return table(["mode", "GPU", "list", "pid", "found in"], rows)


def main(out: Path) -> None:
    system = read(out / "system.txt")
    host = next((line.split(": ", 1)[1] for line in system.splitlines() if line.startswith("host: ")), "?")
    date = next((line.split(": ", 1)[1] for line in system.splitlines() if line.startswith("date: ")), "?")
    parts = [f"# Field evidence: {host}, {date}", "", "```", system.strip(), read(out / "load.txt").strip(), "```",
             "", "## Each check", "", checks_table(out),
             "", "## Profiling metrics after a few cycles (GPM)", "", profiling_table(out),
             "", "## What NVML reports as pids", "", pids_table(out)]
    for mode, title in MODES:
        parts += ["", f"## {title}", "", "```", read(out / mode / "constraints.txt").strip(), "",
                  read(out / mode / "rss.txt").strip(), "```", "", read(out / mode / "nvml_cost.txt").strip()]
    sys.stdout.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
