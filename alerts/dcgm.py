"""Recording rules that give dcgm-exporter's main names (``DCGM_FI_*``) from the native series, for
those who keep scraping only ``/metrics`` (docs/migrate-from-dcgm-exporter.md#recording-rules).

``python -m alerts.generate`` writes them to ``alerts/dcgm-compat.rules.yaml`` and
``alerts/dcgm-compat.prometheusrule.yaml``: a rule set of their own, loaded only by those who want
it. The agent's ``--compat.dcgm-exporter`` output gives the same names, units and labels at the
source (``exporter/render/dcgm.py``); ``tests/test_dcgm_prometheus.py`` holds the two to the same
values through a real Prometheus.

Each rule keeps dcgm-exporter's labels (``gpu``, ``UUID``, ``pci_bus_id``, ``device``,
``modelName``, ``Hostname``, ``DCGM_FI_DRIVER_VERSION``; ``GPU_I_ID``, ``GPU_I_PROFILE`` on a MIG
GPU instance; ``pod``, ``namespace``, ``container`` of a device one container holds alone) and the
same semantics as the agent's output: a MIG GPU's instance fields per GPU instance only, its board
fields once; a shared device's series without a holder, plus ``DCGM_FI_DEV_GPU_UTIL`` and
``DCGM_FI_DEV_FB_USED`` per holder. ``Hostname`` is the ``node`` target label (the ServiceMonitor's).

Limits (written in the guide): one evaluation interval of lag; ``DCGM_FI_DEV_XID_ERRORS`` cannot be
recorded (a label value, the XID code, cannot become a sample value without listing every code);
``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` is a rate over ``NVLINK_RATE_WINDOW``; no TYPE or HELP
metadata; the profiling fields need ``--collector.profiling``, ECC's ``--collector.ecc``.
"""

from __future__ import annotations

from typing import Any

from exporter.model import vocabulary

GROUP = "kube-gpu-exporter.dcgm-compat"
INTERVAL = "30s"
NVLINK_RATE_WINDOW = "2m"

GPU_IDENTITY = "dcgm_compat:gpu_identity"
MIG_IDENTITY = "dcgm_compat:mig_identity"
GPU_HOLDER = "dcgm_compat:gpu_exclusive_holder"
MIG_HOLDER = "dcgm_compat:mig_exclusive_holder"
_ID_LABELS = "gpu, UUID, pci_bus_id, device, modelName, Hostname, DCGM_FI_DRIVER_VERSION"
_HOLDER_LABELS = "namespace, pod, container"


def _helpers() -> list[tuple[str, str]]:
    info = ('label_replace(label_replace(label_replace(label_replace(label_replace(nvidia_gpu_info,\n'
            '  "UUID", "$1", "uuid", "(.+)"), "modelName", "$1", "model", "(.*)"), "device", "nvidia$1", "gpu", "(.+)"),\n'
            '  "Hostname", "$1", "node", "(.+)"), "DCGM_FI_DRIVER_VERSION", "$1", "driver_version", "(.*)")')
    mig = ('label_replace(label_replace(nvidia_gpu_mig_info,\n'
           '  "GPU_I_ID", "$1", "gpu_instance_id", "(.+)"), "GPU_I_PROFILE", "$1", "profile", "(.+)")')
    return [
        (GPU_IDENTITY, f"max by (node, uuid, {_ID_LABELS}) (\n{info}\n)"),
        (MIG_IDENTITY, f"max by (node, uuid, gpu_instance_id, GPU_I_ID, GPU_I_PROFILE) (\n{mig}\n)"),
        # the one container holding a whole GPU alone (a shared one, or several holders: none)
        (GPU_HOLDER, f'max by (node, uuid, {_HOLDER_LABELS}) (nvidia_gpu_allocation_info{{shared="false",gpu_instance_id=""}})\n'
                     'and on (node, uuid) (count by (node, uuid) (nvidia_gpu_allocation_info{gpu_instance_id=""}) == 1)'),
        (MIG_HOLDER, f'max by (node, uuid, gpu_instance_id, {_HOLDER_LABELS}) (nvidia_gpu_allocation_info{{shared="false",gpu_instance_id!=""}})\n'
                     'and on (node, uuid, gpu_instance_id) (\n'
                     '  count by (node, uuid, gpu_instance_id) (nvidia_gpu_allocation_info{gpu_instance_id!=""}) == 1\n)'),
    ]


