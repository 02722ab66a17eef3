"""Scrape latency against series count: the agent and the prometheus-client baseline side by side.

    .venv/bin/python bench/scrape.py [--gpus 2,8,19,48,64] [--scrapes 400] [--quick]

For each node size a simulated node (``bench/common.py: simulated_node``: H100s, every fourth
MIG-split, every other time-sliced between four pods) is served by the agent and by
``bench/baseline.py`` at once, and both are scraped in turn, one scrape each, the way Prometheus
does (gzip OpenMetrics, sequential, keep-alive where the server allows it): the ratio of their
latencies is measured under the same load at the same moment. Then the baseline is stopped and
the agent scraped alone as many times (``agent_alone``): its latency without a renderer running
flat out on one of the machine's cores, what the p99 targets are judged on. Latency is taken at
the client, so it includes the loopback round trip and the client's own work (an upper bound of
the server-side time). Also reported: bytes on the wire per series (gzip) for each size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ROOT, Agent, quantiles, save, series_count,  # noqa: E402
                    simulated_node, write_scenario)


def measure(gpus: int, scrapes: int, work: Path) -> dict:
    scenario = write_scenario(simulated_node(gpus), work)
    args = ["--simulate", str(scenario), "--kubernetes.enabled"]
    agent = Agent(args, interval=5)
    baseline = Agent(args, interval=5, command=[sys.executable, str(ROOT / "bench" / "baseline.py")])
    try:
        agent.ready_after()
        baseline.ready_after()
        series = series_count(agent.scraper.text())
        baseline_series = series_count(baseline.scraper.text())
        for _ in range(20):  # warm-up: connections, caches, the first gzip
            agent.scraper.timed()
            baseline.scraper.timed()
        times: dict[str, list[float]] = {"agent": [], "baseline": []}
        size = {"agent": 0, "baseline": 0}
        for _ in range(scrapes):
            for name, target in (("agent", agent), ("baseline", baseline)):
                elapsed, size[name] = target.scraper.timed()
                times[name].append(elapsed)
        baseline.stop()
        times["agent_alone"] = [agent.scraper.timed()[0] for _ in range(scrapes)]
    finally:
        agent.stop()
        baseline.stop()
    result = {"gpus": gpus, "series": series, "baseline_series": baseline_series, "scrapes": scrapes}
    for name in times:
        result[name] = quantiles(times[name]) | {"gzip_bytes": size.get(name, size["agent"])}
    result["p99_ratio"] = result["baseline"]["p99_ms"] / result["agent"]["p99_ms"]
    result["p50_ratio"] = result["baseline"]["p50_ms"] / result["agent"]["p50_ms"]
    result["gzip_bytes_per_series"] = size["agent"] / series
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="2,8,19,48,64")
    parser.add_argument("--scrapes", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="two sizes, 100 scrapes")
    args = parser.parse_args()
    sizes = [int(g) for g in args.gpus.split(",")]
    scrapes = args.scrapes
    if args.quick:
        sizes, scrapes = [8, 24], 100
    work = Path(tempfile.mkdtemp(prefix="kge-scrape-"))
    rows = []
    for gpus in sizes:
        # the baseline takes ~0.1-0.3 s per scrape on the largest nodes: fewer rounds there
        row = measure(gpus, scrapes if gpus <= 19 else max(100, scrapes // 2), work)
        rows.append(row)
        print(f"{row['series']:6d} series  agent p50 {row['agent']['p50_ms']:.3f} p99 {row['agent']['p99_ms']:.3f} ms"
              f" (alone p50 {row['agent_alone']['p50_ms']:.3f} p99 {row['agent_alone']['p99_ms']:.3f} ms)"
              f"  baseline p50 {row['baseline']['p50_ms']:.2f} p99 {row['baseline']['p99_ms']:.2f} ms"
              f"  p99 ratio {row['p99_ratio']:.0f}x  {row['gzip_bytes_per_series']:.1f} gzip B/series", flush=True)
    save("scrape", {"sizes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
