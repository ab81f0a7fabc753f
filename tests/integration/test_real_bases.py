"""The targets on replicas of NVIDIA's real bases (fleetimg.lab.replicas, docs/replicas.md):
each builds, or refuses in one line with the way out where the base makes a GPU build
impossible off the board."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from fleetimg.buildkit import find_build_command
from fleetimg.lab.replicas import (
    DEAD_PIP_INDEX,
    REPLICA_R32_PYTORCH,
    REPLICA_R35_PYTORCH,
    REPLICA_R36_PYTORCH,
    ensure_replica,
)
from fleetimg.lab.standin import STANDIN_DEBIAN
from tests.integration.conftest import CA_BUNDLE, fleetimg_json
from tests.integration.test_build import built

pytestmark = pytest.mark.integration

HOROVOD = Path(__file__).parents[2] / "dockerfiles" / "horovod"
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


@pytest.mark.slow
def test_the_cross_stage_sees_cuda_behind_absolute_links(
        replicas: dict[int, str], docker_client: docker.DockerClient) -> None:
    # The JetPack 5 chain (/usr/local/cuda -> /etc/alternatives/cuda -> /usr/local/cuda-11.4)
    # once resolved on the build machine: a CUDA base was cross-compiled without CUDA. Now
    # the cross stage leaves the compile to the target: its /out holds no wheel. (Its log
    # says so too, but a cached step prints nothing: the outcome is what is checked.)
    build = find_build_command()
    tag = "fleetimg-test/horovod-cross:r35"
    argv = [*build.argv, "--platform", "linux/arm64", "--target", "cross", "--build-arg",
            f"BASE_IMAGE={replicas[35]}", *CROSS, "--secret", f"id=cacert,src={CA_BUNDLE}",
            "-t", tag, str(HOROVOD)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=build.env, timeout=3600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        out = docker_client.containers.run(tag, ["sh", "-c", "ls -A /out | wc -l"],
                                           remove=True)
        assert out.strip() == b"0"
    finally:
        docker_client.images.remove(tag, force=True)


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
