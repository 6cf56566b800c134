#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
"$common/pip.sh" "$1" mpich==5.0.2 mpi4py==4.1.2 -r "$common/train-requirements.txt"
"$common/mpiuser.sh" "$1"
