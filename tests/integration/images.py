"""Small images the integration tests build locally (nothing may be pulled here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from fleetimg import run as runmod
from fleetimg.buildkit import find_build_command
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
        runmod.run(["tar", "-C", str(work / "root"), "-cf", str(work / "rootfs.tar"), "."])
        shutil.rmtree(work / "root")
        # FROM scratch under BuildKit with --platform: the image is labelled arm64, which
        # `docker import` never does, and nothing is pulled.
        (work / "Dockerfile").write_text("FROM scratch\nADD rootfs.tar /\nCMD [\"/bin/sh\"]\n")
        build = find_build_command()
        runmod.run([*build.argv, "--platform", "linux/arm64", "-t", ARM64_MINI, str(work)],
                   env=build.env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ARM64_MINI


def build_app_image(tag: str, *, app: str, l4t: str = "R32.7.1", blob_mb: int = 0) -> str:
    """A small app layer (and optionally a big random one) on the arm64 base, like a
    target image after a one-line code change."""
    work = Path(tempfile.mkdtemp(prefix="app-image-"))
    try:
        (work / "app.py").write_text(app)
        lines = [f"FROM {ARM64_MINI}",
                 f"LABEL io.fleetimg.l4t={l4t} io.fleetimg.target=test-app"]
        if blob_mb:
            (work / "blob.bin").write_bytes(os.urandom(blob_mb << 20))
            lines.append("COPY blob.bin /opt/blob.bin")
        lines += ["COPY app.py /app/app.py", 'CMD ["/bin/cat", "/app/app.py"]']
        (work / "Dockerfile").write_text("\n".join(lines) + "\n")
        build = find_build_command()
        runmod.run([*build.argv, "--platform", "linux/arm64", "-t", tag, str(work)],
                   env=build.env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag
