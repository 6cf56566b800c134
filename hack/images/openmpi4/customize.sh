#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
# mpi4py stays Debian's (python3-mpi4py, built for Debian's Open MPI); /home/mpiuser/train's wheels
# go to /usr/local, ahead of Debian's packages on sys.path.
"$common/pip.sh" "$1" -r "$common/train-requirements.txt"
"$common/mpiuser.sh" "$1"
