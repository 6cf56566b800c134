#!/usr/bin/env bash
# Prints the path of each third-party gang-scheduling CRD the tests install, fetched from the Go
# module proxy at a pinned version (no copies in this repo): scheduler-plugins' coscheduling
# PodGroup (scheduling.x-k8s.io/v1alpha1).
#
#   hack/gang-crds.sh
set -euo pipefail

scheduler_plugins=v0.33.5

dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/scheduler-plugins@$scheduler_plugins" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
crd="$dir/config/crd/bases/scheduling.x-k8s.io_podgroups.yaml"
[[ -f "$crd" ]] || { echo "gang-crds.sh: $crd is missing" >&2; exit 1; }
echo "$crd"
