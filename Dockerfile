# syntax=docker/dockerfile:1
# The kube-gpu-exporter image: `docker build -t kube-gpu-exporter:0.1.0 .` (docs/deploy.md).
# Pin the base by digest in your build for reproducible images:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-trixie@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# -- build: the package and its dependencies, from the checkout, into a virtual environment.
# Every dependency ships wheels (aiohttp, grpclib, protobuf, pyyaml, cryptography, jsonschema): no compiler is needed here
# either, and the final stage gets only the environment.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv --without-pip /opt/kube-gpu-exporter
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# No kubernetes extra: the DaemonSet's --kubernetes.enabled uses the agent's own in-cluster client
# (the package reads kubeconfig files, for development). Bytecode is compiled now: the root
# filesystem is read-only at run time. The versions are pyproject.toml's ranges, the ones the
# tests ran against (DL3013 asks for ==pins on named packages; this is the checkout).
# hadolint ignore=DL3013
RUN pip --python /opt/kube-gpu-exporter/bin/python install --no-cache-dir --compile .

# -- run: the slim base and the environment, nothing else.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kube-gpu-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Kubernetes GPU nodes: NVML metrics attributed to pods and workloads" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kube-gpu-exporter /opt/kube-gpu-exporter
# MALLOC_ARENA_MAX=2: glibc gives each thread that allocates its own malloc arena, up to 8 per
# core, and their free pages stay resident; two arenas keep the agent's RSS flat on many-core
# GPU nodes (docs/deploy.md, "Memory"). PYTHONDONTWRITEBYTECODE: nothing to write to anyway.
ENV PATH=/opt/kube-gpu-exporter/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A non-root default; daemonset.yaml runs it as uid 0 without any capability, to reach the
# kubelet's socket (docs/deploy.md, "Security").
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["kube-gpu-exporter"]
