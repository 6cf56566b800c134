#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, and the real node's kubelet) from the Go modules pinned in hack/controlplane/go.mod into a cache directory
# keyed by those pins, and prints that directory on stdout. Does nothing when it is already built.
#
#   hack/controlplane.sh          build if needed, print the bin directory
#   hack/controlplane.sh --dir    print the bin directory without building
#
# The cache lives outside the repo: $TRAINJOB_BED_CACHE, else $XDG_CACHE_HOME/trainjob-operator,
# else ~/.cache/trainjob-operator. The first build takes a long time (see
# docs/development/testing.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mod="$here/controlplane"
cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}

version_of() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod"; }
k8s=$(version_of k8s.io/kubernetes)
etcd=$(version_of go.etcd.io/etcd/server/v3)
kwok=$(version_of sigs.k8s.io/kwok)
# The versions name the directory; a hash of the module files catches any other pin change.
sum=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)
bin="$cache_root/controlplane-k8s-$k8s-etcd-$etcd-kwok-$kwok-$sum/bin"

if [[ "${1:-}" == "--dir" ]]; then
  echo "$bin"
  exit 0
fi

tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kubelet)
missing=()
for t in "${tools[@]}"; do [[ -x "$bin/$t" ]] || missing+=("$t"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "controlplane.sh: 'go' is not on PATH; install Go >= 1.26" >&2; exit 1; }
echo ">> building ${missing[*]} (kubernetes $k8s, etcd $etcd, kwok $kwok) into $bin" >&2
echo ">> the first build takes a long time; later runs reuse the cache" >&2
tmp="$bin.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

minor=${k8s#v1.}; minor=${minor%%.*}
# Without these the binaries report v0.0.0-master, which clients and kwok mistrust.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"

pkg_of() {
  case "$1" in
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kwok) echo sigs.k8s.io/kwok/cmd/kwok ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

cd "$mod"
for t in "${missing[@]}"; do
  start=$SECONDS
  echo ">> go build $t ..." >&2
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp/$t" "$(pkg_of "$t")" >&2
  echo ">> built $t in $((SECONDS - start))s" >&2
done
mkdir -p "$bin"
for t in "${missing[@]}"; do mv "$tmp/$t" "$bin/$t"; done
echo "$bin"
