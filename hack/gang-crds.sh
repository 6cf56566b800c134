#!/usr/bin/env bash
# Puts the third-party gang-scheduling CRDs the tests install, at pinned versions, into a cache
# directory keyed by those versions, and prints that directory. `make bed` runs it; the tests only
# read the files (they run `--dir`, which downloads and builds nothing):
#   coscheduling.yaml  scheduler-plugins' PodGroup CRD (scheduling.x-k8s.io/v1alpha1), as published
#                      in its module on the Go module proxy
#   volcano.yaml       Volcano's PodGroup CRD (scheduling.volcano.sh/v1beta1). Volcano's own module
#                      is not served by the proxy, its API module is: the CRD is generated from
#                      those API types with controller-gen, the way Volcano generates it (slow the first
#                      time: docs/development/testing.md).
#
#   hack/gang-crds.sh          fetch and generate what is missing, print the directory
#   hack/gang-crds.sh --dir    print the directory without fetching or generating anything
set -euo pipefail

scheduler_plugins=v0.33.5
# The Volcano API version Kubeflow Trainer v2.2.0 pins.
volcano_apis=v1.13.1-0.20251028070205-46d20c0699e7
controller_gen=v0.19.0

cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}
out="$cache_root/gang-crds-scheduler-plugins-$scheduler_plugins-volcano-apis-$volcano_apis-controller-gen-$controller_gen"

if [[ "${1:-}" == "--dir" ]]; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "gang-crds.sh: 'go' is not on PATH; install Go >= 1.26" >&2; exit 1; }
mkdir -p "$out"

if [[ ! -f "$out/coscheduling.yaml" ]]; then
  dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/scheduler-plugins@$scheduler_plugins" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  crd="$dir/config/crd/bases/scheduling.x-k8s.io_podgroups.yaml"
  [[ -f "$crd" ]] || { echo "gang-crds.sh: $crd is missing" >&2; exit 1; }
  install -m 0644 "$crd" "$out/coscheduling.yaml.tmp"
  mv "$out/coscheduling.yaml.tmp" "$out/coscheduling.yaml"
fi

if [[ ! -f "$out/volcano.yaml" ]]; then
  echo ">> generating Volcano's PodGroup CRD (volcano.sh/apis $volcano_apis) into $out" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (
    cd "$work"
    go mod init volcano-crds >/dev/null 2>&1
    GOFLAGS=-mod=mod go get "volcano.sh/apis@$volcano_apis" >&2
    GOFLAGS=-mod=mod go run "sigs.k8s.io/controller-tools/cmd/controller-gen@$controller_gen" \
      crd:crdVersions=v1 paths=volcano.sh/apis/pkg/apis/scheduling/v1beta1 \
      "output:crd:artifacts:config=$work/out" >&2
  )
  [[ -f "$work/out/scheduling.volcano.sh_podgroups.yaml" ]] ||
    { echo "gang-crds.sh: controller-gen wrote no PodGroup CRD" >&2; exit 1; }
  install -m 0644 "$work/out/scheduling.volcano.sh_podgroups.yaml" "$out/volcano.yaml.tmp"
  mv "$out/volcano.yaml.tmp" "$out/volcano.yaml"
fi
echo "$out"
