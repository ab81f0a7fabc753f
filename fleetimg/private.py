"""Files that hold fleet secrets: card images (they carry the fleet-internal private key,
the K3s token and the password hash), key pairs, tokens, per-node K3s passwords.

They are created 0600 whatever the umask, and under sudo they belong to the user who ran
sudo, not root: that user must be able to re-run fleetimg without sudo and read them, and no
other local user may (debugfs reads a card image without mounting it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from fleetimg import run as runmod

PRIVATE_MODE = 0o600


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


def secure(path: Path) -> None:
    """The same for a file some other program created (ssh-keygen, k3s)."""
    os.chmod(path, PRIVATE_MODE, follow_symlinks=False)
    owner = invoking_user()
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)


def hand_over(path: Path) -> None:
    """Under sudo, give a non-secret file or directory we created to the invoking user."""
    owner = invoking_user()
    if owner is not None:
        with contextlib.suppress(OSError):
            os.chown(path, *owner, follow_symlinks=False)


def open_private(path: Path, flags: int) -> int:
    """os.open for a secret file: created 0600 (never briefly wider), then secured."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        secure_fd(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically: a 0600 temporary beside it, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keypair(comment: str) -> tuple[bytes, bytes]:
    """A new ed25519 key pair without passphrase (machines use it), in memory:
    (private key, public key line)."""
    with tempfile.TemporaryDirectory(prefix="fleetimg-key-") as tmp:
        key = Path(tmp) / "key"
        runmod.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(key)])
        return key.read_bytes(), key.with_name("key.pub").read_bytes()


def new_keypair(path: Path, comment: str) -> None:
    """A key pair at `path` and `path.pub`, unless it exists: the private half 0600 and,
    like the public half, the invoking user's."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    private_key, public_key = keypair(comment)
    write_private(path, private_key)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(public_key)
    hand_over(pub)
