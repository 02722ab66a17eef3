#!/usr/bin/env bash
# Field evidence for docs/validation.md: on a GPU machine, run `kube-gpu-exporter check`, the agent,
# bench/nvml_pids.py and bench/nvml_cost.py twice beside a CUDA matmul -- once under the
# DaemonSet's constraints, emulated on the host, and once without them -- and pack everything
# into one file.
#
#   sudo bench/field_check.sh                      # from a checkout with `make venv` done
#   sudo PYTHON=/path/to/python bench/field_check.sh
#
# The constraints of daemonset.yaml, emulated: uid 0 with no capability at all and no new
# privileges (setpriv --inh-caps=-all --bounding-set=-all --no-new-privs), a pid namespace of its
# own, the host's /proc mounted read-only beside it (--path.procfs points there, as /host/proc in
# the pod), the root filesystem and the kubelet's pod-resources directory read-only. Not emulated:
# the seccomp profile, the device cgroup and the NVIDIA runtime's injection (the host's library and
# /dev/nvidia* are used as they are).
#
# Environment:
#   PYTHON               the Python with the agent installed (default: .venv/bin/python of the checkout)
#   LOAD_PYTHON          a Python with torch or cupy for the matmul load (default: python3, then PYTHON)
#   FIELD_OUT            where the results go (default: ./field-<host>-<UTC time>); packed as FIELD_OUT.tar.gz
#   FIELD_AGENT_SECONDS  how long the agent serves before its RSS is read (default 60)
#   FIELD_KUBECONFIG     a kubeconfig: adds --kubernetes.enabled (the API-server rows); NODE_NAME names the node
#   FIELD_AGENT_FLAGS    more flags for every run (e.g. --collector.interval=5)
#   FIELD_COST_ARGS      flags for bench/nvml_cost.py (e.g. --cycles 61)
# Needs root, util-linux (unshare, setpriv, mount) and the NVIDIA driver.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${FIELD_OUT:-$PWD/field-$(hostname)-$(date -u +%Y%m%dT%H%M%SZ)}
AGENT_SECONDS=${FIELD_AGENT_SECONDS:-60}
SOCKET=/var/lib/kubelet/pod-resources/kubelet.sock
HOSTPROC=/run/kube-gpu-exporter-field.$$/host-proc  # the pod's /host/proc; removed at the end
PORT=${FIELD_PORT:-19400}

die() { echo "field_check: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root: the constrained run drops root's capabilities"
for tool in unshare setpriv mount; do command -v "$tool" >/dev/null || die "$tool is missing (util-linux)"; done
"$PYTHON" -c 'import exporter' 2>/dev/null || die "no agent in $PYTHON: run \`make venv\` or set PYTHON"
mkdir -p "$OUT/constrained" "$OUT/unconstrained" "$HOSTPROC"
cd "$ROOT"

# The agent's flags: the DaemonSet's, less what this machine lacks (a kubelet, an API server).
AGENT_FLAGS=(--log.format=json)
if [ -S "$SOCKET" ]; then AGENT_FLAGS+=("--kubelet.pod-resources-socket=$SOCKET"); else AGENT_FLAGS+=(--no-kubelet.enabled); fi
if [ -n "${FIELD_KUBECONFIG:-}" ]; then
  AGENT_FLAGS+=(--kubernetes.enabled "--kubernetes.kubeconfig=$FIELD_KUBECONFIG"
                "--kubernetes.node-name=${NODE_NAME:-$(hostname)}")
fi
# shellcheck disable=SC2206 # word splitting wanted: a list of flags
AGENT_FLAGS+=(${FIELD_AGENT_FLAGS:-})

# -- the machine ------------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "kernel: $(uname -srm)"
  echo "agent: $("$PYTHON" -c 'import exporter; print(exporter.__version__)') ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "flags: ${AGENT_FLAGS[*]}"
  echo "kubelet socket: $([ -S "$SOCKET" ] && echo "$SOCKET" || echo 'none (kubelet rows skipped)')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,uuid,driver_version,pci.bus_id,persistence_mode,mig.mode.current \
      --format=csv 2>&1 || true
  else
    echo "nvidia-smi: not on PATH"
  fi
  grep -E '^(RmProfilingAdminOnly|NVreg)' /proc/driver/nvidia/params 2>/dev/null || echo "/proc/driver/nvidia/params: not readable"
} > "$OUT/system.txt" 2>&1

# -- a CUDA load beside the agent ------------------------------------------------------------------
LOAD_PID=""
cleanup() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
  rmdir "$HOSTPROC" "$(dirname "$HOSTPROC")" 2>/dev/null || true
}
trap cleanup EXIT
MATMUL='
import sys
kind = sys.argv[1]
if kind == "torch":
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while True:
        a @ a
        torch.cuda.synchronize()
else:
    import cupy
    a = cupy.random.rand(8192, 8192, dtype=cupy.float32)
    while True:
        a @ a
        cupy.cuda.Device().synchronize()
