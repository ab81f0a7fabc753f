"""What `apply` would change on one board: the overlay's parts compared with what it holds.

Each change names its concern, path and what it does (create, modify, owner, link,
remove), with a diff of text that is not secret, and the effect it needs to take hold
(reconnect the network, restart a service, reboot). Computed from a `MemFs` snapshot;
nothing here talks to a board.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from fleetimg.apply.snapshot import BoardFacts
from fleetimg.nodestate.memfs import MemFs
from fleetimg.nodestate.model import (
    DEFAULT_TARGET,
    NM_KEYFILE,
    NODE_PASSWORD,
    ZRAM_WANTS,
    Concern,
    Part,
)
from fleetimg.nodestate.spec import ChangeSet, DirSpec, FileSpec, InodeKind

DIFF_LINES = 40  # per file; a longer diff is cut with a note


class Action(str, Enum):
    CREATE = "create"
    MODIFY = "modify"
    OWNER = "owner"  # mode or owner only
    LINK = "link"
    REMOVE = "remove"
    RESET = "reset"  # regenerated on the board (machine-id, host keys)


class Effect(str, Enum):
    """What a change needs before it takes hold; `apply` does the ones marked `now` itself,
    the others only with --restart."""

    RECONNECT = "reconnect"  # NetworkManager activates the new profile, with a rollback
    HOSTNAME = "hostname"  # the running hostname is set
    SSH = "restart ssh"  # new host keys are served
    DOCKER = "restart docker"
    K3S = "restart k3s"
    SETTINGS = "power mode and swap"  # fleetimg-firstboot's settings, without growing APP
    ZRAM = "stop zram"
    REBOOT = "reboot"

    @property
    def now(self) -> bool:
        return self in (Effect.RECONNECT, Effect.HOSTNAME, Effect.SSH)


_EFFECTS = {
    NM_KEYFILE: Effect.RECONNECT,
    "/etc/hostname": Effect.HOSTNAME,
    "/etc/docker/daemon.json": Effect.DOCKER,
    "/etc/rancher/k3s/config.yaml": Effect.K3S,
    NODE_PASSWORD: Effect.K3S,
    "/etc/fleetimg/firstboot.conf": Effect.SETTINGS,
    ZRAM_WANTS: Effect.ZRAM,
    DEFAULT_TARGET: Effect.REBOOT,
}


@dataclass(frozen=True)
class Change:
    concern: Concern
    path: str
    action: Action
    detail: str = ""
    effect: Effect | None = None
    diff: tuple[str, ...] = ()  # unified diff; empty for secrets (files not world-readable)

    def to_dict(self) -> dict[str, object]:
        return {"concern": self.concern.value, "path": self.path, "action": self.action.value,
                "detail": self.detail, "effect": self.effect.value if self.effect else None}


@dataclass(frozen=True)
class PartPlan:
    concern: Concern
    changes: tuple[Change, ...]
    writes: ChangeSet  # the part's entries that differ from the board


def _is_secret(spec: FileSpec) -> bool:
    """Files others may not read hold secrets (keys, tokens, password hashes), except
    authorized_keys, which is private only so that nobody else can add a key to it."""
    return not spec.mode & 0o004 and not spec.path.endswith("/.ssh/authorized_keys")


def _file_change(concern: Concern, spec: FileSpec, fs: MemFs) -> Change | None:
    current = fs.stat(spec.path)
    effect = _EFFECTS.get(spec.path)
    if current is None or current.kind is not InodeKind.REGULAR:
        return Change(concern, spec.path, Action.CREATE, f"{len(spec.content)} bytes, "
                      f"0{spec.mode:o} {spec.uid}:{spec.gid}", effect,
                      () if _is_secret(spec) else _diff(spec.path, b"", spec.content))
    old = fs.read(spec.path) or b""
    if old != spec.content:
        if _is_secret(spec):
            return Change(concern, spec.path, Action.MODIFY, "content (secret: not shown)",
                          effect)
        lines = _diff(spec.path, old, spec.content)
        added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
        removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
        return Change(concern, spec.path, Action.MODIFY, f"+{added} -{removed} lines", effect,
                      lines)
    if (current.mode, current.uid, current.gid) != (spec.mode, spec.uid, spec.gid):
        return Change(concern, spec.path, Action.OWNER,
                      f"0{current.mode:o} {current.uid}:{current.gid} -> "
                      f"0{spec.mode:o} {spec.uid}:{spec.gid}", None)
    return None


def _diff(path: str, old: bytes, new: bytes) -> tuple[str, ...]:
    try:
        a, b = old.decode(), new.decode()
    except UnicodeDecodeError:
        return ()
    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), f"{path} (board)",
                                      f"{path} (inventory)", lineterm="", n=1))
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"... {len(lines) - DIFF_LINES} more diff lines"]
    return tuple(lines)


def plan_part(part: Part, fs: MemFs) -> PartPlan:
    """The changes that make the board hold `part`."""
    changes: list[Change] = []
    dirs: list[DirSpec] = []
    for d in part.dirs:
        current = fs.stat(d.path)
        if current is None:
            dirs.append(d)
            changes.append(Change(part.concern, d.path, Action.CREATE,
                                  f"directory 0{d.mode:o} {d.uid}:{d.gid}"))
        elif (current.mode, current.uid, current.gid) != (d.mode, d.uid, d.gid):
            dirs.append(d)
            changes.append(Change(part.concern, d.path, Action.OWNER,
                                  f"0{current.mode:o} {current.uid}:{current.gid} -> "
                                  f"0{d.mode:o} {d.uid}:{d.gid}"))
    files = []
    for f in part.files:
        change = _file_change(part.concern, f, fs)
        if change is not None:
            files.append(f)
            changes.append(change)
    links = []
    for s in part.symlinks:
        current = fs.stat(s.path)
        if current is None or current.link_target != s.target:
            links.append(s)
            changes.append(Change(part.concern, s.path, Action.LINK, f"-> {s.target}",
                                  _EFFECTS.get(s.path)))
    replaced = {f.path for f in part.files} | {s.path for s in part.symlinks}
    removes = [r for r in part.remove if r not in replaced and fs.stat(r) is not None]
    changes += [Change(part.concern, r, Action.REMOVE, "", _EFFECTS.get(r)) for r in removes]
    return PartPlan(part.concern, tuple(changes),
                    ChangeSet(files=tuple(files), dirs=tuple(dirs), symlinks=tuple(links),
                              remove=tuple(removes)))


def reset_changes() -> tuple[Change, ...]:
    """`--reset identity` on a running board: made anew there, never sent."""
    return (Change(Concern.IDENTITY, "/etc/machine-id", Action.RESET, "a new machine-id",
                   Effect.REBOOT),
            Change(Concern.IDENTITY, "/etc/ssh/ssh_host_*", Action.RESET,
                   "new SSH host keys (fleetimg's known_hosts learns them)", Effect.SSH))


def skipped_concerns(facts: BoardFacts) -> dict[Concern, str]:
    """Concerns that do not apply to this board, and why."""
    if facts.systemd:
        return {}
    why = "systemd does not run on this node (a container?)"
    return {Concern.BOOT: why, Concern.FIRSTBOOT: why}


def effects(changes: Iterable[Change]) -> list[Effect]:
    return list(dict.fromkeys(c.effect for c in changes if c.effect is not None))
