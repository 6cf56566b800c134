#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
"$common/pip.sh" "$1" mpi4py==4.1.2
"$common/mpiuser.sh" "$1"
# mpi4py's wheels load the MPICH ABI as libmpi.so.12 (and link MPI.mpich*.so against that name);
# Debian names the library libmpich.so.12. A link in the default search path, no environment.
ln -s libmpich.so.12 "$1/usr/lib/x86_64-linux-gnu/libmpi.so.12"
