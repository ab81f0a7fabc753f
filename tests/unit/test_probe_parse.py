from __future__ import annotations

from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.errors import FleetimgError
from fleetimg.l4t import L4TRelease
from fleetimg.probe import parse_probe_output
from tests.conftest import DATA


@pytest.fixture
def fleet(tmp_path: Path) -> inventory.Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(inventory.starter_toml(nodes=3, subnet="192.168.10.0/24"))
    return inventory.load(path)


def test_lab_node_output(fleet: inventory.Fleet) -> None:
    probe = parse_probe_output(fleet.node("node2"), (DATA / "probe/lab-node.txt").read_text())
    assert probe.arch == "x86_64"
    assert probe.l4t == L4TRelease(32, 7, 1) and probe.jetpack == "4.6.1"
    assert probe.board == "t210ref"
    assert probe.docker_version == "20.10.24+dfsg1"
    assert probe.docker_runtime == "runc"
    assert probe.free_bytes == 80719936 * 1024
    assert probe.hostname_matches and probe.hosts_has_name
    assert probe.tools == ("zstd", "pigz", "gzip")
    assert probe.k3s_version is None
    assert probe.warnings == []


def test_real_nano_output_with_warnings(fleet: inventory.Fleet) -> None:
    probe = parse_probe_output(fleet.node("node2"), (DATA / "probe/nano-jp461.txt").read_text())
    assert probe.arch == "aarch64" and probe.runs_arm64
    assert probe.docker_runtime == "nvidia" and "nvidia" in probe.docker_runtimes
    assert probe.docker_sudo
    assert probe.k3s_version is not None and "v1.28.5" in probe.k3s_version
    assert not probe.hostname_matches
    warnings = " ".join(probe.warnings)
    assert "hostname is 'nano-02'" in warnings and "/etc/hosts lacks 'node2'" in warnings
    as_json = probe.to_dict()
    assert as_json["l4t"] == "R32.7.1" and as_json["jetpack"] == "4.6.1"


def test_truncated_output_is_an_error(fleet: inventory.Fleet) -> None:
    with pytest.raises(FleetimgError, match="probe output incomplete"):
        parse_probe_output(fleet.node("node1"), (DATA / "probe/truncated.txt").read_text())


def test_non_l4t_host(fleet: inventory.Fleet) -> None:
    probe = parse_probe_output(fleet.node("node1"), "arch=x86_64\nhostname=node1\nprobe=done\n")
    assert probe.l4t is None and probe.jetpack is None
    assert any("not an L4T system" in w for w in probe.warnings)


def test_card_whose_first_boot_failed_and_name_maps_to_loopback(fleet: inventory.Fleet) -> None:
    # The lines a card with NVIDIA's 127.0.1.1 mapping and a failed fleetimg first boot
    # gives (the format of probe.sh, as on tests/data/probe/lab-node.txt's lab node).
    text = (DATA / "probe/card-firstboot-failed.txt").read_text()
    probe = parse_probe_output(fleet.node("node2"), text)
    assert probe.self_address == "127.0.1.1"
    assert probe.firstboot == "failed: grow power"
    warnings = " ".join(probe.warnings)
    assert "resolves to 127.0.1.1" in warnings and "192.168.10.12" in warnings
    assert "first boot failed at grow power" in warnings
    assert probe.to_dict()["firstboot"] == "failed: grow power"


def test_finished_first_boot_and_fleet_address_warn_nothing(fleet: inventory.Fleet) -> None:
    text = (DATA / "probe/card-firstboot-failed.txt").read_text()
    text = text.replace("self_address=127.0.1.1", "self_address=192.168.10.12")
    text = text.replace("firstboot=failed: grow power", "firstboot=done")
    probe = parse_probe_output(fleet.node("node2"), text)
    assert probe.warnings == []


def test_orin_nano_on_jetpack_6(tmp_path: Path) -> None:
    # Field formats from NVIDIA's R36 files (nv_tegra_release's four-line form, the
    # NUL-separated device-tree compatible, nvbootctrl's "Current version"), put together
    # as probe.sh prints them; no Orin board was at hand to capture one.
    path = tmp_path / "fleet.toml"
    text = inventory.starter_toml(nodes=5, subnet="192.168.10.0/24")
    head, sep, node5 = text.partition('name = "node5"\n')
    node5 = node5.replace('module = "nano-4gb"', 'module = "orin-nano"\nl4t = "R36.4.3"', 1)
    path.write_text(head + sep + node5)
    node = inventory.load(path).node("node5")
    assert node.module.name == "orin-nano" and node.module.ethernet == "enP8p1s0"
    probe = parse_probe_output(node, (DATA / "probe/orin-nano-jp62.txt").read_text())
    assert probe.l4t == L4TRelease(36, 4, 3) and probe.jetpack == "6.2"
    assert probe.board == "generic"
    assert probe.compatible[0] == "nvidia,p3768-0000+p3767-0005-super"
    assert probe.module == "orin-nano"
    assert probe.l4t_package == "36.4.7-20250918154033"
    assert probe.firmware == "36.4.3-gcid-38968081"
    assert probe.interfaces == ("enP8p1s0", "wlP1p1s0", "docker0")
    assert probe.warnings == []


def test_module_mismatch_is_reported(fleet: inventory.Fleet) -> None:
    probe = parse_probe_output(fleet.node("node2"), (DATA / "probe/orin-nano-jp62.txt")
                               .read_text().replace("hostname=node5", "hostname=node2")
                               .replace("self_address=192.168.10.15",
                                        "self_address=192.168.10.12"))
    assert probe.module == "orin-nano" and probe.module_expected == "nano-4gb"
    assert any("the inventory says nano-4gb, the board is orin-nano" in w
               for w in probe.warnings)


@pytest.mark.parametrize(("compatible", "modules"), [
    ("nvidia,p3449-0000-b00+p3448-0000-b00 nvidia,jetson-nano nvidia,tegra210",
     ("nano-4gb", "nano-2gb")),
    ("nvidia,p3509-0000+p3767-0000 nvidia,p3767-0000 nvidia,tegra234", ("orin-nx",)),
    ("nvidia,p3737-0000+p3701-0005 nvidia,p3701-0005 nvidia,tegra234", ("agx-orin",)),
    ("nvidia,p3509-0000+p3668-0001 nvidia,tegra194", ("xavier-nx-emmc",)),
    ("nvidia,p3509-0000+p3668-0000 nvidia,tegra194", ("xavier-nx",)),
    ("nvidia,p3768-0000+p3767-0005-super nvidia,p3767-0005 nvidia,tegra234", ("orin-nano",)),
    ("nvidia,p3768-0000+p3767-0003-super nvidia,p3767-0003 nvidia,tegra234",
     ("orin-nano-module",)),
    ("nvidia,p3768-0000+p3767-0004 nvidia,p3767-0004 nvidia,tegra234", ("orin-nano-module",)),
    ("nvidia,p2771-0000 nvidia,p3310-1000 nvidia,tegra186", ("tx2",)),
    ("raspberrypi,4-model-b brcm,bcm2711", ()),
])
def test_module_from_device_tree(compatible: str, modules: tuple[str, ...]) -> None:
    assert inventory.modules_for_compatible(compatible) == modules
