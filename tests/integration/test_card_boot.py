"""Cards that boot: a card written by `fleetimg sdcard` boots in the lab (systemd-nspawn on the
card's own APP partition, NetworkManager applying the card's keyfile) and joins the fleet.

Its own lab: one container node and two card nodes, so the shared lab's `all-nodes` stays
three containers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import docker
import pytest

from fleetimg import programs
from fleetimg.errors import ConnectionFailed
from fleetimg.inventory import Fleet, load
from fleetimg.lab.boot import boot_card, booted_cards, stop_card
from fleetimg.lab.manager import LabConfig
from fleetimg.lab.testimage import APP_START
from fleetimg.sdcard.ext4 import Ext4
from tests.integration.cards import on, probe_one, sdcard, ssh_to, write_card
from tests.integration.conftest import fleetimg_json
from tests.integration.images import build_app_image

pytestmark = pytest.mark.integration

def test_card_node_boots_and_joins_the_fleet(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    config, fleet = cards_lab
    assert [n.name for n in fleet.nodes] == ["node1", "node2", "node3", "node4"]
    assert fleet.groups["cards"] == ("node2", "node3", "node4")
    card = write_card(fleet, "node2", bootable, tmp_path / "node2.img")
    boot_card(fleet, config.name, card)
    try:
        probe = probe_one(fleet, "node2")
        assert probe["reachable"] and probe["address"] == fleet.node("node2").address
        assert probe["hostname"] == "node2" and probe["hosts_has_name"]
        assert probe["self_address"] == fleet.node("node2").address
        assert probe["firstboot"] == "done" and probe["warnings"] == []
        assert on(fleet, "node2", "getent hosts node2").split()[0] == probe["address"]
        on(fleet, "node2", "sudo -n true")
        state = on(fleet, "node2", "systemctl is-system-running || true")
        assert state in ("running", "degraded"), state
        failed = on(fleet, "node2", "systemctl --failed --no-legend --plain")
        assert "fleetimg" not in failed, failed
        # Never stopped at the wizard; NVIDIA's first boot ran; fleetimg's ran once.
        assert on(fleet, "node2", "test -e /var/log/nv-oem-config-reached && echo yes || "
                  "echo no") == "no"
        assert on(fleet, "node2", "test -e /etc/nv/nvfirstboot && echo yes || echo no") == "no"
        runs = on(fleet, "node2", "sudo -n journalctl -u fleetimg-firstboot --no-pager | "
                  "grep -c 'fleetimg-firstboot: done' || true")
        assert runs == "1", runs
        assert on(fleet, "node2", "systemctl is-active nvzramconfig || true") == "inactive"
        # R32: nothing told nv-late-init to grow, add swap or flash QSPI.
        assert on(fleet, "node2", "cat /var/log/nv-late-init.log 2>/dev/null || true") == ""
        # Push reaches the card's own Docker engine, running with the card's daemon.json.
        app = build_app_image("fleetimg-test/card-app:1", app="print('card')\n")
        code, pushed = fleetimg_json("-i", str(fleet.path), "push", app, "--to", "node2")
        assert code == 0, json.dumps(pushed)
        assert isinstance(pushed, dict) and pushed["nodes"][0]["action"] == "loaded"
        got = on(fleet, "node2", f"docker image inspect --format '{{{{.Id}}}}' {app}")
        assert got == docker_client.images.get(app).id
        assert on(fleet, "node2", "docker info --format '{{.DefaultRuntime}}'") == "nvidia"
        # ... and that engine starts containers (fleetimg run needs it): nspawn's read-only
        # cgroup controllers and keyring filter are lifted by lab boot.
        ran = on(fleet, "node2", f"docker run --rm --platform linux/arm64 {app}")
        assert "card" in ran, ran
    finally:
        stop_card("node2")
    assert not booted_cards()
    # Booting a card must not touch the host: binfmt_misc is kernel-wide here, and a card's
    # systemd-binfmt once flushed the host's arm64 handler.
    assert Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text().startswith("enabled")
    # What the board wrote is on the card, as on a real card.
    fs = Ext4(card, APP_START * 512)
    assert fs.stat("/etc/fleetimg/firstboot.done") is not None
    assert fs.stat("/etc/nv/nvfirstboot") is None


def test_two_cards_from_one_image_boot_side_by_side_as_distinct_boards(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, tmp_path: Path,
) -> None:
    config, fleet = cards_lab
    cards = {n: write_card(fleet, n, bootable, tmp_path / f"{n}.img") for n in ("node2", "node3")}
    try:
        for card in cards.values():
            boot_card(fleet, config.name, card)
        ids = {n: on(fleet, n, "cat /etc/machine-id") for n in cards}
        keys = {n: on(fleet, n, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
                for n in cards}
        assert len(set(ids.values())) == 2 and all(ids.values())
        assert len(set(keys.values())) == 2
        assert on(fleet, "node3", "getent hosts node2").split()[0] == fleet.node("node2").address
    finally:
        for n in cards:
            stop_card(n)


def test_the_login_key_on_the_card_is_what_grants_access(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, tmp_path: Path,
) -> None:
    config, fleet = cards_lab
    # Same fleet, but [sdcard] authorizes another key than the lab's.
    other = tmp_path / "other_ed25519"
    programs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    inv = fleet.base_dir / "fleet-otherkey.toml"
    text = fleet.path.read_text() if fleet.path else ""
    inv.write_text(text.replace("[sdcard]\n", f'[sdcard]\nauthorized_keys = ["{other}.pub"]\n'))
    other_fleet = load(inv)
    card = write_card(other_fleet, "node3", bootable, tmp_path / "node3.img")
    boot_card(fleet, config.name, card)
    try:
        with pytest.raises(ConnectionFailed, match="login refused"):
            on(fleet, "node3", "true")
        as_other = dataclasses.replace(fleet.node("node3"), ssh_key=other)
        assert ssh_to(fleet).run(as_other, "hostname").stdout.strip() == "node3"
    finally:
        stop_card("node3")


def test_copy_of_a_booted_card_is_refused_unless_allowed_then_boots_as_another_node(
    cards_lab: tuple[LabConfig, Fleet], bootable: Path, tmp_path: Path,
) -> None:
    config, fleet = cards_lab
    source = write_card(fleet, "node2", bootable, tmp_path / "node2.img")
    boot_card(fleet, config.name, source)
    try:
        source_id = on(fleet, "node2", "cat /etc/machine-id")
    finally:
        stop_card("node2")
    clone = tmp_path / "node3.img"
    proc = sdcard(fleet, "--node", "node3", "--image", str(source), str(clone))
    assert proc.returncode == 2 and "cloned card" in proc.stderr, proc.stderr
    assert not clone.exists()
    write_card(fleet, "node3", source, clone, "--allow-cloned")
    boot_card(fleet, config.name, clone)
    try:
        assert on(fleet, "node3", "hostname") == "node3"
        clone_id = on(fleet, "node3", "cat /etc/machine-id")
        assert clone_id and clone_id != source_id
        assert on(fleet, "node3", "cat /etc/fleetimg/firstboot.done >/dev/null && echo ok") == "ok"
    finally:
        stop_card("node3")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_orin_card_boots_like_a_nano_card(
    cards_lab: tuple[LabConfig, Fleet], bootable_orin: Path, tmp_path: Path,
) -> None:
    config, fleet = cards_lab
    assert fleet.node("node4").module.name == "orin-nano"
    card = write_card(fleet, "node4", bootable_orin, tmp_path / "node4.img")
    # Through the CLI, with this lab's fleet.toml (not in the default lab directory) as -i:
    # the node and the lab both come from it.
    code, booted = fleetimg_json("-i", str(fleet.path), "lab", "boot", str(card))
    assert code == 0, booted
    assert isinstance(booted, dict) and (booted["name"], booted["lab"]) == ("node4", config.name)
    try:
        probe = probe_one(fleet, "node4")
        assert (probe["l4t"], probe["jetpack"], probe["board"]) == ("R36.4.3", "6.2", "generic")
        assert probe["module"] == "orin-nano" and probe["firmware"] == "36.4.3"
        # The keyfile names the Orin's port, and the card came up on it at its address.
        assert "enP8p1s0" in probe["interfaces"] and "eth0" not in probe["interfaces"]
        assert probe["address"] == fleet.node("node4").address and probe["hostname"] == "node4"
        assert probe["firstboot"] == "done" and probe["warnings"] == []
        # Power by name: MAXN_SUPER is mode 2 in an Orin Nano's (Super) model, 0 on a Nano.
        assert on(fleet, "node4", "cat /var/lib/nvpmodel/status") == "2"
        groups = on(fleet, "node4", "id -nG").split()
        assert {"render", "weston-launch", "video", "sudo"} <= set(groups), groups
        assert on(fleet, "node4", "test -e /var/log/nv-oem-config-reached && echo yes || "
                  "echo no") == "no"
    finally:
        stop_card("node4")
