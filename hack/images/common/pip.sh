#!/usr/bin/env bash
# Installs exactly pinned wheels (NAME==VERSION...) system-wide into /usr/local of the root
# filesystem $1 (Debian pip's default for root; binaries in /usr/local/bin, libraries in /usr/local/lib, Python packages in
# /usr/local/lib/python3.*/dist-packages) with Debian's pip, which is removed again afterwards.
# pip runs with a clean environment (host paths such as $REQUESTS_CA_BUNDLE mean nothing in the
# chroot) but the host's proxy and index settings, and trusts the build host's certificates
# ($PIP_CERT, else the system bundle), as the host's own pip does.
set -euo pipefail
root=$1
shift
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
  --break-system-packages --no-cache-dir --no-deps --only-binary=:all: "$@"
rm -f "$root/tmp/pip-ca.crt"
chroot "$root" apt-get purge --yes --quiet --autoremove python3-pip >/dev/null
rm -rf "$root/root/.cache"
chroot "$root" ldconfig
