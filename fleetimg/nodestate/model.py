"""A node's desired state: everything that turns NVIDIA's image into a headless, reachable,
uniquely named node, one part per concern. `fleetimg sdcard` writes it into a card's APP
(sdcard/overlay.py), `fleetimg apply` onto a running board (apply/).

What NVIDIA's l4t_create_default_user.sh does is reproduced (user, groups, oem-config
skipped through the default.target link and /etc/nv/nvautoconfig) while /etc/nv/nvfirstboot
is kept, so the board's own once-per-board setup (nvpmodel, SSH host keys, display manager)
still runs on the real board.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from string import Template
from typing import Protocol

from fleetimg.errors import DiskError, UsageError
from fleetimg.inventory import Fleet, Node, Role, Runtime, SdcardSettings
from fleetimg.l4t import L4TRelease
from fleetimg.nodestate.secrets import CardSecrets
from fleetimg.nodestate.spec import ChangeSet, DirSpec, FileSpec, Inode, InodeKind, SymlinkSpec

DEFAULT_TARGET = "/etc/systemd/system/default.target"
NM_DIR = "/etc/NetworkManager/system-connections"
ZRAM_WANTS = "/etc/systemd/system/multi-user.target.wants/nvzramconfig.service"
NODE_PASSWORD = "/etc/rancher/node/password"
# Highest power mode names, best first: Super Orins have MAXN_SUPER, older modules MAXN.
MAX_POWER_MODES = ("MAXN_SUPER", "MAXN")
FIRSTBOOT_UNIT = "/etc/systemd/system/fleetimg-firstboot.service"
FIRSTBOOT_DONE = "/etc/fleetimg/firstboot.done"
FIRSTBOOT_WANTS = "/etc/systemd/system/multi-user.target.wants/fleetimg-firstboot.service"
# What a K3s agent keeps of its identity besides the node password.
K3S_AGENT_CERTS = ("/var/lib/rancher/k3s/agent/client-kubelet.crt",
                   "/var/lib/rancher/k3s/agent/serving-kubelet.crt")
NM_KEYFILE = f"{NM_DIR}/fleetimg-wired.nmconnection"
# A DHCP node's own /etc/hosts line, rewritten with the leased address on every lease.
NM_DISPATCH_HOSTS = "/etc/NetworkManager/dispatcher.d/50-fleetimg-dhcp-hosts"
DHCP_HOSTS_MARK = "# fleetimg: this node's leased address"
# Present where avahi-daemon is installed (Ubuntu desktop, so NVIDIA's desktop image):
# it answers multicast DNS for NAME.local.
AVAHI_CONF = "/etc/avahi/avahi-daemon.conf"
# The keys fleetimg manages sit between these lines of authorized_keys; the user's own keys
# outside them are never touched (sshd ignores lines starting with #).
KEYS_BEGIN = "# BEGIN fleetimg: keys from the fleet inventory (edit fleet.toml, not these lines)"
KEYS_END = "# END fleetimg"


class RootFs(Protocol):
    """What the model reads of a root filesystem: a card's APP through debugfs
    (`sdcard.ext4.Ext4`) or a running board's files fetched over SSH (`memfs.MemFs`)."""

    def stat(self, path: str) -> Inode | None: ...

    def read(self, path: str) -> bytes | None: ...

    def read_text(self, path: str) -> str | None: ...

    def listdir(self, path: str) -> list[str]: ...

    def walk(self, top: str) -> list[tuple[str, InodeKind]]: ...


def _template(name: str) -> Template:
    return Template(resources.files("fleetimg.overlays").joinpath(name).read_text())


def _resource(name: str) -> bytes:
    return resources.files("fleetimg.overlays").joinpath(name).read_bytes()


