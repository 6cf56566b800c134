#!/usr/bin/env bash
# Installs what `make test` needs beyond Rust and Go: promtool (Debian's prometheus package),
# which lints the operator's /metrics output the way Prometheus would read it.
set -euo pipefail
command -v promtool >/dev/null && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "make test needs promtool: install Debian's 'prometheus' package (or put promtool on PATH)" >&2
  exit 1
fi
echo ">> installing promtool (Debian package prometheus)" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null
