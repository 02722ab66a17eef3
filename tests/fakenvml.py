"""The fake NVML library for tests: build it, configure it, load it.

``tests/fakes/fake_nvml.c`` is compiled once per session into ``libnvidia-ml.so.1``. It reads a
``key=value`` file named by ``FAKE_NVML_CONFIG`` and re-reads it whenever it changes, so one
loaded library serves every test (pynvml never unloads it) and a subprocess (the CLI) alike.

Config keys (values in NVML's own units; ``FakeNode`` writes them from Python values):

==============================  ==============================================================
``run_id``                      a new value starts a fresh run: XID queue and sequence reset
``init_error=1``                nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED (until cleared)
``init_error_code=N``           ... fails with nvmlReturn_t N instead
``init_seconds=S``              nvmlInit takes S s (as without persistence mode)
``count_seconds=S``             nvmlDeviceGetCount takes S s
``driver_version``              e.g. ``550.54.15``
``cuda_version``                int as NVML gives it: ``12040`` = 12.4
``nvml_version``                e.g. ``12.550.54.15`` (default: ``12.`` + the driver version)
``gpu_count``                   default: highest ``gpu.<i>`` + 1
``xid.<seq>=<gpu>:<code>,...``  XID events, raised once when ``seq`` is new (1, 2, 3, ...),
                                as soon as the library notices the change (its next call);
                                ``<gpu>:<code>:<gi>:<ci>`` for an event on a MIG instance. As
                                in NVML, an event is recorded only for a GPU that an event set
                                watches at that moment; on any other it is lost.
                                ``gpu.<i>.xid_on.<name>=<code>``: every call of the read
                                ``<name>`` raises XID ``<code>`` on the GPU, as a failing GPU
                                does while it is read
``gpu.<i>.name/uuid/serial``    identity; ``vbios``, ``pci_bus_id``, ``pci_device_id``;
                                ``minor`` (/dev/nvidia<minor>, default: the index)
``gpu.<i>.handle_seconds=S``    nvmlDeviceGetHandleByIndex takes S s (no persistence mode)
``gpu.<i>.mig_mode``            0/1 (absent: MIG not supported); ``mig_mode_pending``
``gpu.<i>.persistence_mode``    0/1; ``compute_mode`` 0 default, 2 prohibited, 3 exclusive_process
``gpu.<i>.utilization_gpu``     percent; ``utilization_memory``, ``encoder``, ``decoder`` percent.
                                All four answer NOT_SUPPORTED on a MIG-enabled GPU, as in nvml.h
``gpu.<i>.mem_total``           bytes; ``mem_used`` (allocated), ``mem_reserved``, ``mem_free``
                                (default total-used-reserved); v1 API reports used+reserved
``gpu.<i>.temperature``         C; ``memory_temp`` (field 82); ``temp_slowdown``,
                                ``temp_shutdown``, ``temp_memory_max``, ``temp_gpu_max`` (absent
                                threshold = NOT_SUPPORTED)
``gpu.<i>.power_mw``            mW; ``power_limit_mw`` mW; ``energy_mj`` mJ; ``fan`` percent
``gpu.<i>.clock.<domain>``      MHz, domain graphics/sm/memory/video; ``max_clock.<domain>``
``gpu.<i>.pstate``              0..15
``gpu.<i>.clock_events``        bitmask of nvmlClocksEventReason*
``gpu.<i>.violation.<policy>``  ns; policy = NVML_PERF_POLICY_* number (0 power, 1 thermal, ...)
``gpu.<i>.pcie_gen``            ``pcie_max_gen``, ``pcie_width``, ``pcie_max_width``,
                                ``pcie_replay``; ``pcie_tx_bytes``, ``pcie_rx_bytes``: byte
                                counters, fields 197/198 (``NVML_FI_DEV_PCIE_COUNT_*_BYTES``)
``gpu.<i>.ecc.<t>.<c>``         t corrected/uncorrected, c volatile/aggregate
``gpu.<i>.retired_sbe``         pages; ``retired_dbe``, ``retired_pending`` 0/1
``gpu.<i>.remap.<k>``           k correctable/uncorrectable/pending/failure
``gpu.<i>.nvlink_links``        list of the link numbers that exist, e.g. ``[0, 1, 4, 5]``
                                (numbering need not be dense; ``[]``: NVLink not supported). A
                                link not listed answers NOT_SUPPORTED (a gap) or
                                INVALID_ARGUMENT (beyond the highest), like the driver.
                                ``nvlink_down`` list of inactive links; ``nvlink.<link>.<type>``
                                error counters
                                (replay/recovery/crc_flit/crc_data), summed by the total
                                fields (the read ``nvlink_totals``); ``nvlink_tx_kib``,
                                ``nvlink_rx_kib`` totals over all links (KiB)
``gpu.<i>.processes``           ``pid:used_bytes:sm_percent,...`` on the full GPU; ``na`` for
                                used_bytes (Python: ``None``) is NVML_VALUE_NOT_AVAILABLE, which
                                pynvml turns into ``None``. A non-empty list answers the sizing
                                call (count 0, no buffer) with INSUFFICIENT_SIZE, as NVML does
``gpu.<i>.mps_processes``       same format: MPS clients (nvmlDeviceGetMPSComputeRunningProcesses)
                                Process utilisation, as real NVML: samples only for sm% > 0,
                                NOT_FOUND when none; ``no_util_samples_result=N`` answers N
                                instead (0: SUCCESS on the sizing call)
``gpu.<i>.mig.count``           MIG devices; ``mig.max`` (default 7);
                                ``mig.<j>.uuid/gi/ci/profile/mem_total/mem_used/mem_reserved/
                                mem_free/processes/mps_processes``. The parent's lists include
                                them with their gi/ci, as real NVML does
``gpu.<i>.architecture``        nvmlDeviceArchitecture_t (9 Hopper); ``compute_capability``
                                ``"9.0"``; ``board_part_number`` (absent: NOT_SUPPORTED)
``gpu.<i>.bar1_total``          bytes; ``bar1_used``
``gpu.<i>.power_min_mw``        ``power_max_mw`` (limit constraints), ``power_default_mw``
``gpu.<i>.app_clock.<domain>``  application clock MHz; ``default_app_clock.<domain>``; a domain
                                absent answers NOT_SUPPORTED
``gpu.<i>.gpm_supported``       1: nvmlGpmQueryDeviceSupport says yes; ``gpm.<metricId>`` the value
                                nvmlGpmMetricsGet answers (percent or MiB/s) for the whole GPU,
                                ``mig.<j>.gpm.<metricId>`` for the GPU instance of MIG device j;
                                taken when a sample is filled, so values change over time;
                                ``gpm_unsupported=5,7`` metric ids answering NOT_SUPPORTED alone.
                                Top-level ``gpm_missing=1``: every GPM function answers
                                FUNCTION_NOT_FOUND (a driver without the symbols)
``gpu.<i>.delay.<name>=S``      every call of the read ``<name>`` (names below) sleeps S s
                                outside the library lock, like a slow real query;
                                ``delay.field.<id>=S`` per field of a field batch (also reported
                                as its ``latencyUsec``; ``field_latency=0`` reports 0 instead)
``gpu.<i>.lost=1``              every call on the GPU returns NVML_ERROR_GPU_IS_LOST
``gpu.<i>.hang_seconds=S``      every call on the GPU sleeps S s first (cleared early if the
                                key is removed)
``gpu.<i>.unsupported=a,b``     reads that return NOT_SUPPORTED; names below
``gpu.<i>.fail.<name>=N``       the read returns nvmlReturn_t N (e.g. 999 unknown, 13 function
                                not found)
==============================  ==============================================================

Read names for ``unsupported``/``fail``: handle, name, uuid, serial, vbios, pci, mig_mode,
persistence_mode, compute_mode, utilization, encoder, decoder, memory, memory_v2, temperature,
memory_temp, temp_slowdown, temp_shutdown, temp_memory_max, temp_gpu_max, power_mw,
power_limit_mw, energy, energy_mj, fan, clock, max_clock, pstate, clock_events, violation,
pcie_gen, pcie_max_gen, pcie_width, pcie_max_width, pcie_replay, pcie_data (fields 197/198), ecc,
retired_pages, remapped_rows, nvlink, nvlink_errors, nvlink_totals, nvlink_throughput, field_values, processes,
mps_processes, mig_processes, mig_mps_processes (a MIG handle's own lists), process_utilization,
minor, mig, events, architecture, compute_capability, board_part_number, bar1,
power_limit_range, power_default_mw, app_clock, default_app_clock, gpm (support query),
gpm_sample (both sample calls), gpm_metrics.
(``energy`` is the field value, ``energy_mj`` the function; ``pcie_replay`` covers both.)

Test hooks, not NVML: ``FakeNode.stat(gpu, name)`` reads the library's counters:
``process_utilization`` (nvmlDeviceGetProcessUtilization calls since the reset),
``process_list_sizing`` (INSUFFICIENT_SIZE answers of the process lists since the reset),
``hanging`` (calls on the GPU held by ``hang_seconds`` right now), ``delayed`` (calls sleeping
in a ``delay`` right now), ``calls.<name>`` (calls of a read name since the reset),
``field.<id>`` (times a field id was asked for), ``xid_dropped`` (XID events raised on the GPU
while no event set watched it) and, for the whole library, ``gpm_allocs`` /
``gpm_frees`` (GPM sample buffers allocated and freed since the reset).
"""

