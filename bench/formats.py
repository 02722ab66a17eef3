"""The cycle's rendering with OpenMetrics only (the text format on its first request) and with both.

    .venv/bin/python bench/formats.py [--gpus 8,19] [--rounds 50]

Prometheus asks for OpenMetrics (gzip); the text format is for curl, older scrapers and some
agents. Each cycle renders OpenMetrics and gzips it; the text format and its gzip are written on
their first request in the cycle, and with the next cycle too (``exporter/render/exposition.py``).
This measures, in this process on the simulated nodes of ``bench/scrape.py``
(``bench/common.py: simulated_node``), the CPU time (``time.thread_time``, medians of
``--rounds``) of writing a cycle's exposition from its metric families:

* ``openmetrics``: what each cycle writes now (OpenMetrics and its gzip);
* ``text on demand``: what the first text request of a cycle adds (the text format, its gzip);
* ``both formats``: the two together, what every cycle paid when both were written at once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save, series_count, simulated_node, write_scenario  # noqa: E402

from exporter.cli import build_agent  # noqa: E402
from exporter.config import parse_config  # noqa: E402
from exporter.render.exposition import Exposition  # noqa: E402


def cpu_ms(work) -> float:  # noqa: ANN001
    started = time.thread_time()
    work()
    return (time.thread_time() - started) * 1e3


def measure(gpus: int, rounds: int, directory: Path) -> dict:
    scenario = write_scenario(simulated_node(gpus), directory)
    agent = build_agent(parse_config(["--simulate", str(scenario), "--kubernetes.enabled", "--log.level", "warning"]))
    exposition = asyncio.run(agent.collect_once())
    registry = agent.renderer.registry
    times: dict[str, list[float]] = {"openmetrics": [], "text_on_demand": [], "both_formats": []}
    for _ in range(rounds):
        fresh: list[Exposition] = []
        times["openmetrics"].append(cpu_ms(lambda: fresh.append(Exposition.of(registry))))
        times["text_on_demand"].append(cpu_ms(lambda: (fresh[0].text, fresh[0].text_gzip)))
        times["both_formats"].append(times["openmetrics"][-1] + times["text_on_demand"][-1])
    row = {"gpus": gpus, "series": series_count(exposition.text.decode()), "rounds": rounds,
           "openmetrics_bytes": len(exposition.openmetrics), "openmetrics_gzip_bytes": len(exposition.openmetrics_gzip)}
    row |= {f"{name}_ms": statistics.median(values) for name, values in times.items()}
    row["saved_per_cycle"] = 1 - row["openmetrics_ms"] / row["both_formats_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="8,19")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="kge-formats-"))
    rows = []
    for gpus in (int(g) for g in args.gpus.split(",")):
        row = measure(gpus, args.rounds, directory)
        rows.append(row)
        print(f"{row['series']:6d} series: OpenMetrics + gzip {row['openmetrics_ms']:.2f} ms, the text format "
              f"on demand +{row['text_on_demand_ms']:.2f} ms, both {row['both_formats_ms']:.2f} ms: "
              f"{row['saved_per_cycle']:.0%} of the exposition's CPU saved when no one asks for text", flush=True)
    save("formats", {"sizes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
