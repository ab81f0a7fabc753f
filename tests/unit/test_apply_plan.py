"""apply's reading and planning, on what a booted lab card really sent (tests/data/apply-read.txt,
captured with the private key and shadow files left out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.apply.engine import read_paths
from fleetimg.apply.plan import Action, Effect, plan_part
from fleetimg.apply.snapshot import parse_read_output
from fleetimg.errors import FleetimgError
from fleetimg.nodestate.memfs import MemFs
from fleetimg.nodestate.model import (
    DEFAULT_TARGET,
    FIRSTBOOT_DONE,
    KEYS_BEGIN,
    KEYS_END,
    NM_KEYFILE,
    ZRAM_WANTS,
    Concern,
    Part,
    managed_authorized_keys,
)
from fleetimg.nodestate.spec import FileSpec, SymlinkSpec
from tests.conftest import DATA


@pytest.fixture
def node(tmp_path: Path) -> inventory.Node:
    path = tmp_path / "fleet.toml"
    path.write_text(inventory.starter_toml(nodes=3, subnet="192.168.10.0/24"))
    return inventory.load(path).node("node3")


@pytest.fixture
def board(node: inventory.Node, tmp_path: Path) -> MemFs:
    fleet = inventory.load(tmp_path / "fleet.toml")
    requested = tuple(p for p in read_paths(fleet) if not p.endswith(("id_ed25519", "shadow")))
    return parse_read_output(node, (DATA / "apply-read.txt").read_text(), requested)[1]


def test_facts_and_files_of_a_booted_card(node: inventory.Node, tmp_path: Path) -> None:
    facts, fs = parse_read_output(node, (DATA / "apply-read.txt").read_text(),
                                  read_paths(inventory.load(tmp_path / "fleet.toml")))
    assert facts.systemd and facts.networkmanager and facts.hostname == "node3"
    assert facts.active["eth0"] == "ebb48896-ac7d-4c69-a628-5eb2e088526e"
    assert "docker" in facts.running and not facts.network_try_pending
    assert fs.read_text("/etc/hostname") == "node3\n"
    keyfile = fs.stat(NM_KEYFILE)
    assert keyfile is not None and (keyfile.mode, keyfile.uid, keyfile.gid) == (0o600, 0, 0)
    target = fs.stat(DEFAULT_TARGET)
    assert target is not None and target.link_target == "/lib/systemd/system/multi-user.target"
    # /etc/skel's Desktop launcher is a symlink, kept as one.
    assert ("/etc/skel/Desktop/l4t-readme.desktop", "symlink") in fs.walk("/etc/skel")
    assert fs.listdir("/etc/fleetimg") == ["firstboot.conf", "firstboot.done"]
    assert fs.stat(ZRAM_WANTS) is None  # asked for, absent on this board


def test_a_path_never_read_is_a_bug_not_an_absent_file(board: MemFs) -> None:
    with pytest.raises(FleetimgError, match="is outside the paths read"):
        board.stat("/etc/shadow")
    # Under a directory that is absent, everything is known to be absent.
    assert board.stat("/etc/rancher/k3s/registries.yaml") is None


def test_incomplete_output_is_refused(node: inventory.Node) -> None:
    with pytest.raises(FleetimgError, match="did not finish"):
        parse_read_output(node, "systemd=yes\ntar=\n", ())


def test_plan_names_each_change_with_its_effect(board: MemFs) -> None:
    hosts = board.read("/etc/hosts") or b""
    part = Part(concern=Concern.NETWORK, files=(
        FileSpec("/etc/hostname", b"node9\n"),
        FileSpec("/etc/hosts", hosts, mode=0o640),
        FileSpec(NM_KEYFILE, b"[connection]\nid=other\n", mode=0o600)),
        symlinks=(SymlinkSpec(DEFAULT_TARGET, "/lib/systemd/system/graphical.target"),),
        remove=(FIRSTBOOT_DONE, ZRAM_WANTS))
    plan = plan_part(part, board)
    by_path = {c.path: c for c in plan.changes}
    hostname = by_path["/etc/hostname"]
    assert (hostname.action, hostname.effect) == (Action.MODIFY, Effect.HOSTNAME)
    assert "-node3" in hostname.diff and "+node9" in hostname.diff
    assert by_path["/etc/hosts"].action is Action.OWNER
    keyfile = by_path[NM_KEYFILE]
    # 0600 files may hold secrets: their content never reaches the screen.
    assert keyfile.effect is Effect.RECONNECT and keyfile.diff == ()
    assert "secret" in keyfile.detail
    assert by_path[DEFAULT_TARGET].effect is Effect.REBOOT
    assert by_path[FIRSTBOOT_DONE].action is Action.REMOVE
    assert ZRAM_WANTS not in by_path  # already absent
    assert [f.path for f in plan.writes.files] == ["/etc/hostname", "/etc/hosts", NM_KEYFILE]
    assert plan.writes.remove == (FIRSTBOOT_DONE,)


def test_unchanged_entries_plan_nothing(board: MemFs) -> None:
    part = Part(concern=Concern.NETWORK, files=(
        FileSpec("/etc/hostname", board.read("/etc/hostname") or b""),),
        symlinks=(SymlinkSpec(DEFAULT_TARGET, "/lib/systemd/system/multi-user.target"),))
    plan = plan_part(part, board)
    assert plan.changes == () and not plan.writes


def test_only_the_managed_keys_change() -> None:
    mine = "ssh-ed25519 AAAAmine me@laptop"
    a, b = "ssh-ed25519 AAAAa fleet-a", "ssh-ed25519 AAAAb fleet-b"
    first = managed_authorized_keys(f"{mine}\n{a}\n", [a, b])
    # The user's key stays; the copy of a managed key outside the block is folded in.
    assert first.splitlines() == [mine, KEYS_BEGIN, a, b, KEYS_END]
    assert managed_authorized_keys(first, [a, b]) == first
    second = managed_authorized_keys(first, [a])
    assert second.splitlines() == [mine, KEYS_BEGIN, a, KEYS_END]
    assert managed_authorized_keys(None, [a]).splitlines() == [KEYS_BEGIN, a, KEYS_END]
