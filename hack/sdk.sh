#!/usr/bin/env bash
# Prints the path of a Python virtual environment with the Kubeflow SDK and pytest of
# hack/sdk-requirements.txt, made once per version of that file under
# ~/.cache/trainjob-operator/sdk-<hash> (TRAINJOB_BED_CACHE moves the cache), with python3's venv
# and pip from the package index pip is configured for. Older environments are removed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/sdk-requirements.txt"
cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}
key=$(sha256sum "$requirements" | cut -c1-12)
venv="$cache_root/sdk-$key"
if [[ ! -f "$venv/.complete" ]]; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
      echo "sdk.sh: python3's venv module is missing: install Debian's python3-venv" >&2
      exit 1
    fi
    echo ">> installing python3-venv" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo ">> making the Kubeflow SDK's virtual environment $venv" >&2
  find "$cache_root" -maxdepth 1 -name 'sdk-*' -exec rm -rf {} +
  python3 -m venv "$venv"
  # --no-deps: the file is the whole closure, so nothing unpinned slips in.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements" >&2
  "$venv/bin/python" -c 'import kubeflow.trainer, pytest' >&2
  touch "$venv/.complete"
fi
echo "$venv"
