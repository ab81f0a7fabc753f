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
- A GPU base with everything a CUDA build of Horovod needs at build time, as the JetPack 5
  and 6 l4t-jetpack-derived images carry it: a CUDA build of torch whose CUDA libraries are
  in the image (so it imports off the board), and a real nvcc behind the same absolute
  chain. Only CUDA 13 has an aarch64 nvcc on PyPI, so this one is CUDA 13 (NVIDIA's wheels;
  torch 2.11's CUDA 13.0 build).

What they cannot reproduce here is said in docs/replicas.md (Ubuntu's Python 3.6/3.8/3.10
and pip 9.0.1, a CUDA 10.2/11.4/12.x build of torch and nvcc: the first three replicas'
nvcc only answers --version).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker

from fleetimg.lab.standin import (
    build_on,
    cacert_secret,
    ensure_standin_base,
    ensure_standin_debian,
    ensure_standin_pytorch,
    image_exists,
)

REPLICA_R32_PYTORCH = "fleetimg/l4t-replica:r32-pytorch"
REPLICA_R35_PYTORCH = "fleetimg/l4t-replica:r35-pytorch"
REPLICA_R36_PYTORCH = "fleetimg/l4t-replica:r36-pytorch"
REPLICA_CUDA_PYTORCH = "fleetimg/l4t-replica:cuda13-pytorch"

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

# torch 2.11's CUDA 13.0 build for aarch64 and the CUDA wheels it was built against, from
# its own Requires-Dist (cuda-toolkit 13.0.2's parts), with two exceptions: nvidia-nccl-cu13
# 2.28.9 is not on this machine's index (2.32.6 is: NCCL keeps its ABI, only the soname
# libnccl.so.2 is loaded), and the toolkit's compiler parts (nvcc, cicc in nvvm, the crt,
# CCCL headers) come in addition. Installed without dependency resolution, for Python 3.11
# on aarch64, by the build machine's own pip (minutes faster than pip under QEMU).
CUDA_REPLICA_WHEELS = (
    "torch==2.11.0", "numpy<2.3",
    "nvidia-cuda-runtime==13.0.96", "nvidia-cublas==13.1.0.3", "nvidia-cufft==12.0.0.61",
    "nvidia-cufile==1.15.1.6", "nvidia-cuda-cupti==13.0.85", "nvidia-curand==10.4.0.35",
    "nvidia-cusolver==12.0.4.66", "nvidia-cusparse==12.6.3.3", "nvidia-nvjitlink==13.0.88",
    "nvidia-cuda-nvrtc==13.0.88", "nvidia-nvtx==13.0.85", "nvidia-cudnn-cu13==9.19.0.56",
    "nvidia-cusparselt-cu13==0.8.0", "nvidia-nccl-cu13==2.32.6", "nvidia-nvshmem-cu13==3.4.5",
    "nvidia-cuda-nvcc==13.0.88", "nvidia-cuda-crt==13.0.88", "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "filelock", "typing-extensions>=4.10", "sympy", "mpmath", "networkx", "jinja2",
    "markupsafe", "fsspec",
)
# NVIDIA's aarch64 wheels carry several manylinux tags (cuDNN 2_27, CUPTI 2_25): pip's
# --platform matches one tag exactly, so every one they use is named.
_AARCH64_TAGS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_25_aarch64",
                 "manylinux_2_17_aarch64", "manylinux2014_aarch64")
_SITE = "/usr/local/lib/python3.11/dist-packages"
_CU13 = f"{_SITE}/nvidia/cu13"

CUDA_DOCKERFILE = f"""\
ARG BASE_IMAGE
ARG NATIVE_IMAGE
FROM --platform=$BUILDPLATFORM ${{NATIVE_IMAGE}} AS wheels
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip \\
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \\
    pip3 install --no-cache-dir --break-system-packages --target /site --no-deps \\
        --only-binary :all: --implementation cp --python-version 3.11 --abi cp311 \\
        {" ".join(f"--platform {t}" for t in _AARCH64_TAGS)} \\
        {" ".join(repr(w) for w in CUDA_REPLICA_WHEELS)}

FROM ${{BASE_IMAGE}}
COPY --from=wheels /site/ {_SITE}/
# The toolkit as the board images lay it out: unversioned library links, lib64 and
# targets/aarch64-linux/{{include,lib}} (torch's extension builder looks in lib64, CMake's
# FindCUDAToolkit, cross-compiling, in targets/), behind the absolute chain
# /usr/local/cuda -> /etc/alternatives/cuda -> /usr/local/cuda-13.0 (here the wheels' tree).
RUN set -e; for lib in {_CU13}/lib/lib*.so.*; do \\
        link="${{lib%%.so.*}}.so"; [ -e "$link" ] || ln -s "$(basename "$lib")" "$link"; \\
    done \\
    && ln -s lib {_CU13}/lib64 \\
    && mkdir -p {_CU13}/targets/aarch64-linux \\
    && ln -s ../../include {_CU13}/targets/aarch64-linux/include \\
    && ln -s ../../lib {_CU13}/targets/aarch64-linux/lib \\
    && ln -s {_CU13} /usr/local/cuda-13.0 \\
    && ln -s /usr/local/cuda-13.0 /etc/alternatives/cuda \\
    && ln -s /etc/alternatives/cuda /usr/local/cuda \\
    && /usr/local/cuda/bin/nvcc --version \\
    && python3 -c 'import torch; assert torch.version.cuda == "13.0", torch.version.cuda'
ENV PATH=/usr/local/cuda/bin:$PATH
LABEL io.fleetimg.replica=l4t-jetpack-pytorch-cuda13
"""

REPLICAS = {
    REPLICA_R32_PYTORCH: R32_DOCKERFILE,
    REPLICA_R35_PYTORCH: R35_DOCKERFILE,
    REPLICA_R36_PYTORCH: R36_DOCKERFILE,
    REPLICA_CUDA_PYTORCH: CUDA_DOCKERFILE,
}


def ensure_replica(client: docker.DockerClient, tag: str, ca_bundle: Path | None = None,
                   on_step: Callable[[str], None] = lambda s: None) -> str:
    """The replica `tag` (one of REPLICAS), built when missing (`ca_bundle`: for pip behind
    a TLS-intercepting proxy). The CUDA one is built on the base stand-in (its torch is its
    own), the others on the pytorch stand-in."""
    if image_exists(client, tag):
        return tag
    if tag == REPLICA_CUDA_PYTORCH:
        base = ensure_standin_base(client, on_step)
        native = ensure_standin_debian(client, on_step)
        on_step(f"replica of a CUDA base: {tag} (about 4 GB of NVIDIA's wheels)")
        build_on(base, tag, REPLICAS[tag],
                 [*cacert_secret(ca_bundle), "--build-arg", f"NATIVE_IMAGE={native}"], timeout=3600)
        return tag
    base = ensure_standin_pytorch(client, ca_bundle, on_step)
    on_step(f"replica of a real base: {tag}")
    build_on(base, tag, REPLICAS[tag], timeout=1800)
    return tag
