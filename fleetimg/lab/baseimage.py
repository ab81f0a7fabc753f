"""arm64 images built locally for rehearsals (nothing may be pulled from a registry).

The base is Debian's arm64 root from debootstrap's first stage: enough to run arm64 programs
under QEMU, labelled linux/arm64 by building it FROM scratch with BuildKit (`docker import`
would label it amd64). `app_image` adds a small labelled app layer on top: what a target
image looks like after a one-line code change.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from fleetimg import programs
from fleetimg.buildkit import find_build_command
from fleetimg.lab.nodeimage import debian_mirror
from fleetimg.paths import state_dir

MINIMAL_BASE = "fleetimg/arm64-base:bookworm-minimal"


def _build(context: Path, tag: str) -> None:
    build = find_build_command()
    programs.run([*build.argv, "--platform", "linux/arm64", "-t", tag, str(context)],
               env=build.env)


def ensure_minimal_base(client: docker.DockerClient) -> str:
    try:
        client.images.get(MINIMAL_BASE)
        return MINIMAL_BASE
    except ImageNotFound:
        pass
    programs.require_tool("debootstrap")
    work_root = state_dir() / "build"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="arm64-base-", dir=work_root))
    try:
        programs.run(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
                    "bookworm", str(work / "root"), debian_mirror()])
        programs.run(["tar", "-C", str(work / "root"), "-cf", str(work / "rootfs.tar"), "."])
        shutil.rmtree(work / "root")
        (work / "Dockerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/bin/sh"]\n')
        _build(work, MINIMAL_BASE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MINIMAL_BASE


def app_image(client: docker.DockerClient, tag: str, *, app: str, l4t: str = "R32.7.1",
              blob_mb: int = 0, target: str = "lab-app") -> str:
    base = ensure_minimal_base(client)
    work = Path(tempfile.mkdtemp(prefix="app-image-"))
    try:
        (work / "app.py").write_text(app)
        lines = [f"FROM {base}", f"LABEL io.fleetimg.l4t={l4t} io.fleetimg.target={target}"]
        if blob_mb:
            (work / "blob.bin").write_bytes(os.urandom(blob_mb << 20))
            lines.append("COPY blob.bin /opt/blob.bin")
        lines += ["COPY app.py /app/app.py", 'CMD ["/bin/cat", "/app/app.py"]']
        (work / "Dockerfile").write_text("\n".join(lines) + "\n")
        _build(work, tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag


def scratch_image(tag: str, layers: Sequence[tuple[str, bytes]], *,
                  labels: Mapping[str, str]) -> str:
    """An arm64 image FROM scratch with one layer per (path, content): no emulation is
    needed to build it, and its size is exactly what the caller chose (benchmarks)."""
    work = Path(tempfile.mkdtemp(prefix="scratch-image-"))
    try:
        lines = ["FROM scratch"]
        lines += [f"LABEL {k}={v}" for k, v in labels.items()]
        for i, (path, content) in enumerate(layers):
            (work / f"f{i}").write_bytes(content)
            lines.append(f"COPY f{i} {path}")
        (work / "Dockerfile").write_text("\n".join(lines) + "\n")
        _build(work, tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag
