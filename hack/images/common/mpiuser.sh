#!/usr/bin/env bash
# The layout every MPI image shares, so that the same pod specs work on each. Called from an
# image's customize.sh (mmdebstrap customize hook) with the root filesystem as $1:
#   - user mpiuser (uid/gid 1000, home /home/mpiuser) with its own sshd: `/usr/sbin/sshd -De -f
#     /home/mpiuser/.sshd_config` listens on 2222 with a host key of its own;
#   - root too: `/usr/sbin/sshd -De` listens on 2222 (sshd_config.d/trainjob.conf) with Debian's
#     host keys and /root/.ssh/authorized_keys, privilege separation in /run/sshd (the image keeps
#     /run: image.conf passes --skip=cleanup/run to mmdebstrap);
#   - ssh connects to port 2222; host key checking is the caller's business (the operator passes
#     StrictHostKeyChecking and UserKnownHostsFile itself);
#   - /home/mpiuser/pi: mpi4py program (common/pi.py), runnable by mpiuser and root;
#   - /home/mpiuser/train: data-parallel training (common/train.py: a numpy MLP on scikit-learn's
#     bundled digits data, gradients summed by Allreduce, progress reported to the TrainJob through
#     the Kubeflow SDK, exit 0 when the test accuracy reaches --target); it needs the wheels of
#     common/train-requirements.txt, which the image's customize.sh installs with common/pip.sh;
#   - `python` is python3 (as Debian's python-is-python3 makes it): the Kubeflow SDK's
#     CustomTrainer on an MPI runtime has every rank run `python <file>`.
set -euo pipefail
root=$1
common=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for key in rsa ecdsa ed25519; do
  [[ -s "$root/etc/ssh/ssh_host_${key}_key" ]] || { echo "mpiuser.sh: /etc/ssh/ssh_host_${key}_key is missing" >&2; exit 1; }
done
# mmdebstrap would empty /run; the image keeps it for /run/sshd only.
find "$root/run" -mindepth 1 -delete
mkdir -p "$root/run/sshd"
chmod 0755 "$root/run/sshd"
cat > "$root/etc/ssh/sshd_config.d/trainjob.conf" <<'CONF'
# sshd run as root (/usr/sbin/sshd -De): the port every image's ssh client connects to.
Port 2222
PasswordAuthentication no
CONF
cat >> "$root/etc/ssh/ssh_config" <<'CONF'
# Every image's sshd listens on 2222 (mpiuser's and root's alike).
Host *
    Port 2222
    LogLevel ERROR
CONF

chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash mpiuser
home="$root/home/mpiuser"
mkdir -p "$home/.sshd"
chroot "$root" ssh-keygen -q -t ed25519 -N '' -f /home/mpiuser/.sshd/host_ed25519_key
install -m 0644 "$common/sshd_config" "$home/.sshd_config"
install -m 0755 "$common/pi.py" "$home/pi"
install -m 0755 "$common/train.py" "$home/train"
[[ -e "$root/usr/bin/python" ]] || ln -s python3 "$root/usr/bin/python"
chroot "$root" chown -R mpiuser:mpiuser /home/mpiuser
