"""``make bench``: every benchmark, one table of targets against measurements, and the plots.

    .venv/bin/python bench/run.py [--quick] [--only scrape,cycle,rss,fleet,kube] [--table]

Runs bench/scrape.py, startup.py, connections.py, formats.py, cycle.py, agent_rss.py, fleet.py (the
default collector groups, then every group on) and kube_requests.py one after the other (each
writes bench/results/<name>.json), then prints the table and writes docs/perf/*.png from those files.
``--table`` only prints the table and redraws the plots from the results already there.
``--quick`` shortens every run (a smoke test of the suite, not figures to publish). The
hour-long soak with pod churn is bench/soak.py, run on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PLOTS, ROOT, load  # noqa: E402

_FLEET_QUICK = ["--nodes", "5", "--warmup", "15", "--seconds", "20", "--interval", "5"]
#: name -> (runs in full, runs with --quick); each run is a command line of bench/.
BENCHES = {
    "scrape": ([["scrape.py"]], [["scrape.py", "--quick"]]),
    "startup": ([["startup.py"]], [["startup.py", "--runs", "2"]]),
    "connections": ([["connections.py"]], [["connections.py", "--seconds", "45"]]),
    "formats": ([["formats.py"]], [["formats.py", "--rounds", "10"]]),
    "cycle": ([["cycle.py"]], [["cycle.py", "--cycles", "10"]]),
    "rss": ([["agent_rss.py"]], [["agent_rss.py", "--seconds", "5"]]),
    # the default groups, then every group on (about 25 minutes each)
    "fleet": ([["fleet.py"], ["fleet.py", "--everything"]],
              [["fleet.py", *_FLEET_QUICK], ["fleet.py", "--everything", *_FLEET_QUICK]]),
    "kube": ([["kube_requests.py"]], [["kube_requests.py", "--hours", "0.25"]]),
}


def run(names: list[str], quick: bool) -> dict[str, float]:
    took = {}
    for name in names:
        full, short = BENCHES[name]
        started = time.monotonic()
        for args in short if quick else full:
            print(f"== bench/{' '.join(args)}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "bench" / args[0]), *args[1:]], check=True)
        took[name] = time.monotonic() - started
    return took


def _page(case: dict) -> str:
    """The status page's share of a cycle (results from before bench/cycle.py measured it: none)."""
    return f"page {case['page_cpu_ms']:.1f}, " if "page_cpu_ms" in case else ""


def fleet_rows(fleet: dict, add) -> None:  # noqa: ANN001
    """The fleet's figures, each beside the previous one: the run of the code before the collector
    groups (``runs.before``, same machine) where there is one, else the previous release's file."""
    runs = fleet.get("runs", {})
    before = runs.get("before")
    old = fleet.get("previous")

    def was(figure: str) -> str:
        if before and figure in before:
            return f" (before: {before[figure]})"
        return ""

    for key, label in (("default", "default flags"), ("everything", "every group on")):
        r = runs.get(key)
        if not r:
            continue
        built_in, node = r["series_per_gpu"]["built_in_node"], r["series_per_gpu"]["fleet_node"]
        prior = before["series_per_gpu"]["built_in_node"] if before else None
        add(f"series per GPU, built-in node, {label}", "<= 100" if key == "default" else "measure",
            f"{built_in['max']} max, {built_in['mean']} mean; 8-GPU fleet node {node['max']} max"
            + (f" (before: {prior['max']} max, {prior['mean']} mean)" if prior else ""),
            built_in["max"] <= 100 if key == "default" else None)
        old_rss = f" (previous release: {old['rss_per_node_mib']:.2f} MiB, {old['agents']} nodes)" if old else ""
        add(f"Prometheus memory per node, {label}", "measure",
            f"{r['rss_per_node_mib']:.2f} MiB RSS, {r['heap_inuse_per_node_mib']:.2f} MiB heap, "
            f"{r['series_per_node']} series, {r['nodes']} nodes{was('rss_per_node_mib')}{old_rss}", None)
        old_rules = (f" (previous release: {sum(old['rule_groups'].values()) / old['agents']:.1f} ms evaluation, "
                     f"{old['agents']} nodes)") if old else ""
        add(f"rule cost per node per round, {label}", "<= 3 ms",
            f"{r['rule_cpu_ms_per_node']:.2f} ms CPU, {r['rule_ms_per_node']:.2f} ms evaluation, "
            f"{r['nodes']} nodes, GOMAXPROCS={r['gomaxprocs']}{was('rule_cpu_ms_per_node')}{old_rules}",
            r["rule_cpu_ms_per_node"] <= 3 and r["rule_ms_per_node"] <= 3)


