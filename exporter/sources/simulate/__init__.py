"""Simulated GPUs and Kubernetes node, played from a scenario file (see ``docs/scenarios.md``).

    scenario = load_scenario(None)          # the built-in default.yaml; or a path
    backend = SimulatedBackend(scenario)    # a GpuBackend; backend.cluster is the Kubernetes side

Modules: ``scenario`` (the model), ``scenario.schema.json`` and ``schema`` (a file's shape),
``parse`` (file -> checked ``Scenario``), ``gpu`` (one GPU's readings over time), ``backend`` (the
``GpuBackend``), ``sources`` (the kubelet, API server and procfs adapters).
"""

from .backend import SimulatedBackend, SimulatedGpuLost
from .parse import ScenarioError, load_scenario, load_scenario_text, parse_scenario
from .scenario import Scenario
from .sources import (
    SimulatedCluster, SimulatedDeviceSlices, SimulatedPodMetadata, SimulatedPodResources, process_owners,
)

__all__ = [
    "Scenario", "ScenarioError", "SimulatedBackend", "SimulatedCluster", "SimulatedDeviceSlices", "SimulatedGpuLost",
    "SimulatedPodMetadata", "SimulatedPodResources", "load_scenario", "load_scenario_text", "parse_scenario",
    "process_owners",
]
