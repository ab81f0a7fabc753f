"""The missing layers of an image, read from the Docker engine's own layer store instead of
a whole `docker save`.

`docker save` reads every layer of an image, so finding the few a node lacks costs the
whole image (minutes at 11 GB). The engine keeps, per layer, its files (overlay2's `diff`
directory) and tar-split data (github.com/vbatts/tar-split: the tar's headers and padding,
with each file's name and size in between), from which moby itself re-creates the exact
layer tar for `docker save`. fleetimg does the same for the missing layers only, writes the
image config from the engine's image store and a manifest.json naming every layer, and
streams that archive: Docker's load opens a layer tar only when the layer is missing
(tarexport/load.go), and verifies every one it loads against its diff ID.

Used when this process can read the store of the engine it talks to (root on the machine
that runs dockerd, the overlay2 driver, not the containerd image store). Every layer is
hashed while it streams and checked against its diff ID; otherwise `docker save` is used.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
from docker.errors import DockerException

from fleetimg import stop
from fleetimg.errors import PushError
from fleetimg.push.archive import BUFSIZE, chain_ids

log = logging.getLogger("fleetimg.push")

FILE_ENTRY, SEGMENT_ENTRY = 1, 2  # tar-split's storage.FileType and storage.SegmentType


@dataclass(frozen=True)
class LayerStore:
    root: Path  # the engine's DockerRootDir

    @property
    def _images(self) -> Path:
        return self.root / "image" / "overlay2"

    def config_path(self, image_id: str) -> Path:
        return self._images / "imagedb" / "content" / "sha256" / image_id.removeprefix("sha256:")

    def layer_dir(self, chain_id: str) -> Path:
        return self._images / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")

    def holds(self, image_id: str, diff_ids: tuple[str, ...]) -> bool:
        """Whether the store has this image's config and every layer's tar-split data."""
        try:
            config = self.config_path(image_id).read_bytes()
        except OSError:
            return False
        if "sha256:" + hashlib.sha256(config).hexdigest() != image_id:
            return False  # another engine's store, or a changed one
        for chain, diff in zip(chain_ids(diff_ids), diff_ids, strict=True):
            d = self.layer_dir(chain)
            try:
                if (d / "diff").read_text().strip() != diff or \
                        not (d / "tar-split.json.gz").is_file():
                    return False
                if not self.files(chain).is_dir():
                    return False
            except OSError:
                return False
        return True

    def files(self, chain_id: str) -> Path:
        cache_id = (self.layer_dir(chain_id) / "cache-id").read_text().strip()
        return self.root / "overlay2" / cache_id / "diff"


@functools.cache
def open_store() -> LayerStore | None:
    """The local engine's layer store, when this process can read it."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None  # a remote engine: its store is not on this machine
    try:
        info = docker.from_env().info()
    except DockerException:
        return None
    if info.get("Driver") != "overlay2" or any(
            "snapshotter" in str(v) for _, v in info.get("DriverStatus") or []):
        return None
    root = Path(info.get("DockerRootDir") or "/var/lib/docker")
    store = LayerStore(root)
    if not os.access(store._images / "layerdb", os.R_OK | os.X_OK):
        log.debug("layer store %s not readable: using docker save", root)
        return None
    return store


def _entries(path: Path) -> Iterator[dict[str, object]]:
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _name(entry: dict[str, object]) -> str:
    raw = entry.get("name_raw")
    if isinstance(raw, str):
        return base64.b64decode(raw).decode(errors="surrogateescape")
    return str(entry.get("name", ""))


def layer_tar_size(store: LayerStore, chain_id: str) -> int:
    """Bytes of the layer's tar, from its tar-split data alone."""
    total = 0
    for e in _entries(store.layer_dir(chain_id) / "tar-split.json.gz"):
        if e.get("type") == SEGMENT_ENTRY:
            total += len(base64.b64decode(str(e.get("payload") or "")))
        elif e.get("type") == FILE_ENTRY:
            total += int(str(e.get("size") or 0))
    return total


