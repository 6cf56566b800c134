#!/usr/bin/env bash
# Installs what `make bench` needs beyond Rust and Go: the DejaVu fonts (Debian's
# fonts-dejavu-core) that label the charts in docs/development/benchmarks.md.
set -euo pipefail
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[[ -f $font ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "make bench needs $font: install Debian's 'fonts-dejavu-core' package" >&2
  exit 1
fi
echo ">> installing fonts-dejavu-core" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
[[ -f $font ]]
