"""Workload owners of this node's pods, from the Kubernetes API server.

:class:`PodWatcher` lists the pods of one node, watches them, and keeps a ``pod uid ->
PodMeta`` map that the collection cycle reads. One module per concern:

* ``listwatch`` -- the list/watch loop in its thread: resync, backoff, errors by kind, lifecycle,
  shared by both watchers;
* ``watch``  -- :class:`PodWatcher`: the pods of this node and their owners;
* ``owners`` -- ReplicaSet -> Deployment and Job -> CronJob, cached, with the last good answer;
* ``pods``   -- a pod as JSON -> :class:`~exporter.model.kube.PodMeta`;
* ``slices`` -- :class:`SliceWatcher`: the DRA devices (ResourceSlices) this node's GPU drivers
  publish, to name the devices of ResourceClaims;
* ``api``    -- the request path (configuration, authentication, GET), without the generated
  API methods;
* ``source`` -- both watches as sources of the cycle (``sources/base.py``).

Importing this package costs nothing when the feature is off: the ``kubernetes`` package is
imported only by :meth:`PodWatcher.start`.
"""

from .pods import pod_meta_from_dict, strip_runtime_prefix
from .slices import SliceWatcher, slice_devices
from .watch import POD_WATCH_ERROR_KINDS, PodWatcher

__all__ = ["PodWatcher", "SliceWatcher", "POD_WATCH_ERROR_KINDS", "pod_meta_from_dict", "slice_devices",
           "strip_runtime_prefix"]