def rows() -> list[tuple[str, str, str, str]]:
    """(what, target, measured, verdict)."""
    out: list[tuple[str, str, str, str]] = []

    def add(what: str, target: str, measured: str, ok: bool | None) -> None:
        out.append((what, target, measured, "n/a" if ok is None else ("met" if ok else "MISSED")))

    scrape = load("scrape")
    if scrape:
        sizes = scrape["sizes"]
        small = [s for s in sizes if s["series"] <= 4000]
        large = max(sizes, key=lambda s: s["series"])
        alone = "agent_alone" if all("agent_alone" in s for s in sizes) else "agent"  # earlier results: beside the baseline
        if small:
            worst = max(small, key=lambda s: s[alone]["p99_ms"])
            add("scrape p99, up to 4,000 series", "<= 1 ms",
                f"{worst[alone]['p99_ms']:.2f} ms (worst, at {worst['series']} series{', alone' if alone != 'agent' else ''})",
                worst[alone]["p99_ms"] <= 1)
        add(f"scrape p99, {large['series']} series", "<= 3 ms", f"{large[alone]['p99_ms']:.2f} ms",
            large[alone]["p99_ms"] <= 3 if large["series"] >= 9000 else None)
        ratio = min(s["p99_ratio"] for s in sizes)
        add("baseline p99 / agent p99 (same run)", ">= 20x",
            f"{ratio:.0f}x (least), {max(s['p99_ratio'] for s in sizes):.0f}x (most)", ratio >= 20)
    startup = load("startup")
    if startup:
        for row in startup["configs"]:
            if row.get("tree", "this") != "this":
                continue
            listening, healthz, metrics = row["listening_s"], row["healthz_s"], row["metrics_s"]
            add(f"start-up, {row['label']}", "listening <= 1 s (idle)",
                f"listening {listening['median']:.2f} s (CPU {row['listening_cpu_s']['median']:.2f}), /healthz "
                f"{healthz['median']:.2f} s, /metrics {metrics['median']:.2f} s (medians, load {row['load_1m']})",
                listening["median"] <= 1)
    connections = load("connections")
    if connections:
        for row in connections["jobs"]:
            if row["tree"] == "this" and row["connections_per_scrape"] is not None:
                add(f"new connections per scrape, Prometheus every {row['interval_s']} s{' (TLS)' if row['tls'] else ''}",
                    "~0 (one per scraper)",
                    f"{row['connections_per_scrape']:.2f} ({row['connections']} for {row['scrapes']} scrapes)",
                    row["connections"] <= 1)
    formats = load("formats")
    if formats:
        for row in formats["sizes"]:
            add(f"exposition CPU per cycle, {row['series']} series", "measure",
                f"{row['openmetrics_ms']:.1f} ms (OpenMetrics), {row['both_formats_ms']:.1f} ms with the text "
                f"format too: {row['saved_per_cycle']:.0%} saved", None)
    cycle = load("cycle")
    if cycle:
        c = cycle["cases"]
        eight = c["8 GPUs"]
        add("CPU per cycle, 8 GPUs (fake NVML)", "<= 5 ms",
            f"{eight['cpu_ms']:.1f} ms: NVML {eight['nvml_cpu_ms']:.1f}, render {eight['render_cpu_ms']:.1f}, "
            f"{_page(eight)}rest {eight['other_cpu_ms']:.1f}", eight["cpu_ms"] <= 5)
        mig = c["64 MIG, 200 pods"]
        add("CPU per cycle, 64 MIG + 200 pods", "<= 50 ms",
            f"{mig['cpu_ms']:.1f} ms: NVML {mig['nvml_cpu_ms']:.1f}, render {mig['render_cpu_ms']:.1f}, "
            f"{_page(mig)}rest {mig['other_cpu_ms']:.1f}", mig["cpu_ms"] <= 50)
        conc = c["concurrency"]["ratio_all_to_one"]
        add("slow NVML on 8 GPUs / on 1 GPU", "~1 (8 if sequential)", f"{conc:.2f}", conc < 2)
    rss = load("agent_rss")
    if rss:
        runs = rss["runs"]
        for label in ("NVML + kubelet", "NVML + kubelet + API server", "the same, kubeconfig file (development)"):
            picked = [r for r in runs if r["label"] == label]
            if picked:
                worst = max(r["rss_peak_mib"] for r in picked)
                add(f"RSS, 8 GPUs, {label}", "<= 60 MB",
                    f"{worst * 1.048576:.1f} MB = {worst:.1f} MiB (peak, any core count)",
                    None if "development" in label else worst * 1.048576 <= 60)
        gpus = rss["gpus"]
        by_cpus = {}
        for r in runs:
            by_cpus.setdefault(r["cpus"] or "as is", []).append(r["threads"])
        add("threads, 8 GPUs", f"<= GPUs + small constant ({gpus}+6)",
            ", ".join(f"{max(v)} ({k} cores)" for k, v in by_cpus.items()),
            max(max(v) for v in by_cpus.values()) <= gpus + 6)
        churn = [r for r in runs if "replaced" in r["label"]]
        if churn:
            growth = max(r["rss_end_mib"] - r["rss_start_mib"] for r in churn)
            add("RSS under pod churn (short run)", "flat", f"+{growth:.1f} MiB over {rss['seconds']:.0f} s", None)
        gap = max(r["first_snapshot_s"] - r["listening_s"] for r in runs)
        add("first snapshot after listening", "right after NVML init", f"{gap:.2f} s (worst)", None)
        wire = [r["gzip_bytes_per_series"] for r in runs if r["label"] == "NVML + kubelet + API server"]
        if wire:
            add("gzip bytes per series, 8 GPUs + pods", "<= 12", f"{max(wire):.1f}", max(wire) <= 12)
    soak = load("soak")
    if soak:
        rss_q = soak.get("summary", {}).get("rss_mib", {})
        threads_q = soak.get("summary", {}).get("threads", {})
        add(f"soak, pod churn ({soak.get('seconds', 0) / 60:.0f} min, bench/soak.py)", "flat",
            f"RSS {rss_q.get('first_quarter', 0):.1f} -> {rss_q.get('last_quarter', 0):.1f} MiB (first -> last "
            f"quarter), threads {threads_q.get('first_quarter', 0):.0f} -> {threads_q.get('last_quarter', 0):.0f}",
            None)
    kube = load("kube_requests")
    if kube:
        for scenario, what in (("steady", "steady state"), ("churn", "pods replaced every 3 min")):
            sides = kube["scenarios"].get(scenario, {})
            after, before = sides.get("after"), sides.get("before")
            if after is None:
                continue
            was = f"{before['total_per_hour']:.0f} -> " if before else ""
            fleet = after["fleet"]
            add(f"API requests per node-hour, {what}", "measure (before -> after)",
                f"{was}{after['total_per_hour']:.0f}; 5,000 nodes: "
                + (f"{before['fleet']['requests_per_second']:.0f} -> " if before else "")
                + f"{fleet['requests_per_second']:.0f} requests/s, "
                + (f"{before['fleet']['quorum_lists_per_second']:.0f} -> " if before else "")
                + f"{fleet['quorum_lists_per_second']:.0f} quorum lists/s, {fleet['watches_held']} watches", None)
    fleet = load("fleet")
    if fleet:
        fleet_rows(fleet, add)
    return out


