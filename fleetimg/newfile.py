"""Files fleetimg creates next to a path the user named: made new, never through a link.

A card's `NAME.part`, its `NAME.bmap.part`, the temporary behind an atomic write: each sits
in a directory the user chose, perhaps one other users can write to. Opening such a name
with O_CREAT|O_TRUNC follows a link planted there and truncates whatever it points to (the
source image, /etc/shadow when run as root). So every such file is created with
O_CREAT|O_EXCL|O_NOFOLLOW: it is a new inode or the open fails. A leftover of an earlier,
killed run is removed only when it looks like one of ours (a plain file with a single link,
owned by us, private); anything else is refused, and the user decides.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fleetimg.errors import DiskError

# Files that hold fleet secrets (card images carry the fleet-internal private key, the K3s
# token and the password hash; key pairs, tokens, per-node K3s passwords) are created 0600
# whatever the umask, and under sudo they belong to the user who ran sudo, not root: that
# user must be able to re-run fleetimg without sudo and read them, and no other local user
# may (debugfs reads a card image without mounting it).
PRIVATE_MODE = 0o600

_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# linux/fs.h: FS_IOC_GETFLAGS and the inode flags that make a rename onto a file fail.
_FS_IOC_GETFLAGS = 0x80086601
_IMMUTABLE = 0x10
_APPEND_ONLY = 0x20


def invoking_user() -> tuple[int, int] | None:
    """(uid, gid) of the user behind sudo, or None when not running as root under sudo."""
    if os.geteuid() != 0:
        return None
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0:
        return None
    return int(uid), int(gid)


def secure_fd(fd: int) -> None:
    """Make an open file 0600 and, under sudo, the invoking user's."""
    os.fchmod(fd, PRIVATE_MODE)
    owner = invoking_user()
    if owner is not None:
        os.fchown(fd, *owner)


def hand_over(path: Path) -> None:
    """Under sudo, give a non-secret file or directory we created to the invoking user."""
    owner = invoking_user()
    if owner is not None:
        with contextlib.suppress(OSError):
            os.chown(path, *owner, follow_symlinks=False)


def create(path: Path) -> int:
    """A new private file at `path` (0600, the invoking user's), open read-write.

    Raises DiskError if anything (a file, a symlink, a dangling symlink) is there already."""
    try:
        fd = os.open(path, os.O_RDWR | _NEW, PRIVATE_MODE)
    except FileExistsError as exc:
        raise DiskError(f"{path} appeared while fleetimg was about to create it",
                        hint="another fleetimg may be writing the same file; "
                        "wait for it, or remove it and run again") from exc
    except OSError as exc:
        raise DiskError(f"cannot create {path}: {exc.strerror}",
                        hint=f"check that {path.parent} is writable") from exc
    try:
        secure_fd(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


def _ours(st: os.stat_result) -> bool:
    owners = {os.geteuid()}
    if (user := invoking_user()) is not None:
        owners.add(user[0])
    return (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid in owners
            and stat.S_IMODE(st.st_mode) & 0o077 == 0)


def check_leftover(path: Path) -> bool:
    """Whether `path` holds a leftover of an earlier run that may be removed (True), or
    nothing (False). Raises DiskError for anything else: a symlink, a hard link, a
    directory, another user's or a world-readable file. Looks only; removes nothing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if _ours(st):
        return True
    if stat.S_ISLNK(st.st_mode):
        what = f"a symbolic link to {os.readlink(path)}"
    elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        what = f"a hard link ({st.st_nlink} names for one file)"
    elif not stat.S_ISREG(st.st_mode):
        what = "not a regular file"
    else:
        what = "a file fleetimg did not leave (another owner, or readable by others)"
    raise DiskError(f"{path} is in the way: {what}",
                    hint=f"fleetimg writes there while it works; look at it, remove it "
                    f"(`rm {path}`) and run again")


def remove_leftover(path: Path) -> None:
    """Remove a leftover of an earlier run (see check_leftover), never through a link."""
    if check_leftover(path):
        os.unlink(path)  # unlink removes the name itself, whatever it is now


def same_inode(fd: int, others: Iterable[Path]) -> Path | None:
    """Which of `others` is the very file open as `fd` (by device and inode), if any."""
    st = os.fstat(fd)
    for other in others:
        try:
            o = os.stat(other)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            return other
    return None


def check_replaceable(target: Path) -> None:
    """Refuse, before any work, a target that the final rename could not replace: a
    directory that is not writable, or an existing file marked immutable or append-only."""
    parent = target.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiskError(f"cannot write in {parent}",
                        hint="choose a directory you can write to, or fix its permissions")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # nothing there, or a link: the rename replaces the name itself
    try:
        buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0))
        flags = struct.unpack("l", buf)[0]
    except OSError:
        flags = 0  # a filesystem without inode flags
    finally:
        os.close(fd)
    if flags & (_IMMUTABLE | _APPEND_ONLY):
        raise DiskError(f"{target} is marked immutable or append-only and cannot be replaced",
                        hint=f"`chattr -ia {target}` if it should be, or name a new file")


def _staged(path: Path, data: bytes, private: bool) -> Path:
    """`data` in a fresh temporary beside `path` (random name, O_EXCL), synced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if private:
            secure_fd(fd)
        else:
            os.fchmod(fd, 0o666 & ~_umask())
            hand_over(Path(tmp))
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Put `data` at `path` whole or not at all: staged beside it, then renamed over
    `path`. A link at `path` is replaced, never followed. Nothing is left on failure."""
    tmp = _staged(path, data, private)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_new(path: Path, data: bytes, *, private: bool = False) -> None:
    """Like write_atomic, but only where nothing is: FileExistsError if something (even a
    dangling link) holds the name. link() gives the whole file its name at once."""
    tmp = _staged(path, data, private)
    try:
        os.link(tmp, path, follow_symlinks=False)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _umask() -> int:
    """This process's umask, read without setting it (os.umask would race other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022
