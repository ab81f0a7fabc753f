"""Every overlay item matches NVIDIA's real first boot (docs/first-boot.md): each test here
fails on the overlay as it was before those facts were checked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.inventory import Fleet
from fleetimg.l4t import L4TRelease
from fleetimg.lab.jetpack_standins import NVPMODEL_ORIN_NANO, NVPMODEL_T210
from fleetimg.lab.testimage import APP_START, build_test_image
from fleetimg.nodestate.spec import FileSpec
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.flash import SdcardOptions, plan_card, prepare_source, write_card
from tests.sdcard.fixtures import app_fs, copy

FIRSTBOOT = Path(__file__).parents[2] / "overlays" / "fleetimg-firstboot.sh"


def card(fleet: Fleet, node: str, image: Path, out: Path) -> Ext4:
    options = SdcardOptions()
    write_card(plan_card(fleet, fleet.node(node), out, prepare_source(image), options), options)
    return app_fs(out)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetimg", *args], capture_output=True,
                          text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)


def test_skel_directories_and_links_keep_their_type(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fs = card(make_fleet(), "node1", jetson_image, tmp_path / "n.img")
    desktop = fs.stat("/home/jetson/Desktop")
    assert desktop is not None and desktop.kind == "directory"
    assert (desktop.uid, desktop.gid) == (1000, 1000)
    launcher = fs.read_text("/home/jetson/Desktop/nv_devzone.desktop") or ""
    assert launcher.startswith("[Desktop Entry]")
    link = fs.stat("/home/jetson/Desktop/l4t-readme.desktop")
    assert link is not None and link.link_target == "/usr/share/applications/l4t-readme.desktop"
    fs.fsck()


def test_missing_parent_directories_are_created(jetson_image: Path, tmp_path: Path) -> None:
    fs = Ext4(copy(jetson_image, tmp_path / "n.img"), APP_START * 512)
    assert fs.stat("/opt") is None
    fs.apply(files=[FileSpec("/opt/fleetimg/deep/tool.sh", b"#!/bin/sh\n", 0o755)])
    assert fs.read("/opt/fleetimg/deep/tool.sh") == b"#!/bin/sh\n"
    deep = fs.stat("/opt/fleetimg/deep")
    assert deep is not None and deep.kind == "directory" and deep.mode == 0o755
    fs.fsck()


def test_stock_image_with_host_keys_is_no_clone_and_cards_get_none(
    make_fleet: Callable[..., Fleet], images: Path, tmp_path: Path
) -> None:
    stock = build_test_image(images / "stock-identity.img", stock_identity=True)
    fleet = make_fleet()
    for node in ("node1", "node2"):
        fs = card(fleet, node, stock, tmp_path / f"{node}.img")
        assert not [k for k in fs.listdir("/etc/ssh") if k.startswith("ssh_host_")]
        assert fs.read_text("/etc/machine-id") == ""
        assert fs.read_text("/var/lib/dbus/machine-id") == ""
        assert fs.stat("/etc/nv/nvfirstboot") is not None  # NVIDIA's first boot still runs


def test_nvautoconfig_only_where_nvidia_touches_it(
    make_fleet: Callable[..., Fleet], jetson_image: Path, images: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    r32 = card(fleet, "node1", jetson_image, tmp_path / "r32.img")
    assert r32.stat("/etc/nv/nvautoconfig") is None
    orin = build_test_image(images / "r36.img", l4t=L4TRelease(36, 4, 3), board="generic")
    assert fleet.path is not None
    fleet.path.write_text(fleet.path.read_text().replace(
        'module = "nano-4gb"', 'module = "orin-nano"\nl4t = "R36.4.3"\nfirmware = "36.4.3"', 1))
    r36 = card(inventory.load(fleet.path), "node1", orin, tmp_path / "r36.img")
    assert r36.stat("/etc/nv/nvautoconfig") is not None


def test_k3s_node_password_is_kept_per_node_and_reused(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet(runtime="k3s")
    first = card(fleet, "node2", jetson_image, tmp_path / "a.img")
    kept = fleet.base_dir / "k3s-node-passwords" / "node2"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    password = kept.read_text()
    assert len(password.strip()) == 32
    inode = first.stat("/etc/rancher/node/password")
    assert inode is not None and (inode.mode, inode.uid) == (0o600, 0)
    assert first.read_text("/etc/rancher/node/password") == password
    # Re-flashing the same node writes the same password: K3s accepts the node again.
    again = card(fleet, "node2", jetson_image, tmp_path / "b.img")
    assert again.read_text("/etc/rancher/node/password") == password
    other = card(fleet, "node3", jetson_image, tmp_path / "c.img")
    assert other.read_text("/etc/rancher/node/password") != password


def test_dry_run_creates_no_key_and_no_password(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet("internal_ssh_key = true", runtime="k3s")
    before = sorted(p.name for p in fleet.base_dir.iterdir())
    proc = cli("-i", str(fleet.path), "sdcard", "--nodes", "node1,node2", "--devices",
               f"{tmp_path / 'a.img'},{tmp_path / 'b.img'}", "--image", str(jetson_image),
               "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cards"][1]["node"] == "node2"
    assert sorted(p.name for p in fleet.base_dir.iterdir()) == before
    # The real run creates them, once, and both cards carry the same internal key.
    proc = cli("-i", str(fleet.path), "sdcard", "--nodes", "node1,node2", "--devices",
               f"{tmp_path / 'a.img'},{tmp_path / 'b.img'}", "--image", str(jetson_image))
    assert proc.returncode == 0, proc.stderr
    key = fleet.base_dir / "fleet_internal_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for name in ("a.img", "b.img"):
        assert app_fs(tmp_path / name).read("/home/jetson/.ssh/id_ed25519") == key.read_bytes()


@pytest.mark.parametrize(("conf", "expected"), [
    (NVPMODEL_ORIN_NANO, "2 MAXN_SUPER"),  # mode 0 there is 15 W
    (NVPMODEL_T210, "0 MAXN"),
    ("< POWER_MODEL ID=0 NAME=10W >\n", ""),
])
def test_power_mode_is_chosen_by_name(tmp_path: Path, conf: str, expected: str) -> None:
    path = tmp_path / "nvpmodel.conf"
    path.write_text(conf)
    out = subprocess.run(["sh", "-c", f'. "{FIRSTBOOT}"; power_mode_id "MAXN_SUPER MAXN" '
                          f'"{path}"'], capture_output=True, text=True, check=False,
                         env={**os.environ, "FLEETIMG_FIRSTBOOT_LIB": "1"})
    assert out.stdout.strip() == expected
    assert out.returncode == (0 if expected else 1)


def sandbox(tmp_path: Path, nvpmodel_rc: int) -> tuple[Path, dict[str, str]]:
    """A root directory the first-boot script runs against, with a stand-in nvpmodel."""
    root = tmp_path / "root"
    (root / "etc/fleetimg").mkdir(parents=True)
    (root / "etc/ssh").mkdir()
    (root / "etc/fleetimg/firstboot.conf").write_text(
        'GROW_APP=0\nMAX_POWER_NAMES="MAXN_SUPER MAXN"\nSWAPFILE=\nNODE=node1\n')
    (root / "etc/nvpmodel.conf").write_text(NVPMODEL_ORIN_NANO)
    (root / "etc/machine-id").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvpmodel"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/nvpmodel.calls"\nexit {nvpmodel_rc}\n')
    fake.chmod(0o755)
    env = {**os.environ, "FLEETIMG_FIRSTBOOT_ROOT": str(root),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return root, env


def test_first_boot_is_done_only_when_every_step_succeeded(tmp_path: Path) -> None:
    root, env = sandbox(tmp_path, nvpmodel_rc=0)
    proc = subprocess.run(["sh", str(FIRSTBOOT)], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "nvpmodel.calls").read_text() == "-m 2\n"
    assert (root / "etc/fleetimg/firstboot.done").exists()
    assert not (root / "etc/fleetimg/firstboot.failed").exists()
    assert list((root / "etc/ssh").glob("ssh_host_*_key"))
    assert (root / "etc/machine-id").read_text().strip()


def test_failed_first_boot_is_not_marked_done_and_says_what_failed(tmp_path: Path) -> None:
    root, env = sandbox(tmp_path, nvpmodel_rc=1)
    proc = subprocess.run(["sh", str(FIRSTBOOT)], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 1
    assert "FAILED: power" in proc.stdout
    assert not (root / "etc/fleetimg/firstboot.done").exists()
    assert (root / "etc/fleetimg/firstboot.failed").read_text() == "failed: power\n"
