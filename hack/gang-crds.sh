#!/usr/bin/env bash
# Prints `<scheduler> <path>` for each third-party gang-scheduling CRD the tests install, at pinned
# versions, from the Go module proxy (no copies in this repo):
#   coscheduling  scheduler-plugins' PodGroup CRD (scheduling.x-k8s.io/v1alpha1), as published in
#                 its module
#   volcano       Volcano's PodGroup CRD (scheduling.volcano.sh/v1beta1). Volcano's own module is
#                 not served by the proxy, its API module is: the CRD is generated from those API
#                 types with controller-gen, the way Volcano generates it, into a cache directory
#                 keyed by both versions (slow the first time: docs/development/testing.md).
#
#   hack/gang-crds.sh
set -euo pipefail

scheduler_plugins=v0.33.5
# The Volcano API version Kubeflow Trainer v2.2.0 pins.
volcano_apis=v1.13.1-0.20251028070205-46d20c0699e7
controller_gen=v0.19.0

cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}

module_dir() {
  GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

crd="$(module_dir "sigs.k8s.io/scheduler-plugins@$scheduler_plugins")/config/crd/bases/scheduling.x-k8s.io_podgroups.yaml"
[[ -f "$crd" ]] || { echo "gang-crds.sh: $crd is missing" >&2; exit 1; }
echo "coscheduling $crd"

out="$cache_root/volcano-crds-$volcano_apis-controller-gen-$controller_gen"
volcano="$out/scheduling.volcano.sh_podgroups.yaml"
if [[ ! -f "$volcano" ]]; then
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
  mkdir -p "$out"
  mv "$work/out/scheduling.volcano.sh_podgroups.yaml" "$volcano"
fi
echo "volcano $volcano"