'
for py in ${LOAD_PYTHON:-python3} "$PYTHON"; do
  for kind in torch cupy; do
    if [ -z "$LOAD_PID" ] && "$py" -c "import $kind" 2>/dev/null; then
      "$py" -c "$MATMUL" "$kind" >"$OUT/load.log" 2>&1 &
      LOAD_PID=$!
      echo "load: $kind matmul on GPU 0 with $py, pid $LOAD_PID (host pid namespace)" > "$OUT/load.txt"
    fi
  done
done
if [ -z "$LOAD_PID" ]; then
  echo "load: none (no torch or cupy: pip install cupy-cuda12x, or LOAD_PYTHON=<a python with torch>)" > "$OUT/load.txt"
else
  sleep 10  # the context is up and the matmul runs before anything is measured
fi

# -- the runs ------------------------------------------------------------------------------------
# run_all <dir> <procfs>: everything one mode records. In the constrained mode this runs inside the
# namespaces, as uid 0 without capabilities; its own /proc is the namespace's, <procfs> the host's.
RUN_ALL='
set -u
dir=$1 procfs=$2 python=$3 seconds=$4 port=$5 cost_args=$6; shift 6
{ grep -E "^(Uid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp)" /proc/self/status
  echo "pid namespace: $(readlink /proc/self/ns/pid), pid $$"
  echo "host procfs ($procfs) self: $(readlink "$procfs/self" 2>&1)"
  touch /field-check-write-test 2>&1 && { echo "root filesystem: writable"; rm -f /field-check-write-test; } \
    || echo "root filesystem: read-only"
} > "$dir/constraints.txt" 2>&1
"$python" -m exporter check --path.procfs="$procfs" "$@" > "$dir/check.txt" 2> "$dir/check.log"; echo $? > "$dir/check.rc"
"$python" -m exporter check --path.procfs="$procfs" --output=json "$@" > "$dir/check.json" 2>> "$dir/check.log"
"$python" -m exporter --once --path.procfs="$procfs" "$@" > "$dir/once.prom" 2> "$dir/once.log"
"$python" bench/nvml_pids.py --host-proc "$procfs" > "$dir/nvml_pids.json" 2> "$dir/nvml_pids.log"
"$python" bench/nvml_cost.py $cost_args > "$dir/nvml_cost.txt" 2>&1
"$python" -m exporter --path.procfs="$procfs" --web.listen-address="127.0.0.1:$port" "$@" 2> "$dir/agent.log" &
agent=$!
sleep "$seconds"
{ grep -E "^(VmRSS|VmHWM|Threads)" "/proc/$agent/status"; echo "after: $seconds s"; } > "$dir/rss.txt" 2>&1
# The agent may still be starting on a busy node: ask again for up to a minute.
"$python" -c "
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.5)
" "http://127.0.0.1:$port/metrics" > "$dir/metrics.prom" 2>> "$dir/agent.log"
kill "$agent"; wait "$agent" 2>/dev/null
true
'

echo "field_check: without constraints" >&2
sh -c "$RUN_ALL" sh "$OUT/unconstrained" /proc "$PYTHON" "$AGENT_SECONDS" "$PORT" "${FIELD_COST_ARGS:-}" \
  "${AGENT_FLAGS[@]}"

echo "field_check: under the DaemonSet's constraints" >&2
# In a mount and pid namespace of its own: the host's /proc read-only at $HOSTPROC, a fresh /proc
# for the namespace, the root filesystem and the kubelet's directory read-only (the results'
# directory excepted); then no capability, no new privileges, for everything that follows.
CONSTRAIN='
set -eu
hostproc=$1 results=$2; shift 2
mount --bind "$results" "$results"  # its own mount: stays writable under the read-only root
mount --bind /proc "$hostproc"
mount -o remount,bind,ro "$hostproc"
mount -t proc proc /proc
if [ -d /var/lib/kubelet/pod-resources ]; then
  mount --bind /var/lib/kubelet/pod-resources /var/lib/kubelet/pod-resources
  mount -o remount,bind,ro /var/lib/kubelet/pod-resources
fi
mount -o remount,bind,ro / || echo "field_check: the root filesystem stays writable here" >&2
exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
'
unshare --mount --pid --fork --propagation private -- sh -c "$CONSTRAIN" sh "$HOSTPROC" "$OUT/constrained" \
  sh -c "$RUN_ALL" sh "$OUT/constrained" "$HOSTPROC" "$PYTHON" "$AGENT_SECONDS" "$((PORT + 1))" "${FIELD_COST_ARGS:-}" \
  "${AGENT_FLAGS[@]}"

# -- the summary and the pack ---------------------------------------------------------------------
"$PYTHON" bench/field_summary.py "$OUT" > "$OUT/summary.md"
tar -czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
echo "field_check: $OUT.tar.gz (summary: $OUT/summary.md)" >&2
