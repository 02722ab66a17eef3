"""What NVML costs per collection cycle, by query group: on a real GPU machine, or on the test fake
with the per-call latencies measured on an H200 injected.

    .venv/bin/python bench/nvml_cost.py                   # the GPUs of this machine (real NVML)
    .venv/bin/python bench/nvml_cost.py --fake            # the fake library, H200 latencies injected
    .venv/bin/python bench/nvml_cost.py --fake --gpus 8 --cycles 30 --interval 10 --slow-interval 30

Each cycle reads every GPU in parallel threads, as the agent does, on a clock that advances by
``--interval`` per cycle without waiting (so the slow cadence comes round as in service). Printed:
the NVML time per GPU of the first read (identity and static facts), of steady cycles and of the
cycles where the slow counters are due; the same per query group; and the wall time of a parallel
cycle against its slowest GPU (near 1: NVML serves GPUs in parallel; near the GPU count: it
serialises them).

``--fake`` also runs under an older checkout of ``exporter`` (``PYTHONPATH=<its tree>``): then
groups are not reported, the read times are; that is how docs/performance.md gives "before".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import pynvml  # noqa: E402

#: Seconds per call measured on an H200 (driver 580.159.04, GSP firmware, a VM with one GPU), by the
#: fake's read names (``delay.<name>``) and field ids (``delay.field.<id>``).
H200_CALL_SECONDS: dict[str, float] = {
    "utilization": 21e-6, "memory_v2": 10e-6, "power_mw": 11e-6, "temperature": 5e-6, "clock": 5e-6,
    "processes": 11e-6, "max_clock": 2.5e-3, "violation": 0.85e-3, "temp_slowdown": 0.2e-3,
    "temp_shutdown": 0.2e-3, "temp_memory_max": 0.2e-3, "temp_gpu_max": 0.2e-3,
    "gpm_sample": 0.13e-3, "gpm_metrics": 1.6e-3,
}
_SLOW_FIELDS = {
    pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: 4.1e-3,
    pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: 0.18e-3,
    pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL: 0.18e-3,
    pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: 0.18e-3,
    pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: 0.18e-3,
}
OTHER_FIELD_SECONDS = 20e-6  # "other fields 0.004-0.05 ms"


#: Below this a sleep mostly measures the timer and the scheduler (tens of microseconds on a busy
#: machine), not the call: the fake's own overhead stands for these calls instead.
MIN_INJECTED_SECONDS = 0.1e-3


def h200_delays(field_ids: list[int]) -> dict[str, Any]:
    """The fake's ``delay`` keys for one GPU; a field batch sleeps the sum of its fields' delays."""
    calls = {name: s for name, s in H200_CALL_SECONDS.items() if s >= MIN_INJECTED_SECONDS}
    return {**calls, "field": {f: _SLOW_FIELDS.get(f, OTHER_FIELD_SECONDS) for f in field_ids}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_backend(clock: Clock, args: argparse.Namespace) -> Any:
    from exporter.sources.nvml import NvmlBackend

    from exporter import catalog

    collectors = catalog.all_collectors() if args.all_collectors else catalog.default_collectors()
    if args.profiling is not None:
        collectors = collectors | {"profiling"} if args.profiling else collectors - {"profiling"}
    try:
        return NvmlBackend(slow_interval=args.slow_interval, collectors=collectors, monotonic=clock)
    except TypeError:  # an exporter from before the collector groups
        return NvmlBackend(slow_interval=args.slow_interval, profiling=bool(args.profiling), monotonic=clock)


def timed_read(backend: Any, index: int) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    gpu = backend.read_gpu(index)
    return time.perf_counter() - started, dict(getattr(gpu, "nvml_seconds", {}))


Cycle = tuple[float, list[tuple[float, dict[str, float]]]]  # wall time, (read time, seconds by group) per GPU


def run(args: argparse.Namespace) -> None:
    clock = Clock()
    backend = make_backend(clock, args)
    backend.start()
    count = backend.device_count()
    pool = ThreadPoolExecutor(max_workers=count)
    cycles: list[Cycle] = []
    try:
        for index in range(count):
            backend.identify(index)
        for _ in range(args.cycles):
            started = time.perf_counter()
            reads = list(pool.map(lambda i: timed_read(backend, i), range(count)))
            cycles.append((time.perf_counter() - started, reads))
            clock.now += args.interval
    finally:
        backend.stop()
        pool.shutdown()
    report(cycles, count, args)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(cycles: list[Cycle], gpus: int, args: argparse.Namespace) -> None:
    slow_every = max(1, round(args.slow_interval / args.interval))
    kinds = {"first read": [0],
             "steady": [c for c in range(1, len(cycles)) if c % slow_every],
             "slow due": [c for c in range(1, len(cycles)) if not c % slow_every]}
    where = f"fake library, {args.delays} latencies" if args.fake else "this machine's NVML"
    print(f"NVML per GPU read: {gpus} GPUs x {len(cycles)} cycles, interval {args.interval:g} s, "
          f"slow interval {args.slow_interval:g} s ({where})\n")
    print("| cycle | cycles | ms per GPU (mean) | ms per GPU (max) |")
    print("| --- | --- | --- | --- |")
    for kind, picked in kinds.items():
        times = [t for c in picked for t, _ in cycles[c][1]]
        if times:
            print(f"| {kind} | {len(picked)} | {ms(statistics.mean(times))} | {ms(max(times))} |")
    groups = list(cycles[0][1][0][1])
    if groups:
        print("\n| group | " + " | ".join(kinds) + " |")
        print("| --- |" + " --- |" * len(kinds))
        for group in groups:
            cells = []
            for picked in kinds.values():
                values = [g[group] for c in picked for _, g in cycles[c][1]]
                cells.append(ms(statistics.mean(values)) if values else "-")
            print(f"| {group} | " + " | ".join(cells) + " |")
    steady = [c for c in kinds["steady"]] or list(range(1, len(cycles)))
    ratios = [wall / max(t for t, _ in reads) for wall, reads in (cycles[c] for c in steady)]
    if ratios and gpus > 1:
        print(f"\nparallel cycle wall time / slowest GPU: {statistics.median(ratios):.2f} "
              f"(1: GPUs served in parallel; {gpus}: serialised)")


def with_fake(args: argparse.Namespace) -> None:
    from exporter.sources.nvml import fields
    from fakenvml import FakeNode, build_fake_nvml, h100, load_into_pynvml

    workdir = Path(tempfile.mkdtemp(prefix="nvml-cost-"))
    lib = build_fake_nvml(workdir)
    delays = h200_delays([s.field_id for s in fields.GPU_FIELDS]) if args.delays == "h200" else {}
    node = FakeNode(workdir / "fake.conf", lib_path=lib,
                    gpus=[h100(i, nvlink_links=[], delay=delays) for i in range(args.gpus)])
    os.environ["FAKE_NVML_CONFIG"] = str(node.path)
    load_into_pynvml(lib)
    run(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="the test fake with H200 latencies, not real NVML")
    parser.add_argument("--delays", choices=("h200", "none"), default="h200",
                        help="--fake: per-call latencies to inject (none: the fake's own overhead)")
    parser.add_argument("--all-collectors", action="store_true",
                        help="read every collector group (default: the agent's default groups)")
    parser.add_argument("--profiling", action=argparse.BooleanOptionalAction, default=None,
                        help="with or without GPM, whatever the groups say")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs of the fake node (default %(default)s)")
    parser.add_argument("--cycles", type=int, default=31, help="(default %(default)s)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per cycle (default %(default)s)")
    parser.add_argument("--slow-interval", type=float, default=30.0, help="(default %(default)s)")
    args = parser.parse_args()
    if args.fake:
        with_fake(args)
        return
    from exporter.sources.backend import BackendUnavailable

    try:
        run(args)
    except BackendUnavailable as e:
        sys.exit(f"{e}: no NVML on this machine; --fake measures the test fake instead")


if __name__ == "__main__":
    main()
