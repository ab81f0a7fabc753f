"""Offline stand-ins for the NGC and Docker Hub base images, built locally for tests and
rehearsals.

NGC is unreachable here, so the real Dockerfiles are built on these through `--base`:
- `fleetimg/l4t-standin:base`: Debian 12 arm64 (debootstrap, both stages, the second under
  QEMU) with python3 and pip, standing in for l4t-base / l4t-jetpack;
- `fleetimg/l4t-standin:pytorch`: that plus CPU PyTorch, numpy and Pillow from PyPI,
  standing in for l4t-pytorch (JetPack 4/5) and jetson-containers' l4t-pytorch (JetPack 6);
- `fleetimg/l4t-standin:tritonserver-igpu`: the base plus a stub /opt/tritonserver, standing
  in for NGC's tritonserver:YY.MM-py3-igpu (the triton target's JetPack 6 base);
- `fleetimg/debian-standin:bookworm`: Debian 12 for this machine's own platform, standing
  in for Docker Hub's debian:bookworm-slim, where a build stage runs natively.
They are labelled with their platform (built FROM scratch / FROM the first with BuildKit),
so BuildKit uses them without trying a registry. They carry no CUDA: JetPack 4 mounts CUDA from
the host at run time anyway, and nothing in a build may need a GPU.
"""

from __future__ import annotations

import platform
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from fleetimg import programs
from fleetimg.buildkit import find_build_command
from fleetimg.lab.nodeimage import debian_mirror
from fleetimg.paths import state_dir

STANDIN_BASE = "fleetimg/l4t-standin:base"
STANDIN_PYTORCH = "fleetimg/l4t-standin:pytorch"
STANDIN_TRITON_IGPU = "fleetimg/l4t-standin:tritonserver-igpu"
STANDIN_DEBIAN = "fleetimg/debian-standin:bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "curl")
# CPU wheels on PyPI for Debian 12's Python 3.11 on aarch64.
PYTORCH_PIP = ("torch==2.9.1", "numpy<2.3", "pillow")

PYTORCH_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# The CA bundle is a build secret: proxies that intercept TLS need it, the image never keeps it.
RUN --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \\
    pip3 install --no-cache-dir --break-system-packages %s
LABEL io.fleetimg.standin=l4t-pytorch
"""

# What the triton target needs of NGC's igpu image: /opt/tritonserver with the server and
# its backends directory. The stub only echoes its arguments: no CUDA here to serve with.
TRITON_IGPU_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN mkdir -p /opt/tritonserver/bin /opt/tritonserver/backends \\
    && printf '#!/bin/sh\\necho "stand-in tritonserver $*"\\n' \\
        > /opt/tritonserver/bin/tritonserver \\
    && chmod 0755 /opt/tritonserver/bin/tritonserver
ENV TRITON_SERVER_VERSION=2.48.0
LABEL io.fleetimg.standin=tritonserver-igpu
"""


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


def ensure_standin_base(client: docker.DockerClient,
                        on_step: Callable[[str], None] = lambda s: None) -> str:
    if not image_exists(client, STANDIN_BASE):
        _debootstrap_image(STANDIN_BASE, "arm64", BASE_PACKAGES, "l4t-base", on_step)
    return STANDIN_BASE


def ensure_standin_debian(client: docker.DockerClient,
                          on_step: Callable[[str], None] = lambda s: None) -> str:
    """Debian 12 for this machine, standing in for Docker Hub's debian:bookworm-slim: the
    base of build stages that run natively (the horovod image's cross compiler)."""
    if not image_exists(client, STANDIN_DEBIAN):
        _debootstrap_image(STANDIN_DEBIAN, _native_arch(), ("ca-certificates",), "debian",
                           on_step)
    return STANDIN_DEBIAN


def _native_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _debootstrap_image(tag: str, arch: str, packages: Sequence[str], label: str,
                       on_step: Callable[[str], None]) -> None:
    """A minimal Debian 12 root filesystem for `arch` as image `tag`. A foreign one (arm64
    here) runs debootstrap's second stage under QEMU (minutes); this machine's, natively."""
    programs.require_tool("debootstrap")
    root_dir = state_dir() / "build"
    root_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="standin-", dir=root_dir))
    root = work / "root"
    foreign = arch != _native_arch()
    try:
        on_step(f"debootstrap bookworm {arch}" + (", first stage" if foreign else ""))
        programs.run(["debootstrap", f"--arch={arch}", "--variant=minbase",
                    *(["--foreign"] if foreign else []),
                    f"--include={','.join(packages)}", "bookworm", str(root),
                    debian_mirror()], timeout=3600)
        if foreign:
            on_step("second stage under QEMU (a few minutes)")
            programs.run(["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"],
                       timeout=3600)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        on_step(f"packing the root filesystem as {tag}")
        programs.run(["tar", "--numeric-owner", "-C", str(root), "-cf",
                    str(work / "rootfs.tar"), "."])
        shutil.rmtree(root)
        (work / "Dockerfile").write_text(
            f"FROM scratch\nADD rootfs.tar /\nLABEL io.fleetimg.standin={label}\n"
            'CMD ["/bin/bash"]\n')
        build = find_build_command()
        programs.run([*build.argv, "--platform", f"linux/{arch}", "-t", tag, str(work)],
                   env=build.env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_standin_pytorch(client: docker.DockerClient, ca_bundle: Path | None,
                           on_step: Callable[[str], None] = lambda s: None) -> str:
    if image_exists(client, STANDIN_PYTORCH):
        return STANDIN_PYTORCH
    base = ensure_standin_base(client, on_step)
    on_step(f"pip install {' '.join(PYTORCH_PIP)} under QEMU (several minutes)")
    specs = " ".join(shlex.quote(s) for s in PYTORCH_PIP)
    build_on(base, STANDIN_PYTORCH, PYTORCH_DOCKERFILE % specs, cacert_secret(ca_bundle),
             timeout=7200)
    return STANDIN_PYTORCH


def ensure_standin_triton_igpu(client: docker.DockerClient,
                               on_step: Callable[[str], None] = lambda s: None) -> str:
    if image_exists(client, STANDIN_TRITON_IGPU):
        return STANDIN_TRITON_IGPU
    base = ensure_standin_base(client, on_step)
    on_step(f"stand-in for NGC's tritonserver igpu image ({STANDIN_TRITON_IGPU})")
    build_on(base, STANDIN_TRITON_IGPU, TRITON_IGPU_DOCKERFILE)
    return STANDIN_TRITON_IGPU


def cacert_secret(ca_bundle: Path | None) -> list[str]:
    """Build arguments that lend pip the CA bundle (a TLS-intercepting proxy's) as the
    secret `cacert`: mounted for one step, never stored in the image."""
    return ["--secret", f"id=cacert,src={ca_bundle}"] if ca_bundle else []


def build_on(base: str, tag: str, dockerfile: str, extra: list[str] | None = None,
              timeout: float | None = None) -> None:
    """Build `dockerfile` (ARG BASE_IMAGE) on the stand-in `base` as arm64 image `tag`."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Dockerfile").write_text(dockerfile)
        build = find_build_command()
        programs.run([*build.argv, "--platform", "linux/arm64", "--build-arg",
                    f"BASE_IMAGE={base}", *(extra or []), "-t", tag, tmp],
                   env=build.env, timeout=timeout)
