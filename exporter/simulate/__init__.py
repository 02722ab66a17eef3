"""Simulated GPUs and Kubernetes node, played from a scenario file (see ``docs/scenarios.md``).

    scenario = load_scenario(None)          # the built-in default.yaml; or a path
    backend = SimulatedBackend(scenario)    # a GpuBackend; backend.cluster is the Kubernetes side
"""

from .backend import SimulatedBackend, SimulatedCluster, SimulatedGpuLost
from .scenario import Scenario, ScenarioError, load_scenario, load_scenario_text, parse_scenario

__all__ = [
    "Scenario", "ScenarioError", "SimulatedBackend", "SimulatedCluster", "SimulatedGpuLost",
    "load_scenario", "load_scenario_text", "parse_scenario",
]
