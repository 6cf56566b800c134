#!/usr/bin/env bash
# Builds the container images of the real test node from Debian packages, without a registry or
# a container engine: mmdebstrap makes the root filesystem, images/oci.py wraps it as an image
# archive that `ctr images import` accepts. One directory per image under hack/images/:
#   image.conf    variant= (mmdebstrap variant) and packages= (space separated)
#   config.json   the image's run config (Entrypoint, Cmd, User, Env, WorkingDir)
#   customize.sh  optional: mmdebstrap customize hook, gets the root filesystem as $1
#   needs=VAR     optional, in image.conf: a file the image is built from (its content is part of
#                 the cache key); without VAR set, building every image skips this one
#   options=      optional, in image.conf: more mmdebstrap options (space separated)
# hack/images/common/ holds what several images share (no image.conf: not an image); customize.sh
# scripts use it as "$(dirname "$0")/../common".
# Each archive is cached by the hash of its directory, common/, oci.py and this script, as
# <cache>/images/<name>-<hash>.tar, and tagged trainjob.local/<name>:bed (not :latest, so that the
# default pull policy never pulls); building one deletes that image's older archives. Prints
# "<name> <archive>" per image.
#
#   hack/images.sh [NAME...]     build what is missing (all images by default)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${TRAINJOB_BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainjob-operator}
out="$cache_root/images"
mkdir -p "$out"

command -v mmdebstrap >/dev/null || { echo "images.sh: mmdebstrap is missing; run 'hack/node.sh deps' as root (or install Debian's mmdebstrap package)" >&2; exit 1; }
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

names=("$@")
all=$([[ ${#names[@]} -eq 0 ]] && echo yes || true)
if [[ -n "$all" ]]; then
  for d in "$here"/images/*/; do
    if [[ -f "$d/image.conf" ]]; then names+=("$(basename "$d")"); fi
  done
fi

for name in "${names[@]}"; do
  dir="$here/images/$name"
  [[ -f "$dir/image.conf" ]] || { echo "images.sh: no image $name in hack/images" >&2; exit 1; }
  needs=$(sed -n 's/^needs=//p' "$dir/image.conf")
  input=
  if [[ -n "$needs" ]]; then
    input=${!needs:-}
    if [[ -z "$input" ]]; then
      [[ -n "$all" ]] && continue
      echo "images.sh: image $name is built from \$$needs; set it to the file" >&2
      exit 1
    fi
    [[ -f "$input" ]] || { echo "images.sh: \$$needs=$input is not a file" >&2; exit 1; }
  fi
  hash=$( (cd "$dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum
           cd "$here/images" && find common -type f -print0 | sort -z | xargs -0 -r sha256sum
           echo "$suite"
           # Contents only: the checkout's path must not change the key.
           cat "$here/images/oci.py" "$here/images.sh" ${input:+"$input"} | sha256sum) | sha256sum | cut -c1-12)
  archive="$out/$name-$hash.tar"
  if [[ ! -f "$archive" ]]; then
    variant=$(sed -n 's/^variant=//p' "$dir/image.conf")
    packages=$(sed -n 's/^packages=//p' "$dir/image.conf")
    read -ra options <<<"$(sed -n 's/^options=//p' "$dir/image.conf")"
    hooks=()
    [[ -x "$dir/customize.sh" ]] && hooks=(--customize-hook="$dir/customize.sh \"\$1\"")
    tmp=$(mktemp -d "$out/.build-$name.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    start=$SECONDS
    echo ">> building image $name ($variant: $packages)" >&2
    mmdebstrap --quiet --variant="$variant" ${packages:+--include="${packages// /,}"} \
      --aptopt='Apt::Install-Recommends "false"' "${options[@]}" "${hooks[@]}" \
      "$suite" "$tmp/rootfs.tar" >&2
    python3 "$here/images/oci.py" "$tmp/rootfs.tar" "trainjob.local/$name:bed" "$dir/config.json" "$tmp/image.tar"
    mv "$tmp/image.tar" "$archive"
    rm -rf "$tmp"
    trap - EXIT
    echo ">> built image $name in $((SECONDS - start))s, $(du -m "$archive" | cut -f1) MB" >&2
    for old in "$out/$name"-????????????.tar; do
      if [[ "$old" != "$archive" && "$(basename "$old")" =~ ^"$name"-[0-9a-f]{12}\.tar$ ]]; then rm -f "$old"; fi
    done
  fi
  echo "$name $archive"
done
