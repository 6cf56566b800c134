#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
install -m 0755 "$TRAINJOB_OPERATOR_BINARY" "$1/trainjob-operator"
