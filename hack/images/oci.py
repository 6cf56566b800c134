#!/usr/bin/env python3
"""Wraps a root filesystem tar as a one-layer docker-archive image that `ctr images import`
accepts, with no registry and no daemon.

    oci.py ROOTFS.tar NAME:TAG CONFIG.json OUT.tar

CONFIG.json holds the image's run config (Entrypoint, Cmd, User, Env, WorkingDir).
"""

import hashlib
import io
import json
import sys
import tarfile


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def add_bytes(out, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    out.addfile(info, io.BytesIO(data))


def main(rootfs, ref, config_path, out_path):
    with open(config_path) as f:
        run_config = json.load(f)
    layer = sha256_of(rootfs)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{layer}/layer.tar"]}]
    ).encode()
    with tarfile.open(out_path, "w") as out:
        out.add(rootfs, arcname=f"{layer}/layer.tar")
        add_bytes(out, config_name, config)
        add_bytes(out, "manifest.json", manifest)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
