"""`fleetimg apply` on running boards: booted lab cards (systemd, NetworkManager, sshd) for
moves, rollbacks and identity; the shared lab's container nodes for keys and --dry-run."""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetimg import programs
from fleetimg.inventory import Fleet, load
from fleetimg.lab.boot import boot_card, stop_card
from fleetimg.lab.manager import LabConfig
from fleetimg.nodestate.model import KEYS_BEGIN, KEYS_END, NM_KEYFILE
from tests.integration.cards import on, probe_one, write_card
from tests.integration.conftest import CARD_SUBNET, fleetimg_json

pytestmark = pytest.mark.integration

MANAGED = ("/etc/hostname", "/etc/hosts", "/etc/passwd", "/etc/group", "/etc/shadow",
           "/etc/docker/daemon.json", NM_KEYFILE, "/home/jetson/.ssh/authorized_keys",
           "/etc/sudoers.d/fleetimg-jetson")


def apply(fleet: Fleet | Path, *args: str) -> tuple[int, dict[str, Any]]:
    path = fleet if isinstance(fleet, Path) else fleet.path
    code, data = fleetimg_json("-i", str(path), "apply", *args, timeout=600)
    assert isinstance(data, dict), data
    return code, data


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in data["nodes"]}


def variant(fleet: Fleet, name: str, old: str, new: str) -> Path:
    """A copy of the fleet's inventory (same keys, same known_hosts) with `old` made `new`."""
    assert fleet.path is not None
    path = fleet.path.with_name(name)
    text = fleet.path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def address(n: int) -> str:
    return str(ipaddress.ip_network(CARD_SUBNET)[n])


def hashes(fleet: Fleet, node: str) -> str:
    return on(fleet, node, "sudo -n sha256sum " + " ".join(MANAGED) + " 2>/dev/null || true")


@pytest.fixture
def booted(cards_lab: tuple[LabConfig, Fleet], bootable: Path, bootable_orin: Path,
           tmp_path: Path) -> Iterator[list[str]]:
    """Cards booted by a test, stopped after it."""
    started: list[str] = []
    yield started
    for name in started:
        stop_card(name)


def boot(cards_lab: tuple[LabConfig, Fleet], started: list[str], node: str, image: Path,
         tmp_path: Path) -> Path:
    config, fleet = cards_lab
    card = write_card(fleet, node, image, tmp_path / f"{node}.img")
    boot_card(fleet, config.name, card)
    started.append(node)
    return card


def test_moving_a_node_reaches_it_at_its_new_address_and_every_hosts_file_follows(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, bootable_orin: Path,
    booted: list[str], tmp_path: Path,
) -> None:
    _, fleet = cards_lab
    boot(cards_lab, booted, "node2", bootable, tmp_path)
    boot(cards_lab, booted, "node4", bootable_orin, tmp_path)
    running = "node1,node2,node4"
    old, new = fleet.node("node4").address, address(60)
    probe_one(fleet, "node4")  # where apply looks for it once fleet.toml says otherwise
    moved = load(variant(fleet, "fleet-moved.toml", f'"{old}"', f'"{new}"'))

    before = hashes(fleet, "node4")
    code, plan = apply(moved, "--to", running, "--dry-run")
    assert code == 0 and plan["dry_run"], plan
    node4 = by_name(plan)["node4"]
    assert node4["reached_at"] == old and node4["address"] == new
    assert {"path": NM_KEYFILE, "effect": "reconnect"}.items() <= next(
        c for c in node4["changes"] if c["path"] == NM_KEYFILE).items()
    assert hashes(fleet, "node4") == before  # --dry-run changed nothing

    code, done = apply(moved, "--to", running, "--yes")
    assert code == 0, done
    assert by_name(done)["node4"]["moved_in_seconds"] is not None
    probe = probe_one(moved, "node4")
    assert probe["address"] == new and probe["hostname"] == "node4"
    assert probe["self_address"] == new and probe["warnings"] == []  # no drift
    for name in ("node1", "node2", "node4"):
        assert on(moved, name, "getent hosts node4").split()[0] == new, name

    code, again = apply(moved, "--to", running, "--yes")
    assert code == 0, again
    assert {n["name"]: n["result"] for n in again["nodes"]} == dict.fromkeys(
        ("node1", "node2", "node4"), "no changes")


def test_an_address_this_machine_cannot_reach_is_rolled_back_by_the_board(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, booted: list[str], tmp_path: Path,
) -> None:
    _, fleet = cards_lab
    boot(cards_lab, booted, "node2", bootable, tmp_path)
    old, new = fleet.node("node2").address, address(62)
    probe_one(fleet, "node2")
    away = variant(fleet, "fleet-away.toml", f'"{old}"', f'"{new}"')
    # This machine drops everything to the new address: as if the board went to a subnet
    # or VLAN the workstation has no route to.
    programs.run(["ip", "route", "add", "blackhole", f"{new}/32"])
    try:
        code, done = apply(away, "--to", "node2", "--yes")
    finally:
        programs.run(["ip", "route", "del", "blackhole", f"{new}/32"], check=False)
    assert code == 1
    node2 = by_name(done)["node2"]
    assert not node2["ok"] and "rolled back by itself" in node2["error"]
    assert f"answers at {old} again" in node2["error"] and new in node2["hint"]
    # Back where it was, with its old files: the inventory it came from sees no drift.
    assert on(fleet, "node2", "hostname") == "node2"
    assert on(fleet, "node2", "getent hosts node2").split()[0] == old
    code, plan = apply(fleet, "--to", "node2", "--dry-run")
    assert code == 0 and by_name(plan)["node2"]["changes"] == [], plan
    assert "rolled back" in on(fleet, "node2", "sudo -n cat /var/lib/fleetimg/apply/"
                               "last-network-try")


