"""`docker save` streams, filtered on the fly to hold only the layers a node lacks.

Docker 20.10's `docker load` looks each layer up by chain ID and opens a layer tar only when
the layer is missing, so an archive with manifest.json, the config and just the missing
layer tars loads and yields the same image ID (verified on Docker 20.10). manifest.json
comes last in a save stream, so which directory holds which layer is remembered from earlier
streams (see remember_manifest); every node gets one filtering pass, no temporary file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
from pathlib import Path
from typing import IO, Any

from fleetimg import newfile, programs
from fleetimg.errors import PushError
from fleetimg.paths import state_dir

log = logging.getLogger("fleetimg.push")
BUFSIZE = 1 << 20


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """moby's chain IDs: a layer is identified by itself and everything below it."""
    out: list[str] = []
    for diff in diff_ids:
        if not out:
            out.append(diff)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def _cache_path() -> Path:
    return state_dir() / "push" / "layer-dirs.json"


_cache_lock = threading.Lock()


def _load_cache() -> dict[str, str]:
    path = _cache_path()
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_manifest(diff_ids: tuple[str, ...], manifest: list[dict[str, Any]]) -> None:
    """Record where a save archive keeps each layer below the top one.

    Docker 20.10 names a layer's directory by a v1 ID that, for every layer but the top,
    depends only on the layers below it (tarexport/save.go), so these names hold for any
    image that shares those layers. The top layer's name also depends on the image config
    and is never cached.
    """
    layers = manifest[0].get("Layers") or []
    if len(layers) != len(diff_ids):
        return
    chains = chain_ids(diff_ids)
    with _cache_lock:
        cache = _load_cache()
        cache.update({chains[i]: layers[i] for i in range(len(layers) - 1)})
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        newfile.write_atomic(path, json.dumps(cache).encode())


def _read_manifest(image_id: str) -> list[dict[str, Any]]:
    proc = programs.spawn(["docker", "save", image_id], stderr=None)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|", bufsize=BUFSIZE) as tar:
            for member in tar:
                if member.name == "manifest.json":
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return list(json.loads(fh.read()))
    finally:
        proc.kill()
        proc.wait()
    raise PushError(f"`docker save {image_id}` produced no manifest.json")


def skipped_members(image_id: str, diff_ids: tuple[str, ...], skip_layers: int) -> set[str]:
    """Archive paths of the first `skip_layers` layers: the node has them already."""
    if skip_layers == 0:
        return set()
    chains = chain_ids(diff_ids)[:skip_layers]
    cache = _load_cache()
    if any(c not in cache for c in chains):
        # First time we meet these layers: one read of the save stream up to its
        # manifest (it comes last) teaches us their names. The top layer's name holds for
        # this image only, so it is used here and not cached: a rebuild that changed only
        # the config (a label) skips every layer, the top one included.
        manifest = _read_manifest(image_id)
        remember_manifest(diff_ids, manifest)
        cache = _load_cache()
        layers = (manifest[0].get("Layers") or []) if manifest else []
        if len(layers) == len(diff_ids):
            cache = {**cache, **dict(zip(chain_ids(diff_ids), layers, strict=True))}
    names: set[str] = set()
    for chain, diff in zip(chains, diff_ids, strict=False):
        path = cache.get(chain)
        if path is None:
            raise PushError(f"cannot find layer {diff[:19]} in the save archive of {image_id}")
        names.add(path)
        # Docker 25+ saves an OCI layout that names each layer blob by its digest.
        names.add(f"blobs/sha256/{diff.removeprefix('sha256:')}")
    return names


def filter_save_stream(
    src: IO[bytes], dst: IO[bytes], *, skip: set[str], repo_tag: str | None,
    diff_ids: tuple[str, ...], progress: Any = None,
) -> int:
    """Copy a save stream from src to dst, leaving out the members in `skip` and setting
    RepoTags to [repo_tag]. Returns the uncompressed bytes written."""
    # Legacy layout keeps each layer in a directory (DIR/layer.tar, DIR/json, DIR/VERSION).
    skipped_dirs = {p.rsplit("/", 1)[0] + "/" for p in skip if p.endswith("/layer.tar")}
    written = 0
    with tarfile.open(fileobj=src, mode="r|", bufsize=BUFSIZE) as tin, \
            tarfile.open(fileobj=dst, mode="w|", bufsize=BUFSIZE,
                         format=tarfile.GNU_FORMAT) as tout:
        tout.copybufsize = BUFSIZE  # type: ignore[attr-defined]
        for member in tin:
            name = member.name.removeprefix("./")
            if name in skip or any((name + "/").startswith(d) for d in skipped_dirs):
                continue
            if name == "repositories":
                continue  # tags come from manifest.json
            if name == "manifest.json":
                fh = tin.extractfile(member)
                assert fh is not None
                manifest = json.loads(fh.read())
                remember_manifest(diff_ids, manifest)
                manifest[0]["RepoTags"] = [repo_tag] if repo_tag else None
                body = json.dumps(manifest).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(body)
                info.mode = 0o644
                tout.addfile(info, io.BytesIO(body))
                written += len(body)
                continue
            data = tin.extractfile(member) if member.isfile() else None
            tout.addfile(member, data)
            written += member.size
            if progress is not None and member.size:
                progress(member.size)
    return written
