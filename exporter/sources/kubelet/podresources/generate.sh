#!/bin/sh
# Regenerates the pod-resources stubs (`make protos`): the messages (api_pb2.py, api_pb2.pyi) and
# the grpclib client and server classes (api_grpc.py). PYTHON is a Python with grpcio-tools and
# grpclib (the test extras); grpclib's protoc plugin is the script it installs beside it. -I is
# the repository root, so the stubs import each other as exporter.sources.kubelet....
set -eu
PYTHON=${PYTHON:-python3}
plugin=$("$PYTHON" -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "protoc-gen-grpclib_python"))')
[ -x "$plugin" ] || plugin=$(command -v protoc-gen-grpclib_python)
cd "$(dirname "$0")/../../../.."
"$PYTHON" -m grpc_tools.protoc -I . \
    --plugin=protoc-gen-grpclib_python="$plugin" \
    --python_out=. --pyi_out=. --grpclib_python_out=. \
    exporter/sources/kubelet/podresources/v1/api.proto
