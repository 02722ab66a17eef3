"""The words every backend uses for the same GPU facts, defined once.

Label values (clock domains, clock-event reasons, violation policies, ...), NVML's unit
conversions, sentinels and the Kubernetes defaults live here, so that the NVML backend, the
simulated backend, the CLI and the docs cannot drift apart: a test checks that both backends
emit exactly these label values. The NVML numbers behind the names (``pynvml`` constants) are
mapped in ``exporter/sources/nvml``; nothing here imports ``pynvml``.
"""

from __future__ import annotations

# -- Label values -------------------------------------------------------------------------

#: ``clock`` label of nvidia_gpu_clock_hertz / nvidia_gpu_clock_max_hertz (nvmlClockType_t order).
CLOCK_DOMAINS: tuple[str, ...] = ("graphics", "sm", "memory", "video")
#: ``clock`` label of the application clock metrics: NVML sets them as (memory, graphics) pairs.
APPLICATION_CLOCK_DOMAINS: tuple[str, ...] = ("graphics", "memory")

#: ``reason`` label of nvidia_gpu_clock_event_active, with the nvmlClocksEventReason* bit of each.
CLOCK_EVENT_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)

#: ``reason`` label of nvidia_gpu_violation_seconds_total, in nvmlPerfPolicyType_t order
#: (NVML_PERF_POLICY_POWER = 0 ... NVML_PERF_POLICY_RELIABILITY = 5, then TOTAL_APP_CLOCKS = 10 and
#: TOTAL_BASE_CLOCKS = 11; 6-9 are not defined).
VIOLATION_POLICIES: tuple[str, ...] = (
    "power", "thermal", "sync_boost", "board_limit", "low_utilization", "reliability",
    "total_app_clocks", "total_base_clocks",
)

#: ``threshold`` label of nvidia_gpu_temperature_threshold_celsius.
TEMPERATURE_THRESHOLDS: tuple[str, ...] = ("slowdown", "shutdown", "memory_max", "gpu_max")

#: ``type`` label of nvidia_gpu_nvlink_errors_total (nvmlNvLinkErrorCounter_t order).
NVLINK_ERROR_TYPES: tuple[str, ...] = ("replay", "recovery", "crc_flit", "crc_data")

#: ``type`` label of the ECC counters.
ECC_ERROR_TYPES: tuple[str, ...] = ("corrected", "uncorrected")

#: ``type`` label of nvidia_gpu_remapped_rows.
REMAPPED_ROW_TYPES: tuple[str, ...] = ("correctable", "uncorrectable")

#: ``cause`` label of nvidia_gpu_retired_pages.
RETIREMENT_CAUSES: tuple[str, ...] = ("single_bit", "double_bit")

#: ``pipe`` label of nvidia_gpu_pipe_active_ratio (GPM): non-tensor math pipes, then tensor-core
#: instruction kinds.
PROFILING_PIPES: tuple[str, ...] = ("fp64", "fp32", "fp16", "integer", "tensor_hmma", "tensor_imma", "tensor_dfma")

#: ``architecture`` on nvidia_gpu_info, by nvmlDeviceArchitecture_t (absent: unknown, shown as its number).
ARCHITECTURES: dict[int, str] = {
    2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada", 9: "hopper",
    10: "blackwell",
}

#: ``direction`` label of byte counters (PCIe, NVLink).
DIRECTIONS: tuple[str, ...] = ("rx", "tx")

#: ``compute_mode`` on nvidia_gpu_info, indexed by nvmlComputeMode_t.
COMPUTE_MODES: tuple[str, ...] = ("default", "exclusive_thread", "prohibited", "exclusive_process")

#: Values of ``mig_mode`` and ``persistence_mode`` on nvidia_gpu_info.
ENABLED, DISABLED = "enabled", "disabled"

# -- NVML sentinels and units ---------------------------------------------------------------

#: gpuInstanceId / computeInstanceId of a process or event that is not inside a MIG instance;
#: also the ``scopeId`` that asks a field for the sum over every NVLink link.
NOT_MIG = 0xFFFFFFFF

HERTZ_PER_MEGAHERTZ = 1_000_000
BYTES_PER_KIB = 1024  # NVML's "KB" in PCIe and NVLink figures are KiB
BYTES_PER_MIB = 1024 * 1024  # GPM's "MiB/sec" rates
WATTS_PER_MILLIWATT = 1e-3
JOULES_PER_MILLIJOULE = 1e-3
SECONDS_PER_NANOSECOND = 1e-9
RATIO_PER_PERCENT = 1e-2

# -- Kubernetes defaults -------------------------------------------------------------------

DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
#: Extended resources that hold whole GPUs or replicas of one (time-slicing ``renameByDefault``).
DEFAULT_RESOURCE_NAMES: tuple[str, ...] = ("nvidia.com/gpu", "nvidia.com/gpu.shared")
#: Prefixes of resources that hold MIG instances (MIG strategy ``mixed``).
DEFAULT_RESOURCE_PREFIXES: tuple[str, ...] = ("nvidia.com/mig-",)
GPU_RESOURCE = DEFAULT_RESOURCE_NAMES[0]
SHARED_GPU_RESOURCE = DEFAULT_RESOURCE_NAMES[1]
MIG_RESOURCE_PREFIX = DEFAULT_RESOURCE_PREFIXES[0]
# The DRA driver whose ResourceClaims hold GPUs and MIG instances (NVIDIA's k8s-dra-driver-gpu).
DEFAULT_DRA_DRIVERS: tuple[str, ...] = ("gpu.nvidia.com",)
NVIDIA_DRA_DRIVER = DEFAULT_DRA_DRIVERS[0]
