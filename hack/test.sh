#!/usr/bin/env bash
# Runs every test binary of the workspace (what `make test` runs after building):
#   - the kwok-tier integration binaries several at a time: each starts its own control plane on
#     free loopback ports in its own directory, so they share nothing;
#   - the real-node binaries (the single node's and the multi-node tier's) one after another, in one
#     slot: side by side they would share the machine's 2 cores;
#   - the key scan last: it reads the report every other binary left.
# Longest first, so the slots end together. Each binary's output goes to its own log; a
# failure prints the tail of its log and the run goes on, so one run shows every failure.
#
#   hack/test.sh                  everything
#   hack/test.sh lifecycle gang   only these test binaries (and their key-scan reports)
#
# TEST_JOBS: binaries at once besides the real-node slot (default 2). TEST_LOG_DIR: where the
# logs go (default target/tmp/test-logs). Extra arguments for every binary: TEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${TEST_JOBS:-2}
target=${CARGO_TARGET_DIR:-target}
logs=${TEST_LOG_DIR:-$target/tmp/test-logs}
rm -rf "$logs" "$target/tmp/keyscan"
mkdir -p "$logs"

# Integration binaries that need the real node, and the order of the rest (longest first, as
# measured; binaries not listed run last, in name order).
real_node=(realnode multinode realnode_stalls realnode_training realnode_clients install)
longest=(chaos gang kueue errors ha admission upgrade controlplane lifecycle operator privileges restart tenancy logging initializers)

# Build every test binary once and list them: `<name> <kind> <path>`.
list=$(cargo test --locked --workspace --no-run --message-format=json 2>"$logs/build.log" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        name = m["target"]["name"] + ("" if kind == "test" else "-" + kind)
        print(name, kind, m["executable"])
') || { cat "$logs/build.log" >&2; exit 1; }

declare -A path
units=()
integration=()
while read -r name kind exe; do
  path[$name]=$exe
  if [[ $kind == test ]]; then integration+=("$name"); else units+=("$name"); fi
done <<<"$list"

wanted=("$@")
selected() { [[ ${#wanted[@]} -eq 0 ]] || [[ " ${wanted[*]} " == *" $1 "* ]]; }

results="$logs/results"
: >"$results"
# Runs binary $1 with its log; records `<name> <exit code> <seconds>`.
run() {
  local name=$1 start=$SECONDS rc=0
  # shellcheck disable=SC2086 # TEST_ARGS is a list of words
  "${path[$name]}" ${TEST_ARGS:-} >"$logs/$name.log" 2>&1 || rc=$?
  echo "$name $rc $((SECONDS - start))" >>"$results"
  if [[ $rc -ne 0 ]]; then
    echo "==> $name FAILED (exit $rc) after $((SECONDS - start))s; the end of $logs/$name.log:" >&2
    tail -n 80 "$logs/$name.log" >&2
  else
    echo "ok: $name ($((SECONDS - start))s)"
  fi
}

started=$SECONDS
# Unit tests and the binaries that start no control plane: all at once is quick.
for name in "${units[@]}"; do selected "$name" && run "$name"; done

queue=()
for name in "${longest[@]}"; do
  [[ -n ${path[$name]:-} ]] && queue+=("$name")
done
for name in "${integration[@]}"; do
  [[ " ${longest[*]} ${real_node[*]} keyscan " == *" $name "* ]] || queue+=("$name")
done

# The real node's slot: its binaries one after another.
(
  for name in "${real_node[@]}"; do
    [[ -n ${path[$name]:-} ]] && selected "$name" && run "$name"
  done
) &
real_slot=$!

running=0
for name in "${queue[@]}"; do
  selected "$name" || continue
  if [[ $running -ge $jobs ]]; then
    wait -n -p done || true
    [[ ${done:-} == "$real_slot" ]] || running=$((running - 1))
  fi
  run "$name" &
  running=$((running + 1))
done
wait

# Last: every binary above left its key-scan report (all of them only when all ran).
if [[ -n ${path[keyscan]:-} ]] && { [[ ${#wanted[@]} -eq 0 ]] || selected keyscan; }; then
  run keyscan
fi

echo "== test binaries (seconds), $((SECONDS - started))s in all:"
sort -k3 -n -r "$results" | awk '{printf "  %-28s %5d%s\n", $1, $3, ($2 == 0 ? "" : "  FAILED")}'
! awk '$2 != 0 { bad = 1 } END { exit !bad }' "$results"
