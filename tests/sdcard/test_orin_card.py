"""An Orin Nano card on JetPack 6 (L4T R36): the port its keyfile names, power by name,
R36's groups, the firmware rule, GPT GUIDs kept, a clean filesystem."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.errors import UsageError
from fleetimg.inventory import Fleet
from fleetimg.l4t import L4TRelease
from fleetimg.lab.testimage import build_test_image
from fleetimg.nodestate.spec import FileSpec
from fleetimg.sdcard.flash import SdcardOptions, plan_card, prepare_source, write_card
from fleetimg.sdcard.gpt import read_table_file
from tests.sdcard.fixtures import app_fs, copy


@pytest.fixture(scope="session")
def orin_image(images: Path) -> Path:
    return build_test_image(images / "orin-r36.4.3.img", l4t=L4TRelease(36, 4, 3),
                            board="generic")


def orin_fleet(make_fleet: Callable[..., Fleet], firmware: str | None,
               sdcard: str = "") -> Fleet:
    fleet = make_fleet(sdcard)
    assert fleet.path is not None
    head, sep, node3 = fleet.path.read_text().partition('name = "node3"\n')
    node3 = node3.replace('module = "nano-4gb"', 'module = "orin-nano"\nl4t = "R36.4.3"'
                          + (f'\nfirmware = "{firmware}"' if firmware else ""), 1)
    fleet.path.write_text(head + sep + node3)
    return inventory.load(fleet.path)


def guids(image: Path) -> tuple[str, list[tuple[str, str]]]:
    table = read_table_file(image)
    return table.disk_guid, [(p.name, p.unique_guid) for p in table.partitions]


def test_orin_image_has_nvidias_sd_layout(orin_image: Path, tmp_path: Path) -> None:
    table = read_table_file(orin_image)
    assert len(table.partitions) == 15
    app = table.by_name("APP")
    assert app is not None and app.number == 1
    assert app.first_lba == max(p.first_lba for p in table.partitions)  # physically last
    esp = table.by_name("esp")
    assert esp is not None and table.by_name("esp_alt") is not None
    assert esp.type_guid.upper() == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # EFI system
    assert esp.size == 64 << 20
    # A real FAT file system with the UEFI loader's path.
    listing = subprocess.run(["mdir", "-i", f"{orin_image}@@{esp.offset}", "-b",
                              "::/EFI/BOOT"], capture_output=True, text=True, check=True)
    assert "BOOTAA64.EFI" in listing.stdout.upper()


def test_orin_nano_card(make_fleet: Callable[..., Fleet], orin_image: Path,
                        tmp_path: Path) -> None:
    fleet = orin_fleet(make_fleet, "36.4.3-gcid-38968081", 'power_mode = "25W"')
    out = tmp_path / "node3.img"
    options = SdcardOptions()
    plan = plan_card(fleet, fleet.node("node3"), out, prepare_source(orin_image), options)
    assert not [w for w in plan.warnings if "firmware" in w]
    write_card(plan, options)
    fs = app_fs(out)
    keyfile = fs.read_text("/etc/NetworkManager/system-connections/fleetimg-wired.nmconnection")
    assert "interface-name=enP8p1s0" in (keyfile or "")
    assert 'MAX_POWER_NAMES="25W"' in (fs.read_text("/etc/fleetimg/firstboot.conf") or "")
    group = fs.read_text("/etc/group") or ""
    for name in ("render", "weston-launch", "video", "sudo"):
        assert any(ln.startswith(f"{name}:") and ln.endswith("jetson")
                   for ln in group.splitlines()), name
    assert fs.stat("/etc/nv/nvautoconfig") is not None  # R36 touches it, as NVIDIA's script
    assert guids(out) == guids(orin_image)
    fs.fsck()


def test_nano_card_keeps_eth0(make_fleet: Callable[..., Fleet], jetson_image: Path,
                              tmp_path: Path) -> None:
    fleet = make_fleet()
    options = SdcardOptions()
    out = tmp_path / "node1.img"
    write_card(plan_card(fleet, fleet.node("node1"), out, prepare_source(jetson_image),
                         options), options)
    keyfile = app_fs(out).read_text(
        "/etc/NetworkManager/system-connections/fleetimg-wired.nmconnection") or ""
    assert "interface-name=eth0" in keyfile


def test_card_newer_than_the_firmware_is_refused(make_fleet: Callable[..., Fleet],
                                                 orin_image: Path, tmp_path: Path) -> None:
    fleet = orin_fleet(make_fleet, "35.5.0")
    out = tmp_path / "node3.img"
    with pytest.raises(UsageError, match=r"firmware R35\.5\.0 will not boot an L4T R36\.4\.3") \
            as info:
        plan_card(fleet, fleet.node("node3"), out, prepare_source(orin_image), SdcardOptions())
    assert info.value.hint is not None and "qspi-updater" in info.value.hint
    assert not out.exists()


def test_unknown_firmware_is_warned_with_the_command_that_checks_it(
    make_fleet: Callable[..., Fleet], orin_image: Path, tmp_path: Path
) -> None:
    fleet = orin_fleet(make_fleet, None)
    plan = plan_card(fleet, fleet.node("node3"), tmp_path / "n.img", prepare_source(orin_image),
                     SdcardOptions())
    assert any("firmware unknown" in w and "nvbootctrl dump-slots-info" in w
               for w in plan.warnings)


def test_weston_launch_is_created_on_r36_when_the_image_lacks_it(
    make_fleet: Callable[..., Fleet], orin_image: Path, tmp_path: Path
) -> None:
    source = copy(orin_image, tmp_path / "no-weston.img")
    fs = app_fs(source)
    for name in ("group", "gshadow"):
        text = fs.read_text(f"/etc/{name}") or ""
        inode = fs.stat(f"/etc/{name}")
        assert inode is not None
        kept = "".join(ln + "\n" for ln in text.splitlines()
                       if not ln.startswith("weston-launch:"))
        fs.apply(files=[FileSpec(f"/etc/{name}", kept.encode(), inode.mode, inode.uid,
                                 inode.gid)])
    fleet = orin_fleet(make_fleet, "36.4.3")
    out = tmp_path / "node3.img"
    options = SdcardOptions()
    write_card(plan_card(fleet, fleet.node("node3"), out, prepare_source(source), options),
               options)
    group = app_fs(out).read_text("/etc/group") or ""
    row = next(ln for ln in group.splitlines() if ln.startswith("weston-launch:"))
    assert row.endswith(":jetson") and int(row.split(":")[2]) < 1000