@dataclass
class _Accounts:
    passwd: list[list[str]]
    shadow: list[list[str]]
    group: list[list[str]]
    gshadow: list[list[str]]

    @staticmethod
    def parse(text: str | None) -> list[list[str]]:
        return [ln.split(":") for ln in (text or "").splitlines() if ln.strip()]

    @staticmethod
    def render(rows: list[list[str]]) -> bytes:
        return ("\n".join(":".join(r) for r in rows) + "\n").encode()


def touches_nvautoconfig(release: L4TRelease) -> bool:
    """Whether the card gets /etc/nv/nvautoconfig, as NVIDIA's own default-user script
    leaves it: R36 touches it; R32's does not, and there nv-late-init.sh would grow APP,
    add a swap file and update the QSPI bootloader on seeing it. R35 is unverified: left
    alone (fleetimg grows APP itself)."""
    return release.major >= 36


@dataclass
class _Skel:
    files: list[FileSpec] = field(default_factory=list)
    dirs: list[DirSpec] = field(default_factory=list)
    symlinks: list[SymlinkSpec] = field(default_factory=list)


def _copy_skel(fs: RootFs, home: str, uid: int, gid: int, notes: list[str]) -> _Skel:
    """/etc/skel into the new home, entry by entry *by type*: L4T's skeleton holds a
    Desktop/ directory of launchers, which `debugfs cat` would dump as raw directory blocks."""
    out = _Skel()
    for path, kind in fs.walk("/etc/skel"):
        dest = home + path.removeprefix("/etc/skel")
        inode = fs.stat(path)
        if inode is None:
            continue
        if kind is InodeKind.DIRECTORY:
            out.dirs.append(DirSpec(dest, inode.mode, uid, gid))
        elif kind is InodeKind.REGULAR:
            out.files.append(FileSpec(dest, fs.read(path) or b"", inode.mode, uid, gid))
        elif kind is InodeKind.SYMLINK and inode.link_target:
            out.symlinks.append(SymlinkSpec(dest, inode.link_target))
        else:
            notes.append(f"/etc/skel entry not copied ({kind}): {path}")
    return out


def validate_settings(fleet: Fleet, node: Node) -> None:
    """Refuse settings that would make an unreachable or broken card, before any write."""
    s = fleet.sdcard
    if not s.authorized_keys and s.password_hash is None:
        raise UsageError(
            f"{node.name}: the card would have no way to log in: no SSH public key and no "
            "password",
            hint="set ssh_key in [fleet] (its .pub is used) or [sdcard] authorized_keys, or "
            "password_hash = \"$(openssl passwd -6)\"",
        )
    for key in s.authorized_keys:
        text = key.read_text().strip()
        if not text.startswith(("ssh-", "ecdsa-", "sk-")):
            raise UsageError(f"{key} is not an SSH public key",
                             hint="point authorized_keys at a .pub file")
        if "PRIVATE KEY" in text:
            raise UsageError(f"{key} is a private key", hint="use the .pub file")
    if node.runtime is Runtime.K3S and node.role is Role.WORKER and s.k3s_token_file \
            and not (s.k3s_server or fleet.masters):
        raise UsageError(f"{node.name}: K3s worker but no master in the inventory and no "
                         "[sdcard] k3s_server")


class Concern(str, Enum):
    """What a part of a node's desired state is about (`apply --only` names these)."""

    NETWORK = "network"  # hostname, /etc/hosts, the NetworkManager keyfile
    USERS = "users"  # the user, groups, sudoers, keys, the fleet-internal key
    BOOT = "boot"  # default.target (no oem-config wizard), nvautoconfig
    FIRSTBOOT = "firstboot"  # fleetimg's first boot: grow, power mode, swap; zram
    DOCKER = "docker"  # daemon.json: nvidia as the default runtime
    K3S = "k3s"  # join configuration and the node password
    IDENTITY = "identity"  # machine-id and SSH host keys: the node's own


@dataclass(frozen=True, kw_only=True)
class Part(ChangeSet):
    """One concern's share of a node's desired state."""

    concern: Concern


