"""The fast tier of the node model: settings and a root filesystem held in memory, in, and the
parts and changes out, in milliseconds (no ext4, no board).

The root filesystem is a `MemFs` asked for exactly the model's declared read set, as
`apply` asks a board: a read of a path no concern declares raises, and every path a part
writes or removes must be among those read (apply compares it with the board). The
coverage test runs every combination of the settings and filesystems below."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.apply.plan import plan_part
from fleetimg.inventory import Fleet, Node, Role, Runtime
from fleetimg.l4t import L4TRelease
from fleetimg.nodestate.memfs import MemFs
from fleetimg.nodestate.model import (
    FIRSTBOOT_WANTS,
    K3S_AGENT_CERTS,
    NODE_PASSWORD,
    ZRAM_WANTS,
    Concern,
    Part,
    overlay_parts,
    read_set,
)
from fleetimg.nodestate.secrets import CardSecrets
from fleetimg.nodestate.spec import ChangeSet, Inode, InodeKind

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFleetimgTestKeyOnlyForTheFastTier user@ws"
INTERNAL_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInternalKeyOfTheFleet fleetimg-internal"
HASH = "$6$salt$hash"
Members = dict[str, tuple[Inode, bytes]]


def _entry(path: str, kind: InodeKind, data: bytes = b"", mode: int = 0o644, uid: int = 0,
           gid: int = 0, target: str | None = None) -> tuple[str, tuple[Inode, bytes]]:
    return path, (Inode(path=path, kind=kind, mode=mode, uid=uid, gid=gid, size=len(data),
                        link_target=target), data)


def l4t_root(*, home: bool = False, shadow_row: str | None = None,
             k3s_state: bool = False, weston: bool = True) -> Members:
    """What a booted L4T board holds of the paths the model reads."""
    reg, dr, ln = InodeKind.REGULAR, InodeKind.DIRECTORY, InodeKind.SYMLINK
    groups = ["root:x:0:", "adm:x:4:", "sudo:x:27:", "audio:x:29:", "video:x:44:",
              "render:x:110:"] + (["weston-launch:x:998:"] if weston else [])
    shadow = ["root:*:19000:0:99999:7:::"] + ([shadow_row] if shadow_row else [])
    passwd = ["root:x:0:0:root:/root:/bin/bash"]
    if home or shadow_row:
        passwd.append("jetson:x:1000:1000:jetson,,,:/home/jetson:/bin/bash")
        groups.append("jetson:x:1000:")
    members = dict([
        _entry("/etc/passwd", reg, ("\n".join(passwd) + "\n").encode()),
        _entry("/etc/group", reg, ("\n".join(groups) + "\n").encode()),
        _entry("/etc/shadow", reg, ("\n".join(shadow) + "\n").encode(), 0o640, gid=42),
        _entry("/etc/gshadow", reg, b"root:*::\nsudo:*::\n", 0o640, gid=42),
        _entry("/etc/hostname", reg, b"ubuntu\n"),
        _entry("/etc/hosts", reg, b"127.0.0.1\tlocalhost\n"),
        _entry("/etc/NetworkManager/system-connections", dr, mode=0o755),
        _entry("/etc/skel", dr, mode=0o755),
        _entry("/etc/skel/.bashrc", reg, b"# bashrc\n"),
        _entry("/etc/skel/Desktop", dr, mode=0o755),
        _entry("/etc/skel/Desktop/l4t-readme.desktop", ln,
               target="/usr/share/applications/l4t-readme.desktop"),
        _entry("/etc/nv", dr, mode=0o755),
        _entry("/etc/nv/nvfirstboot", reg),
        _entry("/etc/systemd/system/multi-user.target.wants", dr, mode=0o755),
        _entry(ZRAM_WANTS, ln, target="/etc/systemd/system/nvzramconfig.service"),
        _entry("/etc/docker", dr, mode=0o755),
        _entry("/etc/docker/daemon.json", reg,
               b'{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}\n'),
    ])
    if home:
        members.update([_entry("/home/jetson", dr, mode=0o750, uid=1000, gid=1000),
                        _entry("/home/jetson/.ssh", dr, mode=0o700, uid=1000, gid=1000),
                        _entry("/home/jetson/.ssh/authorized_keys", reg,
                               b"ssh-rsa AAAAB3Users own key me@laptop\n", 0o600, 1000, 1000)])
    if k3s_state:
        members.update([_entry("/etc/rancher", dr, mode=0o755),
                        _entry("/etc/rancher/node", dr, mode=0o700),
                        _entry(NODE_PASSWORD, reg, b"old-password\n", 0o600),
                        *(_entry(c, reg, b"cert") for c in K3S_AGENT_CERTS)])
    return members


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(inventory.starter_toml(nodes=3, subnet="192.168.10.0/24"))
    key = tmp_path / "id.pub"
    key.write_text(PUB + "\n")
    token = tmp_path / "k3s-token"
    token.write_text("K10secret::server:token\n")
    token.chmod(0o600)
    loaded = inventory.load(path)
    return dataclasses.replace(loaded, sdcard=dataclasses.replace(
        loaded.sdcard, authorized_keys=(key,), k3s_token_file=token))


def secrets_for(fleet: Fleet) -> CardSecrets:
    return CardSecrets(internal_private=b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
                       internal_public=INTERNAL_PUB,
                       node_passwords={n.name: f"pw-{n.name}" for n in fleet.nodes})


def k3s_fleet(fleet: Fleet) -> Fleet:
    """node1 the master, the others workers, all on K3s."""
    nodes = tuple(dataclasses.replace(n, runtime=Runtime.K3S,
                                      role=Role.MASTER if i == 0 else Role.WORKER)
                  for i, n in enumerate(fleet.nodes))
    return dataclasses.replace(fleet, nodes=nodes)


def dhcp_node(fleet: Fleet, index: int) -> tuple[Fleet, Node]:
    """The fleet with its node `index` on DHCP (address = "dhcp", found as NAME.local)."""
    node = fleet.nodes[index]
    dhcp = dataclasses.replace(node, dhcp=True, address=f"{node.name}.local",
                               host=f"{node.name}.local")
    nodes = tuple(dhcp if n is node else n for n in fleet.nodes)
    return dataclasses.replace(fleet, nodes=nodes), dhcp


def with_settings(fleet: Fleet, **settings: object) -> Fleet:
    return dataclasses.replace(fleet, sdcard=dataclasses.replace(fleet.sdcard, **settings))


def board_parts(fleet: Fleet, node: Node, members: Members, *, release: str = "R32.7.1",
                reset_identity: bool = False) -> tuple[MemFs, list[Part]]:
    fs = MemFs(members, read_set(fleet.sdcard))
    parts = overlay_parts(fleet, node, fs, secrets_for(fleet),
                          image_release=L4TRelease.parse(release),
                          reset_identity=reset_identity, board=True)
    return fs, parts


def part(parts: list[Part], concern: Concern) -> Part:
    return next(p for p in parts if p.concern is concern)


def written(p: ChangeSet) -> dict[str, bytes]:
    return {f.path: f.content for f in p.files}


# ---- settings + filesystem -> parts -------------------------------------------------------

def test_a_k3s_worker_joins_its_master_and_the_master_joins_nobody(fleet: Fleet) -> None:
    fleet = k3s_fleet(fleet)
    master, worker = fleet.nodes[0], fleet.nodes[1]
    _, parts = board_parts(fleet, worker, l4t_root())
    config = written(part(parts, Concern.K3S))["/etc/rancher/k3s/config.yaml"].decode()
    assert config.splitlines() == [f"server: https://{master.address}:6443",
                                   "node-name: node2", "token: K10secret::server:token"]
    assert written(part(parts, Concern.K3S))[NODE_PASSWORD] == b"pw-node2\n"
    _, parts = board_parts(fleet, master, l4t_root())
    assert written(part(parts, Concern.K3S))["/etc/rancher/k3s/config.yaml"].decode() \
        .splitlines() == ["node-name: node1", "token: K10secret::server:token"]
    # A Docker node has no K3s part at all.
    docker_node = dataclasses.replace(fleet.nodes[2], runtime=Runtime.DOCKER)
    _, parts = board_parts(fleet, docker_node, l4t_root())
    assert not part(parts, Concern.K3S)


def test_the_internal_key_is_installed_and_trusted(fleet: Fleet) -> None:
    fleet = with_settings(fleet, internal_ssh_key=True)
    _, parts = board_parts(fleet, fleet.nodes[0], l4t_root())
    users = {f.path: f for f in part(parts, Concern.USERS).files}
    assert users["/home/jetson/.ssh/id_ed25519"].mode == 0o600
    assert users["/home/jetson/.ssh/id_ed25519"].uid == 1000
    keys = users["/home/jetson/.ssh/authorized_keys"].content.decode()
    assert PUB in keys and INTERNAL_PUB in keys


@pytest.mark.parametrize(("swap", "swapfile", "zram_removed"),
                         [("off", "", True), ("zram", "", False), ("4G", "4G", False)])
def test_swap_settings(fleet: Fleet, swap: str, swapfile: str, zram_removed: bool) -> None:
    fleet = with_settings(fleet, swap=swap)
    _, parts = board_parts(fleet, fleet.nodes[0], l4t_root())
    first = part(parts, Concern.FIRSTBOOT)
    assert f"SWAPFILE={swapfile}\n" in written(first)["/etc/fleetimg/firstboot.conf"].decode()
    assert (ZRAM_WANTS in first.remove) is zram_removed


@pytest.mark.parametrize(("row", "inventory_hash", "kept"), [
    # The board's own password is kept when the inventory names none...
    ("jetson:$6$board$pw:19500:0:99999:7:::", None, True),
    # ...and the inventory's is kept with its last-change day when it is already there...
    (f"jetson:{HASH}:19500:0:99999:7:::", HASH, True),
    # ...and replaces another.
    ("jetson:$6$board$pw:19500:0:99999:7:::", HASH, False),
])
def test_a_password_against_the_shadow_row_the_board_has(
        fleet: Fleet, row: str, inventory_hash: str | None, kept: bool) -> None:
    fleet = with_settings(fleet, password_hash=inventory_hash)
    _, parts = board_parts(fleet, fleet.nodes[0], l4t_root(home=True, shadow_row=row))
    shadow = written(part(parts, Concern.USERS))["/etc/shadow"].decode().splitlines()
    mine = [r for r in shadow if r.startswith("jetson:")]
    assert len(mine) == 1
    assert (mine[0] == row) is kept
    if not kept:
        assert mine[0].split(":")[1] == inventory_hash


def test_an_existing_home_is_the_users_and_a_new_one_gets_the_skeleton(fleet: Fleet) -> None:
    _, parts = board_parts(fleet, fleet.nodes[0], l4t_root(home=True))
    users = part(parts, Concern.USERS)
    assert not [f for f in users.files if f.path == "/home/jetson/.bashrc"]
    keys = written(users)["/home/jetson/.ssh/authorized_keys"].decode()
    assert "ssh-rsa AAAAB3Users own key me@laptop" in keys  # the user's key stays
    _, parts = board_parts(fleet, fleet.nodes[0], l4t_root())
    users = part(parts, Concern.USERS)
    bashrc = next(f for f in users.files if f.path == "/home/jetson/.bashrc")
    assert (bashrc.uid, bashrc.content) == (1000, b"# bashrc\n")
    assert [(s.path, s.target) for s in users.symlinks] == [
        ("/home/jetson/Desktop/l4t-readme.desktop",
         "/usr/share/applications/l4t-readme.desktop")]


def test_an_identity_reset_removes_the_k3s_state_only_when_asked(fleet: Fleet) -> None:
    members = l4t_root(k3s_state=True)
    _, parts = board_parts(fleet, fleet.nodes[0], members)
    assert not part(parts, Concern.IDENTITY)
    _, parts = board_parts(fleet, fleet.nodes[0], members, reset_identity=True)
    # A Docker node: its stale K3s node password goes too.
    assert set(part(parts, Concern.IDENTITY).remove) == {*K3S_AGENT_CERTS, NODE_PASSWORD}


@pytest.mark.parametrize(("release", "nvautoconfig", "weston_created"),
                         [("R32.7.1", False, False), ("R35.4.1", False, False),
                          ("R36.4.3", True, True)])
def test_each_release_family_boots_as_nvidias_script_would(
        fleet: Fleet, release: str, nvautoconfig: bool, weston_created: bool) -> None:
    _, parts = board_parts(fleet, fleet.nodes[0], l4t_root(weston=False), release=release)
    assert ("/etc/nv/nvautoconfig" in written(part(parts, Concern.BOOT))) is nvautoconfig
    group = written(part(parts, Concern.USERS))["/etc/group"].decode()
    assert ("weston-launch:" in group) is weston_created


# ---- the read set covers the model ------------------------------------------------------

def _combinations(fleet: Fleet) -> Iterator[tuple[str, Fleet, Node, Members, str, bool]]:
    settings = [dict(internal_ssh_key=k, swap=s, password_hash=h, docker_nvidia_default=d,
                     headless=hl)
                for k, s, h, d, hl in itertools.product((False, True), ("off", "zram", "4G"),
                                                        (None, HASH), (True, False),
                                                        (True, False))]
    roots = {"fresh": l4t_root(), "home": l4t_root(home=True),
             "shadow": l4t_root(home=True, shadow_row=f"jetson:{HASH}:19500:0:99999:7:::"),
             "k3s-state": l4t_root(k3s_state=True), "no-weston": l4t_root(weston=False)}
    for s, (root_name, members), k3s, release, reset in itertools.product(
            settings, roots.items(), (False, True), ("R32.7.1", "R35.4.1", "R36.4.3"),
            (False, True)):
        f = with_settings(k3s_fleet(fleet) if k3s else fleet, **s)
        # A master and a worker where K3s, and the worker again on DHCP.
        for g, node in ((f, f.nodes[0]), (f, f.nodes[1]), dhcp_node(f, 1)):
            yield (f"{root_name} {release} k3s={k3s} reset={reset} dhcp={node.dhcp} {s}", g,
                   node, members, release, reset)


def test_the_read_set_covers_every_path_the_model_reads_or_writes(fleet: Fleet) -> None:
    # Every read goes through MemFs, which raises for a path outside the read set; every
    # path a part writes or removes must be covered too, or apply could not compare it with
    # the board.
    count = 0
    for label, f, node, members, release, reset in _combinations(fleet):
        fs, parts = board_parts(f, node, members, release=release, reset_identity=reset)
        for p in parts:
            paths = [*(x.path for x in p.files), *(x.path for x in p.dirs),
                     *(x.path for x in p.symlinks), *p.remove]
            uncovered = [x for x in paths if not fs.covers(x)]
            assert not uncovered, (label, p.concern, uncovered)
            plan_part(p, fs)  # compares every entry with the board: reads them all
        count += 1
    assert count == 3 * 3 * 2 * 2 * 2 * 5 * 2 * 3 * 2 * 2


def test_a_second_apply_changes_nothing(fleet: Fleet) -> None:
    # The parts installed into the filesystem, then planned again against it: no change.
    fleet = k3s_fleet(with_settings(fleet, internal_ssh_key=True, swap="off"))
    node = fleet.nodes[1]
    members = l4t_root()
    for _ in range(2):
        fs, parts = board_parts(fleet, node, members, release="R36.4.3")
        changes = [c for p in parts for c in plan_part(p, fs).changes]
        members = installed(members, ChangeSet.merge(parts))
    assert changes == []
    assert FIRSTBOOT_WANTS in members and ZRAM_WANTS not in members


def installed(members: Members, changes: ChangeSet) -> Members:
    """`changes` written into a copy of `members`, as either writer would."""
    out = dict(members)
    for path in changes.remove:
        out.pop(path, None)
    for d in changes.dirs:
        out.update([_entry(d.path, InodeKind.DIRECTORY, mode=d.mode, uid=d.uid, gid=d.gid)])
    for f in changes.files:
        out.update([_entry(f.path, InodeKind.REGULAR, f.content, f.mode, f.uid, f.gid)])
    for s in changes.symlinks:
        out.update([_entry(s.path, InodeKind.SYMLINK, mode=0o777, target=s.target)])
    return out
