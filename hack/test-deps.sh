#!/usr/bin/env bash
# Installs what `make test` needs beyond Rust and Go, from Debian's packages: promtool (package
# prometheus), which lints the operator's /metrics output the way Prometheus would read it, and
# Chromium with its WebDriver (chromium, chromium-driver), in which the dashboard's page is tested.
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "make test needs Debian's packages ${missing[*]} (or promtool, chromium and chromedriver on PATH)" >&2
  exit 1
fi
echo ">> installing ${missing[*]} (Debian packages)" >&2
apt-get update -qq >/dev/null
# fonts-dejavu-core: text in screenshots looks the same on every machine.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
command -v promtool >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null
