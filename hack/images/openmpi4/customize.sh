#!/usr/bin/env bash
# Runs as mmdebstrap's customize hook: $1 is the new root filesystem.
set -euo pipefail
root=$1
chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash mpiuser
home="$root/home/mpiuser"
mkdir -p "$home/.sshd"
chroot "$root" ssh-keygen -q -t ed25519 -N '' -f /home/mpiuser/.sshd/host_ed25519_key
cat > "$home/.sshd_config" <<'CONF'
# sshd run as mpiuser: a port above 1024, its own host key, keys from the mounted Secret.
Port 2222
HostKey /home/mpiuser/.sshd/host_ed25519_key
PidFile none
AuthorizedKeysFile /home/mpiuser/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitUserEnvironment no
# The Secret volume holding the keys is group-owned through fsGroup; as in the MPI Operator images.
StrictModes no
CONF
cat >> "$root/etc/ssh/ssh_config" <<'CONF'
# Pods come and go with new host keys; the job's own key pair authenticates both ends.
Host *
    Port 2222
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
CONF
cat > "$home/pi" <<'PY'
#!/usr/bin/python3
"""Every rank reports its host; rank 0 prints pi from an allreduce over all ranks."""
import socket

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
print(f"rank {rank} of {size} on {socket.gethostname()}", flush=True)
steps = 1_000_000
width = 1.0 / steps
part = sum(4.0 / (1.0 + ((i + 0.5) * width) ** 2) for i in range(rank, steps, size)) * width
pi = comm.allreduce(part, op=MPI.SUM)
ranks = comm.allreduce(1, op=MPI.SUM)
if rank == 0:
    print(f"pi is approximately {pi:.8f} from {ranks} ranks", flush=True)
PY
chmod 0755 "$home/pi"
chroot "$root" chown -R mpiuser:mpiuser /home/mpiuser
