"""Read a GPT partition table from a disk image or block device.

Jetson SD card images are GPT with APP (the ext4 root) as partition 1, found by its
PARTLABEL; docs/first-boot.md.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from fleetimg.errors import DiskError

SECTOR = 512


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type_guid: str
    unique_guid: str
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class PartitionTable:
    disk_guid: str
    partitions: tuple[Partition, ...]
    last_usable_lba: int
    backup_lba: int

    def by_name(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    @property
    def end(self) -> int:
        """Bytes the image needs on a card: up to and including the backup GPT header."""
        return (self.backup_lba + 1) * SECTOR


def read_table_file(path: Path) -> PartitionTable:
    """The primary GPT of an image file (or device) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_table(fd, str(path))
    finally:
        os.close(fd)


def read_table(fd: int, where: str) -> PartitionTable:
    """Parse the primary GPT at LBA 1 of an open file or device."""
    header = os.pread(fd, SECTOR, SECTOR)
    if len(header) < 92 or header[:8] != b"EFI PART":
        raise DiskError(
            f"{where}: no GPT partition table (not a Jetson SD card image?)",
            hint="NVIDIA's SD card images are GPT with an APP partition; check --image",
        )
    (hsize, hcrc) = struct.unpack_from("<II", header, 12)
    check = bytearray(header[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(check)) != hcrc:
        raise DiskError(f"{where}: GPT header checksum mismatch (image truncated or corrupt?)")
    (_current, backup, _first_usable, last_usable) = struct.unpack_from("<QQQQ", header, 24)
    disk_guid = str(uuid.UUID(bytes_le=header[56:72]))
    (entries_lba, count, entry_size, entries_crc) = struct.unpack_from("<QIII", header, 72)
    raw = os.pread(fd, count * entry_size, entries_lba * SECTOR)
    if len(raw) < count * entry_size or zlib.crc32(raw) != entries_crc:
        raise DiskError(f"{where}: GPT partition entries damaged (checksum mismatch)")
    parts = []
    for i in range(count):
        entry = raw[i * entry_size:(i + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[0:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le").rstrip("\0")
        parts.append(
            Partition(
                number=i + 1, name=name, type_guid=str(type_guid),
                unique_guid=str(uuid.UUID(bytes_le=entry[16:32])),
                first_lba=first, last_lba=last,
            )
        )
    return PartitionTable(disk_guid, tuple(parts), last_usable, backup)