from __future__ import annotations

import copy
import ctypes
import glob
import importlib.util
import os
import shutil
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

FAKE_SOURCE = Path(__file__).parent / "fakes" / "fake_nvml.c"
LIB_NAME = "libnvidia-ml.so.1"

GIB = 1 << 30


def nvml_include_dir() -> str | None:
    """The directory holding nvml.h from the pip package nvidia-nvml-dev (nvidia/<cuXX>/include)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "*", "include", "nvml.h")), reverse=True)
        if hits:
            return os.path.dirname(hits[0])
    return None


def build_fake_nvml(out_dir: Path) -> Path:
    """Compile the fake into ``out_dir/libnvidia-ml.so.1``; skip the test if that cannot be done."""
    include = nvml_include_dir()
    gcc = shutil.which("gcc") or shutil.which("cc")
    if include is None or gcc is None:
        pytest.fail("the fake NVML needs gcc and nvml.h: run `make test`, which installs both")
    out = out_dir / LIB_NAME
    cmd = [gcc, "-shared", "-fPIC", "-O1", "-Wall", f"-I{include}", f"-Wl,-soname,{LIB_NAME}",
           "-o", str(out), str(FAKE_SOURCE), "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the fake NVML failed:\n{proc.stderr}")
    return out


# -- Config builder ---------------------------------------------------------------------------

def h100(index: int, **overrides: Any) -> dict[str, Any]:
    """A busy H100 SXM (no fan, 18 NVLink links, no page retirement: H100 uses row remapping)."""
    gpu: dict[str, Any] = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-7c2e4f10-0000-4000-8000-{index:012x}",
        "serial": f"165232300{index:04d}",
        "vbios": "96.00.74.00.01",
        "pci_bus_id": f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        "mig_mode": 0,
        "persistence_mode": 1,
        "compute_mode": 0,
        "utilization_gpu": 87,
        "utilization_memory": 41,
        "encoder": 0,
        "decoder": 3,
        "mem_total": 80 * GIB,
        "mem_used": 30 * GIB,
        "mem_reserved": GIB // 2,
        "temperature": 52,
        "memory_temp": 60,
        "temp_slowdown": 90,
        "temp_shutdown": 95,
        "temp_memory_max": 95,
        "temp_gpu_max": 87,
        "power_mw": 412_345,
        "power_limit_mw": 700_000,
        "energy_mj": 123_456_789,
        "clock": {"graphics": 1980, "sm": 1980, "memory": 2619, "video": 1545},
        "max_clock": {"graphics": 1980, "sm": 1980, "memory": 2619, "video": 1545},
        "pstate": 0,
        "clock_events": 0x4,  # sw_power_cap
        "violation": {0: 2_500_000_000, 1: 0},
        "pcie_gen": 5, "pcie_max_gen": 5, "pcie_width": 16, "pcie_max_width": 16,
        "pcie_replay": 2, "pcie_tx_bytes": 123_456_789_000, "pcie_rx_bytes": 98_765_432_000,
        "ecc": {"corrected": {"volatile": 3, "aggregate": 10}, "uncorrected": {"volatile": 0, "aggregate": 1}},
        "remap": {"correctable": 1, "uncorrectable": 0, "pending": 0, "failure": 0},
        "nvlink_links": list(range(18)),
        "nvlink_down": [],
        "nvlink_tx_kib": 1_000_000,
        "nvlink_rx_kib": 2_000_000,
        "processes": [(4242 + index, 20 * GIB, 75)],
        "unsupported": ["fan", "retired_pages"],
        "architecture": 9,  # NVML_DEVICE_ARCH_HOPPER
        "compute_capability": "9.0",
        "board_part_number": "692-2G520-0200-000",
        "bar1_total": 128 * GIB, "bar1_used": 40 * (1 << 20),
        "power_min_mw": 200_000, "power_max_mw": 700_000, "power_default_mw": 700_000,
        "app_clock": {"graphics": 1755, "memory": 2619},
        "default_app_clock": {"graphics": 1755, "memory": 2619},
        # GPM as an H200 read it under a bf16 matmul (reference.md): percent, MiB/s by metric id
        "gpm_supported": 1,
        "gpm": {1: 99.5, 2: 96.0, 3: 14.0, 5: 93.0, 7: 93.0, 10: 17.7, 20: 5.0, 21: 14.0},
    }
    gpu.update(overrides)
    return gpu


def a100_mig(index: int, **overrides: Any) -> dict[str, Any]:
    """An A100 40GB in MIG mode with two instances (1g.5gb and 3g.20gb), each with a process.
    In MIG mode NVML has no utilisation for the whole GPU: the fake answers NOT_SUPPORTED."""
    gpu = h100(
        index,
        name="NVIDIA A100-SXM4-40GB",
        mem_total=40 * GIB,
        mem_used=8 * GIB,
        mig_mode=1,
        nvlink_links=list(range(12)),
        temp_gpu_max=85,
        processes=[],
        unsupported=["fan"],
        retired_sbe=1, retired_dbe=0, retired_pending=0,
        architecture=7, compute_capability="8.0", board_part_number="692-2G506-0200-002",
        gpm_supported=0, gpm={},  # GPM needs Hopper
        mig=[
            {"uuid": f"MIG-aaaaaaaa-0000-4000-8000-{index:010x}01", "gi": 7, "ci": 0, "profile": "1g.5gb",
             "mem_total": 5 * GIB, "mem_used": 2 * GIB, "processes": [(7001, 2 * GIB, 0)]},
            {"uuid": f"MIG-bbbbbbbb-0000-4000-8000-{index:010x}02", "gi": 2, "ci": 0, "profile": "3g.20gb",
             "mem_total": 20 * GIB, "mem_used": 6 * GIB, "processes": [(7002, 6 * GIB, 0)]},
        ],
    )
    gpu.update(overrides)
    return gpu


def _flatten(prefix: str, value: Any, out: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif prefix.endswith(".mig") and isinstance(value, (list, tuple)):
        out.append(f"{prefix}.count={len(value)}")
        for j, mig in enumerate(value):
            _flatten(f"{prefix}.{j}", mig, out)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        out.append(f"{prefix}=" + ",".join(
            ":".join("na" if x is None else str(x) for x in item) if isinstance(item, (list, tuple)) else str(item)
            for item in items
        ))
    elif prefix.endswith(".nvlink_links"):
        raise TypeError(f"{prefix} lists link numbers, e.g. list(range(18)) or []; got {value!r}")
    elif isinstance(value, bool):
        out.append(f"{prefix}={int(value)}")
    else:
        out.append(f"{prefix}={value}")


class FakeNode:
    """What the fake NVML reports, as Python values; every change is written to the file at once.

    ``gpus`` is a list of dicts (see ``h100`` / ``a100_mig`` for keys); ``system`` holds
    top-level keys (driver_version, cuda_version, init_error, ...). The default node has two
    H100s and one A100 in MIG mode.
    """

    def __init__(self, path: Path, lib_path: Path | None = None,
                 gpus: list[dict[str, Any]] | None = None, **system: Any) -> None:
        self.path = Path(path)
        self.lib_path = lib_path
        self.gpus: list[dict[str, Any]] = gpus if gpus is not None else [h100(0), h100(1), a100_mig(2)]
        self.system: dict[str, Any] = {"driver_version": "550.54.15", "cuda_version": 12040, **system}
        self.run_id = uuidlib.uuid4().hex
        self._xids: list[list[tuple[int, ...]]] = []
        self.write()

    # -- changes ------------------------------------------------------------------------
    def set(self, **system: Any) -> FakeNode:
        """Set top-level keys (None removes one), e.g. ``set(init_error=1)``."""
        for k, v in system.items():
            if v is None:
                self.system.pop(k, None)
            else:
                self.system[k] = v
        return self.write()

    def update_gpu(self, index: int, **values: Any) -> FakeNode:
        """Change keys of one GPU (None removes a key), e.g. ``update_gpu(1, lost=1)``."""
        gpu = self.gpus[index]
        for k, v in values.items():
            if v is None:
                gpu.pop(k, None)
            else:
                gpu[k] = copy.deepcopy(v)
        return self.write()

    def unsupported(self, index: int, *names: str) -> FakeNode:
        """Make the named reads of a GPU return NOT_SUPPORTED (adds to the GPU's list)."""
        current = list(self.gpus[index].get("unsupported", []))
        return self.update_gpu(index, unsupported=current + [n for n in names if n not in current])

    def add_xid(self, gpu: int, *codes: int, mig: tuple[int, int] | None = None) -> FakeNode:
        """Raise XID events (delivered once each, in order) on GPU ``gpu``; ``mig=(gi, ci)``
        makes them events of that MIG instance. Lost unless the GPU is watched for events when
        the library notices them, as with NVML: raise them once the agent has identified it."""
        self._xids.append([(gpu, c, *(mig or ())) for c in codes])
        return self.write()

    # -- output -------------------------------------------------------------------------
    def render(self) -> str:
        lines = [f"run_id={self.run_id}", f"gpu_count={len(self.gpus)}"]
        for k, v in self.system.items():
            _flatten(k, v, lines)
        for i, gpu in enumerate(self.gpus):
            _flatten(f"gpu.{i}", gpu, lines)
        for seq, events in enumerate(self._xids, start=1):
            lines.append(f"xid.{seq}=" + ",".join(":".join(map(str, e)) for e in events))
        return "\n".join(lines) + "\n"

    def write(self) -> FakeNode:
        """Replace the file atomically (a new inode, so the library always sees the change)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.render())
        os.replace(tmp, self.path)
        return self

    def stat(self, gpu: int, name: str) -> int:
        """A counter of the loaded library for GPU ``gpu`` (see the module's test hooks)."""
        lib = _loaded.get(str(self.lib_path))
        if lib is None:
            raise RuntimeError("the fake is not loaded in this process")
        n = int(lib.fake_nvml_stat(gpu, name.encode()))
        if n < 0:
            raise ValueError(f"no such counter: {name}")
        return n

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess (the CLI) that must load the fake: os.environ plus
        ``LD_LIBRARY_PATH=<dir of the fake>`` and ``FAKE_NVML_CONFIG``."""
        env = dict(os.environ)
        env["FAKE_NVML_CONFIG"] = str(self.path)
        if self.lib_path is not None:
            old = env.get("LD_LIBRARY_PATH")
            lib_dir = str(self.lib_path.parent)
            env["LD_LIBRARY_PATH"] = lib_dir + (os.pathsep + old if old else "")
        return env


# -- Loading into this process -----------------------------------------------------------------

_loaded: dict[str, ctypes.CDLL] = {}


def load_into_pynvml(lib_path: Path) -> ctypes.CDLL:
    """Load the fake so that ``pynvml.nvmlInit()`` uses it, and reset its state.

    pynvml loads ``CDLL("libnvidia-ml.so.1")``; once our file (same soname) is loaded with
    RTLD_GLOBAL, the dynamic loader hands out that one. If pynvml already holds a library (a
    previous test), it is the same one: only one fake exists per session.
    """
    import pynvml

    key = str(lib_path)
    lib = _loaded.get(key)
    if lib is None:
        lib = ctypes.CDLL(key, mode=ctypes.RTLD_GLOBAL)
        _loaded[key] = lib
    if pynvml.nvmlLib is not None and getattr(pynvml.nvmlLib, "_name", None) not in (key, LIB_NAME):
        # Something else got loaded first (not expected): point pynvml at the fake.
        with pynvml.libLoadLock:
            pynvml.nvmlLib = lib
            pynvml._nvmlGetFunctionPointer_cache.clear()
    lib.fake_nvml_reset()
    return lib


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the compiled fake ``libnvidia-ml.so.1`` (its directory holds nothing else)."""
    return build_fake_nvml(tmp_path_factory.mktemp("fake_nvml"))


@pytest.fixture
def fake_nvml(fake_nvml_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNode]:
    """A ``FakeNode`` (default: two H100 + one A100 in MIG mode) written to ``tmp_path``,
    ``FAKE_NVML_CONFIG`` set, and the fake loaded for in-process pynvml. For a subprocess use
    ``fake_nvml.env``."""
    node = FakeNode(tmp_path / "fake_nvml.conf", lib_path=fake_nvml_lib)
    monkeypatch.setenv("FAKE_NVML_CONFIG", str(node.path))
    lib = load_into_pynvml(fake_nvml_lib)
    yield node
    lib.fake_nvml_reset()
