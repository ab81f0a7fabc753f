"""Edit and inspect an ext4 filesystem inside a disk image or on a device, without mounting.

Everything goes through debugfs/dumpe2fs/e2fsck with the `PATH?offset=BYTES` syntax of
e2fsprogs' unix I/O manager. Traps (e2fsprogs' debugfs(8)): debugfs exits 0 even when a
command fails, so stderr is read; `write` refuses an existing file, so files are removed
first; new files are root-owned, so every write is followed by explicit `sif` calls.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from fleetimg import programs
from fleetimg.errors import DiskError
from fleetimg.nodestate.spec import (
    SAFE_PATH,
    DirSpec,
    FileSpec,
    Inode,
    InodeKind,
    SymlinkSpec,
    check_path,
)

_BANNER = re.compile(r"^debugfs \d+\.\d+")
_KINDS = {0o100000: InodeKind.REGULAR, 0o040000: InodeKind.DIRECTORY,
          0o120000: InodeKind.SYMLINK}


def parse_stat(path: str, text: str) -> Inode | None:
    """Parse `debugfs -R "stat PATH"` output."""
    m = re.search(r"Type:\s+(\S+)\s+Mode:\s+([0-7]+)", text)
    if m is None:
        return None
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size:\s+(\d+)", text)
    if owner is None:
        return None
    link = re.search(r'Fast link dest:\s+"(.*)"', text)
    return Inode(
        path=path, kind=InodeKind.parse(m[1]), mode=int(m[2], 8) & 0o7777,
        uid=int(owner[1]), gid=int(owner[2]), size=int(owner[3]),
        link_target=link[1] if link else None,
    )


def parse_free_blocks(text: str) -> tuple[int, int, int, list[tuple[int, int]]]:
    """From dumpe2fs output: (block size, first data block, block count, free ranges)."""
    def field(name: str) -> int:
        m = re.search(rf"^{name}:\s+(\d+)", text, re.MULTILINE)
        if m is None:
            raise DiskError(f"dumpe2fs output lacks {name!r}")
        return int(m[1])

    free: list[tuple[int, int]] = []
    # A full group prints an empty list: stay on the line ([ \t], not \s).
    for line in re.findall(r"^[ \t]+Free blocks:[ \t]*(.*)$", text, re.MULTILINE):
        for part in line.split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            free.append((int(lo), int(hi or lo) + 1))
    return field("Block size"), field("First block"), field("Block count"), sorted(free)


class Ext4:
    """An ext4 filesystem at a byte offset inside an image file or block device."""

    def __init__(self, device: Path, offset: int) -> None:
        self.device = device
        self.offset = offset

    @property
    def spec(self) -> str:
        return f"{self.device}?offset={self.offset}"

    def _debugfs(self, request: str, *, write: bool = False) -> tuple[str, list[str]]:
        argv = ["debugfs", *(["-w"] if write else []), "-R", request, self.spec]
        result = programs.run(argv, check=False)
        errors = [ln for ln in result.stderr.splitlines() if ln.strip() and not _BANNER.match(ln)]
        if result.returncode != 0:
            raise DiskError(f"debugfs failed on {self.spec}: {' / '.join(errors[-2:])}")
        return result.stdout, errors

    def stat(self, path: str) -> Inode | None:
        out, errors = self._debugfs(f'stat "{check_path(path)}"')
        if any("File not found" in e for e in errors):
            return None
        if errors:
            raise DiskError(f"debugfs stat {path}: {errors[-1]}")
        return parse_stat(path, out)

    def read(self, path: str) -> bytes | None:
        """File content, or None when the path does not exist."""
        if self.stat(path) is None:
            return None
        argv = ["debugfs", "-R", f'cat "{check_path(path)}"', self.spec]
        result = programs.run(argv, check=False)
        return result.stdout.encode("utf-8", errors="surrogateescape")

    def read_text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode(errors="replace")

    def listdir(self, path: str) -> list[str]:
        return [name for name, _ in self.entries(path)]

    def entries(self, path: str) -> list[tuple[str, InodeKind]]:
        """(name, kind) of a directory's entries."""
        out, errors = self._debugfs(f'ls -p "{check_path(path)}"')
        if errors:
            return []
        found: list[tuple[str, InodeKind]] = []
        for line in out.splitlines():
            fields = line.strip().strip("/").split("/")
            if len(fields) >= 5 and fields[4] not in (".", ".."):
                found.append((fields[4], _KINDS.get(int(fields[1], 8) & 0o170000,
                                                 InodeKind.OTHER)))
        return found

    def walk(self, top: str) -> list[tuple[str, InodeKind]]:
        """(path, kind) of everything under `top`, parents before children."""
        out: list[tuple[str, InodeKind]] = []
        for name, kind in sorted(self.entries(top)):
            path = f"{top.rstrip('/')}/{name}"
            out.append((path, kind))
            if kind == "directory":
                out += self.walk(path)
        return out

    def apply(
        self,
        files: Sequence[FileSpec] = (),
        dirs: Sequence[DirSpec] = (),
        symlinks: Sequence[SymlinkSpec] = (),
        remove: Iterable[str] = (),
    ) -> None:
        """Write everything in one debugfs session; any error message fails the whole call."""
        commands: list[str] = []
        wanted = {d.path: d for d in dirs}
        # Like mkdir -p: every missing ancestor of what is written is created (root-owned,
        # 0755); a minimal root filesystem may lack /usr/local or /etc/rancher.
        written = [*(f.path for f in files), *(s.path for s in symlinks), *wanted]
        for path in written:
            parent = str(Path(path).parent)
            while parent != "/" and parent not in wanted:
                wanted[parent] = DirSpec(parent)
                parent = str(Path(parent).parent)
        with tempfile.TemporaryDirectory(prefix="fleetimg-overlay-") as tmp:
            for d in sorted(wanted.values(), key=lambda d: d.path.count("/")):
                if self.stat(d.path) is None:
                    commands.append(f'mkdir "{check_path(d.path)}"')
                elif d.path not in {x.path for x in dirs}:
                    continue  # an existing ancestor keeps its owner and mode
                commands += self._owner(d.path, 0o040000 | d.mode, d.uid, d.gid)
            existing = [p for p in {*remove, *(f.path for f in files),
                                    *(s.path for s in symlinks)} if self.stat(p) is not None]
            for path in sorted(existing):
                commands.append(f'rm "{check_path(path)}"')
            for i, f in enumerate(files):
                local = Path(tmp) / f"f{i}"
                local.write_bytes(f.content)
                commands.append(f'write "{local}" "{check_path(f.path)}"')
                commands += self._owner(f.path, 0o100000 | f.mode, f.uid, f.gid)
            for s in symlinks:
                if not SAFE_PATH.match(s.target):
                    raise DiskError(f"refusing unsafe symlink target {s.target!r}")
                commands.append(f'symlink "{check_path(s.path)}" "{s.target}"')
            if not commands:
                return
            script = Path(tmp) / "commands"
            script.write_text("\n".join(commands) + "\n")
            result = programs.run(["debugfs", "-w", "-f", str(script), self.spec], check=False)
        errors = [ln for ln in result.stderr.splitlines() if ln.strip() and not _BANNER.match(ln)]
        if result.returncode != 0 or errors:
            raise DiskError(
                f"writing the overlay with debugfs failed: {' / '.join(errors[-3:])}",
                hint="the filesystem may be damaged; check it with "
                f"`e2fsck -fn '{self.spec}'`",
            )

    @staticmethod
    def _owner(path: str, mode: int, uid: int, gid: int) -> list[str]:
        p = check_path(path)
        return [f'sif "{p}" mode 0{mode:o}', f'sif "{p}" uid {uid}', f'sif "{p}" gid {gid}']

    def allocated_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges (relative to the filesystem start) that hold allocated blocks."""
        result = programs.run(["dumpe2fs", self.spec])
        block, first, count, free = parse_free_blocks(result.stdout)
        ranges: list[tuple[int, int]] = []
        pos = 0
        for lo, hi in free:
            if lo > pos:
                ranges.append((pos, lo))
            pos = max(pos, hi)
        if pos < count:
            ranges.append((pos, count))
        del first  # block 0 (boot block / superblock) is never free, so it is in range
        return [(lo * block, hi * block) for lo, hi in ranges]

    def fsck(self) -> None:
        """`e2fsck -fn`: read-only full check; raises with its findings if not clean."""
        result = programs.run(["e2fsck", "-fn", self.spec], check=False)
        if result.returncode != 0:
            lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
            raise DiskError(
                f"e2fsck found problems in {self.spec}: {' / '.join(lines[-4:])}",
                hint=f"inspect with `e2fsck -fn '{self.spec}'`",
            )
