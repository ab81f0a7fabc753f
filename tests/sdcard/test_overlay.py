"""Per-node overlays on real ext4 inside real disk images, read back with debugfs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetimg import programs
from fleetimg.errors import ClonedImage, UsageError
from fleetimg.inventory import Fleet
from fleetimg.nodestate.model import KEYS_BEGIN, KEYS_END
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.flash import (
    CardResult,
    SdcardOptions,
    plan_card,
    prepare_source,
    write_card,
)
from fleetimg.sdcard.writer import plan_write
from tests.sdcard.fixtures import app_fs


def make_card(fleet: Fleet, node: str, image: Path, out: Path,
              options: SdcardOptions | None = None) -> CardResult:
    options = options or SdcardOptions()
    source = prepare_source(image)
    plan = plan_card(fleet, fleet.node(node), out, source, options)
    return write_card(plan, options)


def owner_mode(fs: Ext4, path: str) -> tuple[int, int, int]:
    inode = fs.stat(path)
    assert inode is not None, path
    return inode.mode, inode.uid, inode.gid


def test_node_image_has_identity_network_and_user(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    out = tmp_path / "node2.img"
    result = make_card(fleet, "node2", jetson_image, out)
    assert result.verified and out.exists() and not Path(f"{out}.part").exists()
    fs = app_fs(out)
    assert fs.read_text("/etc/hostname") == "node2\n"
    # Beside it, its block map: bmaptool flashes it (checking every range's sha256) and the
    # copy holds the same node.
    assert result.bmap == f"{out}.bmap" and Path(result.bmap).is_file()
    copy = tmp_path / "flashed.img"
    programs.run(["truncate", "-s", str(out.stat().st_size), str(copy)])
    programs.run(["bmaptool", "copy", "--bmap", result.bmap, str(out), str(copy)])
    assert app_fs(copy).read_text("/etc/hostname") == "node2\n"
    app_fs(copy).fsck()
    hosts = fs.read_text("/etc/hosts") or ""
    # Its own name resolves to its fleet address (Gloo binds it), never 127.0.1.1.
    assert "192.168.10.12\tnode2" in hosts and "127.0.1.1" not in hosts
    assert "192.168.10.11\tnode1" in hosts and "192.168.10.13\tnode3" in hosts

    nm = "/etc/NetworkManager/system-connections/fleetimg-wired.nmconnection"
    assert owner_mode(fs, nm) == (0o600, 0, 0)
    keyfile = fs.read_text(nm) or ""
    assert "address1=192.168.10.12/24,192.168.10.1" in keyfile
    assert "method=manual" in keyfile and "dns=192.168.10.1;" in keyfile
    assert "interface-name=eth0" in keyfile and "[ipv6]\nmethod=ignore" in keyfile

    passwd = fs.read_text("/etc/passwd") or ""
    assert "jetson:x:1000:1000:jetson,,,:/home/jetson:/bin/bash" in passwd
    shadow = fs.read_text("/etc/shadow") or ""
    assert any(line.startswith("jetson:*:") for line in shadow.splitlines())
    assert owner_mode(fs, "/etc/shadow")[0] == 0o640
    group = fs.read_text("/etc/group") or ""
    for g in ("sudo", "video", "audio", "adm", "i2c", "gpio"):
        assert any(ln.startswith(f"{g}:") and ln.endswith("jetson") for ln in group.splitlines())
    assert "jetson:x:1000:" in group
    assert "jetson:!::" in (fs.read_text("/etc/gshadow") or "")
    assert owner_mode(fs, "/etc/sudoers.d/fleetimg-jetson") == (0o440, 0, 0)

    assert owner_mode(fs, "/home/jetson") == (0o755, 1000, 1000)
    assert owner_mode(fs, "/home/jetson/.ssh") == (0o700, 1000, 1000)
    assert owner_mode(fs, "/home/jetson/.ssh/authorized_keys") == (0o600, 1000, 1000)
    pub = (fleet.base_dir / "id_fleet.pub").read_text().strip()
    keys = (fs.read_text("/home/jetson/.ssh/authorized_keys") or "").splitlines()
    # The keys fleetimg manages sit in its block, so `apply` can later change only those.
    assert keys == [KEYS_BEGIN, pub, KEYS_END]
    assert owner_mode(fs, "/home/jetson/.bashrc")[1:] == (1000, 1000)
    assert fs.stat("/home/jetson/.ssh/id_ed25519") is None  # internal key only when asked


def test_oem_config_skipped_but_nvfirstboot_kept(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    out = tmp_path / "node1.img"
    make_card(make_fleet(), "node1", jetson_image, out)
    fs = app_fs(out)
    target = fs.stat("/etc/systemd/system/default.target")
    assert target is not None and target.link_target == "/lib/systemd/system/multi-user.target"
    # R32: NVIDIA's own script leaves nvautoconfig alone; nv-late-init.sh would grow APP,
    # add a swap file and update QSPI on seeing it (docs/first-boot.md).
    assert fs.stat("/etc/nv/nvautoconfig") is None
    assert fs.stat("/etc/nv/nvfirstboot") is not None
    wants = fs.stat("/etc/systemd/system/multi-user.target.wants/fleetimg-firstboot.service")
    assert wants is not None and wants.link_target == "/etc/systemd/system/fleetimg-firstboot.service"
    assert owner_mode(fs, "/usr/local/sbin/fleetimg-firstboot")[0] == 0o755
    conf = fs.read_text("/etc/fleetimg/firstboot.conf") or ""
    assert "GROW_APP=1" in conf and 'MAX_POWER_NAMES="MAXN_SUPER MAXN"' in conf
    daemon = json.loads(fs.read_text("/etc/docker/daemon.json") or "{}")
    assert daemon["default-runtime"] == "nvidia"
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    fs.fsck()


def test_source_image_is_never_modified(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    before = programs.run(["sha256sum", str(jetson_image)]).stdout.split()[0]
    make_card(make_fleet(), "node3", jetson_image, tmp_path / "node3.img")
    assert programs.run(["sha256sum", str(jetson_image)]).stdout.split()[0] == before


def test_cards_get_unique_network_uuids(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    uuids = set()
    for name in ("node1", "node2"):
        out = tmp_path / f"{name}.img"
        make_card(fleet, name, jetson_image, out)
        text = app_fs(out).read_text(
            "/etc/NetworkManager/system-connections/fleetimg-wired.nmconnection") or ""
        uuids.add(next(ln for ln in text.splitlines() if ln.startswith("uuid=")))
    assert len(uuids) == 2


def test_k3s_worker_swap_off_and_internal_key(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    (tmp_path / "k3s-token").write_text("K10secret::server:abc\n")
    (tmp_path / "k3s-token").chmod(0o600)
    fleet = make_fleet('k3s_token_file = "k3s-token"\ninternal_ssh_key = true', runtime="k3s")
    out = tmp_path / "node2.img"
    result = make_card(fleet, "node2", jetson_image, out)
    fs = app_fs(out)
    assert owner_mode(fs, "/etc/rancher/k3s/config.yaml") == (0o600, 0, 0)
    config = fs.read_text("/etc/rancher/k3s/config.yaml") or ""
    assert "server: https://192.168.10.11:6443" in config
    assert "token: K10secret::server:abc" in config and "node-name: node2" in config
    # zram off: the wants link goes, NVIDIA's unit file stays as the package left it.
    assert fs.stat("/etc/systemd/system/multi-user.target.wants/nvzramconfig.service") is None
    unit = fs.read_text("/etc/systemd/system/nvzramconfig.service") or ""
    assert unit.startswith("[Unit]\nDescription=ZRAM configuration")
    assert owner_mode(fs, "/home/jetson/.ssh/id_ed25519") == (0o600, 1000, 1000)
    internal_pub = (fleet.base_dir / "fleet_internal_ed25519.pub").read_text().strip()
    assert internal_pub in (fs.read_text("/home/jetson/.ssh/authorized_keys") or "")
    # The secret never appears in what fleetimg reports.
    assert "K10secret" not in json.dumps(result.overlay)


def test_password_and_swap_file(make_fleet: Callable[..., Fleet], jetson_image: Path,
                                tmp_path: Path) -> None:
    hashed = programs.run(["openssl", "passwd", "-6", "-salt", "abcdefgh", "pw"]).stdout.strip()
    fleet = make_fleet(f'password_hash = "{hashed}"\nswap = "4G"\nheadless = false')
    out = tmp_path / "node1.img"
    make_card(fleet, "node1", jetson_image, out)
    fs = app_fs(out)
    assert f"jetson:{hashed}:" in (fs.read_text("/etc/shadow") or "")
    assert fs.stat("/etc/sudoers.d/fleetimg-jetson") is None
    assert "SWAPFILE=4G" in (fs.read_text("/etc/fleetimg/firstboot.conf") or "")
    target = fs.stat("/etc/systemd/system/default.target")
    assert target is not None and target.link_target == "/lib/systemd/system/graphical.target"


def test_cloned_image_refused_then_reset(
    make_fleet: Callable[..., Fleet], booted_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    out = tmp_path / "node2.img"
    with pytest.raises(ClonedImage) as info:
        make_card(fleet, "node2", booted_image, out)
    assert "nvfirstboot" in info.value.message and "K3s already joined" in info.value.message
    assert info.value.hint is not None and "--allow-cloned" in info.value.hint
    assert not out.exists()
    result = make_card(fleet, "node2", booted_image, out, SdcardOptions(allow_cloned=True))
    fs = app_fs(out)
    assert fs.read_text("/etc/machine-id") == ""
    assert not [k for k in fs.listdir("/etc/ssh") if k.startswith("ssh_host_")]
    assert fs.stat("/etc/rancher/node/password") is None
    assert fs.read_text("/etc/hostname") == "node2\n"
    assert any("identity reset" in n for n in result.notes)
    fs.fsck()


def test_invalid_settings_fail_before_any_write(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet(key=False)
    out = tmp_path / "node1.img"
    with pytest.raises(UsageError, match="no way to log in"):
        make_card(fleet, "node1", jetson_image, out)
    assert not out.exists() and not Path(f"{out}.part").exists()


def test_l4t_mismatch_is_warned(make_fleet: Callable[..., Fleet], jetson_image: Path,
                                tmp_path: Path) -> None:
    fleet = make_fleet()
    text = (fleet.base_dir / "fleet.toml").read_text().replace('l4t = "R32.7.1"', 'l4t = "R32.6.1"')
    (fleet.base_dir / "fleet.toml").write_text(text)
    from fleetimg.inventory import load

    fleet = load(fleet.base_dir / "fleet.toml")
    plan = plan_card(fleet, fleet.node("node1"), tmp_path / "n.img", prepare_source(jetson_image),
                     SdcardOptions())
    assert any("R32.7.1" in w and "R32.6.1" in w for w in plan.warnings)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetimg", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_cli_dry_run_writes_nothing_and_reports(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    out = tmp_path / "node2.img"
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node2", "--image", str(jetson_image),
               str(out), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["l4t"] == "R32.7.1"
    assert plan["mapped_bytes"] == plan_write(jetson_image).mapped_bytes
    paths = {e["path"] for e in plan["cards"][0]["overlay"]}
    assert "/etc/hostname" in paths and "/home/jetson/.ssh/authorized_keys" in paths
    assert not out.exists()


def test_cli_writes_image_file_and_refuses_cloned(
    make_fleet: Callable[..., Fleet], jetson_image: Path, booted_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    out = tmp_path / "node2.img"
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node2", "--image", str(jetson_image),
               str(out))
    assert proc.returncode == 0, proc.stderr
    assert "node2" in proc.stdout and "ok" in proc.stdout
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node3", "--image", str(booted_image),
               str(tmp_path / "node3.img"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "cloned card" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "node3.img").exists()
