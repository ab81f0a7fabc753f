"""A Jetson-like SD card image, built without root (sgdisk + mke2fs -d), for rehearsals,
tests and benchmarks: GPT with APP (ext4 root) as partition 1 but physically last, and a
root filesystem skeleton with what fleetimg reads and edits.

Two layouts, chosen by the L4T release:
- JetPack 4/5 (a Nano's): 14 partitions, firmware blobs before APP;
- JetPack 6 (an Orin Nano's, NVIDIA's flash_t234_qspi_sd.xml): 15 partitions, the boot
  firmware lives in the module's QSPI, the card holds A/B kernels, recovery, two 64 MiB EFI
  system partitions (esp, esp_alt: FAT with EFI/BOOT/BOOTAA64.efi), UDA and reserved.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleetimg import newfile, programs
from fleetimg.l4t import L4TRelease, format_nv_tegra_release
from fleetimg.sdcard.gpt import SECTOR

DEFAULT_L4T = L4TRelease(32, 7, 1)
FIRMWARE_SECTORS = 1024
ESP_SECTORS = (64 << 20) // SECTOR
ESP_TYPE = "ef00"  # EFI system partition


@dataclass(frozen=True)
class Layout:
    """The partitions before APP, in disk order: (name, sectors, sgdisk type code)."""

    name: str
    before_app: tuple[tuple[str, int, str], ...]
    first_app_sector: int = 0  # where APP starts at the earliest

    @property
    def app_start(self) -> int:
        end = 40 + sum(sectors for _, sectors, _ in self.before_app)
        aligned = -(-end // 2048) * 2048  # APP 1 MiB aligned, as in NVIDIA's images
        return max(aligned, self.first_app_sector)


T210 = Layout("t210", tuple((name, FIRMWARE_SECTORS, "8300") for name in (
    "TBC", "RP1", "EBT", "WB0", "BPF", "BPF-DTB", "FX", "TOS", "DTB", "LNX", "EKS", "BMP",
    "RP4")), first_app_sector=28672)
T234 = Layout("t234", (
    ("A_kernel", FIRMWARE_SECTORS, "8300"), ("A_kernel-dtb", FIRMWARE_SECTORS, "8300"),
    ("A_reserved_on_user", FIRMWARE_SECTORS, "8300"), ("B_kernel", FIRMWARE_SECTORS, "8300"),
    ("B_kernel-dtb", FIRMWARE_SECTORS, "8300"), ("B_reserved_on_user", FIRMWARE_SECTORS, "8300"),
    ("recovery", FIRMWARE_SECTORS, "8300"), ("recovery-dtb", FIRMWARE_SECTORS, "8300"),
    ("esp", ESP_SECTORS, ESP_TYPE), ("recovery_alt", FIRMWARE_SECTORS, "8300"),
    ("recovery-dtb_alt", FIRMWARE_SECTORS, "8300"), ("esp_alt", ESP_SECTORS, ESP_TYPE),
    ("UDA", FIRMWARE_SECTORS, "8300"), ("reserved", FIRMWARE_SECTORS, "8300")))
APP_START = T210.app_start  # the Nano layout's


def layout_for(l4t: L4TRelease) -> Layout:
    return T234 if l4t.major >= 36 else T210

PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
systemd-network:x:100:102:systemd Network Management,,,:/run/systemd/netif:/usr/sbin/nologin
messagebus:x:103:106::/nonexistent:/usr/sbin/nologin
sshd:x:110:65534::/run/sshd:/usr/sbin/nologin
gdm:x:121:125:Gnome Display Manager:/var/lib/gdm3:/bin/false
"""
SHADOW = """root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
bin:*:19000:0:99999:7:::
sys:*:19000:0:99999:7:::
sync:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
systemd-network:*:19000:0:99999:7:::
messagebus:*:19000:0:99999:7:::
sshd:*:19000:0:99999:7:::
gdm:*:19000:0:99999:7:::
"""
GROUPS = [("root", 0), ("daemon", 1), ("bin", 2), ("sys", 3), ("adm", 4), ("tty", 5),
          ("disk", 6), ("dialout", 20), ("cdrom", 24), ("sudo", 27), ("audio", 29),
          ("dip", 30), ("video", 44), ("plugdev", 46), ("users", 100),
          ("systemd-journal", 101), ("systemd-network", 102), ("messagebus", 106),
          ("i2c", 108), ("render", 109), ("lpadmin", 115), ("gdm", 125), ("sambashare", 126),
          ("weston-launch", 127), ("gpio", 999), ("nogroup", 65534)]


