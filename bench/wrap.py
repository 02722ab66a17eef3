"""The agent's CLI under what a benchmark needs to fake: ``wrap.py [agent flags]``.

* ``KGE_BENCH_CPUS=N``: Python is told the host has N cores (``os.cpu_count``,
  ``os.process_cpu_count``, ``os.sched_getaffinity``) before the agent imports anything, so every
  Python-level pool sized from them (ThreadPoolExecutor's default ``min(32, cpus + 4)``) sees N.
  C libraries do not ask Python: ``bench/common.py`` adds the LD_PRELOAD shim
  ``bench/fakecpus.c`` for them. Neither gives the process more real cores.
* ``KGE_BENCH_SA_DIR=DIR``: the in-cluster client (what a DaemonSet pod uses:
  ``KUBERNETES_SERVICE_HOST``/``_PORT`` from the environment) reads its service-account token and
  CA certificate (``token``, ``ca.crt``) from this directory instead of
  /var/run/secrets/kubernetes.io/serviceaccount/.
"""

import os
import sys

cpus = int(os.environ.get("KGE_BENCH_CPUS", "0"))
if cpus:
    os.cpu_count = lambda: cpus  # type: ignore[assignment]
    if hasattr(os, "process_cpu_count"):
        os.process_cpu_count = lambda: cpus  # type: ignore[attr-defined]
    os.sched_getaffinity = lambda pid: set(range(cpus))  # type: ignore[assignment]

if os.environ.get("KGE_BENCH_SA_DIR"):
    from pathlib import Path

    from exporter.sources.kube import api

    api.SERVICE_ACCOUNT_DIR = Path(os.environ["KGE_BENCH_SA_DIR"])

from exporter.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