def layer_chunks(store: LayerStore, chain_id: str) -> Iterator[bytes]:
    """The layer's tar, byte for byte as it was built: headers and padding from tar-split,
    file contents from the layer's directory."""
    files = store.files(chain_id).resolve()
    for e in _entries(store.layer_dir(chain_id) / "tar-split.json.gz"):
        if e.get("type") == SEGMENT_ENTRY:
            yield base64.b64decode(str(e.get("payload") or ""))
            continue
        size = int(str(e.get("size") or 0))
        if e.get("type") != FILE_ENTRY or size == 0:
            continue
        path = (files / _name(e).lstrip("/")).resolve()
        if not path.is_relative_to(files):
            raise PushError(f"layer {chain_id[:19]}: entry {_name(e)!r} leaves the layer")
        left = size
        with path.open("rb") as fh:
            while left:
                stop.check()  # a stop ends the stream at once, as it ends `docker save`
                chunk = fh.read(min(BUFSIZE, left))
                if not chunk:
                    raise PushError(f"layer {chain_id[:19]}: {_name(e)} is shorter than the "
                                    "layer says", hint="the engine's layer store changed; "
                                    "run again (docker save is used if it persists)")
                left -= len(chunk)
                yield chunk


class _Verified(io.RawIOBase):
    """A layer's chunks as a file object that hashes what is read; the digest is checked
    against the diff ID when the last byte has been read."""

    def __init__(self, chunks: Iterator[bytes], diff_id: str,
                 progress: Callable[[int], None] | None) -> None:
        self._chunks, self._diff_id, self._progress = chunks, diff_id, progress
        self._buf = b""
        self._sha = hashlib.sha256()
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = chunk
            self._sha.update(chunk)
        n = min(len(b), len(self._buf))
        if not n:
            return 0
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.read_bytes += n
        if self._progress is not None:
            self._progress(n)
        return n

    def verify(self) -> None:
        """After the tar member: nothing left over, and the bytes hash to the diff ID (what
        the node's `docker load` checks too, but only after the whole stream)."""
        rest = b"".join(self._chunks)
        if self._buf or rest or "sha256:" + self._sha.hexdigest() != self._diff_id:
            raise PushError(f"the layer rebuilt from the engine's store does not match "
                            f"{self._diff_id[:19]}", hint="run again with "
                            "FLEETIMG_PUSH_SOURCE=save to read the image with docker save")


def write_archive(store: LayerStore, image_id: str, diff_ids: tuple[str, ...],
                  skip_layers: int, repo_tag: str | None, dst: IO[bytes],
                  progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """A loadable archive of the image with only the layers from `skip_layers` on.
    Returns (archive bytes written, bytes read from the store)."""
    config = store.config_path(image_id).read_bytes()
    chains = chain_ids(diff_ids)
    hexid = image_id.removeprefix("sha256:")
    layers = [f"{c.removeprefix('sha256:')}/layer.tar" for c in chains]
    written = read = len(config)
    with tarfile.open(fileobj=dst, mode="w|", bufsize=BUFSIZE,
                      format=tarfile.GNU_FORMAT) as tar:
        tar.copybufsize = BUFSIZE  # type: ignore[attr-defined]
        _add(tar, f"{hexid}.json", config)
        for chain, diff, name in list(zip(chains, diff_ids, layers, strict=True))[skip_layers:]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = layer_tar_size(store, chain), 0o644
            layer = _Verified(layer_chunks(store, chain), diff, progress)
            tar.addfile(info, io.BufferedReader(layer, BUFSIZE))
            layer.verify()
            written += info.size
            read += layer.read_bytes
        manifest = json.dumps([{"Config": f"{hexid}.json",
                                "RepoTags": [repo_tag] if repo_tag else None,
                                "Layers": layers}]).encode()
        _add(tar, "manifest.json", manifest)
        written += len(manifest)
    return written, read


def _add(tar: tarfile.TarFile, name: str, body: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(body), 0o644
    tar.addfile(info, io.BytesIO(body))
