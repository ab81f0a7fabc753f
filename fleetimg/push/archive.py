"""`docker save` streams, filtered on the fly to hold only the layers a node lacks.

Docker 20.10's `docker load` looks each layer up by chain ID and opens a layer tar only when
the layer is missing, so an archive with manifest.json, the config and just the missing
layer tars loads and yields the same image ID (JETSON-FACTS section 2). manifest.json comes
last in a save stream, so which file holds which layer is learned once per image by a first
read and cached; after that every node gets one filtering pass, with no temporary file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fleetimg import run as runmod
from fleetimg.errors import PushError
from fleetimg.paths import state_dir

log = logging.getLogger("fleetimg.push")
BUFSIZE = 1 << 20


@dataclass(frozen=True)
class SaveLayout:
    """Where a `docker save` archive keeps each layer: member paths in layer order."""

    image_id: str
    config: str
    layers: tuple[str, ...]


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """moby's chain IDs: a layer is identified by itself and everything below it."""
    out: list[str] = []
    for diff in diff_ids:
        if not out:
            out.append(diff)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def _cache_path(image_id: str) -> Path:
    return state_dir() / "push" / "layouts" / f"{image_id.removeprefix('sha256:')}.json"


def save_layout(image_id: str) -> SaveLayout:
    cache = _cache_path(image_id)
    if cache.exists():
        data = json.loads(cache.read_text())
        return SaveLayout(image_id, data["config"], tuple(data["layers"]))
    proc = runmod.spawn(["docker", "save", image_id], stderr=None)
    assert proc.stdout is not None
    manifest: list[dict[str, Any]] | None = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|", bufsize=BUFSIZE) as tar:
            for member in tar:
                if member.name == "manifest.json":
                    fh = tar.extractfile(member)
                    assert fh is not None
                    manifest = json.loads(fh.read())
                    break
    finally:
        proc.kill()
        proc.wait()
    if not manifest:
        raise PushError(f"`docker save {image_id}` produced no manifest.json")
    layout = SaveLayout(image_id, manifest[0]["Config"], tuple(manifest[0]["Layers"]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"config": layout.config, "layers": list(layout.layers)}))
    return layout


def filter_save_stream(
    src: IO[bytes], dst: IO[bytes], layout: SaveLayout, *, skip_layers: int,
    repo_tag: str | None, progress: Any = None,
) -> int:
    """Copy a save stream from src to dst, leaving out the first `skip_layers` layers and
    setting RepoTags to [repo_tag]. Returns the uncompressed bytes written."""
    skipped = set(layout.layers[:skip_layers])
    # Legacy layout keeps each layer in a directory (DIR/layer.tar, DIR/json, DIR/VERSION);
    # the OCI layout of Docker 25+ names the blob itself.
    skipped_dirs = {p.rsplit("/", 1)[0] + "/" for p in skipped if p.endswith("/layer.tar")}
    written = 0
    with tarfile.open(fileobj=src, mode="r|", bufsize=BUFSIZE) as tin, \
            tarfile.open(fileobj=dst, mode="w|", bufsize=BUFSIZE,
                         format=tarfile.GNU_FORMAT) as tout:
        tout.copybufsize = BUFSIZE  # type: ignore[attr-defined]
        for member in tin:
            name = member.name.removeprefix("./")
            if name in skipped or any(name.startswith(d) or name + "/" == d
                                      for d in skipped_dirs):
                continue
            if name == "repositories":
                continue  # tags come from manifest.json
            if name == "manifest.json":
                fh = tin.extractfile(member)
                assert fh is not None
                manifest = json.loads(fh.read())
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
