"""Replicas of NVIDIA's real base images: the stand-ins made as harsh as the real bases are
at build time, so a build that would break on NGC breaks here too.

The stand-ins (fleetimg.lab.standin) are Debian 12 with CPU PyTorch: kinder than the real
bases. Each replica adds, on the pytorch stand-in, the build-time facts of one family that
decide whether fleetimg's Dockerfiles build (sources in docs/replicas.md):

- JetPack 4, l4t-pytorch r32.x: no CUDA libraries in the image (the nvidia runtime mounts
  them from the board), so `import torch` fails off the board with "libcurand.so.10:
  cannot open shared object file" (jetson-containers #93/#126/#266); torch says CUDA 10.2.
- JetPack 5, l4t-pytorch r35.x: the CUDA toolkit behind a chain of absolute links,
  /usr/local/cuda -> /etc/alternatives/cuda -> /usr/local/cuda-11.4.
- JetPack 6, jetson-containers' l4t-pytorch r36.x: the same chain to cuda-12.6, and
  ENV PIP_INDEX_URL naming a host that is gone (jetson-containers #1202/#1207).

What they cannot reproduce here is said in docs/replicas.md (Ubuntu's Python 3.6/3.8/3.10
and pip 9.0.1, a CUDA 10.2/11.4/12.x build of torch and nvcc).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker

from fleetimg.lab.standin import build_on, ensure_standin_pytorch, image_exists

REPLICA_R32_PYTORCH = "fleetimg/l4t-replica:r32-pytorch"
REPLICA_R35_PYTORCH = "fleetimg/l4t-replica:r35-pytorch"
REPLICA_R36_PYTORCH = "fleetimg/l4t-replica:r36-pytorch"

# jetson-containers' r36 images set PIP_INDEX_URL=http://jetson.webredirect.org/jp6/cu126,
# a host that is gone (jetson-containers #1202). The replica names a loopback port instead.
DEAD_PIP_INDEX = "http://127.0.0.1:9/jp6/cu126"

_TORCH_DIR = "d=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')"

R32_DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
# torch's extension needs libcurand.so.10, which only the board's nvidia runtime provides;
# torch says it is a CUDA 10.2 build, as NVIDIA's r32 wheels do.
RUN apt-get update \\
    && apt-get install -y --no-install-recommends patchelf \\
    && {_TORCH_DIR} \\
    && patchelf --add-needed libcurand.so.10 "$d"/_C*.so \\
    && sed -i -E "s/^cuda(: Optional\\[str\\])? = .*/cuda\\1 = '10.2'/" "$d/version.py" \\
    && apt-get purge -y patchelf && apt-get clean && rm -rf /var/lib/apt/lists/* \\
    && ! python3 -c 'import torch' 2>/dev/null
LABEL io.fleetimg.replica=l4t-pytorch-r32
"""


def _cuda_chain_dockerfile(version: str, label: str, extra: str = "") -> str:
    # The toolkit directory holds bin/nvcc, as on the board images. No aarch64 nvcc of these
    # CUDA versions is installable here (docs/replicas.md), so this one only answers
    # --version as NVIDIA's does and compiles nothing: enough for the checks that decide
    # where Horovod compiles.
    say = f"Cuda compilation tools, release {version}, V{version}.0"
    return f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
RUN mkdir -p /usr/local/cuda-{version}/bin /usr/local/cuda-{version}/lib64 \\
    && printf '#!/bin/sh\\nif [ "$1" = --version ]; then echo "{say}"; exit 0; fi\\n\
echo "replica: not a real nvcc (docs/replicas.md)" >&2\\nexit 1\\n' \\
        > /usr/local/cuda-{version}/bin/nvcc \\
    && chmod 0755 /usr/local/cuda-{version}/bin/nvcc \\
    && ln -s /usr/local/cuda-{version} /etc/alternatives/cuda \\
    && ln -s /etc/alternatives/cuda /usr/local/cuda
{extra}LABEL io.fleetimg.replica={label}
"""


# NVIDIA's r35 l4t-pytorch wheels are CUDA 11.4 builds: the replica's torch says so.
R35_DOCKERFILE = _cuda_chain_dockerfile(
    "11.4", "l4t-pytorch-r35",
    f"RUN {_TORCH_DIR} \\\n"
    """    && sed -i -E "s/^cuda(: Optional\\[str\\])? = .*/cuda\\1 = '11.4'/" "$d/version.py"\n""")
# jetson-containers' r36 images name a pip index that is gone. It stands here as a loopback
# port nothing listens on: the same refusal, and no traffic leaves the machine.
R36_DOCKERFILE = _cuda_chain_dockerfile(
    "12.6", "dustynv-l4t-pytorch-r36",
    f"ENV PIP_INDEX_URL={DEAD_PIP_INDEX} PIP_TRUSTED_HOST=127.0.0.1\n")

REPLICAS = {
    REPLICA_R32_PYTORCH: R32_DOCKERFILE,
    REPLICA_R35_PYTORCH: R35_DOCKERFILE,
    REPLICA_R36_PYTORCH: R36_DOCKERFILE,
}


def ensure_replica(client: docker.DockerClient, tag: str, ca_bundle: Path | None = None,
                   on_step: Callable[[str], None] = lambda s: None) -> str:
    """The replica `tag` (one of REPLICAS), built on the pytorch stand-in when missing
    (`ca_bundle`: for that stand-in's pip, behind a TLS-intercepting proxy)."""
    if image_exists(client, tag):
        return tag
    base = ensure_standin_pytorch(client, ca_bundle, on_step)
    on_step(f"replica of a real base: {tag}")
    build_on(base, tag, REPLICAS[tag], timeout=1800)
    return tag
