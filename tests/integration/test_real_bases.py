"""The targets on replicas of NVIDIA's real bases (fleetimg.lab.replicas, docs/replicas.md):
each builds, or refuses in one line with the way out where the base makes a GPU build
impossible off the board."""

from __future__ import annotations

import struct
from pathlib import Path

import docker
import pytest

from fleetimg.lab.replicas import (
    DEAD_PIP_INDEX,
    REPLICA_CUDA_PYTORCH,
    REPLICA_R32_PYTORCH,
    REPLICA_R35_PYTORCH,
    REPLICA_R36_PYTORCH,
    ensure_replica,
)
from fleetimg.lab.standin import STANDIN_DEBIAN
from tests.integration.conftest import CA_BUNDLE, fleetimg_json
from tests.integration.test_build import built

pytestmark = pytest.mark.integration

EM_CUDA = 190  # ELF e_machine of a cubin
# Docker Hub's debian:bookworm-slim, the cross stage's base, is the local stand-in here.
CROSS = ("--build-arg", f"CROSS_IMAGE={STANDIN_DEBIAN}")


@pytest.fixture(scope="session")
def replicas(docker_client: docker.DockerClient, standin_horovod: str) -> dict[int, str]:
    return {major: ensure_replica(docker_client, tag, CA_BUNDLE)
            for major, tag in ((32, REPLICA_R32_PYTORCH), (35, REPLICA_R35_PYTORCH),
                               (36, REPLICA_R36_PYTORCH))}


def sh(docker_client: docker.DockerClient, image: str, script: str) -> str:
    out: bytes = docker_client.containers.run(image, ["sh", "-c", script + " 2>&1; true"],
                                              platform="linux/arm64", remove=True)
    return out.decode()


def test_the_replicas_are_as_harsh_as_the_real_bases(
        docker_client: docker.DockerClient, replicas: dict[int, str]) -> None:
    # JetPack 4: no CUDA libraries in the image; torch says it is a CUDA 10.2 build.
    r32 = sh(docker_client, replicas[32], "python3 -c 'import torch'")
    assert "libcurand.so.10: cannot open shared object file" in r32
    # JetPack 5 and 6: the toolkit behind absolute links.
    for major, version in ((35, "11.4"), (36, "12.6")):
        chain = sh(docker_client, replicas[major],
                   "readlink /usr/local/cuda; readlink /etc/alternatives/cuda")
        assert chain.split() == ["/etc/alternatives/cuda", f"/usr/local/cuda-{version}"]
    assert "'11.4'" in sh(docker_client, replicas[35],
                          "python3 -c 'import torch; print(repr(torch.version.cuda))'")
    # jetson-containers' r36: every pip step fails on the base's own index.
    r36 = sh(docker_client, replicas[36], "echo $PIP_INDEX_URL; pip3 download --no-deps "
             "--retries 0 --timeout 5 -d /tmp six")
    assert r36.startswith(DEAD_PIP_INDEX) and "No matching distribution found for six" in r36


def test_pytorch_builds_on_the_jetpack_4_replica_and_defers_its_self_test(
        replicas: dict[int, str]) -> None:
    code, data = fleetimg_json("build", "pytorch", "--l4t", "R32.7.1", "--base", replicas[32],
                               "--tag", "itest/pytorch:r32-replica")
    assert code == 0, data
    assert str(built(data)["smoke"]) == (
        "self-test deferred to the board: this JetPack 4 base's torch needs libcurand.so.10, "
        "which the board's nvidia runtime mounts at run time")


def test_pytorch_builds_on_the_jetpack_6_replica(replicas: dict[int, str]) -> None:
    code, data = fleetimg_json("build", "pytorch", "--l4t", "R36.4.3", "--base", replicas[36],
                               "--tag", "itest/pytorch:r36-replica")
    assert code == 0, data
    assert "self-test ok" in str(built(data)["smoke"])


def test_horovod_on_the_jetpack_4_replica_refuses_in_one_line(
        replicas: dict[int, str]) -> None:
    # JetPack 4 off the board: no CUDA at build time, so no Horovod (with or without CUDA),
    # said before minutes of packages are installed.
    code, data = fleetimg_json("build", "horovod", "--l4t", "R32.7.1", "--base", replicas[32],
                               *CROSS, "--ca-bundle", str(CA_BUNDLE))
    assert code == 1, data
    assert isinstance(data, dict)
    assert data["error"]["message"].startswith(
        "this base's torch cannot load libcurand.so.10 at build time")
    assert "on the board itself" in data["error"]["hint"]


def test_a_cpu_only_build_is_refused_where_torch_has_cuda(replicas: dict[int, str]) -> None:
    code, data = fleetimg_json("build", "horovod", "--l4t", "R35.4.1", "--base", replicas[35],
                               "--cpu-only", *CROSS, "--ca-bundle", str(CA_BUNDLE))
    assert code == 1, data
    assert isinstance(data, dict)
    assert "torch is a CUDA 11.4 build" in data["error"]["message"]