def test_a_cloned_running_board_gets_its_own_identity_and_the_next_command_connects(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, booted: list[str], tmp_path: Path,
) -> None:
    config, fleet = cards_lab
    card = boot(cards_lab, booted, "node3", bootable, tmp_path)
    machine_id = on(fleet, "node3", "cat /etc/machine-id")
    host_key = on(fleet, "node3", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    stop_card("node3")
    clone = tmp_path / "clone.img"
    shutil.copyfile(card, clone)  # the same board twice: same machine-id, same host keys
    boot_card(fleet, config.name, clone)
    assert on(fleet, "node3", "cat /etc/machine-id") == machine_id

    code, done = apply(fleet, "--to", "node3", "--reset", "identity", "--yes")
    assert code == 0, done
    node3 = by_name(done)["node3"]
    assert "restart ssh" in node3["done"] and "reboot" in node3["pending"]
    new_id = on(fleet, "node3", "cat /etc/machine-id")
    new_key = on(fleet, "node3", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    assert new_id and new_id != machine_id and new_key != host_key
    # fleetimg's known_hosts trusts the new key only: the next command connects.
    probe = probe_one(fleet, "node3")
    assert probe["hostname"] == "node3" and probe["apply_pending"] == ["reboot"]
    assert any("fleetimg apply --restart" in w for w in probe["warnings"])
    known = fleet.known_hosts.read_text()
    assert new_key in known and host_key not in known
    # The reboot the new machine-id wants is remembered until --restart does it.
    code, restarted = apply(fleet, "--to", "node3", "--restart", "--yes")
    assert code == 0 and by_name(restarted)["node3"]["done"] == ["reboot"], restarted
    assert on(fleet, "node3", "cat /etc/machine-id") == new_id
    assert probe_one(fleet, "node3")["warnings"] == []  # no drift left
    # The rebooted card's Docker can still start containers: lab boot's loop made its
    # cgroup controllers writable again, as on the first boot.
    read_only = on(fleet, "node3", "awk '$3 == \"cgroup\" && $4 ~ /(^|,)ro(,|$)/' "
                   "/proc/self/mounts")
    assert read_only == "", read_only
    code, plan = apply(fleet, "--to", "node3", "--dry-run")
    assert by_name(plan)["node3"]["pending_from_earlier"] == []


def test_keys_added_and_removed_in_the_inventory_reach_every_node(lab_fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    fleet = lab_fleet
    extra = tmp_path / "extra_ed25519"
    programs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "extra", "-f", str(extra)])
    lab_key = fleet.base_dir / "id_ed25519.pub"
    with_extra = variant(fleet, "fleet-keys.toml", "[sdcard]\n",
                         f'[sdcard]\nauthorized_keys = ["{lab_key}", "{extra}.pub"]\n')
    own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnKeyOfTheUserNotFleetimgs00000000000 me@laptop"
    on(fleet, "node1", f"echo '{own}' >> ~/.ssh/authorized_keys")
    names = [n.name for n in fleet.nodes]

    before = {n: hashes(fleet, n) for n in names}
    code, plan = apply(fleet, "--dry-run")
    assert code == 0 and plan["dry_run"]
    assert {n: hashes(fleet, n) for n in names} == before  # --dry-run changed nothing

    code, done = apply(with_extra, "--only", "users,network", "--yes")
    assert code == 0, done
    pub = (extra.parent / "extra_ed25519.pub").read_text().split()[1]
    for name in names:
        keys = on(fleet, name, "cat ~/.ssh/authorized_keys").splitlines()
        assert any(pub in k for k in keys), name
        assert keys.index(KEYS_BEGIN) < next(i for i, k in enumerate(keys) if pub in k) \
            < keys.index(KEYS_END)
    assert own in on(fleet, "node1", "cat ~/.ssh/authorized_keys")

    code, done = apply(fleet, "--only", "users,network", "--yes")
    assert code == 0, done
    for name in names:
        assert pub not in on(fleet, name, "cat ~/.ssh/authorized_keys"), name
    # Only fleetimg's keys were touched: the user's own stays, the lab's key still logs in.
    assert own in on(fleet, "node1", "cat ~/.ssh/authorized_keys")
    code, again = apply(fleet, "--only", "users,network", "--yes")
    assert code == 0 and all(n["result"] == "no changes" for n in again["nodes"]), again