def print_table(table: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in table + [("what", "target", "measured", "")]) for i in range(4)]
    for row in [("what", "target", "measured", ""), *table]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))


def plots() -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        print("no matplotlib (pip install '.[bench]'): plots skipped")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    scrape = load("scrape")
    if scrape:
        sizes = sorted(scrape["sizes"], key=lambda s: s["series"])
        fig, ax = plt.subplots(figsize=(7, 4))
        series = [s["series"] for s in sizes]
        for who, color in (("agent", "tab:blue"), ("agent_alone", "tab:green"), ("baseline", "tab:red")):
            if not all(who in s for s in sizes):
                continue
            label = who.replace("_", " ")
            ax.plot(series, [s[who]["p99_ms"] for s in sizes], "o-", color=color, label=f"{label} p99")
            ax.plot(series, [s[who]["p50_ms"] for s in sizes], "o--", color=color, alpha=0.6, label=f"{label} p50")
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.axhline(3, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="series", ylabel="scrape latency (ms, log)", yscale="log",
               title=f"Scrape latency, gzip OpenMetrics ({scrape['measured_at']})")
        ax.legend()
        fig.tight_layout()
        written.append(PLOTS / "scrape_latency.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    rss = load("agent_rss")
    if rss:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        colors = {}
        for r in rss["runs"]:
            t = [s["t"] for s in r["timeline"]]
            label = f"{r['label']} ({r['cpus'] or 'real'} cores)"
            style = dict(ls="--" if r["cpus"] else "-", color=colors.setdefault(r["label"], f"C{len(colors)}"))
            top.plot(t, [s["rss"] / 2**20 for s in r["timeline"]], label=label, **style)
            bottom.plot(t, [s["threads"] for s in r["timeline"]], label=label, **style)
        top.axhline(60e6 / 2**20, color="grey", lw=0.8, ls=":", label="60 MB")
        top.set(ylabel="RSS (MiB)", title=f"Agent on 8 fake GPUs ({rss['measured_at']})")
        bottom.set(ylabel="threads", xlabel="seconds")
        top.legend(fontsize=6)
        fig.tight_layout()
        written.append(PLOTS / "rss_threads.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    if not args.table:
        took = run([n for n in args.only.split(",") if n], args.quick)
        print("took: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
    print()
    print_table(rows())
    for path in plots():
        print(f"wrote {path.relative_to(ROOT)}")
    print(f"make bench: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
