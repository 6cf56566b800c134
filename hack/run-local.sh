#!/usr/bin/env bash
# `make run` without KUBECONFIG: start the local control plane in the background, then run the
# operator in the foreground with the operator's own RBAC identity. Ctrl-C stops both.
set -euo pipefail

dir=${1:-.bed}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}/debug
kubectl="$("$root/hack/controlplane.sh" --dir)/kubectl"

rm -rf "$dir"
mkdir -p "$dir"
webhook_port=${WEBHOOK_PORT:-9443}
status_port=${STATUS_PORT:-10443}
"$target/testbed" --dir "$dir" ${REAL_NODE:+--real-node} ${REAL_NODES:+--real-nodes "$REAL_NODES"} ${KUEUE:+--kueue} \
  --operator-webhook-port "$webhook_port" --operator-status-port "$status_port" 2>"$dir/testbed.out" &
bed=$!
# SIGINT lets the bed drop cleanly (the real node puts the host back).
trap 'kill -INT $bed 2>/dev/null; wait $bed 2>/dev/null || true' EXIT INT TERM

echo ">> starting the local control plane (logs in $dir/)" >&2
for _ in $(seq 1 600); do
  [[ -f "$dir/ready" ]] && break
  if ! kill -0 "$bed" 2>/dev/null; then
    echo "!! the control plane failed to start:" >&2
    cat "$dir/testbed.out" >&2
    exit 1
  fi
  sleep 0.2
done
[[ -f "$dir/ready" ]] || { echo "!! the control plane did not become ready in 120s" >&2; exit 1; }
cat "$dir/testbed.out" >&2

cat >&2 <<EOF

>> the operator runs below as system:serviceaccount:trainjob-system:trainjob-operator.
>> In another terminal, as cluster admin:
     export KUBECONFIG=$(cd "$dir" && pwd)/admin.kubeconfig
     $kubectl apply --server-side -f examples/openmpi-pi.yaml
     $kubectl get trainjobs,pods -w

EOF
# The webhook is registered by URL on loopback, so its self-managed certificate is for 127.0.0.1.
# The status server listens on every address: the real node's pods reach it on the host.
KUBECONFIG="$dir/operator.kubeconfig" "$target/trainjob-operator" run --http-addr 127.0.0.1:8080 \
  --webhook-addr "127.0.0.1:$webhook_port" --webhook-hosts 127.0.0.1 \
  --status-server-addr "0.0.0.0:$status_port" &
operator=$!
# In the background and waited for, so that a SIGTERM to this script (not only Ctrl-C) runs the
# trap at once: bash defers traps while a foreground command runs.
trap 'kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null; kill -INT $bed 2>/dev/null; wait $bed 2>/dev/null || true' EXIT INT TERM
wait $operator
