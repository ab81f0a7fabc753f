"""The lab node image: Debian with sshd and a Docker engine, built locally by debootstrap.

Nothing is pulled from any registry: the root filesystem comes from Debian's package mirror
and is turned into an image with `docker import`. The tag carries a hash of everything that
goes into the image, so a second `lab up` finds it and skips the build.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from fleetimg import programs
from fleetimg.errors import LabError
from fleetimg.paths import state_dir

log = logging.getLogger("fleetimg.lab")

SUITE = "bookworm"
PACKAGES = (
    "openssh-server", "docker.io", "containerd", "iproute2", "sudo", "ca-certificates",
    "zstd", "pigz", "procps", "iptables", "gawk",
)
LAB_USER = "jetson"
IMAGE_REPO = "fleetimg/lab-node"
IMAGE_FORMAT = "3"  # bump when the build steps below change


def debian_mirror() -> str:
    return os.environ.get("FLEETIMG_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def init_script() -> str:
    return resources.files("fleetimg.lab").joinpath("files/lab-init.sh").read_text()


def node_image_tag() -> str:
    digest = hashlib.sha256(
        "\n".join([IMAGE_FORMAT, SUITE, *PACKAGES, init_script()]).encode()
    ).hexdigest()[:12]
    return f"{IMAGE_REPO}:{digest}"


def ensure_node_image(
    client: docker.DockerClient, on_step: Callable[[str], None] = lambda s: None
) -> str:
    return ensure_root_image(
        client, node_image_tag(), PACKAGES, _configure_root, on_step,
        what="the lab node image", changes=(
            'ENTRYPOINT ["/usr/local/sbin/fleetimg-lab-init"]', "LABEL io.fleetimg.lab-node=1"),
        configure_step="configuring the node user, sudo and sshd")


def ensure_root_image(
    client: docker.DockerClient, tag: str, packages: Sequence[str],
    configure: Callable[[Path], None], on_step: Callable[[str], None], *, what: str,
    changes: Sequence[str], configure_step: str,
) -> str:
    """A Debian root filesystem made by debootstrap, configured, and kept as the Docker
    image `tag` (nothing pulled from a registry); built only when `tag` is missing."""
    try:
        client.images.get(tag)
        return tag
    except ImageNotFound:
        pass
    if os.geteuid() != 0:
        raise LabError(
            f"building {what} needs root (debootstrap and chroot)",
            hint="run the command once with sudo; later runs reuse the image",
        )
    programs.require_tool("debootstrap")
    work = state_dir() / "build"
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lab-root-", dir=work))
    try:
        on_step(f"debootstrap {SUITE} (amd64) for {what} from {debian_mirror()}: a minute "
                "or two, once")
        programs.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
             SUITE, str(root), debian_mirror()], timeout=1800,
            hint="check that Debian's package mirror is reachable "
            "(FLEETIMG_DEBIAN_MIRROR chooses another)",
        )
        on_step(configure_step)
        configure(root)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        on_step(f"importing the root filesystem as {tag}")
        _import_root(root, tag, changes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


def _configure_root(root: Path) -> None:
    programs.run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash",
                "-G", "sudo,docker", LAB_USER])
    # '*' rather than useradd's '!': sshd refuses even key logins to a locked account.
    programs.run(["chroot", str(root), "usermod", "-p", "*", LAB_USER])
    sudoers = root / "etc/sudoers.d" / LAB_USER
    sudoers.write_text(f"{LAB_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/fleetimg-lab.conf").write_text(
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
    )
    init = root / "usr/local/sbin/fleetimg-lab-init"
    init.write_text(init_script())
    init.chmod(0o755)
    (root / "etc/hostname").write_text("lab-node\n")


def _import_root(root: Path, tag: str, changes: Sequence[str]) -> None:
    tar = programs.spawn(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stderr=None)
    assert tar.stdout is not None
    argv = ["docker", "import"]
    for change in changes:
        argv += ["-c", change]
    importer = programs.spawn([*argv, "-", tag], stdin=tar.stdout)
    tar.stdout.close()
    _, err = importer.communicate()
    if tar.wait() != 0 or importer.returncode != 0:
        raise LabError(
            f"importing the lab root filesystem failed: {err.decode(errors='replace').strip()}",
            hint="is the Docker engine running? `fleetimg doctor`",
        )
