"""A root filesystem held in memory: the paths read from a running board, or a test's table.

It answers the desired-state model's reads (it is a `RootFs`, like `sdcard.ext4.Ext4` for a
card). It knows which paths were asked for: a read outside them is a fleetimg bug (the
model read a path its concern does not declare), not an absent file, and raises."""

from __future__ import annotations

from fleetimg.errors import FleetimgError
from fleetimg.nodestate.spec import Inode, InodeKind


class MemFs:
    """A read-only view of `members` (path -> inode and content) that was asked for the
    paths in `requested` ("r:DIR" for a whole tree)."""

    def __init__(self, members: dict[str, tuple[Inode, bytes]], requested: tuple[str, ...]):
        self._members = members
        self._exact = {p for p in requested if not p.startswith("r:")}
        self._trees = tuple(p[2:].rstrip("/") + "/" for p in requested if p.startswith("r:"))

    def covers(self, path: str) -> bool:
        if path in self._exact or any(path.startswith(t) or path + "/" == t
                                      for t in self._trees):
            return True
        # Under a requested directory that is absent, everything is known to be absent.
        return any(path.startswith(p.rstrip("/") + "/") and p not in self._members
                   for p in self._exact)

    def _check(self, path: str) -> None:
        if not self.covers(path):
            raise FleetimgError(f"internal: {path} is outside the paths read",
                                hint="this is a fleetimg bug: the concern that reads it must "
                                "declare it (fleetimg/nodestate/model.py, read_set)")

    def stat(self, path: str) -> Inode | None:
        self._check(path)
        found = self._members.get(path)
        return found[0] if found else None

    def read(self, path: str) -> bytes | None:
        self._check(path)
        found = self._members.get(path)
        if found is None or found[0].kind is not InodeKind.REGULAR:
            return None
        return found[1]

    def read_text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode(errors="replace")

    def listdir(self, path: str) -> list[str]:
        self._check(path + "/x")
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):] for p in self._members
                       if p.startswith(prefix) and "/" not in p[len(prefix):]})

    def walk(self, top: str) -> list[tuple[str, InodeKind]]:
        self._check(top + "/x")
        prefix = top.rstrip("/") + "/"
        return [(p, self._members[p][0].kind) for p in sorted(self._members)
                if p.startswith(prefix)]