@dataclass(frozen=True)
class _Context:
    fleet: Fleet
    node: Node
    fs: RootFs  # what the root filesystem holds now
    secrets: CardSecrets
    release: L4TRelease  # the image's (or the board's) L4T
    reset_identity: bool
    board: bool  # a running board (`apply`), not a card being written

    @property
    def settings(self) -> SdcardSettings:
        return self.fleet.sdcard


def build_overlay(
    fleet: Fleet, node: Node, fs: RootFs, secrets: CardSecrets, *,
    image_release: L4TRelease | None, reset_identity: bool = False,
) -> ChangeSet:
    """What the node's card needs, computed from the inventory and the image; writes
    nothing (secrets not yet on disk are in `secrets`, created by the write step).
    `reset_identity`: the image comes from a booted board (--allow-cloned)."""
    parts = overlay_parts(fleet, node, fs, secrets, image_release=image_release,
                          reset_identity=reset_identity)
    # Missing parent directories are created by Ext4.apply, like mkdir -p.
    return ChangeSet.merge(parts)


def overlay_parts(
    fleet: Fleet, node: Node, fs: RootFs, secrets: CardSecrets, *,
    image_release: L4TRelease | None, reset_identity: bool = False, board: bool = False,
) -> list[Part]:
    """The node's desired state, one part per concern, in the order they are written.
    `board`: for a running board rather than a card (its first boot is behind it, its
    identity is kept unless `reset_identity`)."""
    ctx = _Context(fleet, node, fs, secrets, image_release or node.l4t, reset_identity, board)
    return [_network(ctx), _users(ctx), _boot(ctx), _first_boot(ctx), _docker(ctx),
            _k3s(ctx), _identity(ctx)]


def _network_reads(s: SdcardSettings) -> tuple[str, ...]:
    return ("/etc/hostname", "/etc/hosts", NM_DIR, NM_KEYFILE, NM_DISPATCH_HOSTS, AVAHI_CONF)


def _network(ctx: _Context) -> Part:
    fleet, node = ctx.fleet, ctx.node
    # The node's own name resolves to its fleet address, not NVIDIA's 127.0.1.1: Gloo
    # (Horovod, torch.distributed) binds what its hostname resolves to (docs/first-boot.md).
    # A DHCP node's address is known only on the board: a NetworkManager dispatcher script
    # writes it on every lease; until then the line holds 127.0.1.1, as NVIDIA's does.
    fleet_hosts = "\n".join(
        f"{n.address}\t{n.name}" if not n.dhcp else f"# {n.name}: DHCP, reached as {n.reach}"
        for n in fleet.nodes if n is not node)
    hosts = _template("hosts.tmpl").substitute(
        hostname=node.name, address=_leased_self(ctx.fs) if node.dhcp else node.address,
        fleet=fleet.name, fleet_hosts=fleet_hosts,
        self_note=f"\t{DHCP_HOSTS_MARK}" if node.dhcp else "")
    # Bound to the module's own port: eth0 on Nano/TX2/Xavier/AGX Orin, enP8p1s0 (a PCIe
    # NIC) on the Orin Nano/NX devkits.
    if node.dhcp:
        # The lease is asked for under the node's name, so a router or dnsmasq that
        # registers DHCP names (and its leases file) knows it by that name.
        keyfile = _template("nm-dhcp.nmconnection.tmpl").substitute(
            uuid=_keyfile_uuid(ctx.fs), hostname=node.name, interface=node.module.ethernet)
    else:
        gw = f",{fleet.gateway}" if fleet.gateway else ""
        dns = "".join(f"{d};" for d in fleet.dns) or (f"{fleet.gateway};" if fleet.gateway
                                                       else "")
        keyfile = _template("nm-wired.nmconnection.tmpl").substitute(
            uuid=_keyfile_uuid(ctx.fs), address=node.address, prefix=fleet.subnet.prefixlen,
            gateway_suffix=gw, dns=dns, interface=node.module.ethernet)
    files = [FileSpec("/etc/hostname", f"{node.name}\n".encode()),
             FileSpec("/etc/hosts", hosts.encode()),
             FileSpec(NM_KEYFILE, keyfile.encode(), mode=0o600)]
    remove: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    if node.dhcp:
        # NetworkManager runs only root-owned scripts that others cannot write (0755).
        files.append(FileSpec(NM_DISPATCH_HOSTS, _resource("fleetimg-dhcp-hosts.sh"),
                              mode=0o755))
        if node.reach.endswith(".local") and ctx.fs.stat(AVAHI_CONF) is None:
            notes = (f"{node.name} uses DHCP and is found as {node.reach}, but this image has "
                     "no avahi-daemon to answer for it (NVIDIA's minimal root filesystem "
                     "has none): set [fleet] leases, or host = a name your DNS knows",)
    elif ctx.fs.stat(NM_DISPATCH_HOSTS) is not None:
        remove = (NM_DISPATCH_HOSTS,)
    return Part(concern=Concern.NETWORK, files=tuple(files), remove=remove, notes=notes)


