#!/usr/bin/python3
"""Every rank prints one line: its rank, its host and the environment variables named on the
command line (pi NAME...: " NAME=value", or "<unset>"); rank 0 then prints pi from an allreduce
over all ranks."""
import os
import socket
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
env = "".join(f" {name}={os.environ.get(name, '<unset>')}" for name in sys.argv[1:])
print(f"rank {rank} of {size} on {socket.gethostname()}{env}", flush=True)
steps = 1_000_000
width = 1.0 / steps
part = sum(4.0 / (1.0 + ((i + 0.5) * width) ** 2) for i in range(rank, steps, size)) * width
pi = comm.allreduce(part, op=MPI.SUM)
ranks = comm.allreduce(1, op=MPI.SUM)
if rank == 0:
    print(f"pi is approximately {pi:.8f} from {ranks} ranks", flush=True)
