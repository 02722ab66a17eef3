#!/bin/sh
# Regenerates the pod-resources stubs; -I is the repo root so imports are package imports.
cd "$(dirname "$0")/../../../.." && "${PYTHON:-python}" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. exporter/sources/kubelet/podresources/v1/api.proto