def _write(root: Path, rel: str, text: str | bytes, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)


def make_rootfs(
    root: Path, *, l4t: L4TRelease, board: str, booted: bool = False, payload: int = 0,
    stock_identity: bool = False,
) -> None:
    """Fill `root` with a Jetson-like root filesystem skeleton.

    `stock_identity`: a never-booted image that ships SSH host keys and a machine-id, as
    NVIDIA's might (unverified): such an image is no clone, and no two cards may share them.
    """
    _write(root, "etc/nv_tegra_release", format_nv_tegra_release(l4t, board))
    _write(root, "etc/passwd", PASSWD)
    _write(root, "etc/shadow", SHADOW, 0o640)
    _write(root, "etc/group", "".join(f"{n}:x:{g}:\n" for n, g in GROUPS))
    _write(root, "etc/gshadow", "".join(f"{n}:*::\n" for n, _ in GROUPS), 0o640)
    _write(root, "etc/hostname", "localhost.localdomain\n")
    _write(root, "etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    _write(root, "etc/skel/.bashrc", "# ~/.bashrc\nexport PATH=/usr/local/cuda/bin:$PATH\n")
    _write(root, "etc/skel/.profile", "# ~/.profile\n[ -f ~/.bashrc ] && . ~/.bashrc\n")
    # L4T's skeleton has a Desktop/ of launchers, one of them a symlink.
    _write(root, "etc/skel/Desktop/nv_devzone.desktop",
           "[Desktop Entry]\nName=NVIDIA Developer Zone\nType=Link\n")
    os.symlink("/usr/share/applications/l4t-readme.desktop",
               root / "etc/skel/Desktop/l4t-readme.desktop")
    _write(root, "etc/docker/daemon.json", '{\n    "runtimes": {\n        "nvidia": {\n'
           '            "path": "nvidia-container-runtime",\n'
           '            "runtimeArgs": []\n        }\n    }\n}\n')
    _write(root, "etc/ssh/sshd_config", "#PermitRootLogin prohibit-password\nUsePAM yes\n")
    for target in ("nv-oem-config.target", "multi-user.target", "graphical.target"):
        _write(root, f"lib/systemd/system/{target}", f"[Unit]\nDescription={target}\n")
    # nvidia-l4t-init ships its zram unit in /etc/systemd/system, enabled by a wants link.
    _write(root, "etc/systemd/system/nvzramconfig.service",
           "[Unit]\nDescription=ZRAM configuration\n[Install]\nWantedBy=multi-user.target\n")
    for d in ("etc/NetworkManager/system-connections", "etc/systemd/system/multi-user.target.wants",
              "home", "root", "tmp", "var/lib", "usr/local/sbin", "etc/sudoers.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/NetworkManager/system-connections").chmod(0o755)
    os.symlink("/etc/systemd/system/nvzramconfig.service",
               root / "etc/systemd/system/multi-user.target.wants/nvzramconfig.service")
    default_target = root / "etc/systemd/system/default.target"
    if booted:
        # What a card copied from a running board looks like: first boot already done.
        _write(root, "etc/machine-id", "5f3b1c2d9e8a4b7c6d5e4f3a2b1c0d9e\n", 0o444)
        for kind in ("rsa", "ecdsa", "ed25519"):
            _write(root, f"etc/ssh/ssh_host_{kind}_key", f"PRIVATE {kind}\n", 0o600)
            _write(root, f"etc/ssh/ssh_host_{kind}_key.pub", f"ssh-{kind} AAAA source-board\n")
        _write(root, "etc/rancher/node/password", "a1b2c3d4e5f6\n", 0o600)
        with (root / "etc/passwd").open("a") as fh:
            fh.write("nvidia:x:1000:1000:nvidia,,,:/home/nvidia:/bin/bash\n")
        (root / "home/nvidia").mkdir()
        _write(root, "etc/hostname", "jetson-source\n")
        os.symlink("/lib/systemd/system/graphical.target", default_target)
    else:
        _write(root, "etc/machine-id", "", 0o444)
        _write(root, "etc/nv/nvfirstboot", "")
        os.symlink("/lib/systemd/system/nv-oem-config.target", default_target)
        if stock_identity:
            _write(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)
            _write(root, "var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
            for kind in ("rsa", "ecdsa", "ed25519"):
                _write(root, f"etc/ssh/ssh_host_{kind}_key", f"STOCK {kind}\n", 0o600)
                _write(root, f"etc/ssh/ssh_host_{kind}_key.pub", f"ssh-{kind} AAAA stock\n")
    if payload:
        # Incompressible data stands in for CUDA, cuDNN and the desktop: real blocks to copy.
        chunk = 8 << 20
        left, i = payload, 0
        while left > 0:
            blob = os.urandom(min(chunk, left))
            _write(root, f"usr/lib/aarch64-linux-gnu/payload-{i:03d}.bin", blob)
            left -= chunk
            i += 1


def build_test_image(
    out: Path,
    *,
    app_size: int = 256 << 20,
    l4t: L4TRelease = DEFAULT_L4T,
    board: str = "t210ref",
    booted: bool = False,
    payload: int = 16 << 20,
    stock_identity: bool = False,
    rootfs: Path | None = None,
) -> Path:
    """Write a Jetson-like SD card image to `out` (sparse where it is empty).

    `rootfs`: a prepared root filesystem directory for APP instead of the skeleton (the
    lab's bootable card)."""
    programs.require_tool("sgdisk")
    programs.require_tool("mke2fs")
    layout = layout_for(l4t)
    app_start = layout.app_start
    app_sectors = app_size // SECTOR
    total_sectors = app_start + app_sectors + 34
    # Staged as OUT.part, made new (never through a link left there; a leftover of a
    # killed run of ours is replaced, anything else refused) and removed on any failure.
    tmp_out = out.with_name(out.name + ".part")
    newfile.remove_leftover(tmp_out)
    with os.fdopen(newfile.create(tmp_out), "wb") as fh:
        fh.truncate(total_sectors * SECTOR)
    try:
        _fill(tmp_out, layout, app_start, app_sectors, app_size, rootfs, l4t=l4t, board=board,
              booted=booted, payload=payload, stock_identity=stock_identity)
        tmp_out.replace(out)
    except BaseException:
        tmp_out.unlink(missing_ok=True)
        raise
    return out


def _fill(tmp_out: Path, layout: Layout, app_start: int, app_sectors: int, app_size: int,
          rootfs: Path | None, *, l4t: L4TRelease, board: str, booted: bool, payload: int,
          stock_identity: bool) -> None:
    args = ["sgdisk", "-o", "-a", "8",
            "-n", f"1:{app_start}:{app_start + app_sectors - 1}", "-c", "1:APP", "-t", "1:8300"]
    start = 40
    for i, (name, sectors, code) in enumerate(layout.before_app, start=2):
        args += ["-n", f"{i}:{start}:{start + sectors - 1}", "-c", f"{i}:{name}",
                 "-t", f"{i}:{code}"]
        start += sectors
    programs.run([*args, str(tmp_out)])
    start = 40
    for _name, sectors, code in layout.before_app:
        if code == ESP_TYPE:
            _make_esp(tmp_out, start)
        else:
            with tmp_out.open("r+b") as fh:
                fh.seek(start * SECTOR)
                fh.write(os.urandom(64 << 10))  # blobs, partly filled like the real ones
        start += sectors
    if rootfs is not None:
        _make_app(rootfs, tmp_out, app_size, app_start)
    else:
        work = Path(tempfile.mkdtemp(prefix="jetson-rootfs-"))
        try:
            make_rootfs(work, l4t=l4t, board=board, booted=booted, payload=payload,
                        stock_identity=stock_identity)
            _make_app(work, tmp_out, app_size, app_start)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _make_app(root: Path, image: Path, app_size: int, app_start: int) -> None:
    programs.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "APP",
                "-E", f"offset={app_start * SECTOR}", "-d", str(root), str(image),
                str(app_size // 4096)])


def _make_esp(image: Path, start: int) -> None:
    """A FAT EFI system partition with the UEFI loader's path, as on an Orin card (mtools
    writes inside the image at an offset: no loop device, no root)."""
    programs.require_tool("mformat")
    target = f"{image}@@{start * SECTOR}"
    programs.run(["mformat", "-i", target, "-T", str(ESP_SECTORS), "-v", "ESP", "::"])
    with tempfile.TemporaryDirectory() as tmp:
        loader = Path(tmp) / "BOOTAA64.efi"
        loader.write_bytes(b"MZ" + os.urandom(4094))  # a PE image starts with MZ
        programs.run(["mmd", "-i", target, "::/EFI", "::/EFI/BOOT"])
        programs.run(["mcopy", "-i", target, str(loader), "::/EFI/BOOT/BOOTAA64.efi"])
