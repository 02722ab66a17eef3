"""The DRA devices this node's GPU drivers publish, from ResourceSlices (``resource.k8s.io/v1``).

A DRA driver publishes the devices of a node in ResourceSlices, each device with attributes; the
kubelet's pod-resources API names the devices of a claim only by ``(driver, pool, device)``. The
``uuid`` attribute (NVIDIA's ``gpu.nvidia.com`` sets it on GPUs and MIG instances) turns that
name into the device NVML reports. :class:`SliceWatcher` lists this node's slices
(``fieldSelector=spec.nodeName=<node>``, and ``spec.driver=<driver>`` when there is one driver)
once, then watches them, in a task on the event loop, and keeps a
:class:`~exporter.model.kube.SliceDevices` the collection cycle reads.

Its list, watch and resilience are the pod watch's (the loop is
:class:`~exporter.sources.kube.listwatch.ListWatcher`): every failure is counted by kind, logged
once, and followed by a backoff and a resumed watch; meanwhile the last known slices are kept
(for the whole outage: the agent keeps serving them) and :attr:`SliceWatcher.connected` is False.

A pool being republished can hold slices of two generations for a moment: only the slices of a
pool's newest generation count. An API server that does not serve ``resource.k8s.io/v1`` (404:
Kubernetes before 1.34, or DRA off) publishes no devices: that is said once at info, the watcher
counts as connected with no slices, and asks again every hour or so.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from ...model.kube import SliceDevices
from .api import InvalidResponse
from .listwatch import ListWatcher

__all__ = ["SliceWatcher", "SLICES_PATH", "slice_devices"]

SLICES_PATH = "/apis/resource.k8s.io/v1/resourceslices"

_log = logging.getLogger(__name__)

# slice name -> (driver, pool, generation, {device name: uuid or ""})
_Slice = tuple[str, str, int, Mapping[str, str]]


def _attribute_string(device: Mapping[str, Any], name: str) -> str:
    """A device's string attribute (``attributes.<name>.string``; ``basic.attributes`` in
    v1beta1 objects), or ``""``."""
    attributes = device.get("attributes")
    if attributes is None and isinstance(device.get("basic"), Mapping):
        attributes = device["basic"].get("attributes")
    value = attributes.get(name) if isinstance(attributes, Mapping) else None
    return str(value.get("string") or "") if isinstance(value, Mapping) else ""


def parse_slice(obj: Mapping[str, Any]) -> tuple[str, _Slice]:
    """A ResourceSlice as JSON -> (name, (driver, pool, generation, devices)); raises
    :class:`InvalidResponse` when it lacks what names its devices."""
    try:
        name = str(obj["metadata"]["name"])
        spec = obj["spec"]
        driver, pool = str(spec["driver"]), spec["pool"]
        pool_name, generation = str(pool["name"]), int(pool.get("generation") or 0)
        devices = {str(d["name"]): _attribute_string(d, "uuid") for d in spec.get("devices") or ()}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidResponse(f"ResourceSlice without metadata.name/spec.driver/pool/devices: {exc!r}: "
                              f"{str(obj)[:200]}") from exc
    return name, (driver, pool_name, generation, devices)


def slice_devices(slices: Iterable[_Slice]) -> SliceDevices:
    """The devices of the slices of each pool's newest generation."""
    slices = list(slices)
    newest: dict[tuple[str, str], int] = {}
    for driver, pool, generation, _ in slices:
        newest[driver, pool] = max(generation, newest.get((driver, pool), generation))
    uuids: dict[tuple[str, str, str], str] = {}
    for driver, pool, generation, devices in slices:
        if generation == newest[driver, pool]:
            uuids.update(((driver, pool, device), uuid) for device, uuid in devices.items())
    return SliceDevices(uuids, frozenset(newest))


class SliceWatcher(ListWatcher):
    """Keeps the DRA devices that ``drivers`` publish for ``node_name`` up to date.

    Same construction and lifecycle as :class:`~exporter.sources.kube.PodWatcher` (``start``, ``stop``,
    ``connected``, ``wait_synced``, ``error_counts``); :meth:`devices` is what the cycle reads.
    """

    what = "ResourceSlice"
    task_prefix = "slice-watch"

    def __init__(self, node_name: str, drivers: Iterable[str], **kwargs: Any) -> None:
        self.drivers = frozenset(drivers)
        if not self.drivers:
            raise ValueError("at least one DRA driver is required")
        selector = f"spec.nodeName={node_name}"
        if len(self.drivers) == 1:
            selector += f",spec.driver={next(iter(self.drivers))}"
        super().__init__(node_name, SLICES_PATH, selector, **kwargs)
        self._devices = SliceDevices()
        self._slices: dict[str, _Slice] = {}

    def devices(self) -> SliceDevices:
        """The devices as last known (immutable; cheap)."""
        return self._devices

    def _not_served(self) -> bool:
        """No ResourceSlice API: no slices, which is a fact, not a failure."""
        if "not_served" not in self._logged_kinds:
            _log.info("the API server does not serve %s (Kubernetes < 1.34 or DRA disabled): DRA claim devices "
                      "are named only from local facts; asking again every %gs or so", SLICES_PATH,
                      self._not_served_retry)
            self._logged_kinds.add("not_served")
        self._slices = {}
        self._publish()
        return True

    def _replace_all(self, items: list[Any]) -> None:
        self._slices = {}
        for item in items:
            self._put(item)
        self._publish()

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        self._put(obj)
        self._publish()

    def _delete(self, obj: Mapping[str, Any]) -> None:
        if self._slices.pop(str(obj["metadata"].get("name")), None) is not None:
            self._publish()

    def _put(self, obj: Mapping[str, Any]) -> None:
        try:
            name, parsed = parse_slice(obj)
        except InvalidResponse as exc:
            self._count("invalid_response", str(exc))
            return
        if parsed[0] in self.drivers:
            self._slices[name] = parsed

    def _publish(self) -> None:
        self._devices = slice_devices(self._slices.values())
