#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
# 2021.17 and later need a libfabric package that PyPI lacks.
"$common/pip.sh" "$1" impi-rt==2021.16.1 mpi4py==4.1.2 -r "$common/train-requirements.txt"
"$common/mpiuser.sh" "$1"
