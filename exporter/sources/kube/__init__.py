"""Workload owners of this node's pods, from the Kubernetes API server.

:class:`PodWatcher` lists the pods of one node once, watches them, and keeps a ``pod uid ->
PodMeta`` map that the collection cycle reads. One module per concern:

* ``listwatch`` -- the list/watch loop, a task on the event loop: one list, a resumed watch,
  backoff, errors by kind, lifecycle, shared by both watchers;
* ``watch``  -- :class:`PodWatcher`: the pods of this node and their owners;
* ``owners`` -- ReplicaSet -> Deployment and Job -> CronJob, looked up in the background, one GET
  per owner;
* ``pods``   -- a pod as JSON -> :class:`~exporter.model.kube.PodMeta`;
* ``slices`` -- :class:`SliceWatcher`: the DRA devices (ResourceSlices) this node's GPU drivers
  publish, to name the devices of ResourceClaims;
* ``api``    -- the client: in-cluster credentials of its own (or a kubeconfig file through the
  ``kubernetes`` package), GETs and watches with aiohttp;
(``sources/watches.py`` makes both watches sources of the cycle.)

The ``kubernetes`` package is imported only with ``--kubernetes.kubeconfig``.
"""

from .api import KubeApi
from .pods import pod_meta_from_dict, strip_runtime_prefix
from .slices import SliceWatcher, slice_devices
from .watch import POD_WATCH_ERROR_KINDS, PodWatcher

__all__ = ["KubeApi", "PodWatcher", "SliceWatcher", "POD_WATCH_ERROR_KINDS", "pod_meta_from_dict", "slice_devices",
           "strip_runtime_prefix"]
