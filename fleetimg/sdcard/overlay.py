"""The node's desired state (fleetimg.nodestate.model) written into a card's APP with
debugfs, and read back."""

from __future__ import annotations

from fleetimg.errors import DiskError
from fleetimg.nodestate.spec import ChangeSet, InodeKind
from fleetimg.sdcard.ext4 import Ext4


def apply_overlay(fs: Ext4, overlay: ChangeSet) -> None:
    fs.apply(files=overlay.files, dirs=overlay.dirs, symlinks=overlay.symlinks,
             remove=overlay.remove)


def verify_overlay(fs: Ext4, overlay: ChangeSet) -> None:
    """Read every written entry back: content, mode, owner, link target; then e2fsck -fn."""
    for f in overlay.files:
        inode = fs.stat(f.path)
        content = fs.read(f.path)
        if inode is None or content != f.content:
            raise DiskError(f"read-back of {f.path} differs from what was written")
        if (inode.mode, inode.uid, inode.gid) != (f.mode, f.uid, f.gid):
            raise DiskError(f"{f.path}: mode/owner is 0{inode.mode:o} {inode.uid}:{inode.gid}, "
                            f"expected 0{f.mode:o} {f.uid}:{f.gid}")
    for d in overlay.dirs:
        inode = fs.stat(d.path)
        if inode is None or inode.kind is not InodeKind.DIRECTORY:
            raise DiskError(f"read-back: directory {d.path} missing")
    for s in overlay.symlinks:
        inode = fs.stat(s.path)
        if inode is None or inode.link_target != s.target:
            raise DiskError(f"read-back: {s.path} does not point to {s.target}")
    removed = {f.path for f in overlay.files} | {s.path for s in overlay.symlinks}
    for path in overlay.remove:
        if path not in removed and fs.stat(path) is not None:
            raise DiskError(f"read-back: {path} still exists")
    fs.fsck()
