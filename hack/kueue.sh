#!/usr/bin/env bash
# Builds Kueue (the job queueing controller the Kueue contract test runs against) from the Go
# module proxy at a pinned version into a version-keyed cache directory, next to the CRDs it needs
# (Kueue's own and JobSet's, which its TrainJob integration watches), and prints that directory:
#
#   <dir>/kueue          the manager binary
#   <dir>/crds/*.yaml    Kueue's CRDs and the JobSet CRD, at the versions Kueue's go.mod pins
#   <dir>/webhooks.yaml  Kueue's webhook manifest (the test bed registers them by URL)
#
#   hack/kueue.sh          build if needed, print the directory
#   hack/kueue.sh --dir    print the directory without building
#
# The cache lives outside the repo (as for hack/controlplane.sh). The first build takes a while
# (see docs/development/testing.md); `go install pkg@version` verifies every module against the
# checksum database, so the version alone keys the cache.
set -euo pipefail

kueue=v0.17.0
cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}
dir="$cache_root/kueue-$kueue"

if [[ "${1:-}" == "--dir" ]]; then
  echo "$dir"
  exit 0
fi
if [[ -x "$dir/kueue" && -f "$dir/.complete" ]]; then
  echo "$dir"
  exit 0
fi

command -v go >/dev/null || { echo "kueue.sh: 'go' is not on PATH; install Go >= 1.25" >&2; exit 1; }
mkdir -p "$dir"
# Outside any module, so that Kueue's own go.mod decides every dependency version.
cd "$dir"
module_dir() {
  GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

if [[ ! -x "$dir/kueue" ]]; then
  echo ">> building Kueue $kueue into $dir (slow the first time: docs/development/testing.md)" >&2
  start=$SECONDS
  GOBIN="$dir/bin.tmp.$$" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$kueue" \
    "sigs.k8s.io/kueue/cmd/kueue@$kueue" >&2
  mv "$dir/bin.tmp.$$/kueue" "$dir/kueue"
  rmdir "$dir/bin.tmp.$$"
  echo ">> built Kueue in $((SECONDS - start))s" >&2
fi

src=$(module_dir "sigs.k8s.io/kueue@$kueue")
jobset=$(awk '$1 == "sigs.k8s.io/jobset" { print $2; exit }' "$src/go.mod")
jobset_src=$(module_dir "sigs.k8s.io/jobset@$jobset")
rm -rf "$dir/crds"
mkdir -p "$dir/crds"
cp "$src"/config/components/crd/bases/*.yaml "$dir/crds/"
cp "$jobset_src/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml" "$dir/crds/"
cp "$src/config/components/webhook/manifests.yaml" "$dir/webhooks.yaml"
chmod u+w "$dir"/crds/*.yaml "$dir/webhooks.yaml"
touch "$dir/.complete"
echo "$dir"
