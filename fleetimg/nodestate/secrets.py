"""Secrets a card carries that live beside the inventory: the fleet-internal key pair and one
K3s node password per node.

Planning (and `--dry-run`) reads what exists and makes what is missing in memory only; the
write step creates the missing files (0600, the sudo user's) just before the first card is
written. So a dry run leaves nothing behind, and every card of one run gets the same key.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleetimg import newfile, private
from fleetimg.errors import DiskError
from fleetimg.inventory import INTERNAL_KEY_NAME, Fleet, Node, Runtime

# K3s keeps each agent's password and refuses a re-imaged node with a new one ("Node
# password rejected", k3s-io/k3s#802): one per node name, kept across re-flashes.
NODE_PASSWORD_DIR = "k3s-node-passwords"


@dataclass(frozen=True)
class PendingFile:
    """A secret file to create at write time (it did not exist when planning)."""

    path: Path
    content: bytes


@dataclass(frozen=True)
class CardSecrets:
    internal_private: bytes | None = None
    internal_public: str | None = None
    node_passwords: Mapping[str, str] = field(default_factory=dict)
    pending: tuple[PendingFile, ...] = ()


def internal_key_path(fleet: Fleet) -> Path:
    return fleet.base_dir / INTERNAL_KEY_NAME


def node_password_path(fleet: Fleet, node: Node) -> Path:
    return fleet.base_dir / NODE_PASSWORD_DIR / node.name


def read_secret(path: Path) -> bytes:
    """A secret file's content, never through a link: a link planted beside the inventory
    (k3s-node-passwords/node2 -> /etc/shadow) would otherwise put another file's content on
    every card."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        what = "a symbolic link" if path.is_symlink() else exc.strerror
        raise DiskError(f"{path}: cannot read it as a secret file ({what})",
                        hint=f"fleetimg keeps its own file there; look at it and remove it "
                        f"(`rm {path}`) to have a new one made") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DiskError(f"{path} is not a regular file",
                            hint=f"remove it (`rm -r {path}`) to have a new one made")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def card_secrets(fleet: Fleet, nodes: Iterable[Node]) -> CardSecrets:
    """What the cards of these nodes need, read from disk or made in memory. Writes nothing."""
    pending: list[PendingFile] = []
    private_key = public_key = None
    if fleet.sdcard.internal_ssh_key:
        path = internal_key_path(fleet)
        pub = path.with_name(path.name + ".pub")
        if os.path.lexists(path) and os.path.lexists(pub):
            private_key, public = read_secret(path), read_secret(pub)
        elif os.path.lexists(path) or os.path.lexists(pub):
            raise DiskError(f"only one half of the fleet-internal key pair exists ({path})",
                            hint=f"remove {path} and {pub} to make a new pair (then re-write "
                            "every card), or restore the missing half")
        else:
            private_key, public = private.keypair(f"fleetimg-{fleet.name}-internal")
            pending += [PendingFile(path, private_key), PendingFile(pub, public)]
        public_key = public.decode().strip()
    passwords: dict[str, str] = {}
    for node in nodes:
        if node.runtime is not Runtime.K3S:
            continue
        path = node_password_path(fleet, node)
        if os.path.lexists(path):
            passwords[node.name] = read_secret(path).decode(errors="replace").strip()
        else:
            passwords[node.name] = secrets.token_hex(16)
            pending.append(PendingFile(path, f"{passwords[node.name]}\n".encode()))
    return CardSecrets(private_key, public_key, passwords, tuple(pending))


def persist(found: CardSecrets) -> None:
    """Create the secret files planning made in memory; idempotent. A file that appeared
    meanwhile with other content (another run) stops us: cards must agree with the disk."""
    for item in found.pending:
        if os.path.lexists(item.path):
            if read_secret(item.path) != item.content:
                raise DiskError(f"{item.path} was created by another run while this one was "
                                "planning", hint="run the command again")
            continue
        item.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        newfile.hand_over(item.path.parent)
        try:
            newfile.write_new(item.path, item.content, private=True)
        except FileExistsError:
            if item.path.is_symlink() or read_secret(item.path) != item.content:
                raise DiskError(f"{item.path} was created by another run meanwhile",
                                hint="run the command again") from None
