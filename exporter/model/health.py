"""When a reading is a problem: the thresholds that the alert rules (``alerts/``), the push path
(``push/``) and the status page (``render/status/``) share, each defined once here.
"""

from __future__ import annotations

#: The window an XID or ECC event keeps its alert active: the rules' ``event_window``, the default
#: of ``--alertmanager.event-window``, and the time the status page shows an XID's mark.
EVENT_WINDOW_SECONDS = 600
#: ``for:`` of the GpuLost rule; the agent pushes GpuLost for a GPU down this long (or at once
#: when NVML says the GPU is lost).
GPU_LOST_FOR_SECONDS = 60
#: A GPU (or its HBM) this close to its slowdown (or memory_max) temperature is a warning: the
#: rules' ``temperature_margin`` and the status page's warning.
TEMPERATURE_MARGIN_CELSIUS = 5
#: ``reason`` values of nvidia_gpu_clock_event_active that hold the GPU below the clocks it wants
#: (throttling). The others (gpu_idle, applications_clocks_setting, ...) are normal operation.
THROTTLE_REASONS: tuple[str, ...] = (
    "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
)
