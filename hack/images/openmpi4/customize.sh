#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
"$(dirname "$0")/../common/mpiuser.sh" "$1"
