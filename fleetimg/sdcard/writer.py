"""Block-mapped writing and read-back verification of an SD card image.

Only what the image holds is written: every partition in full except the ext4 APP root, of
which only allocated blocks are copied (as bmaptool and Etcher do). Free blocks of the root
filesystem carry no data, so what the card held there before does not matter. The same
ranges are hashed on the way in and read back from the target to verify.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetimg import newfile, stop
from fleetimg.errors import DiskError
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.gpt import PartitionTable, read_table

CHUNK = 4 << 20
ALIGN = 4096
Progress = Callable[[int], None]  # bytes just done


@dataclass(frozen=True)
class WritePlan:
    source: Path
    table: PartitionTable
    ranges: tuple[tuple[int, int], ...]  # byte ranges to copy, sorted, merged, aligned
    image_bytes: int  # how many bytes of card the image spans

    @property
    def mapped_bytes(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)


def merge(ranges: list[tuple[int, int]], limit: int) -> tuple[tuple[int, int], ...]:
    """Sort, align outward to ALIGN and merge touching ranges, clipped to `limit`."""
    aligned = sorted(
        (lo - lo % ALIGN, min(limit, -(-hi // ALIGN) * ALIGN)) for lo, hi in ranges if hi > lo
    )
    out: list[tuple[int, int]] = []
    for lo, hi in aligned:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def plan_write(source: Path) -> WritePlan:
    fd = os.open(source, os.O_RDONLY)
    try:
        table = read_table(fd, str(source))
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    end = table.end
    if size < end:
        raise DiskError(f"{source}: image is truncated ({size} bytes, GPT says {end})",
                        hint="the download or decompression was cut short")
    app = table.by_name("APP")
    if app is None:
        raise DiskError(f"{source}: no APP partition: not a Jetson SD card image")
    ranges: list[tuple[int, int]] = [(0, app.offset)]
    for lo, hi in Ext4(source, app.offset).allocated_ranges():
        ranges.append((app.offset + lo, app.offset + min(hi, app.size)))
    ranges.append((app.offset + app.size, end))  # anything after APP, and the backup GPT
    for part in table.partitions:
        if part is not app:
            ranges.append((part.offset, part.offset + part.size))
    return WritePlan(source, table, merge(ranges, end), end)


def _iter_chunks(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in ranges:
        pos = lo
        while pos < hi:
            n = min(CHUNK, hi - pos)
            out.append((pos, n))
            pos += n
    return out


def open_file_target(path: Path, size: int) -> int:
    """An image file target: a new file (never through a link: fleetimg.newfile), created
    sparse at the image's size and written in place. 0600: the card's overlay holds fleet
    secrets (internal key, K3s token, password hash)."""
    fd = newfile.create(path)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def _read_ahead(path: Path, chunks: list[tuple[int, int]],
                out: queue.Queue[tuple[int, bytes] | BaseException | None],
                cancelled: threading.Event) -> None:
    """Reader thread: the source is read while the previous chunk is being written."""
    try:
        src = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            for offset, n in chunks:
                if cancelled.is_set():
                    return
                data = os.pread(src, n, offset)
                if len(data) != n:
                    raise DiskError(f"{path}: short read at {offset}")
                out.put((offset, data))
        finally:
            os.close(src)
        out.put(None)
    except BaseException as exc:
        out.put(exc)


def write_mapped(plan: WritePlan, target_fd: int, progress: Progress | None = None) -> str:
    """Copy the mapped ranges; returns the sha256 of everything written, in order.

    Checks for a stop before every chunk: Ctrl-C ends a card write within one chunk."""
    digest = hashlib.sha256()
    chunks: queue.Queue[tuple[int, bytes] | BaseException | None] = queue.Queue(maxsize=8)
    cancelled = threading.Event()
    reader = threading.Thread(target=_read_ahead, args=(plan.source, _iter_chunks(plan.ranges),
                                                        chunks, cancelled), daemon=True)
    reader.start()
    try:
        while True:
            stop.check()
            item = chunks.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            offset, data = item
            digest.update(data)
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.pwrite(target_fd, view[written:], offset + written)
            if progress:
                progress(len(data))
    finally:
        # On any early exit the reader may be blocked on a full queue: release it.
        cancelled.set()
        while reader.is_alive():
            with contextlib.suppress(queue.Empty):
                chunks.get(timeout=0.05)
        reader.join()
    os.fsync(target_fd)
    return digest.hexdigest()


def _open_uncached(path: Path) -> int:
    """Open for reading around the page cache (O_DIRECT) where the filesystem allows it."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return fd


def verify_mapped(plan: WritePlan, target: Path, expected: str,
                  progress: Progress | None = None) -> None:
    """Read the mapped ranges back from the medium (not the page cache) and compare."""
    fd = _open_uncached(target)
    digest = hashlib.sha256()
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT requires
    try:
        for offset, n in _iter_chunks(plan.ranges):
            stop.check()
            view = memoryview(buf)[:n]
            if os.preadv(fd, [view], offset) != n:
                raise DiskError(f"{target}: short read at {offset} while verifying")
            digest.update(view)
            view.release()
            if progress:
                progress(n)
    finally:
        buf.close()
        os.close(fd)
    if digest.hexdigest() != expected:
        raise DiskError("verification failed: what was read back differs from the image",
                        hint="the card may be failing or counterfeit; try another card")