def _gpu(value: str) -> str:
    """``value`` (by node, uuid) with the GPU's identity, and its holder where one holds it alone."""
    with_id = f"(\n  {value}\n) * on (node, uuid) group_left ({_ID_LABELS}) {GPU_IDENTITY}"
    return (f"({with_id})\n* on (node, uuid) group_left ({_HOLDER_LABELS}) {GPU_HOLDER}\n"
            f"or\n(({with_id})\nunless on (node, uuid) {GPU_HOLDER})")


def _mig(value: str) -> str:
    """``value`` (by node, uuid, gpu_instance_id) per GPU instance, with its holder where one holds it alone."""
    with_id = (f"(\n  {value}\n) * on (node, uuid) group_left ({_ID_LABELS}) {GPU_IDENTITY}\n"
               f"* on (node, uuid, gpu_instance_id) group_left (GPU_I_ID, GPU_I_PROFILE) {MIG_IDENTITY}")
    return (f"({with_id})\n* on (node, uuid, gpu_instance_id) group_left ({_HOLDER_LABELS}) {MIG_HOLDER}\n"
            f"or\n(({with_id})\nunless on (node, uuid, gpu_instance_id) {MIG_HOLDER})")


def _split(native: str, convert: str) -> str:
    """Per holder of a shared whole GPU: ``convert`` of its per-container series."""
    whole = _matching(native, 'gpu_instance_id=""')
    value = f"max by (node, uuid, {_HOLDER_LABELS}) ({whole})"
    return (f"(\n  {convert.format(value)}\n) * on (node, uuid) group_left ({_ID_LABELS}) {GPU_IDENTITY}\n"
            f"unless on (node, uuid) {GPU_HOLDER}")


def _field(where: str, gpu: str, mig: str | None = None) -> str:
    """A field's rule: ``gpu``, a PromQL value by (node, uuid); ``where`` as ``render/dcgm.py``'s
    fields: ``gpu`` (every GPU, once), ``gpu_only`` (not MIG-enabled ones), ``instance`` (whole GPUs,
    and ``mig`` per GPU instance of MIG-enabled ones)."""
    if where != "gpu":
        gpu = f"{gpu}\n  unless on (node, uuid) nvidia_gpu_mig_info"
    expr = _gpu(gpu)
    if where == "instance" and mig is not None:
        expr = f"{expr}\nor\n{_mig(mig)}"
    return expr


def _by_gpu(metric: str, convert: str = "{}") -> str:
    return convert.format(f"max by (node, uuid) ({metric})")


def _matching(metric: str, matcher: str) -> str:
    """``metric`` (a name, perhaps with matchers) with one matcher more."""
    return f"{metric[:-1]},{matcher}}}" if metric.endswith("}") else f"{metric}{{{matcher}}}"


def _by_instance(metric: str, convert: str = "{}") -> str:
    instances = _matching(metric, 'gpu_instance_id!=""')
    return convert.format(f"max by (node, uuid, gpu_instance_id) ({instances})")


_ROUND, _PERCENT, _MIB = "round({})", "round(100 * {})", "floor({} / 1048576)"


def _throttle_reasons() -> str:
    parts = [f'{bit} * max by (node, uuid) (nvidia_gpu_clock_event_active{{reason="{reason}"}})'
             for reason, bit in vocabulary.CLOCK_EVENT_REASONS]
    return "\n  + ".join(parts)