def _leased_self(fs: RootFs) -> str:
    """The address the dispatcher script last wrote on the node's own line (so a board's
    lease is not a change to undo), else 127.0.1.1."""
    for line in (fs.read_text("/etc/hosts") or "").splitlines():
        fields = line.split()
        if DHCP_HOSTS_MARK in line and fields and _is_ipv4(fields[0]):
            return fields[0]
    return "127.0.1.1"


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def keyfile_uuid(text: str) -> str | None:
    """The connection UUID a NetworkManager keyfile names, if it names a valid one."""
    found = next((ln.split("=", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("uuid=")), "")
    try:
        return str(uuid.UUID(found))
    except ValueError:
        return None


def _keyfile_uuid(fs: RootFs) -> str:
    """The connection's UUID stays what it is: NetworkManager knows the profile by it, and
    a new one on every run would make every `apply` a change."""
    return keyfile_uuid(fs.read_text(NM_KEYFILE) or "") or str(uuid.uuid4())


def _users_reads(s: SdcardSettings) -> tuple[str, ...]:
    # The home as one path: where it is absent, everything under it is known to be absent
    # (the /etc/skel copy); where it exists, only fleetimg's own files in ~/.ssh are read,
    # never the user's private keys.
    home = f"/home/{s.user}"
    return ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow",
            f"/etc/sudoers.d/fleetimg-{s.user}", "r:/etc/skel", home, f"{home}/.ssh",
            f"{home}/.ssh/authorized_keys", f"{home}/.ssh/id_ed25519",
            f"{home}/.ssh/id_ed25519.pub")


def _users(ctx: _Context) -> Part:
    """The default user, as l4t_create_default_user.sh makes it, with fleetimg's keys."""
    s, fs = ctx.settings, ctx.fs
    notes: list[str] = []
    acc = _Accounts(
        passwd=_Accounts.parse(fs.read_text("/etc/passwd")),
        shadow=_Accounts.parse(fs.read_text("/etc/shadow")),
        group=_Accounts.parse(fs.read_text("/etc/group")),
        gshadow=_Accounts.parse(fs.read_text("/etc/gshadow")),
    )
    if not acc.passwd or not acc.group:
        raise DiskError("the image has no /etc/passwd or /etc/group: not an L4T root filesystem")
    uid, gid = _add_user(acc, s, notes, board=ctx.board)
    _add_to_groups(acc, s, ctx.release, notes, board=ctx.board)
    files: list[FileSpec] = []
    for name, rows, mode, default_gid in (("passwd", acc.passwd, 0o644, 0),
                                           ("group", acc.group, 0o644, 0),
                                           ("shadow", acc.shadow, 0o640, None),
                                           ("gshadow", acc.gshadow, 0o640, None)):
        current = fs.stat(f"/etc/{name}")
        files.append(FileSpec(f"/etc/{name}", _Accounts.render(rows),
                              mode=current.mode if current else mode,
                              gid=current.gid if current else (default_gid or 0)))
    if s.password_hash is None:
        # Key-only login: sudo could never ask for a password, so it must not.
        files.append(FileSpec(f"/etc/sudoers.d/fleetimg-{s.user}",
                              f"{s.user} ALL=(ALL) NOPASSWD:ALL\n".encode(), mode=0o440))
    home = f"/home/{s.user}"
    # A home that exists is the user's: nothing from /etc/skel is copied into it.
    skel = _Skel() if fs.stat(home) is not None else _copy_skel(fs, home, uid, gid, notes)
    files += skel.files + _keys(ctx, home, uid, gid)
    dirs = [DirSpec(home, 0o755, uid, gid), DirSpec(f"{home}/.ssh", 0o700, uid, gid),
            *skel.dirs]
    return Part(concern=Concern.USERS, files=tuple(files), dirs=tuple(dirs),
                symlinks=tuple(skel.symlinks), notes=tuple(notes))


