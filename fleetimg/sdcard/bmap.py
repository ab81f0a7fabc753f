"""A `.bmap` file beside an image-file card: bmaptool's block map (format 2.0), so anyone
can flash the per-node image with `bmaptool copy` and write only its mapped blocks.

The mapped ranges are the ones fleetimg itself writes (`writer.plan_write`: every
partition but APP in full, APP's allocated blocks), read from the finished image, each with
its sha256 as bmaptool checks it. Format: bmaptool's BmapCreate.py
(github.com/yoctoproject/bmaptool).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fleetimg import newfile
from fleetimg.sdcard.writer import ALIGN, CHUNK, plan_write

BLOCK = ALIGN  # bmaptool's usual block size; every range is aligned to it
_ZERO = "0" * 64


def _range_sha256(fd: int, lo: int, hi: int) -> str:
    digest = hashlib.sha256()
    pos = lo
    while pos < hi:
        data = os.pread(fd, min(CHUNK, hi - pos), pos)
        if not data:
            raise OSError(f"short read at {pos}")
        digest.update(data)
        pos += len(data)
    return digest.hexdigest()


def bmap_text(image: Path) -> str:
    plan = plan_write(image)
    size = plan.image_bytes
    blocks = -(-size // BLOCK)
    mapped = 0
    lines = []
    fd = os.open(image, os.O_RDONLY)
    try:
        for lo, hi in plan.ranges:
            # The image's end need not fall on a block: its last block is partial.
            first, last = lo // BLOCK, (hi - 1) // BLOCK
            mapped += last - first + 1
            span = f"{first}" if first == last else f"{first}-{last}"
            lines.append(f'        <Range chksum="{_range_sha256(fd, lo, hi)}"> {span} '
                         "</Range>")
    finally:
        os.close(fd)
    body = "\n".join(lines)
    template = f"""<?xml version="1.0" ?>
<!-- Block map of a card image written by fleetimg: flash it with
     `bmaptool copy IMAGE DEVICE` (this file beside it) to write only these blocks. -->
<bmap version="2.0">
    <ImageSize> {size} </ImageSize>
    <BlockSize> {BLOCK} </BlockSize>
    <BlocksCount> {blocks} </BlocksCount>
    <MappedBlocksCount> {mapped} </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> {{checksum}} </BmapFileChecksum>
    <BlockMap>
{body}
    </BlockMap>
</bmap>
"""
    # bmaptool checks the file's own sha256 computed with this field all zeros.
    checksum = hashlib.sha256(template.replace("{checksum}", _ZERO).encode()).hexdigest()
    return template.replace("{checksum}", checksum)


def write_bmap(image: Path, out: Path) -> Path:
    """Write IMAGE's block map to OUT, a new file (created like the image: its owner, 0600;
    never through a link, see fleetimg.newfile)."""
    data = bmap_text(image).encode()
    fd = newfile.create(out)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return out
