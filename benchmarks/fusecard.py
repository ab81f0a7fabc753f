#!/usr/bin/env python3
"""A file that writes and reads at an SD card's rate: one FUSE file over a sparse backing
file, each write and read held back to a byte rate (a token bucket).

These machines have no blkio cgroup, device-mapper (dm-delay) or nbd to slow a device
down, but /dev/fuse works: a loop device over this file is a block device that writes at
the card's speed (the benchmark's "card").

    python benchmarks/fusecard.py MOUNTPOINT BACKING SIZE WRITE_MBPS READ_MBPS

Runs in the foreground until unmounted (`umount MOUNTPOINT`). Needs mfusepy and libfuse3
(the `bench` extra and `apt-get install fuse3`).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from typing import Any

import mfusepy as fuse

NAME = "card"


class Throttle:
    """Holds each transfer back until the rate allows it: a card's throughput, not its
    latency (writes are acknowledged at the pace the card would take them)."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self.free_at = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.free_at = max(self.free_at, now) + n / self.rate
            wait = self.free_at - now
        if wait > 0:
            time.sleep(wait)


class CardFs(fuse.Operations):  # type: ignore[misc]
    use_ns = True  # times in nanoseconds (mfusepy: the float form is deprecated)
    def __init__(self, backing: str, size: int, write_rate: float, read_rate: float) -> None:
        self.fd = os.open(backing, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, size)
        self.size = size
        self.writes, self.reads = Throttle(write_rate), Throttle(read_rate)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        now = time.time_ns()
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_ctime": now,
                    "st_mtime": now, "st_atime": now}
        if path == f"/{NAME}":
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": self.size,
                    "st_ctime": now, "st_mtime": now, "st_atime": now}
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", NAME]

    def open(self, path: str, flags: int) -> int:
        if path != f"/{NAME}":
            raise fuse.FuseOSError(errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        self.reads.take(size)
        return os.pread(self.fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        if offset + len(data) > self.size:
            raise fuse.FuseOSError(errno.ENOSPC)
        self.writes.take(len(data))
        return os.pwrite(self.fd, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return 0  # a card's size is fixed

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        return 0

    def flush(self, path: str, fh: Any) -> int:
        return 0


def main() -> int:
    mountpoint, backing, size, write_mbps, read_mbps = sys.argv[1:6]
    fs = CardFs(backing, int(size), float(write_mbps) * 1e6, float(read_mbps) * 1e6)
    # direct_io: every write reaches the throttle now, not when the page cache flushes.
    fuse.FUSE(fs, mountpoint, foreground=True, direct_io=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
