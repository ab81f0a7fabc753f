"""What a running board holds of its managed state, read over SSH in one round trip.

The board sends its files as a tar (types, modes, owners, link targets and contents in one
format every board has), and a few facts beside it: whether systemd and NetworkManager run,
which connection is active, which services are up. `MemFs` answers the model's reads
from that, like `Ext4` does for a card, so both writers start from the same parts.
"""

from __future__ import annotations

import base64
import binascii
import io
import tarfile
from dataclasses import dataclass, field
from importlib import resources

from fleetimg.errors import CommandError, FleetimgError
from fleetimg.inventory import Node
from fleetimg.nodestate.memfs import MemFs
from fleetimg.nodestate.spec import Inode, InodeKind
from fleetimg.remote import sh
from fleetimg.ssh import Ssh

_KINDS = {tarfile.REGTYPE: InodeKind.REGULAR, tarfile.AREGTYPE: InodeKind.REGULAR,
          tarfile.DIRTYPE: InodeKind.DIRECTORY, tarfile.SYMTYPE: InodeKind.SYMLINK}


@dataclass(frozen=True)
class BoardFacts:
    systemd: bool
    networkmanager: bool
    hostname: str
    running: frozenset[str]  # services active now (docker, k3s, ssh, ...)
    active: dict[str, str] = field(default_factory=dict)  # device -> active connection UUID
    network_try_pending: bool = False  # an earlier apply's network change is being tried
    pending: tuple[str, ...] = ()  # effects an earlier apply left for --restart


def read_script() -> str:
    return resources.files("fleetimg").joinpath("data/apply-read.sh").read_text()


def parse_read_output(node: Node, text: str, requested: tuple[str, ...]) -> \
        tuple[BoardFacts, MemFs]:
    """The facts and files from apply-read.sh's output."""
    kv: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            kv.setdefault(key, []).append(value.strip())
    if kv.get("read") != ["done"]:
        raise FleetimgError(f"{node.name}: reading the board's state did not finish",
                            hint="run `fleetimg nodes probe` to see whether the board answers")
    try:
        raw = base64.b64decode(kv.get("tar", [""])[0], validate=True)
    except binascii.Error as exc:
        raise FleetimgError(f"{node.name}: the board's files came back garbled: {exc}") from exc
    members: dict[str, tuple[Inode, bytes]] = {}
    if raw:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for m in tar.getmembers():
                path = "/" + m.name.strip("/")
                if path in members:
                    continue  # named twice: tar stores the repeat as a hard link to the first
                kind = _KINDS.get(m.type, InodeKind.OTHER)
                data = b""
                if kind is InodeKind.REGULAR:
                    f = tar.extractfile(m)
                    data = f.read() if f else b""
                members[path] = (Inode(
                    path=path, kind=kind, mode=m.mode & 0o7777, uid=m.uid, gid=m.gid,
                    size=m.size, link_target=m.linkname if kind is InodeKind.SYMLINK else None),
                    data)
    active = {}
    for entry in kv.get("active", []):
        uuid, _, device = entry.partition(":")
        if device:
            active[device] = uuid
    facts = BoardFacts(
        systemd=kv.get("systemd") == ["yes"],
        networkmanager=kv.get("networkmanager") == ["yes"],
        hostname=(kv.get("hostname") or [""])[0],
        running=frozenset(kv.get("running", [])),
        active=active,
        network_try_pending=kv.get("network_try") == ["pending"],
        pending=tuple(kv.get("pending", [])),
    )
    return facts, MemFs(members, requested)


def read_board(ssh: Ssh, node: Node, paths: tuple[str, ...]) -> tuple[BoardFacts, MemFs]:
    """Read `paths` (as root, through sudo) and the board's facts."""
    try:
        result = ssh.run(node, f"sudo -n sh -s -- {sh(*paths)}", input=read_script(),
                         timeout=120)
    except CommandError as exc:
        raise need_sudo(node, exc) from exc
    return parse_read_output(node, result.stdout, paths)


def need_sudo(node: Node, exc: CommandError) -> FleetimgError:
    """The error for a failed root command: sudo asking for a password is the usual one."""
    if "password is required" in exc.stderr or "a terminal is required" in exc.stderr:
        return FleetimgError(
            f"{node.name}: {node.user} cannot use sudo without a password there",
            hint=f"apply changes system files as root: add `{node.user} ALL=(ALL) NOPASSWD:ALL` "
            f"in /etc/sudoers.d/ on the board (cards written by fleetimg have it)")
    return exc
