"""The per-node first-boot overlay: everything that turns NVIDIA's image into a headless,
reachable, uniquely named node, written into APP with debugfs and read back.

What NVIDIA's l4t_create_default_user.sh does is reproduced (user, groups, oem-config
skipped through the default.target link and /etc/nv/nvautoconfig) while /etc/nv/nvfirstboot
is kept, so the board's own once-per-board setup (nvpmodel, SSH host keys, display manager)
still runs on the real board.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

from fleetimg import private
from fleetimg.errors import DiskError, UsageError
from fleetimg.inventory import INTERNAL_KEY_NAME, Fleet, Node, Role, Runtime, SdcardSettings
from fleetimg.sdcard.ext4 import DirSpec, Ext4, FileSpec, SymlinkSpec

DEFAULT_TARGET = "/etc/systemd/system/default.target"
OEM_CONFIG_TARGET = "/lib/systemd/system/nv-oem-config.target"
NM_DIR = "/etc/NetworkManager/system-connections"
FIRSTBOOT_UNIT = "/etc/systemd/system/fleetimg-firstboot.service"


@dataclass(frozen=True)
class Overlay:
    files: tuple[FileSpec, ...]
    dirs: tuple[DirSpec, ...]
    symlinks: tuple[SymlinkSpec, ...]
    remove: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

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


def internal_key(fleet: Fleet) -> Path:
    """The fleet-internal key pair for node-to-node SSH, created once beside fleet.toml."""
    key = fleet.base_dir / INTERNAL_KEY_NAME
    private.new_keypair(key, f"fleetimg-{fleet.name}-internal")
    return key


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


def build_overlay(
    fleet: Fleet, node: Node, fs: Ext4, *, reset_identity: bool = False
) -> Overlay:
    s: SdcardSettings = fleet.sdcard
    notes: list[str] = []
    files: list[FileSpec] = []
    dirs: list[DirSpec] = []
    symlinks: list[SymlinkSpec] = []
    remove: list[str] = []

    # Identity and network.
    files.append(FileSpec("/etc/hostname", f"{node.name}\n".encode()))
    fleet_hosts = "\n".join(f"{n.address}\t{n.name}" for n in fleet.nodes if n is not node)
    files.append(FileSpec("/etc/hosts", _template("hosts.tmpl").substitute(
        hostname=node.name, fleet=fleet.name, fleet_hosts=fleet_hosts).encode()))
    gw = f",{fleet.gateway}" if fleet.gateway else ""
    dns = "".join(f"{d};" for d in fleet.dns) or (f"{fleet.gateway};" if fleet.gateway else "")
    files.append(FileSpec(f"{NM_DIR}/fleetimg-eth0.nmconnection", _template(
        "nm-eth0.nmconnection.tmpl").substitute(
            uuid=uuid.uuid4(), address=node.address, prefix=fleet.subnet.prefixlen,
            gateway_suffix=gw, dns=dns).encode(), mode=0o600))

    # The default user, as l4t_create_default_user.sh makes it.
    acc = _Accounts(
        passwd=_Accounts.parse(fs.read_text("/etc/passwd")),
        shadow=_Accounts.parse(fs.read_text("/etc/shadow")),
        group=_Accounts.parse(fs.read_text("/etc/group")),
        gshadow=_Accounts.parse(fs.read_text("/etc/gshadow")),
    )
    if not acc.passwd or not acc.group:
        raise DiskError("the image has no /etc/passwd or /etc/group: not an L4T root filesystem")
    user = s.user
    existing = next((r for r in acc.passwd if r[0] == user), None)
    if existing is not None:
        uid, gid = int(existing[2]), int(existing[3])
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
    pw = s.password_hash or "*"
    days = str(int(time.time() // 86400))
    acc.shadow = [r for r in acc.shadow if r[0] != user]
    acc.shadow.append([user, pw, days, "0", "99999", "7", "", "", ""])
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
            if user not in members:
                members.append(user)
            row[3] = ",".join(members)
    if missing_groups:
        notes.append(f"groups not in this image, skipped: {', '.join(missing_groups)}")
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
        files.append(FileSpec(f"/etc/sudoers.d/fleetimg-{user}",
                              f"{user} ALL=(ALL) NOPASSWD:ALL\n".encode(), mode=0o440))
    home = f"/home/{user}"
    dirs += [DirSpec(home, 0o755, uid, gid), DirSpec(f"{home}/.ssh", 0o700, uid, gid)]
    for skel in fs.listdir("/etc/skel"):
        content = fs.read(f"/etc/skel/{skel}")
        if content is not None and fs.stat(f"{home}/{skel}") is None:
            files.append(FileSpec(f"{home}/{skel}", content, 0o644, uid, gid))
    keys = [k.read_text().strip() for k in s.authorized_keys]
    if s.internal_ssh_key:
        key = internal_key(fleet)
        pub = key.with_name(key.name + ".pub").read_text().strip()
        keys.append(pub)
        files.append(FileSpec(f"{home}/.ssh/id_ed25519", key.read_bytes(), 0o600, uid, gid))
        files.append(FileSpec(f"{home}/.ssh/id_ed25519.pub", (pub + "\n").encode(), 0o644,
                              uid, gid))
    files.append(FileSpec(f"{home}/.ssh/authorized_keys", ("\n".join(keys) + "\n").encode(),
                          0o600, uid, gid))

    # Skip the oem-config wizard; keep /etc/nv/nvfirstboot for NVIDIA's per-board setup.
    target = "multi-user.target" if s.headless else "graphical.target"
    remove.append(DEFAULT_TARGET)
    symlinks.append(SymlinkSpec(DEFAULT_TARGET, f"/lib/systemd/system/{target}"))
    dirs.append(DirSpec("/etc/nv"))
    files.append(FileSpec("/etc/nv/nvautoconfig", b""))
    if fs.stat("/etc/nv/nvfirstboot") is None and not reset_identity:
        notes.append("/etc/nv/nvfirstboot is absent in this image: NVIDIA's first-boot setup "
                     "will not run")

    # First boot: grow APP, power mode, swap file, host keys.
    swapfile = s.swap if s.swap not in ("off", "zram") else ""
    conf = (f"GROW_APP=1\nMAX_POWER={int(s.max_power)}\nSWAPFILE={swapfile}\n"
            f"NODE={node.name}\n")
    dirs.append(DirSpec("/etc/fleetimg"))
    files.append(FileSpec("/etc/fleetimg/firstboot.conf", conf.encode()))
    files.append(FileSpec("/usr/local/sbin/fleetimg-firstboot",
                          _resource("fleetimg-firstboot.sh"), 0o755))
    files.append(FileSpec(FIRSTBOOT_UNIT, _resource("fleetimg-firstboot.service.tmpl")))
    dirs.append(DirSpec("/etc/systemd/system/multi-user.target.wants"))
    wants = "/etc/systemd/system/multi-user.target.wants/fleetimg-firstboot.service"
    remove.append(wants)
    symlinks.append(SymlinkSpec(wants, FIRSTBOOT_UNIT))
    if s.swap == "off":
        # K3s refuses to run with swap on; NVIDIA enables zram swap by default.
        zram = "/etc/systemd/system/nvzramconfig.service"
        remove.append(zram)
        symlinks.append(SymlinkSpec(zram, "/dev/null"))

    # Docker: nvidia as the default runtime, keeping NVIDIA's runtime definition.
    if s.docker_nvidia_default:
        raw = fs.read_text("/etc/docker/daemon.json")
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
        dirs.append(DirSpec("/etc/docker"))
        files.append(FileSpec("/etc/docker/daemon.json",
                              (json.dumps(daemon, indent=4) + "\n").encode()))

    # K3s: join configuration. The token is a secret: 0600, only when a token file is given.
    if node.runtime is Runtime.K3S:
        if s.k3s_token_file is None:
            notes.append("K3s join config skipped: set [sdcard] k3s_token_file")
        else:
            token = s.k3s_token_file.read_text().strip()
            lines = [f"node-name: {node.name}", f"token: {token}"]
            if node.role is Role.WORKER:
                server = s.k3s_server or f"https://{fleet.masters[0].address}:6443"
                lines.insert(0, f"server: {server}")
            dirs += [DirSpec("/etc/rancher"), DirSpec("/etc/rancher/k3s")]
            files.append(FileSpec("/etc/rancher/k3s/config.yaml",
                                  ("\n".join(lines) + "\n").encode(), mode=0o600))

    if reset_identity:
        files.append(FileSpec("/etc/machine-id", b"", mode=0o444))
        remove += [f"/etc/ssh/{k}" for k in fs.listdir("/etc/ssh") if k.startswith("ssh_host_")]
        if fs.stat("/etc/rancher/node/password") is not None:
            remove.append("/etc/rancher/node/password")
        notes.append("identity reset: machine-id emptied, SSH host keys removed (regenerated "
                     "at first boot), K3s node password removed")

    parents = {str(Path(f.path).parent) for f in files} | {str(Path(s.path).parent)
                                                             for s in symlinks}
    known = {d.path for d in dirs}
    for parent in sorted(parents - known):
        if fs.stat(parent) is None:
            dirs.append(DirSpec(parent))
    return Overlay(tuple(files), tuple(dirs), tuple(symlinks), tuple(dict.fromkeys(remove)),
                   tuple(notes))


def apply_overlay(fs: Ext4, overlay: Overlay) -> None:
    fs.apply(files=overlay.files, dirs=overlay.dirs, symlinks=overlay.symlinks,
             remove=overlay.remove)


def verify_overlay(fs: Ext4, overlay: Overlay) -> None:
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
        if inode is None or inode.kind != "directory":
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
