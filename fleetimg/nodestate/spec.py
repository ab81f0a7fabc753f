"""The entries a node's desired state is made of, and a set of changes to a root filesystem.

The same records describe a card's APP partition (written through debugfs) and a running
board's files (written over SSH): `ChangeSet` is what either writer installs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from fleetimg.errors import DiskError

# What either writer accepts as a path: debugfs takes its requests as one command line, and
# the board writer passes paths to a shell script; nothing else is ever needed.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._@+:/-]*$")


class InodeKind(str, Enum):
    """An entry's type, as debugfs names it (`Type:`) and as a tar member maps to it."""

    REGULAR = "regular"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"  # devices, FIFOs, sockets: never written, reported when met

    @classmethod
    def parse(cls, name: str) -> InodeKind:
        try:
            return cls(name)
        except ValueError:
            return cls.OTHER


@dataclass(frozen=True, kw_only=True)
class Inode:
    path: str
    kind: InodeKind
    mode: int  # permission bits only
    uid: int
    gid: int
    size: int
    link_target: str | None = None


@dataclass(frozen=True)
class FileSpec:
    """One file to write: content, owner and permission bits."""

    path: str
    content: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class DirSpec:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class SymlinkSpec:
    path: str
    target: str


@dataclass(frozen=True, kw_only=True)
class ChangeSet:
    """Entries to install and paths to remove (a path both replaced and removed is replaced:
    the removal clears what stood there first). `notes` say what was left out and why."""

    files: tuple[FileSpec, ...] = ()
    dirs: tuple[DirSpec, ...] = ()
    symlinks: tuple[SymlinkSpec, ...] = ()
    remove: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs or self.symlinks or self.remove)

    @classmethod
    def merge(cls, sets: Iterable[ChangeSet]) -> ChangeSet:
        """One set holding all of `sets`, in order; a path removed twice is removed once."""
        sets = list(sets)
        return cls(files=tuple(f for s in sets for f in s.files),
                   dirs=tuple(d for s in sets for d in s.dirs),
                   symlinks=tuple(link for s in sets for link in s.symlinks),
                   remove=tuple(dict.fromkeys(r for s in sets for r in s.remove)),
                   notes=tuple(n for s in sets for n in s.notes))

    def summary(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = [
            {"path": d.path, "kind": "dir", "mode": f"0{d.mode:o}", "owner": f"{d.uid}:{d.gid}"}
            for d in self.dirs
        ]
        out += [{"path": f.path, "kind": "file", "mode": f"0{f.mode:o}",
                 "owner": f"{f.uid}:{f.gid}", "bytes": len(f.content)} for f in self.files]
        out += [{"path": s.path, "kind": "symlink", "target": s.target} for s in self.symlinks]
        replaced = {f.path for f in self.files} | {s.path for s in self.symlinks}
        out += [{"path": r, "kind": "removed"} for r in self.remove if r not in replaced]
        return out


def check_path(path: str) -> str:
    if not SAFE_PATH.match(path) or "//" in path or "/../" in path:
        raise DiskError(f"refusing unsafe path: {path!r}")
    return path
