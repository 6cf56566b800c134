#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
"$common/pip.sh" "$1" -r "$common/s3-requirements.txt"
install -m 0755 "$common/s3sync.py" "$1/usr/local/bin/s3sync"
