#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
common=$(dirname "$0")/../common
# mpi4py stays Debian's (python3-mpi4py, built for Debian's Open MPI); /home/mpiuser/train's wheels
# go to /usr/local, ahead of Debian's packages on sys.path. Also boto3 and s3sync: its launcher
# uploads the trained model.
"$common/pip.sh" "$1" -r "$common/train-requirements.txt" -r "$common/s3-requirements.txt"
install -m 0755 "$common/s3sync.py" "$1/usr/local/bin/s3sync"
"$common/mpiuser.sh" "$1"
