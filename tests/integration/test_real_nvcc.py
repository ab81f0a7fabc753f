"""Horovod's CUDA code compiled by a real aarch64 nvcc, for the GPUs fleetimg selects.

No CUDA build of Horovod runs here end to end (docs/replicas.md says what is missing), but
its CUDA code does compile for real: NVIDIA's CUDA 13 wheels for aarch64 carry a whole nvcc,
run here under QEMU. The compute capabilities are the ones fleetimg's build plan passes to
the horovod image (HOROVOD_BUILD_CUDA_CC_LIST), turned into nvcc flags by Horovod's own
build code, so a wrong spelling of the list ("8.7", "sm_87") fails here as it would in the
image."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import docker
import pytest

from fleetimg import inventory
from fleetimg.build.plan import board_releases, group_releases, plan_build, single_group
from fleetimg.build.targets import load_target
from fleetimg.buildkit import find_build_command
from fleetimg.lab.standin import image_exists
from tests.integration.conftest import CA_BUNDLE

pytestmark = pytest.mark.integration

NVCC_IMAGE = "fleetimg-test/nvcc:13.0.88"
CONTEXT = Path(__file__).parent / "nvcc"
EM_CUDA = 190  # ELF e_machine of a cubin


@pytest.fixture(scope="session")
def nvcc_image(docker_client: docker.DockerClient, standin_base: str) -> str:
    if not image_exists(docker_client, NVCC_IMAGE):
        build = find_build_command()
        argv = [*build.argv, "--platform", "linux/arm64", "--build-arg",
                f"BASE_IMAGE={standin_base}", "--secret", f"id=cacert,src={CA_BUNDLE}",
                "-t", NVCC_IMAGE, str(CONTEXT)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=build.env,
                              timeout=1800, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return NVCC_IMAGE


def orin_cc_list(tmp_path: Path) -> str:
    path = tmp_path / "fleet.toml"
    path.write_text(inventory.starter_toml(nodes=2, subnet="192.168.10.0/24",
                                           l4t="R36.4.3", module="orin-nano"))
    group = single_group(group_releases(board_releases(inventory.load(path).nodes, None)))
    plan = plan_build(load_target("horovod"), group, directory=tmp_path)
    return plan.build_args["HOROVOD_BUILD_CUDA_CC_LIST"]


def cubin_sm(header: bytes) -> int:
    """The SM a cubin is for: bits 8-15 of e_flags in the ELF header (CUDA >= 12.x's
    layout; the cubin is a 64-bit little-endian ELF)."""
    assert header[:4] == b"\x7fELF" and header[4] == 2  # ELFCLASS64
    (machine,) = struct.unpack_from("<H", header, 18)
    assert machine == EM_CUDA
    flags: int = struct.unpack_from("<I", header, 48)[0]
    return (flags >> 8) & 0xFF


def test_horovods_cuda_kernels_compile_for_the_fleets_gpus_with_a_real_nvcc(
        docker_client: docker.DockerClient, nvcc_image: str, tmp_path: Path) -> None:
    cc_list = orin_cc_list(tmp_path)
    assert cc_list == "87"
    out = tmp_path / "out"
    out.mkdir()
    log = docker_client.containers.run(
        nvcc_image, ["sh", "-c", f"compile-kernels {cc_list} /out 2>&1; echo rc=$?"],
        platform="linux/arm64", remove=True,
        volumes={str(out): {"bind": "/out", "mode": "rw"}}).decode()
    assert log.rstrip().endswith("rc=0"), log[-3000:]
    # Horovod's flags: native code for the fleet's GPU, and its PTX for later ones.
    assert 'arch=compute_87,code="sm_87,compute_87"' in log or \
        "arch=compute_87,code=sm_87,compute_87" in log, log
    cubins = sorted(p.name for p in out.glob("*.cubin"))
    assert cubins == ["cuda_kernels.sm_87.cubin"]
    cubin = (out / cubins[0]).read_bytes()
    assert cubin_sm(cubin[:64]) == 87
    # Horovod's kernels are in it, as device code, and the object nvcc made carries them.
    for kernel in (b"batched_memcpy_k", b"batched_scaled_memcpy_k", b"scale_buffer_k"):
        assert kernel in cubin, kernel
    obj = (out / "cuda_kernels.o").read_bytes()
    assert obj[:4] == b"\x7fELF" and struct.unpack_from("<H", obj, 18)[0] == 183  # aarch64
    assert b".nv_fatbin" in obj