@pytest.fixture(scope="session")
def cuda_replica(docker_client: docker.DockerClient, standin_horovod: str) -> str:
    return ensure_replica(docker_client, REPLICA_CUDA_PYTORCH, CA_BUNDLE)


def test_the_cuda_replica_is_a_gpu_base_behind_absolute_links(
        docker_client: docker.DockerClient, cuda_replica: str) -> None:
    out = sh(docker_client, cuda_replica,
             "readlink /usr/local/cuda; readlink /etc/alternatives/cuda; "
             "python3 -c 'import torch; print(torch.version.cuda)'; "
             "/usr/local/cuda/bin/nvcc --version | tail -n 1")
    lines = out.split()
    assert lines[:3] == ["/etc/alternatives/cuda", "/usr/local/cuda-13.0", "13.0"], out
    assert "cuda_13.0" in out, out


def fatbin_cubin_sms(library: bytes) -> set[int]:
    """The SMs of the cubins a library carries: the ELF images (e_machine EM_CUDA) nvcc's
    fatbinary embeds uncompressed in .nv_fatbin; e_flags bits 8-15 hold the SM."""
    sms = set()
    at = library.find(b"\x7fELF", 1)
    while at != -1:
        header = library[at:at + 64]
        if len(header) == 64 and struct.unpack_from("<H", header, 18)[0] == EM_CUDA:
            sms.add((struct.unpack_from("<I", header, 48)[0] >> 8) & 0xFF)
        at = library.find(b"\x7fELF", at + 1)
    return sms


@pytest.mark.slow
def test_horovod_on_a_cuda_base_is_built_with_cuda_by_the_bases_nvcc(
        docker_client: docker.DockerClient, cuda_replica: str, tmp_path: Path) -> None:
    # The cross stage follows the absolute chain, compiles Horovod's CUDA code with the
    # base's own nvcc (under QEMU, clang as its host compiler) for the release's GPUs (R36:
    # Orin, SM 87) and its C++ with clang; the image's build step checks cuda_built().
    tag = "itest/horovod:cuda13-replica"
    code, data = fleetimg_json("build", "horovod", "--l4t", "R36.4.3", "--base", cuda_replica,
                               *CROSS, "--ca-bundle", str(CA_BUNDLE), "--tag", tag,
                               timeout=60 * 60)
    assert code == 0, data
    # The smoke test imports the CUDA torch and trains two workers over Gloo (on the CPU:
    # there is no GPU here), and says CUDA is built.
    assert "CUDA built" in str(built(data)["smoke"]), data
    image = docker_client.images.get(tag)
    assert image.labels["io.fleetimg.cuda"] == "true"
    out = sh(docker_client, tag, "cat /etc/fleetimg/horovod-cuda; python3 -c '"
             "import horovod.torch as hvd; print(hvd.cuda_built(), hvd.mpi_built())'")
    assert out.split()[-3:] == ["true", "True", "True"], out
    # Horovod's kernels are in its torch extension as SM 87 device code.
    docker_client.containers.run(
        tag, ["sh", "-c", "cp \"$(python3 -c 'import glob, horovod, os; print(glob.glob("
        "os.path.join(os.path.dirname(horovod.__file__), \"torch\", \"mpi_lib_v2*.so\"))[0])')\" "
        "/out/mpi_lib_v2.so"], platform="linux/arm64", remove=True,
        volumes={str(tmp_path): {"bind": "/out", "mode": "rw"}})
    library = (tmp_path / "mpi_lib_v2.so").read_bytes()
    assert fatbin_cubin_sms(library) == {87}
    assert b"batched_scaled_memcpy_k" in library


@pytest.mark.slow
def test_horovod_cpu_only_builds_past_a_dead_pip_index(
        replicas: dict[int, str], docker_client: docker.DockerClient) -> None:
    # The JetPack 6 replica's ENV PIP_INDEX_URL is dead: every pip step overrides it.
    code, data = fleetimg_json("build", "horovod", "--l4t", "R36.4.3", "--base", replicas[36],
                               "--cpu-only", *CROSS, "--ca-bundle", str(CA_BUNDLE), "--tag",
                               "itest/horovod:r36-replica", "--no-smoke", timeout=90 * 60)
    assert code == 0, data
    image = docker_client.images.get("itest/horovod:r36-replica")
    assert image.labels["io.fleetimg.cuda"] == "false"
    assert image.attrs["Config"]["Env"].count(f"PIP_INDEX_URL={DEAD_PIP_INDEX}") == 1
    marker = docker_client.containers.run("itest/horovod:r36-replica",
                                          ["cat", "/etc/fleetimg/horovod-cuda"],
                                          platform="linux/arm64", remove=True)
    assert marker == b"false\n"