def _add_user(acc: _Accounts, s: SdcardSettings, notes: list[str], *,
              board: bool) -> tuple[int, int]:
    """The user's rows (kept if the image has them); returns its uid and gid."""
    user = s.user
    existing = next((r for r in acc.passwd if r[0] == user), None)
    if existing is not None:
        uid, gid = int(existing[2]), int(existing[3])
        if not board:  # on a running board the user is expected to exist
            notes.append(f"user {user} already exists (uid {uid}); keys and groups updated")
    else:
        used_uids = {int(r[2]) for r in acc.passwd if len(r) > 2 and r[2].isdigit()}
        used_gids = {int(r[2]) for r in acc.group if len(r) > 2 and r[2].isdigit()}
        uid = next(i for i in range(1000, 60000) if i not in used_uids)
        gid = uid if uid not in used_gids else next(
            i for i in range(1000, 60000) if i not in used_gids)
        acc.passwd.append([user, "x", str(uid), str(gid), f"{user},,,", f"/home/{user}",
                           "/bin/bash"])
        acc.group.append([user, "x", str(gid), ""])
        acc.gshadow.append([user, "!", "", ""])
    # '*' (no password) rather than '!' (locked): sshd refuses keys for locked accounts.
    wanted = s.password_hash or "*"
    row = next((r for r in acc.shadow if r[0] == user), None)
    if row is not None and len(row) > 2 and (row[1] == wanted or (
            s.password_hash is None and row[1] not in ("", "!", "!*"))):
        # Kept as it is (and so the same on every run): the password the board's user set,
        # or the one the inventory names, with its last-change day.
        return uid, gid
    days = str(int(time.time() // 86400))
    acc.shadow = [r for r in acc.shadow if r[0] != user]
    acc.shadow.append([user, wanted, days, "0", "99999", "7", "", "", ""])
    return uid, gid


def _add_to_groups(acc: _Accounts, s: SdcardSettings, release: L4TRelease,
                   notes: list[str], *, board: bool) -> None:
    if release.major >= 36 and "weston-launch" in s.groups and \
            not any(r[0] == "weston-launch" for r in acc.group):
        # R36's l4t_create_default_user.sh creates the group when the image lacks it.
        used = {int(r[2]) for r in acc.group if len(r) > 2 and r[2].isdigit()}
        wl_gid = next(g for g in range(999, 100, -1) if g not in used)
        acc.group.append(["weston-launch", "x", str(wl_gid), ""])
        acc.gshadow.append(["weston-launch", "!", "", ""])
    missing_groups = []
    for table in (acc.group, acc.gshadow):
        names = {r[0] for r in table}
        for g in s.groups:
            if g not in names:
                if table is acc.group:
                    missing_groups.append(g)
                continue
            row = next(r for r in table if r[0] == g)
            while len(row) < 4:
                row.append("")
            members = [m for m in row[3].split(",") if m]
            if s.user not in members:
                members.append(s.user)
            row[3] = ",".join(members)
    if missing_groups:
        notes.append(f"groups not in this {'system' if board else 'image'}, skipped: "
                     f"{', '.join(missing_groups)}")


def _keys(ctx: _Context, home: str, uid: int, gid: int) -> list[FileSpec]:
    """authorized_keys, and the fleet-internal key pair nodes relay pushes with."""
    keys = [k.read_text().strip() for k in ctx.settings.authorized_keys]
    files = []
    if ctx.settings.internal_ssh_key:
        private, pub = ctx.secrets.internal_private, ctx.secrets.internal_public
        assert private is not None and pub is not None
        keys.append(pub)
        files += [FileSpec(f"{home}/.ssh/id_ed25519", private, 0o600, uid, gid),
                  FileSpec(f"{home}/.ssh/id_ed25519.pub", (pub + "\n").encode(), 0o644,
                           uid, gid)]
    path = f"{home}/.ssh/authorized_keys"
    files.append(FileSpec(path, managed_authorized_keys(ctx.fs.read_text(path), keys).encode(),
                          0o600, uid, gid))
    return files


def managed_authorized_keys(current: str | None, keys: list[str]) -> str:
    """authorized_keys with fleetimg's block holding exactly `keys`. Lines outside the block
    are the user's and stay, except copies of a key the block now holds."""
    outside: list[str] = []
    inside = False
    for line in (current or "").splitlines():
        if line.strip() == KEYS_BEGIN:
            inside = True
        elif line.strip() == KEYS_END and inside:
            inside = False
        elif not inside and line.strip() not in keys:
            outside.append(line)
    while outside and not outside[-1].strip():
        outside.pop()
    block = [KEYS_BEGIN, *dict.fromkeys(keys), KEYS_END]
    return "\n".join([*outside, *block]) + "\n"


def _boot_reads(s: SdcardSettings) -> tuple[str, ...]:
    return ("/etc/nv", "/etc/nv/nvfirstboot", "/etc/nv/nvautoconfig", DEFAULT_TARGET)


def _boot(ctx: _Context) -> Part:
    """Skip the oem-config wizard; keep /etc/nv/nvfirstboot for NVIDIA's per-board setup."""
    target = "multi-user.target" if ctx.settings.headless else "graphical.target"
    files: list[FileSpec] = []
    dirs: list[DirSpec] = []
    notes: list[str] = []
    if touches_nvautoconfig(ctx.release):
        # As R36's l4t_create_default_user.sh does; on R32, nv-late-init.sh would take the
        # flag as "grow APP, add a swap file, update QSPI" (docs/first-boot.md).
        dirs.append(DirSpec("/etc/nv"))
        files.append(FileSpec("/etc/nv/nvautoconfig", b""))
    if ctx.fs.stat("/etc/nv/nvfirstboot") is None and not ctx.reset_identity and \
            not ctx.board:
        notes.append("/etc/nv/nvfirstboot is absent in this image: NVIDIA's first-boot setup "
                     "will not run")
    return Part(concern=Concern.BOOT, files=tuple(files), dirs=tuple(dirs),
                symlinks=(SymlinkSpec(DEFAULT_TARGET, f"/lib/systemd/system/{target}"),),
                remove=(DEFAULT_TARGET,), notes=tuple(notes))


def _first_boot_reads(s: SdcardSettings) -> tuple[str, ...]:
    return ("r:/etc/fleetimg", "/usr/local/sbin/fleetimg-firstboot", FIRSTBOOT_UNIT,
            "/etc/systemd/system/multi-user.target.wants", FIRSTBOOT_WANTS, ZRAM_WANTS)


def _first_boot(ctx: _Context) -> Part:
    """fleetimg's first boot: grow APP, power mode, swap file, host keys."""
    s = ctx.settings
    swapfile = s.swap if s.swap not in ("off", "zram") else ""
    # Power modes are chosen by name on the board, from the /etc/nvpmodel.conf that NVIDIA's
    # first boot picks for it: IDs differ per module and release (docs/first-boot.md).
    power_names = s.power_mode or (" ".join(MAX_POWER_MODES) if s.max_power else "")
    conf = (f"GROW_APP=1\nMAX_POWER_NAMES=\"{power_names}\"\nSWAPFILE={swapfile}\n"
            f"NODE={ctx.node.name}\n")
    wants = FIRSTBOOT_WANTS
    files: list[FileSpec] = []
    remove: list[str] = []
    if ctx.board:
        # A running board's first boot is behind it: growing a partition is for a fresh
        # card only, and on eMMC APP need not be last. Its settings (power mode, swap) are
        # applied by `apply --restart` instead.
        if ctx.fs.stat(FIRSTBOOT_DONE) is None:
            files.append(FileSpec(FIRSTBOOT_DONE, b""))
    else:
        # A card from a booted fleetimg board (--allow-cloned) runs its first boot again: it
        # makes the host keys and machine-id this card was given none of.
        remove += [p for p in (FIRSTBOOT_DONE, "/etc/fleetimg/firstboot.failed")
                   if ctx.fs.stat(p) is not None]
        remove.append(wants)
    if s.swap == "off":
        # NVIDIA enables zram swap through multi-user.target.wants; removing that link turns
        # it off and leaves nvidia-l4t-init's own unit file alone (docs/first-boot.md).
        remove.append(ZRAM_WANTS)
    return Part(concern=Concern.FIRSTBOOT, files=(
        FileSpec("/etc/fleetimg/firstboot.conf", conf.encode()),
        FileSpec("/usr/local/sbin/fleetimg-firstboot", _resource("fleetimg-firstboot.sh"),
                 0o755),
        FileSpec(FIRSTBOOT_UNIT, _resource("fleetimg-firstboot.service.tmpl")), *files),
        dirs=(DirSpec("/etc/fleetimg"), DirSpec("/etc/systemd/system/multi-user.target.wants")),
        symlinks=(SymlinkSpec(wants, FIRSTBOOT_UNIT),), remove=tuple(remove))


def _docker_reads(s: SdcardSettings) -> tuple[str, ...]:
    return ("/etc/docker", "/etc/docker/daemon.json")


def _docker(ctx: _Context) -> Part:
    """nvidia as Docker's default runtime, keeping NVIDIA's runtime definition."""
    if not ctx.settings.docker_nvidia_default:
        return Part(concern=Concern.DOCKER)
    raw = ctx.fs.read_text("/etc/docker/daemon.json")
    try:
        daemon = json.loads(raw) if raw and raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise DiskError(f"/etc/docker/daemon.json in the image is not valid JSON: {exc}") \
            from exc
    if not isinstance(daemon, dict):
        raise DiskError("/etc/docker/daemon.json in the image is not a JSON object")
    daemon.setdefault("runtimes", {}).setdefault(
        "nvidia", {"path": "nvidia-container-runtime", "runtimeArgs": []})
    daemon["default-runtime"] = "nvidia"
    return Part(concern=Concern.DOCKER, dirs=(DirSpec("/etc/docker"),), files=(
        FileSpec("/etc/docker/daemon.json", (json.dumps(daemon, indent=4) + "\n").encode()),))


def _k3s_reads(s: SdcardSettings) -> tuple[str, ...]:
    return ("/etc/rancher", "/etc/rancher/k3s", "/etc/rancher/k3s/config.yaml",
            "/etc/rancher/node", NODE_PASSWORD)


def _k3s(ctx: _Context) -> Part:
    """Join configuration; the token is a secret: 0600, only when a token file is given."""
    node, s = ctx.node, ctx.settings
    if node.runtime is not Runtime.K3S:
        return Part(concern=Concern.K3S)
    files: list[FileSpec] = []
    dirs = [DirSpec("/etc/rancher")]
    notes: list[str] = []
    if s.k3s_token_file is None:
        notes.append("K3s join config skipped: set [sdcard] k3s_token_file")
    else:
        token = s.k3s_token_file.read_text().strip()
        lines = [f"node-name: {node.name}", f"token: {token}"]
        if node.role is Role.WORKER:
            server = s.k3s_server or f"https://{ctx.fleet.masters[0].reach}:6443"
            lines.insert(0, f"server: {server}")
        dirs.append(DirSpec("/etc/rancher/k3s"))
        files.append(FileSpec("/etc/rancher/k3s/config.yaml",
                              ("\n".join(lines) + "\n").encode(), mode=0o600))
    # The same node password on every re-flash, or the server rejects the node.
    dirs.append(DirSpec("/etc/rancher/node", 0o700))
    files.append(FileSpec(NODE_PASSWORD,
                          f"{ctx.secrets.node_passwords[node.name]}\n".encode(), mode=0o600))
    return Part(concern=Concern.K3S, files=tuple(files), dirs=tuple(dirs), notes=tuple(notes))


def _identity_reads(s: SdcardSettings) -> tuple[str, ...]:
    # A board keeps its machine-id and host keys (a reset makes new ones on the board), so
    # they are never read from it: only the K3s state a reset removes.
    return (*K3S_AGENT_CERTS, NODE_PASSWORD)


def _identity(ctx: _Context) -> Part:
    """Every card gets its own identity, whether or not NVIDIA's image ships one: no SSH host
    keys (nvfb.sh or fleetimg's first boot makes them) and an empty machine-id (systemd
    makes one). Two boards from one image never share them (docs/first-boot.md)."""
    fs = ctx.fs
    files: list[FileSpec] = []
    remove: list[str] = []
    notes: list[str] = []
    if ctx.board:
        if not ctx.reset_identity:
            return Part(concern=Concern.IDENTITY)
        # A running board makes its new machine-id and host keys itself (`apply` runs that
        # step): only the K3s state below is removed as files.
    else:
        files.append(FileSpec("/etc/machine-id", b"", mode=0o444))
        dbus_id = fs.stat("/var/lib/dbus/machine-id")
        if dbus_id is not None and dbus_id.kind is InodeKind.REGULAR:  # often a link to machine-id
            files.append(FileSpec("/var/lib/dbus/machine-id", b"", mode=dbus_id.mode))
        remove += [f"/etc/ssh/{k}" for k in fs.listdir("/etc/ssh") if k.startswith("ssh_host_")]
    if ctx.reset_identity:
        k3s = [state for state in K3S_AGENT_CERTS if fs.stat(state) is not None]
        if fs.stat(NODE_PASSWORD) is not None and ctx.node.runtime is not Runtime.K3S:
            k3s.append(NODE_PASSWORD)
        if k3s:
            remove += k3s
            notes.append("identity reset: the source board's K3s node password and agent "
                         "certificates removed")
    return Part(concern=Concern.IDENTITY, files=tuple(files), remove=tuple(remove),
                notes=tuple(notes))


# What each concern reads or writes of a running board: `apply` fetches exactly these
# before it plans ("r:DIR" is a whole tree), so a path read and not declared is a fleetimg
# bug that MemFs raises. Each list sits beside its concern; the fast tier
# (tests/unit/test_nodestate.py) checks them against every path the model touches.
_READS: dict[Concern, Callable[[SdcardSettings], tuple[str, ...]]] = {
    Concern.NETWORK: _network_reads, Concern.USERS: _users_reads, Concern.BOOT: _boot_reads,
    Concern.FIRSTBOOT: _first_boot_reads, Concern.DOCKER: _docker_reads,
    Concern.K3S: _k3s_reads, Concern.IDENTITY: _identity_reads,
}


def read_set(settings: SdcardSettings) -> tuple[str, ...]:
    """Every path the model reads or writes on a running board (`board=True`)."""
    return tuple(dict.fromkeys(p for c in Concern for p in _READS[c](settings)))
