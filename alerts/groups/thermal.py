"""Thermal and power alerts: hardware slowdown and power brake, capping, temperatures near their limits."""

from __future__ import annotations

from alerts.alert import Alert
from alerts.cases import Case, expect_gpu, gpu, one_faulty_gpu, series
from alerts.params import Params
from alerts.promql import BY_GPU, last_value
from exporter.push.definitions import GPU_DESCRIPTION


def clock_event(reason: str, p: Params) -> str:
    """The GPU's clocks are cut for ``reason`` (a gauge: carried over failed scrapes)."""
    metric = 'nvidia_gpu_clock_event_active{reason="%s"}' % reason
    return f"max by ({BY_GPU}) ({last_value(metric, p)}) == 1"


def violation(reason: str, ratio: float, p: Params) -> str:
    """The GPU spent more than ``ratio`` of the capping window held down for ``reason``."""
    return (f"sum by ({BY_GPU}) (\n  rate(nvidia_gpu_violation_seconds_total{{reason=\"{reason}\"}}"
            f"[{p.capping_window}])\n) > {ratio}")


def alerts(p: Params) -> list[Alert]:
    rules: list[Alert] = []
    rules.append(Alert(
        device_alert=True, name="GpuHardwareThermalSlowdown", severity="warning", for_=p.hw_slowdown_for,
        summary="A GPU is slowed down by its hardware thermal protection.",
        description=GPU_DESCRIPTION + " has its clocks cut by hardware thermal slowdown: it is too hot.",
        expr=clock_event("hw_thermal_slowdown", p),
        threshold='nvidia_gpu_clock_event_active{reason="hw_thermal_slowdown"} == 1',
        why="The hardware's own protection cuts clocks hard (by half or more); it should never be active "
            "in a healthy chassis.",
        cases=(one_faulty_gpu("nvidia_gpu_clock_event_active", "0x4 1x40", "0x45", 5,
                              {"reason": "hw_thermal_slowdown"}),)))

    rules.append(Alert(
        device_alert=True, name="GpuHardwarePowerBrake", severity="warning", for_=p.hw_slowdown_for,
        summary="A GPU is slowed down by the hardware power brake.",
        description=f"{GPU_DESCRIPTION} has its clocks cut by the external power brake signal (the system's "
                    "power supply or BMC asked for it).",
        expr=clock_event("hw_power_brake_slowdown", p),
        threshold='nvidia_gpu_clock_event_active{reason="hw_power_brake_slowdown"} == 1',
        why="Asserted by the system, not the GPU: a power supply problem that a busy node should never see.",
        cases=(one_faulty_gpu("nvidia_gpu_clock_event_active", "0x4 1x40", "0x45", 5,
                              {"reason": "hw_power_brake_slowdown"}),)))

    rules.append(Alert(
        device_alert=True, name="GpuThermalCapping", severity="warning", for_=p.thermal_capping_for,
        summary="A GPU's clocks are held down by heat most of the time.",
        description=f"{GPU_DESCRIPTION} spent more than {p.thermal_capping_ratio:.0%} of the time thermally capped.",
        expr=violation("thermal", p.thermal_capping_ratio, p),
        threshold=f"thermal violation time > {p.thermal_capping_ratio:.0%} of {p.capping_window}",
        why="Read from the violation counter, not the clock-event gauge: a counter sees every second "
            "between two scrapes and survives a missed one.",
        cases=(one_faulty_gpu("nvidia_gpu_violation_seconds_total", "0x4 0+60x60", "0+6x65", 13,
                              {"reason": "thermal"}),)))

    rules.append(Alert(
        device_alert=True, name="GpuPowerCapping", severity="info", for_=p.power_capping_for,
        summary="A GPU's clocks are held down by its power limit most of the time.",
        description=f"{GPU_DESCRIPTION} spent more than {p.power_capping_ratio:.0%} of the time at its power cap.",
        expr=violation("power", p.power_capping_ratio, p),
        threshold=f"power violation time > {p.power_capping_ratio:.0%} of {p.capping_window}",
        why="A busy GPU often runs at its power limit; this is information for capacity planning, unless "
            "the limit was lowered (compare nvidia_gpu_power_limit_watts across GPUs).",
        cases=(one_faulty_gpu("nvidia_gpu_violation_seconds_total", "0x4 0+60x70", "0+6x75", 18,
                              {"reason": "power"}),)))

    slowdown = 'max by (node, uuid) (nvidia_gpu_temperature_threshold_celsius{threshold="slowdown"})'
    rules.append(Alert(
        device_alert=True, name="GpuTemperatureNearSlowdown", severity="warning", for_=p.temperature_for,
        summary="A GPU runs close to its slowdown temperature.",
        description=f"{GPU_DESCRIPTION} is within {p.temperature_margin:g} degrees of the temperature at which it "
                    "slows itself down.",
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_temperature_celsius', p)})\n"
             f"  >= on (node, uuid) group_left ()\n    ({slowdown} - {p.temperature_margin:g})",
        threshold=f"temperature >= slowdown threshold - {p.temperature_margin:g} C",
        why="The slowdown temperature differs per model (read from NVML), so no constant fits every GPU.",
        cases=(Case({series("nvidia_gpu_temperature_celsius", gpu(0)): "70x4 85x40",
                     series("nvidia_gpu_temperature_threshold_celsius", gpu(0, threshold="slowdown")): "87x45",
                     series("nvidia_gpu_temperature_threshold_celsius", gpu(0, threshold="shutdown")): "92x45",
                     series("nvidia_gpu_temperature_celsius", gpu(1)): "85x45",
                     series("nvidia_gpu_temperature_threshold_celsius", gpu(1, threshold="slowdown")): "95x45"},
                    5, expect_gpu(0)),)))

    memory_max = 'max by (node, uuid) (nvidia_gpu_temperature_threshold_celsius{threshold="memory_max"})'
    rules.append(Alert(
        device_alert=True, name="GpuMemoryTemperatureHigh", severity="warning", for_=p.temperature_for,
        summary="A GPU's HBM memory runs close to its maximum temperature.",
        description=f"{GPU_DESCRIPTION} has its HBM memory within {p.temperature_margin:g} degrees of its maximum "
                    "temperature.",
        expr=f"max by ({BY_GPU}) ({last_value('nvidia_gpu_memory_temperature_celsius', p)})\n"
             f"  >= on (node, uuid) group_left ()\n    ({memory_max} - {p.temperature_margin:g})",
        threshold=f"memory temperature >= memory_max threshold - {p.temperature_margin:g} C",
        why="HBM heats separately from the core and errs (ECC) when hot; the limit comes from NVML. "
            "GPUs that report no memory temperature or threshold are not judged.",
        cases=(Case({series("nvidia_gpu_memory_temperature_celsius", gpu(0)): "70x4 92x40",
                     series("nvidia_gpu_temperature_threshold_celsius", gpu(0, threshold="memory_max")): "95x45",
                     series("nvidia_gpu_memory_temperature_celsius", gpu(1)): "80x45",
                     series("nvidia_gpu_temperature_threshold_celsius", gpu(1, threshold="memory_max")): "95x45"},
                    5, expect_gpu(0)),)))
    return rules
