"""The lab's bootable card: a JetPack-shaped SD card image whose APP really boots.

The GPT layout is the Jetson-like test image's (`lab/testimage.py`); APP holds Debian
bookworm amd64 from Debian's mirror (systemd, NetworkManager, openssh-server, sudo,
docker.io, avahi-daemon) with JetPack's first-boot machinery as stand-ins (`jetpack_standins.py`).
`fleetimg sdcard` personalises it like NVIDIA's image and `fleetimg lab boot` boots it.

The root filesystem is built once by debootstrap and kept as a Docker image (nothing is
pulled from any registry), as the lab node image is; each card image is made from it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import docker

from fleetimg import programs
from fleetimg.errors import LabError
from fleetimg.l4t import L4TRelease, format_nv_tegra_release
from fleetimg.lab import jetpack_standins as standins
from fleetimg.lab.nodeimage import SUITE, ensure_root_image
from fleetimg.lab.testimage import build_test_image
from fleetimg.paths import state_dir

PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "network-manager",
    "openssh-server", "sudo", "docker.io", "containerd", "iproute2", "iptables", "zstd",
    "pigz", "procps", "gawk", "ca-certificates", "util-linux", "e2fsprogs", "gdisk", "kmod",
    # NVIDIA's desktop image is Ubuntu desktop, which brings these: NAME.local answers.
    "avahi-daemon", "libnss-mdns",
)
IMAGE_REPO = "fleetimg/lab-card"
IMAGE_FORMAT = "1"  # bump when the build steps below change
# Room for what a rehearsal pushes onto the card; the image file stays sparse.
APP_SIZE = 4 << 30
# A Jetson's groups that Debian lacks; the overlay adds the user to them.
JETSON_GROUPS = ("i2c", "gpio", "weston-launch", "render")


def card_rootfs_tag() -> str:
    parts = [IMAGE_FORMAT, SUITE, *PACKAGES, *JETSON_GROUPS]
    parts += [f"{f.path}|{f.mode:o}|{f.content}" for f in standins.FILES]
    parts += [f"{a}->{b}" for a, b in standins.SYMLINKS]
    return f"{IMAGE_REPO}:{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:12]}"


def ensure_card_rootfs(client: docker.DockerClient,
                       on_step: Callable[[str], None] = lambda s: None) -> str:
    return ensure_root_image(
        client, card_rootfs_tag(), PACKAGES, _configure, on_step,
        what="the bootable card's root filesystem", changes=("LABEL io.fleetimg.lab-card=1",),
        configure_step="adding JetPack's first-boot machinery (stand-ins)")


def _configure(root: Path) -> None:
    for group in JETSON_GROUPS:
        programs.run(["chroot", str(root), "groupadd", "-f", "-r", group])
    _write(root, standins.FILES)
    for link, target in standins.SYMLINKS:
        path = root / link.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(target)
    # A stock card: no host keys, no machine-id, no login user, NVIDIA's default name.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    _default_name(root)


def _write(root: Path, files: Iterable[standins.StandinFile]) -> None:
    for f in files:
        path = root / f.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.content)
        path.chmod(f.mode)


def _default_name(root: Path) -> None:
    """NVIDIA's default hostname and its 127.0.1.1 line (the card overlay replaces both)."""
    (root / "etc/hostname").write_text("tegra-ubuntu\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 tegra-ubuntu\n")


def _export(tag: str, into: Path) -> None:
    container = programs.run(["docker", "create", tag, "/bin/true"]).stdout.strip()
    try:
        export = programs.spawn(["docker", "export", container], stderr=None)
        assert export.stdout is not None
        untar = programs.spawn(["tar", "--numeric-owner", "-x", "-C", str(into)],
                             stdin=export.stdout)
        export.stdout.close()
        _, err = untar.communicate()
        if export.wait() != 0 or untar.returncode != 0:
            raise LabError(f"unpacking {tag} failed: {err.decode(errors='replace').strip()}")
    finally:
        programs.run(["docker", "rm", "-f", container], check=False)
    # Docker's own traces in an exported container.
    (into / ".dockerenv").unlink(missing_ok=True)


def _as_orin_nano(root: Path, l4t: L4TRelease) -> None:
    """JetPack 6 runs on Orins only: an R36 card is an Orin Nano's (the SD card module)."""
    (root / "etc/nvpmodel/nvpmodel_t210.conf").unlink()
    _write(root, standins.orin_card_files(f"{l4t.major}.{l4t.minor}.{l4t.patch}"))


def build_bootable_card(out: Path, *, l4t: L4TRelease, board: str = "t210ref",
                        on_step: Callable[[str], None] = lambda s: None) -> Path:
    """A bootable JetPack-shaped card image at `out` (sparse, ~4 GiB apparent): a Nano's
    for R32/R35, an Orin Nano's (GPT layout, power model, device tree) for R36."""
    if l4t.major >= 36:
        board = "generic"  # R36's nv_tegra_release names no board
    tag = ensure_card_rootfs(docker.from_env(timeout=300), on_step)
    work = state_dir() / "build"
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="card-root-", dir=work))
    try:
        on_step(f"making the card image {out} (L4T {l4t})")
        _export(tag, root)
        (root / "etc/nv_tegra_release").write_text(format_nv_tegra_release(l4t, board))
        _default_name(root)  # an exported container holds Docker's empty placeholders
        if l4t.major >= 36:
            _as_orin_nano(root, l4t)
        build_test_image(out, app_size=APP_SIZE, l4t=l4t, board=board, rootfs=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out
