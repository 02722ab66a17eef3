"""Every metric the agent exports: name, type, help and the labels of its own.

This is the one module that knows metric names. Backends refer to the ``MetricSpec``
objects below (a typo is an ``AttributeError``, not a silently missing series), the renderer
looks up type and help here, and ``tests/test_docs.py`` keeps ``docs/metrics.md`` in step.

``labels`` lists only the labels a metric adds of its own. The renderer adds the identity
labels of the scope: ``gpu, uuid`` on GPU series; ``gpu, uuid, gpu_instance_id,
compute_instance_id`` on MIG series. Device series never carry pod labels, whoever holds the
device: a pod change would otherwise re-create every series of the GPU (and move its lifetime
counters to the next pod). Pods are joined in through ``nvidia_gpu_allocation_info`` (see
docs/attribution.md).

Every metric belongs to one collector group (``GROUPS``), switched on and off as node_exporter's
collectors are (``--collector.<group>``, ``--no-collector.<group>``): what a group holds is said
here and nowhere else, so the flags, the renderer's filter, the docs' table and the series
budget (``exporter/sizing.py``) all follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["gauge", "counter"]
Scope = Literal["gpu", "mig", "device", "allocation", "container", "node", "agent"]


@dataclass(frozen=True, slots=True)
class Group:
    """A collector group: metrics switched on and off together.

    ``default`` None: always on, no flag (what names a device, what says it is healthy, the
    allocation join, the agent's own metrics). ``reads`` says what NVML is spared while the group
    is off (docs/metrics.md): a group off is never rendered, and not read either where another
    consumer does not need the same call.
    """

    name: str
    default: bool | None
    help: str  # what it holds, for --help and the docs
    reads: str  # the NVML reads it costs, skipped while it is off

    @property
    def flag(self) -> str:
        return f"--collector.{self.name}"


GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("identity", None, "nvidia_gpu_info, nvidia_gpu_up, nvidia_gpu_mig_info",
          "UUID, name, PCI, serial, VBIOS, architecture once per GPU; the modes every cycle"),
    Group("health", None, "XID counts, volatile ECC errors, remapped rows and pending/failed remaps and retirements",
          "the XID event thread; 2 ECC and 1 retirement fields of the field batch; 1 remapped-rows call"),
    Group("utilization", True, "GPU, memory, encoder and decoder utilisation",
          "encoder and decoder (2 calls); GPU and memory utilisation are read anyway: a container's usage of a "
          "GPU it holds alone is the GPU's"),
    Group("memory", True, "device memory (total, used, free, reserved), BAR1, MIG instance memory",
          "BAR1 (1 call); memory itself is read anyway, for the containers' memory"),
    Group("thermal", True, "temperature, memory temperature, fan speed, temperature thresholds",
          "temperature and fan (2 calls), the memory temperature field, 4 thresholds (once per GPU)"),
    Group("power", True, "power draw, enforced power limit, energy counter",
          "power and enforced limit (2 calls), the energy field (4.1 ms on an H200, once per slow interval)"),
    Group("clocks", True, "current clocks by domain, performance state",
          "4 clocks and the performance state (5 calls)"),
    Group("throttle", True, "clock-event reasons (throttling) and violation time by policy",
          "clock-event reasons (1 call); 8 violation counters (0.85 ms each on an H200, once per slow interval)"),
    Group("pcie", True, "PCIe link generation and width (current and maximum), replays, bytes moved",
          "2 link calls, 2 maxima (once per GPU), the replay and 2 byte fields"),
    Group("nvlink", True, "NVLink per GPU: errors by type summed over links, links up and present, bytes moved",
          "the link states (1 call per link, links probed once per GPU), 4 error-total and 2 throughput fields"),
    Group("nvlink.links", False, "NVLink per link: each link's state and error counters",
          "4 error counters per link (72 calls on an H100 SXM)"),
    Group("processes", True, "compute processes per GPU and MIG instance",
          "none: the process lists are read anyway, to attribute shared GPUs to containers"),
    Group("ecc", False, "lifetime (aggregate) ECC errors and retired pages by cause",
          "2 aggregate ECC fields (InfoROM, once per slow interval) and 2 retired-page fields"),
    Group("limits", False, "static facts: maximum and application clocks, power-limit range and default",
          "application clocks (2 calls); maximum clocks (2.5 ms each on an H200), default application clocks and "
          "the power-limit range (7 calls, once per GPU)"),
    Group("profiling", False, "NVML GPM (Hopper and newer): SM, tensor, pipe, DRAM activity, PCIe/NVLink rates, "
          "per GPU and MIG GPU instance",
          "a GPM sample per GPU and GPU instance and one metrics call (1.6 ms for 14 metrics on an H200) per cycle"),
    Group("allocation", None, "nvidia_gpu_allocation_info, allocatable and allocated devices, per-container usage",
          "none of its own (the kubelet, the API server, procfs)"),
    Group("agent", None, "the agent's own metrics (kube_gpu_exporter_*, process_*, python_*)", "none"),
)}


def switchable_groups() -> list[Group]:
    """The groups a flag switches, in the order of GROUPS."""
    return [g for g in GROUPS.values() if g.default is not None]


def default_collectors() -> frozenset[str]:
    """The groups on with no flag given: the always-on ones and those on by default."""
    return frozenset(g.name for g in GROUPS.values() if g.default is not False)


def all_collectors() -> frozenset[str]:
    return frozenset(GROUPS)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    scope: Scope
    labels: tuple[str, ...] = ()
    group: str = "agent"  # its collector group (GROUPS)


_ALL: dict[str, MetricSpec] = {}


def _metric(name: str, kind: Kind, help: str, scope: Scope, labels: tuple[str, ...] = (), *,
            group: str) -> MetricSpec:
    if name in _ALL:
        raise ValueError(f"metric {name} defined twice")
    if group not in GROUPS:
        raise ValueError(f"metric {name}: no group {group!r}")
    spec = MetricSpec(name, kind, help, scope, labels, group)
    _ALL[name] = spec
    return spec


def all_metrics() -> list[MetricSpec]:
    """Every metric, in definition order."""
    return list(_ALL.values())


def metrics_of(group: str) -> list[MetricSpec]:
    """The metrics of one group, in definition order."""
    return [m for m in _ALL.values() if m.group == group]


# -- Per GPU ------------------------------------------------------------------------------
GPU_INFO = _metric(
    "nvidia_gpu_info", "gauge", "Facts about a GPU, to join on by uuid; always 1. Kept while the GPU is down.", "gpu",
    ("model", "pci_bus_id", "serial", "vbios_version", "driver_version", "cuda_version",
     "mig_mode", "persistence_mode", "compute_mode", "architecture", "compute_capability", "board_part_number"),
    group="identity",
)
GPU_UP = _metric(
    "nvidia_gpu_up", "gauge",
    "1 when the last cycle read this GPU (a query that failed alone is omitted and counted in "
    "kube_gpu_exporter_collector_errors_total), 0 when the GPU is lost or its read failed or hung.", "gpu",
    group="identity",
)
UTILIZATION = _metric(
    "nvidia_gpu_utilization_ratio", "gauge",
    "Fraction of the last sample period in which a kernel ran on the GPU (0..1).", "gpu", group="utilization")
MEMORY_UTILIZATION = _metric(
    "nvidia_gpu_memory_utilization_ratio", "gauge",
    "Fraction of the last sample period in which device memory was read or written (0..1).", "gpu", group="utilization")
ENCODER_UTILIZATION = _metric(
    "nvidia_gpu_encoder_utilization_ratio", "gauge", "Video encoder utilisation (0..1).", "gpu", group="utilization")
DECODER_UTILIZATION = _metric(
    "nvidia_gpu_decoder_utilization_ratio", "gauge", "Video decoder utilisation (0..1).", "gpu", group="utilization")
MEMORY_TOTAL = _metric("nvidia_gpu_memory_total_bytes", "gauge", "Total device memory.", "gpu", group="memory")
MEMORY_USED = _metric(
    "nvidia_gpu_memory_used_bytes", "gauge", "Device memory allocated by processes (excludes reserved).", "gpu",
    group="memory",
)
MEMORY_FREE = _metric("nvidia_gpu_memory_free_bytes", "gauge", "Device memory not allocated.", "gpu", group="memory")
MEMORY_RESERVED = _metric(
    "nvidia_gpu_memory_reserved_bytes", "gauge", "Device memory reserved by the driver and firmware.", "gpu",
    group="memory",
)
BAR1_TOTAL = _metric(
    "nvidia_gpu_bar1_total_bytes", "gauge", "Size of the BAR1 aperture through which the CPU and peers map device "
    "memory.", "gpu", group="memory")
BAR1_USED = _metric("nvidia_gpu_bar1_used_bytes", "gauge", "BAR1 aperture in use.", "gpu", group="memory")
TEMPERATURE = _metric("nvidia_gpu_temperature_celsius", "gauge", "GPU core temperature.", "gpu", group="thermal")
MEMORY_TEMPERATURE = _metric(
    "nvidia_gpu_memory_temperature_celsius", "gauge", "HBM memory temperature, where the GPU reports it.", "gpu",
    group="thermal",
)
TEMPERATURE_THRESHOLD = _metric(
    "nvidia_gpu_temperature_threshold_celsius", "gauge",
    "Temperature at which the GPU acts: slowdown (clocks drop), shutdown, memory_max, gpu_max.", "gpu",
    ("threshold",), group="thermal")
POWER = _metric("nvidia_gpu_power_watts", "gauge", "Power drawn by the GPU board.", "gpu", group="power")
POWER_LIMIT = _metric("nvidia_gpu_power_limit_watts", "gauge", "Power limit the driver enforces.", "gpu", group="power")
POWER_LIMIT_DEFAULT = _metric(
    "nvidia_gpu_power_limit_default_watts", "gauge", "Power limit the board ships with.", "gpu", group="limits")
POWER_LIMIT_MIN = _metric(
    "nvidia_gpu_power_limit_min_watts", "gauge", "Lowest power limit an operator may set.", "gpu", group="limits")
POWER_LIMIT_MAX = _metric(
    "nvidia_gpu_power_limit_max_watts", "gauge", "Highest power limit an operator may set.", "gpu", group="limits")
ENERGY = _metric(
    "nvidia_gpu_energy_joules_total", "counter",
    "Energy used by the GPU since the driver was loaded; read once per --collector.slow-interval.", "gpu",
    group="power",
)
FAN_SPEED = _metric(
    "nvidia_gpu_fan_speed_ratio", "gauge", "Intended fan speed as a fraction of the maximum.", "gpu", group="thermal")
CLOCK = _metric(
    "nvidia_gpu_clock_hertz", "gauge", "Current clock frequency by domain (graphics, sm, memory, video).", "gpu",
    ("clock",), group="clocks")
CLOCK_MAX = _metric(
    "nvidia_gpu_clock_max_hertz", "gauge", "Maximum clock frequency by domain.", "gpu", ("clock",), group="limits")
APPLICATION_CLOCK = _metric(
    "nvidia_gpu_application_clock_hertz", "gauge",
    "Application clock target by domain: what the GPU runs at under load unless a limit holds it down.", "gpu",
    ("clock",), group="limits")
APPLICATION_CLOCK_DEFAULT = _metric(
    "nvidia_gpu_application_clock_default_hertz", "gauge", "Default application clock target by domain.", "gpu",
    ("clock",), group="limits")
PERFORMANCE_STATE = _metric(
    "nvidia_gpu_performance_state", "gauge", "Performance state, 0 (maximum) to 15 (minimum).", "gpu", group="clocks")
CLOCK_EVENT = _metric(
    "nvidia_gpu_clock_event_active", "gauge",
    "1 while the reason holds clocks down (throttling), else 0; one series per reason.", "gpu", ("reason",),
    group="throttle",
)
VIOLATION_TIME = _metric(
    "nvidia_gpu_violation_seconds_total", "counter",
    "Time the GPU spent held below its target clocks, by policy (power, thermal, ...); read once per "
    "--collector.slow-interval.", "gpu", ("reason",), group="throttle")
PCIE_LINK_GENERATION = _metric(
    "nvidia_gpu_pcie_link_generation", "gauge", "Current PCIe link generation.", "gpu", group="pcie")
PCIE_LINK_MAX_GENERATION = _metric(
    "nvidia_gpu_pcie_link_max_generation", "gauge", "Maximum PCIe link generation of GPU and system.", "gpu",
    group="pcie",
)
PCIE_LINK_WIDTH = _metric("nvidia_gpu_pcie_link_width", "gauge", "Current PCIe link width (lanes).", "gpu",
    group="pcie",
)
PCIE_LINK_MAX_WIDTH = _metric(
    "nvidia_gpu_pcie_link_max_width", "gauge", "Maximum PCIe link width (lanes).", "gpu", group="pcie")
PCIE_REPLAYS = _metric(
    "nvidia_gpu_pcie_replays_total", "counter", "PCIe replays (link-level retransmissions).", "gpu", group="pcie")
PCIE_DATA = _metric(
    "nvidia_gpu_pcie_data_bytes_total", "counter",
    "Bytes moved over PCIe by direction (rx, tx); NVML lets this counter wrap, rate() reads a wrap as a reset.",
    "gpu", ("direction",), group="pcie")
ECC_ERRORS = _metric(
    "nvidia_gpu_ecc_errors_total", "counter",
    "ECC errors by type (corrected, uncorrected) since the driver was loaded (NVML's volatile count).",
    "gpu", ("type",), group="health")
ECC_AGGREGATE_ERRORS = _metric(
    "nvidia_gpu_ecc_aggregate_errors_total", "counter",
    "ECC errors by type over the GPU's lifetime (NVML's aggregate count, kept across reboots; includes the "
    "volatile ones); read once per --collector.slow-interval.", "gpu", ("type",), group="ecc")
RETIRED_PAGES = _metric(
    "nvidia_gpu_retired_pages", "gauge", "Memory pages retired, by cause (single_bit, double_bit).", "gpu",
    ("cause",), group="ecc")
RETIRED_PAGES_PENDING = _metric(
    "nvidia_gpu_retired_pages_pending", "gauge", "1 when a page retirement waits for a reboot.", "gpu", group="health")
REMAPPED_ROWS = _metric(
    "nvidia_gpu_remapped_rows", "gauge", "Memory rows remapped, by error type (correctable, uncorrectable).",
    "gpu", ("type",), group="health")
REMAPPED_ROWS_PENDING = _metric(
    "nvidia_gpu_remapped_rows_pending", "gauge", "1 when a row remap waits for a GPU reset.", "gpu", group="health")
REMAPPED_ROWS_FAILURE = _metric(
    "nvidia_gpu_remapped_rows_failure", "gauge", "1 when a row remap failed; the GPU needs service.", "gpu",
    group="health",
)
NVLINK_ERRORS = _metric(
    "nvidia_gpu_nvlink_errors_total", "counter",
    "NVLink errors of the GPU by type (replay, recovery, crc_flit, crc_data), summed over its links; per link: "
    "nvidia_gpu_nvlink_link_errors_total (--collector.nvlink.links).", "gpu", ("type",), group="nvlink")
NVLINK_LINKS_UP = _metric(
    "nvidia_gpu_nvlink_links_up", "gauge", "NVLink links of the GPU that are active.", "gpu", group="nvlink")
NVLINK_LINKS = _metric(
    "nvidia_gpu_nvlink_links", "gauge", "NVLink links the GPU has, active or not.", "gpu", group="nvlink")
NVLINK_DATA = _metric(
    "nvidia_gpu_nvlink_data_bytes_total", "counter",
    "NVLink payload bytes over all links, by direction (rx, tx).", "gpu", ("direction",), group="nvlink")
NVLINK_LINK_UP = _metric(
    "nvidia_gpu_nvlink_link_up", "gauge", "1 when the NVLink link is active (--collector.nvlink.links).", "gpu",
    ("link",), group="nvlink.links")
NVLINK_LINK_ERRORS = _metric(
    "nvidia_gpu_nvlink_link_errors_total", "counter",
    "NVLink errors per link by type (replay, recovery, crc_flit, crc_data) (--collector.nvlink.links).", "gpu",
    ("link", "type"), group="nvlink.links")
XID_ERRORS = _metric(
    "nvidia_gpu_xid_errors_total", "counter",
    "XID error events since the agent started, by XID code; the codes whose recurrence the alerts judge (48, 64, "
    "74, 95) are present from the start (0), any other code's series appears with its first event.",
    "gpu", ("xid",), group="health")
XID_EVENTS = _metric(
    "nvidia_gpu_xid_events_total", "counter",
    "XID error events since the agent started, by tier: the action the code calls for (reboot, reset, "
    "application, informational; other: a code the agent does not know); every tier present from the start (0), "
    "so that increase() sees the first event.", "gpu", ("tier",), group="health")
PROCESSES = _metric(
    "nvidia_gpu_processes", "gauge", "Compute processes running on the GPU (all its MIG instances included).",
    "gpu", group="processes")

# -- Profiling (NVML GPM, Hopper and newer), per GPU and per MIG GPU instance -----------------
GRAPHICS_ACTIVE = _metric(
    "nvidia_gpu_graphics_active_ratio", "gauge",
    "Fraction of the last cycle in which the graphics or compute engine was busy (0..1).", "device", group="profiling")
SM_ACTIVE = _metric(
    "nvidia_gpu_sm_active_ratio", "gauge",
    "Fraction of SMs busy, averaged over the last cycle (0..1): how much of the GPU the work fills.", "device",
    group="profiling",
)
SM_OCCUPANCY = _metric(
    "nvidia_gpu_sm_occupancy_ratio", "gauge",
    "Warps resident on the SMs as a fraction of the maximum, averaged over the last cycle (0..1).", "device",
    group="profiling",
)
TENSOR_ACTIVE = _metric(
    "nvidia_gpu_tensor_active_ratio", "gauge",
    "Fraction of the last cycle in which the SMs ran tensor-core instructions of any kind (0..1).", "device",
    group="profiling",
)
PIPE_ACTIVE = _metric(
    "nvidia_gpu_pipe_active_ratio", "gauge",
    "Fraction of the last cycle in which the SMs used one pipe: fp64, fp32, fp16, integer (non-tensor math) "
    "or tensor_hmma, tensor_imma, tensor_dfma (tensor cores by instruction); 0..1.", "device", ("pipe",),
    group="profiling",
)
DRAM_ACTIVE = _metric(
    "nvidia_gpu_dram_active_ratio", "gauge",
    "Device memory bandwidth used as a fraction of the maximum, averaged over the last cycle (0..1).", "device",
    group="profiling",
)
PCIE_RATE = _metric(
    "nvidia_gpu_pcie_bytes_per_second", "gauge", "PCIe traffic over the last cycle by direction (rx, tx).",
    "device", ("direction",), group="profiling")
NVLINK_RATE = _metric(
    "nvidia_gpu_nvlink_bytes_per_second", "gauge",
    "NVLink traffic over all links in the last cycle by direction (rx, tx).", "device", ("direction",),
    group="profiling",
)

# -- Per MIG instance --------------------------------------------------------------------
MIG_INFO = _metric(
    "nvidia_gpu_mig_info", "gauge", "A MIG instance of a GPU; always 1. Kept while the GPU is down.", "mig",
    ("mig_uuid", "profile"), group="identity")
MIG_MEMORY_TOTAL = _metric(
    "nvidia_gpu_mig_memory_total_bytes", "gauge", "Memory of a MIG instance.", "mig", group="memory")
MIG_MEMORY_USED = _metric(
    "nvidia_gpu_mig_memory_used_bytes", "gauge", "Memory of a MIG instance allocated by processes.", "mig",
    group="memory",
)
MIG_MEMORY_FREE = _metric(
    "nvidia_gpu_mig_memory_free_bytes", "gauge", "Memory of a MIG instance not allocated.", "mig", group="memory")
MIG_PROCESSES = _metric(
    "nvidia_gpu_mig_processes", "gauge", "Compute processes running on the MIG instance.", "mig", group="processes")

# -- Attribution --------------------------------------------------------------------------
ALLOCATION_INFO = _metric(
    "nvidia_gpu_allocation_info", "gauge",
    "A device (GPU or MIG instance) allocated to a container by the kubelet; always 1. The join point "
    "between device series and pods: one series per device and holder (a shared device has one per container). "
    "Through a DRA ResourceClaim: resource is the driver, and claim_namespace, claim_name, driver, pool, device "
    "name the claim and the device (empty for device-plugin allocations).",
    "allocation",
    ("namespace", "pod", "container", "resource", "shared", "workload_kind", "workload",
     "claim_namespace", "claim_name", "driver", "pool", "device"), group="allocation")
ALLOCATABLE_DEVICES = _metric(
    "nvidia_gpu_allocatable_devices", "gauge",
    "Devices the kubelet can allocate, by resource name; for a DRA driver (resource=<driver>), the devices it "
    "publishes in this node's ResourceSlices.", "node",
    ("resource",), group="allocation")
ALLOCATED_DEVICES = _metric(
    "nvidia_gpu_allocated_devices", "gauge",
    "Devices allocated to containers, by resource name (resource=<driver> for DRA claims).", "node",
    ("resource",), group="allocation")
CONTAINER_MEMORY_USED = _metric(
    "nvidia_gpu_container_memory_used_bytes", "gauge",
    "Device memory a container uses on a GPU or MIG instance it holds: the device's own reading when it "
    "holds the device alone, its processes' sum on a shared device (0 for a holder without a process, when the "
    "device's process list was read and each of its processes placed).", "container", group="allocation")
CONTAINER_UTILIZATION = _metric(
    "nvidia_gpu_container_utilization_ratio", "gauge",
    "Utilisation a container makes of a GPU it holds (0..1): the GPU's own reading when it holds the GPU "
    "alone, its processes' SM share on a shared device (0 for a holder without a process, as for memory).",
    "container", group="allocation")

# -- The agent itself ----------------------------------------------------------------------
BUILD_INFO = _metric(
    "kube_gpu_exporter_build_info", "gauge", "Version of the agent; simulated=\"true\" when no real GPU is read.",
    "agent", ("version", "python_version", "simulated"), group="agent")
COLLECTOR_SUCCESS = _metric(
    "kube_gpu_exporter_collector_success", "gauge",
    "1 when the collector's last run fully succeeded (nvml: NVML up and every GPU read in time; kubelet: "
    "pod-resources List and GetAllocatableResources answered; kubernetes: the pod watch is connected; procfs: "
    "readable, and every GPU process found in it).", "agent",
    ("collector",), group="agent")
COLLECTOR_DURATION = _metric(
    "kube_gpu_exporter_collector_duration_seconds", "gauge",
    "Time one collector took in the last cycle (not the cycle: see kube_gpu_exporter_cycle_duration_seconds).",
    "agent", ("collector",), group="agent")
COLLECTOR_LAST_SUCCESS = _metric(
    "kube_gpu_exporter_collector_last_success_timestamp_seconds", "gauge",
    "Unix time of the collector's last full success; time() minus this is how old its data may be.", "agent",
    ("collector",), group="agent")
COLLECTOR_ERRORS = _metric(
    "kube_gpu_exporter_collector_errors_total", "counter",
    "Errors by collector and kind; the known kinds of every enabled collector are present from the start (0).",
    "agent", ("collector", "kind"), group="agent")
LAST_CYCLE = _metric(
    "kube_gpu_exporter_last_cycle_timestamp_seconds", "gauge",
    "Unix time at which the last collection cycle finished.", "agent", group="agent")
CYCLE_DURATION = _metric(
    "kube_gpu_exporter_cycle_duration_seconds", "gauge",
    "Duration of the last collection cycle: its collectors and attribution, up to its rendering.", "agent",
    group="agent",
)
GPU_SNAPSHOT_AGE = _metric(
    "kube_gpu_exporter_gpu_snapshot_age_seconds", "gauge",
    "Age of the oldest GPU reading served; grows while NVML calls hang.", "agent", group="agent")
GPU_SNAPSHOT_STALE = _metric(
    "kube_gpu_exporter_gpu_snapshot_stale", "gauge",
    "1 when some GPU readings are from an earlier cycle because an NVML call did not return in time.", "agent",
    group="agent",
)
UNRESOLVED_CLAIM_DEVICES = _metric(
    "kube_gpu_exporter_unresolved_claim_devices", "gauge",
    "Devices of a DRA ResourceClaim held on this node that no ResourceSlice names (the API server not reached "
    "since the agent started, no slice of the pool, a device without a uuid attribute): their holders are not "
    "attributed. Present only while some are.", "agent", ("claim_namespace", "claim_name", "driver"), group="agent")
UNRESOLVED_GPU_PROCESSES = _metric(
    "kube_gpu_exporter_unresolved_gpu_processes", "gauge",
    "GPU processes of the last cycle that procfs could not place in a container or on the host: their pid is not "
    "in --path.procfs (the agent in a pid namespace of its own, see docs/deploy.md#shared-gpus-and-hostpid; or a "
    "process that just exited) or procfs cannot be read. Their usage goes to no container, and the holders of "
    "their shared device are not reported idle.", "agent", group="agent")
NVML_QUERY_DURATION = _metric(
    "kube_gpu_exporter_nvml_query_duration_seconds", "gauge",
    "NVML time of the last read of every GPU, summed over GPUs, by query group (identity, static, modes, "
    "activity, thermal_power, clocks, pcie, memory_errors, nvlink, fields, slow, processes, profiling).",
    "agent", ("group",), group="agent")
NVML_UP = _metric(
    "kube_gpu_exporter_nvml_up", "gauge",
    "1 when NVML is initialised and answers (or the simulated backend runs).", "agent", group="agent")
ALERTMANAGER_NOTIFICATIONS = _metric(
    "kube_gpu_exporter_alertmanager_notifications_total", "counter",
    "Alerts the agent pushed to an Alertmanager (--alertmanager.url), by result: sent, failed (after its "
    "retries), dropped (the queue was full); every result present from the start (0).", "agent",
    ("alertmanager", "result"), group="agent")
ALERTMANAGER_QUEUE_LENGTH = _metric(
    "kube_gpu_exporter_alertmanager_queue_length", "gauge",
    "Alerts waiting to be posted to an Alertmanager.", "agent", ("alertmanager",), group="agent")
HTTP_REJECTED = _metric(
    "kube_gpu_exporter_http_rejected_total", "counter",
    "HTTP requests and connections the agent refused, by reason (method, path, body, unauthorized, "
    "auth_rate_limit, client_certificate, write_timeout, connection_limit); every reason present from the "
    "start (0).",
    "agent", ("reason",), group="agent")


_SCOPE_LABELS = {
    "gpu": "gpu, uuid",
    "mig": "gpu, uuid, gpu_instance_id, compute_instance_id",
    "device": "gpu, uuid (+ gpu_instance_id on a MIG GPU instance)",
    "allocation": "gpu, uuid, gpu_instance_id, compute_instance_id (absent for a whole GPU), label_<name> "
    "for allowlisted pod labels",
    "container": "namespace, pod, container, gpu, uuid (+ gpu_instance_id, compute_instance_id on MIG)",
    "node": "",
    "agent": "",
}


def markdown_table() -> str:
    """The metric reference table of docs/metrics.md (``make docs`` writes it there)."""
    rows = ["| metric | type | group | labels | help |", "| --- | --- | --- | --- | --- |"]
    for spec in all_metrics():
        labels = ", ".join(filter(None, [_SCOPE_LABELS[spec.scope], ", ".join(spec.labels)]))
        rows.append(f"| `{spec.name}` | {spec.kind} | {spec.group} | {labels} | {spec.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


BEGIN_MARK, END_MARK = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def write_between(path: str, begin: str, end: str, content: str) -> None:
    """Replace what stands between the markers ``begin`` and ``end`` of the file ``path``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise ValueError(f"{path}: no {begin} ... {end}")
    _, _, tail = rest.partition(end)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{begin}\n{content}{end}{tail}")


if __name__ == "__main__":
    import sys

    write_between(sys.argv[1], BEGIN_MARK, END_MARK, markdown_table())
