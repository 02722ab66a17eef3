"""The kubelet pod-resources API: which devices the kubelet gave to which container.

``client.py`` speaks the API (gRPC on a unix socket); ``source.py`` is the source the agent reads
each cycle, over that client or anything that answers like it (the simulated node, tests). The
package imports nothing itself, so that the source can be used without the gRPC stack.
"""
