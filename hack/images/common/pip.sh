#!/usr/bin/env bash
# Installs exactly pinned wheels (NAME==VERSION..., and -r FILE for a requirements file of such pins
# on the build host, e.g. common/train-requirements.txt) system-wide into /usr/local of the root
# filesystem $1 (Debian pip's default for root; binaries in /usr/local/bin, libraries in /usr/local/lib, Python packages in
# /usr/local/lib/python3.*/dist-packages) with Debian's pip, which is removed again afterwards.
# pip runs with a clean environment (host paths such as $REQUESTS_CA_BUNDLE mean nothing in the
# chroot) but the host's proxy and index settings, and trusts the build host's certificates
# ($PIP_CERT, else the system bundle), as the host's own pip does.
set -euo pipefail
root=$1
shift
# A requirements file goes into the root filesystem, where pip runs.
args=()
while (($#)); do
  if [[ $1 == -r ]]; then
    [[ -f ${2:-} ]] || { echo "pip.sh: -r needs a requirements file, not '${2:-}'" >&2; exit 1; }
    req=/tmp/pip-requirements-${#args[@]}.txt
    install -m 0644 "$2" "$root$req"
    args+=(-r "$req")
    shift 2
  else
    args+=("$1")
    shift
  fi
done
chroot "$root" apt-get install --yes --quiet --no-install-recommends python3-pip >/dev/null
pip_env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
           PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
  if [[ -n "${!var:-}" ]]; then pip_env+=("$var=${!var}"); fi
done
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [[ -f "$cert" ]]; then
  install -m 0644 "$cert" "$root/tmp/pip-ca.crt"
  pip_env+=(PIP_CERT=/tmp/pip-ca.crt)
fi
chroot "$root" "${pip_env[@]}" pip install --quiet --root-user-action=ignore --disable-pip-version-check \
  --break-system-packages --no-cache-dir --no-deps --only-binary=:all: "${args[@]}"
rm -f "$root/tmp/pip-ca.crt" "$root"/tmp/pip-requirements-*.txt
chroot "$root" apt-get purge --yes --quiet --autoremove python3-pip >/dev/null
rm -rf "$root/root/.cache"
chroot "$root" ldconfig