def fields() -> list[tuple[str, str]]:
    """(DCGM name, expression) of every recorded field, in render/dcgm.py's order."""
    out = [
        ("DCGM_FI_DEV_SM_CLOCK", _field("gpu", _by_gpu('nvidia_gpu_clock_hertz{clock="sm"}', "round({} / 1e6)"))),
        ("DCGM_FI_DEV_MEM_CLOCK", _field("gpu", _by_gpu('nvidia_gpu_clock_hertz{clock="memory"}', "round({} / 1e6)"))),
        ("DCGM_FI_DEV_MEMORY_TEMP", _field("gpu", _by_gpu("nvidia_gpu_memory_temperature_celsius", _ROUND))),
        ("DCGM_FI_DEV_GPU_TEMP", _field("gpu", _by_gpu("nvidia_gpu_temperature_celsius", _ROUND))),
        ("DCGM_FI_DEV_POWER_USAGE", _field("gpu", _by_gpu("nvidia_gpu_power_watts"))),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", _field("gpu", _by_gpu("nvidia_gpu_energy_joules_total",
                                                                       "round(1000 * {})"))),
        ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", _field("gpu", _by_gpu("nvidia_gpu_pcie_replays_total"))),
        ("DCGM_FI_DEV_GPU_UTIL", _field("gpu_only", _by_gpu("nvidia_gpu_utilization_ratio", _PERCENT))
         + "\nor\n" + _split("nvidia_gpu_container_utilization_ratio", _PERCENT)),
        ("DCGM_FI_DEV_MEM_COPY_UTIL", _field("gpu_only", _by_gpu("nvidia_gpu_memory_utilization_ratio", _PERCENT))),
        ("DCGM_FI_DEV_ENC_UTIL", _field("gpu", _by_gpu("nvidia_gpu_encoder_utilization_ratio", _PERCENT))),
        ("DCGM_FI_DEV_DEC_UTIL", _field("gpu", _by_gpu("nvidia_gpu_decoder_utilization_ratio", _PERCENT))),
        ("DCGM_FI_DEV_FB_FREE", _field("instance", _by_gpu("nvidia_gpu_memory_free_bytes", _MIB),
                                       _by_instance("nvidia_gpu_mig_memory_free_bytes", _MIB))),
        ("DCGM_FI_DEV_FB_USED", _field("instance", _by_gpu("nvidia_gpu_memory_used_bytes", _MIB),
                                       _by_instance("nvidia_gpu_mig_memory_used_bytes", _MIB))
         + "\nor\n" + _split("nvidia_gpu_container_memory_used_bytes", _MIB)),
        ("DCGM_FI_DEV_FB_RESERVED", _field("gpu_only", _by_gpu("nvidia_gpu_memory_reserved_bytes", _MIB))),
        ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", _field("gpu", "floor(sum by (node, uuid) "
                                                      f"(rate(nvidia_gpu_nvlink_data_bytes_total[{NVLINK_RATE_WINDOW}]))"
                                                      " / 1024 / 1000)")),
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", _field("gpu", _by_gpu('nvidia_gpu_remapped_rows{type="uncorrectable"}'))),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", _field("gpu", _by_gpu('nvidia_gpu_remapped_rows{type="correctable"}'))),
        ("DCGM_FI_DEV_ROW_REMAP_FAILURE", _field("gpu", _by_gpu("nvidia_gpu_remapped_rows_failure"))),
    ]
    for name, metric in (("GR_ENGINE_ACTIVE", "nvidia_gpu_graphics_active_ratio"),
                         ("PIPE_TENSOR_ACTIVE", "nvidia_gpu_tensor_active_ratio"),
                         ("DRAM_ACTIVE", "nvidia_gpu_dram_active_ratio")):
        out.append((f"DCGM_FI_PROF_{name}", _field("instance", _by_gpu(metric), _by_instance(metric))))
    for direction in ("tx", "rx"):
        metric = f'nvidia_gpu_pcie_bytes_per_second{{direction="{direction}"}}'
        out.append((f"DCGM_FI_PROF_PCIE_{direction.upper()}_BYTES",
                    _field("instance", _by_gpu(metric, "floor({})"), _by_instance(metric, "floor({})"))))
    for name, metric in (("SM_ACTIVE", "nvidia_gpu_sm_active_ratio"), ("SM_OCCUPANCY", "nvidia_gpu_sm_occupancy_ratio")):
        out.append((f"DCGM_FI_PROF_{name}", _field("instance", _by_gpu(metric), _by_instance(metric))))
    for name, reason in (("POWER", "power"), ("THERMAL", "thermal"), ("SYNC_BOOST", "sync_boost"),
                         ("BOARD_LIMIT", "board_limit"), ("LOW_UTIL", "low_utilization"),
                         ("RELIABILITY", "reliability")):
        out.append((f"DCGM_FI_DEV_{name}_VIOLATION", _field("gpu", _by_gpu(
            f'nvidia_gpu_violation_seconds_total{{reason="{reason}"}}', "round(1e9 * {})"))))
    out += [
        ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", _field("gpu", _throttle_reasons())),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", _field("gpu", _throttle_reasons())),
        ("DCGM_FI_DEV_PSTATE", _field("gpu", _by_gpu("nvidia_gpu_performance_state"))),
        ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", _field("gpu", _by_gpu("nvidia_gpu_power_limit_watts"))),
        ("DCGM_FI_DEV_FB_TOTAL", _field("instance", _by_gpu("nvidia_gpu_memory_total_bytes", _MIB),
                                        _by_instance("nvidia_gpu_mig_memory_total_bytes", _MIB))),
    ]
    # the records keep dcgm-exporter's labels: node (the target's), not uuid or the instance id
    return [(name, f"max without (uuid, gpu_instance_id) (\n{expr}\n)") for name, expr in out]


def rules() -> list[tuple[str, str]]:
    """Every recording rule: the identity and holder helpers, then the fields."""
    return _helpers() + fields()


def rule_group() -> dict[str, Any]:
    return {"name": GROUP, "interval": INTERVAL, "rules": [{"record": r, "expr": e} for r, e in rules()]}
