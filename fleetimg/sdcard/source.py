"""The JetPack SD card image to write: .img as is; .zip (NVIDIA's format), .xz and .gz are
decompressed once, streaming, into a sparse cached .img so block-mapped writing, hashing and
several cards in a row can seek in it.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from fleetimg import stop
from fleetimg.errors import DiskError
from fleetimg.paths import state_dir

CHUNK = 4 << 20
Progress = Callable[[int, int], None]  # (done, total)


def cache_dir() -> Path:
    return state_dir() / "images"


def _open_compressed(path: Path) -> tuple[IO[bytes], int, zipfile.ZipFile | None]:
    """Returns (stream, uncompressed size or 0 if unknown, zip handle to close)."""
    name = path.name.lower()
    if name.endswith(".zip"):
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.infolist() if m.filename.lower().endswith(".img")]
        if len(members) != 1:
            zf.close()
            raise DiskError(f"{path}: expected exactly one .img inside the zip, found "
                            f"{len(members)}", hint="unzip it and pass the .img with --image")
        return zf.open(members[0]), members[0].file_size, zf
    if name.endswith(".xz"):
        return lzma.open(path, "rb"), 0, None
    if name.endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(path, "rb")), 0, None
    raise DiskError(f"{path}: unknown image format",
                    hint="use a .img, .zip (NVIDIA's download), .img.xz or .img.gz file")


def is_compressed(path: Path) -> bool:
    return path.name.lower().endswith((".zip", ".xz", ".gz"))


def resolve_source(path: Path, progress: Progress | None = None) -> Path:
    """A seekable raw image for `path`, decompressing into the cache when needed."""
    if not path.exists():
        raise DiskError(f"image {path} does not exist",
                        hint="download NVIDIA's SD card image, or set [sdcard] image in "
                        "fleet.toml; `fleetimg lab sdimage` makes a Jetson-like test image")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        hint = ("name the image file inside it" if path.is_dir() else
                "--image takes an image file; to read a card, copy it to a file first "
                "(dd if=/dev/sdX of=card.img bs=4M) and check it is not a clone of a "
                "booted board")
        raise DiskError(f"image {path} is {what}", hint=hint)
    if not is_compressed(path):
        return path
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    stem = path.name
    for suffix in (".zip", ".xz", ".gz", ".img"):
        stem = stem.removesuffix(suffix)
    out = cache_dir() / f"{stem}-{key[:10]}.img"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Each run decompresses into its own temporary file: two runs on the same image must not
    # share (and delete) one .part. Whoever finishes first renames; the other's rename
    # replaces it with identical bytes.
    fd, tmp = tempfile.mkstemp(prefix=f"{out.name}.", suffix=".part", dir=out.parent)
    part = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as dst:
            done = _decompress(path, dst, progress)
            dst.truncate(done)
        part.replace(out)
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, zlib.error) as exc:
        part.unlink(missing_ok=True)
        raise DiskError(f"{path}: cannot decompress: {exc}",
                        hint="the download may be incomplete or damaged; download it again "
                        "and check its checksum") from exc
    except BaseException:
        part.unlink(missing_ok=True)  # Ctrl-C: no half-decompressed image left behind
        raise
    return out


def _decompress(path: Path, dst: IO[bytes], progress: Progress | None) -> int:
    stream, total, zf = _open_compressed(path)
    try:
        with stream:
            done = 0
            while True:
                stop.check()
                block = stream.read(CHUNK)
                if not block:
                    break
                # Leave holes for zeros: a 14 GB image that is mostly empty stays small.
                if block.count(0) == len(block):
                    dst.seek(len(block), os.SEEK_CUR)
                else:
                    dst.write(block)
                done += len(block)
                if progress:
                    progress(done, total or done)
        if total and done != total:
            raise EOFError(f"{done} of {total} bytes")
        return done
    finally:
        if zf is not None:
            zf.close()
