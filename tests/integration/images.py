"""Small images the integration tests build locally (nothing may be pulled here)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from fleetimg import run as runmod
from fleetimg.lab.nodeimage import debian_mirror

ARM64_MINI = "fleetimg-test/arm64-mini:1"


def ensure_arm64_mini_image(client: docker.DockerClient) -> str:
    """An arm64 Debian root from debootstrap's first stage: enough to exec arm64 binaries."""
    try:
        client.images.get(ARM64_MINI)
        return ARM64_MINI
    except ImageNotFound:
        pass
    work = Path(tempfile.mkdtemp(prefix="arm64-mini-"))
    try:
        runmod.run(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
                    "bookworm", str(work / "root"), debian_mirror()])
        tar = runmod.spawn(["tar", "-C", str(work / "root"), "-c", "."], stderr=None)
        importer = runmod.spawn(["docker", "import", "--platform", "linux/arm64", "-",
                                 ARM64_MINI], stdin=tar.stdout)
        assert tar.stdout is not None
        tar.stdout.close()
        _, err = importer.communicate()
        assert tar.wait() == 0 and importer.returncode == 0, err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ARM64_MINI
