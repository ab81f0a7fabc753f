"""Secrets a card carries that live beside the inventory: the fleet-internal key pair and one
K3s node password per node.

Planning (and `--dry-run`) reads what exists and makes what is missing in memory only; the
write step creates the missing files (0600, the sudo user's) just before the first card is
written. So a dry run leaves nothing behind, and every card of one run gets the same key.
"""

from __future__ import annotations

import secrets
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


def card_secrets(fleet: Fleet, nodes: Iterable[Node]) -> CardSecrets:
    """What the cards of these nodes need, read from disk or made in memory. Writes nothing."""
    pending: list[PendingFile] = []
    private_key = public_key = None
    if fleet.sdcard.internal_ssh_key:
        path = internal_key_path(fleet)
        pub = path.with_name(path.name + ".pub")
        if path.exists() and pub.exists():
            private_key, public = path.read_bytes(), pub.read_bytes()
        elif path.exists() or pub.exists():
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
        if path.exists():
            passwords[node.name] = path.read_text().strip()
        else:
            passwords[node.name] = secrets.token_hex(16)
            pending.append(PendingFile(path, f"{passwords[node.name]}\n".encode()))
    return CardSecrets(private_key, public_key, passwords, tuple(pending))


def persist(found: CardSecrets) -> None:
    """Create the secret files planning made in memory; idempotent. A file that appeared
    meanwhile with other content (another run) stops us: cards must agree with the disk."""
    for item in found.pending:
        if item.path.exists():
            if item.path.read_bytes() != item.content:
                raise DiskError(f"{item.path} was created by another run while this one was "
                                "planning", hint="run the command again")
            continue
        item.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        newfile.hand_over(item.path.parent)
        try:
            newfile.write_new(item.path, item.content, private=True)
        except FileExistsError:
            if item.path.is_symlink() or item.path.read_bytes() != item.content:
                raise DiskError(f"{item.path} was created by another run meanwhile",
                                hint="run the command again") from None
