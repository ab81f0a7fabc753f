"""Every target builds for arm64 on the offline stand-in bases under QEMU, and its smoke
test passes there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import CA_BUNDLE, fleetimg, fleetimg_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def triton_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for NVIDIA's Jetson release tarball (GitHub is unreachable here)."""
    root = tmp_path_factory.mktemp("triton")
    server = root / "tritonserver" / "bin" / "tritonserver"
    server.parent.mkdir(parents=True)
    server.write_text("#!/bin/sh\necho stand-in tritonserver \"$@\"\n")
    server.chmod(0o755)
    (root / "tritonserver" / "backends").mkdir()
    out = root / "tritonserver2.19.0-jetpack4.6.1.tgz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root / "tritonserver", arcname="tritonserver")
    return out


def one_off_target(targets: Path, name: str, standin_base: str, steps: str) -> Path:
    """A FLEETIMG_DOCKERFILES directory holding one target NAME whose Dockerfile runs STEPS
    on the stand-in base, beside the real release table."""
    target = targets / name
    target.mkdir(parents=True)
    (target / "target.toml").write_text(f'description = "{name}"\nbase = "base"\n'
                                        'smoke = ["true"]\n[standin]\n'
                                        f'base = "{standin_base}"\n')
    (target / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" + steps)
    shutil.copy(Path(__file__).parents[2] / "dockerfiles" / "releases.toml", targets)
    return targets


def built(data: object) -> dict[str, object]:
    assert isinstance(data, list) and len(data) == 1
    assert isinstance(data[0], dict)
    return data[0]


def test_triton_builds_on_standin(standin_base: str, triton_tarball: Path,
                                  docker_client: docker.DockerClient) -> None:
    code, data = fleetimg_json("build", "triton", "--l4t", "R32.7.1", "--standin",
                               "--triton-tarball", str(triton_tarball),
                               "--ca-bundle", str(CA_BUNDLE), "--tag", "itest/triton:dev")
    assert code == 0, data
    result = built(data)
    assert "triton 2.19.0 installed" in str(result["smoke"])
    image = docker_client.images.get("itest/triton:dev")
    assert image.attrs["Architecture"] == "arm64"
    labels = image.labels
    assert labels["io.fleetimg.target"] == "triton" and labels["io.fleetimg.l4t"] == "R32.7.1"
    assert labels["io.fleetimg.jetpack"] == "4.6.1"
    env = image.attrs["Config"]["Env"]
    assert "TRITON_MIN_COMPUTE_CAPABILITY=5.3" in env
    assert {"8000/tcp", "8001/tcp", "8002/tcp"} <= set(image.attrs["Config"]["ExposedPorts"])
    assert image.attrs["Config"]["Healthcheck"]["Test"][-1].endswith("|| exit 1")
    # The CA bundle was a secret: no layer holds a copy.
    history = docker_client.api.history(image.id)
    assert not any("ca-certificates.crt" in (h.get("CreatedBy") or "") and "COPY" in
                   (h.get("CreatedBy") or "") for h in history)


def test_triton_on_jetpack_6_builds_on_the_igpu_image(standin_triton_igpu: str,
                                                      docker_client: docker.DockerClient) -> None:
    code, data = fleetimg_json("build", "triton", "--l4t", "R36.4.3", "--standin",
                               "--tag", "itest/triton:r36")
    assert code == 0, data
    result = built(data)
    assert result["base"] == standin_triton_igpu and result["dockerfile"] == "Dockerfile.igpu"
    assert "triton 2.51.0 installed, min compute capability 8.7" in str(result["smoke"])
    image = docker_client.images.get("itest/triton:r36")
    assert image.labels["io.fleetimg.l4t"] == "R36.4.0"
    assert image.attrs["Config"]["Entrypoint"] == ["/opt/tritonserver/bin/fleetimg-triton-start"]
    # The entry point hands its arguments to the server the base image holds.
    out = docker_client.containers.run("itest/triton:r36", ["--log-verbose=1"], remove=True,
                                       platform="linux/arm64")
    assert b"stand-in tritonserver --model-repository=/models" in out
    assert b"--min-supported-compute-capability=8.7" in out and b"--log-verbose=1" in out


def test_pytorch_builds_on_standin_and_runs_its_worker(standin_pytorch: str) -> None:
    code, data = fleetimg_json("build", "pytorch", "--l4t", "R32.7.1", "--standin",
                               "--tag", "itest/pytorch:dev")
    assert code == 0, data
    assert "self-test ok" in str(built(data)["smoke"])
    first = docker.from_env().images.get("itest/pytorch:dev")
    created = first.labels["org.opencontainers.image.created"]
    # Rebuilt without a change: the same image ID (no wall-clock label), so a push of it to
    # nodes that have it is "skipped", not "config and manifest sent".
    code, data = fleetimg_json("build", "pytorch", "--l4t", "R32.7.1", "--standin",
                               "--tag", "itest/pytorch:dev", "--no-smoke")
    assert code == 0, data
    again = docker.from_env().images.get("itest/pytorch:dev")
    assert again.id == first.id and again.labels["org.opencontainers.image.created"] == created


@pytest.mark.slow
def test_horovod_builds_on_standin_and_trains_on_two_workers(
        standin_horovod: str, docker_client: docker.DockerClient) -> None:
    # Horovod's C++ is cross-compiled natively (clang) against the stand-in's files, then
    # trained on under QEMU: two workers over Gloo.
    code, data = fleetimg_json("build", "horovod", "--l4t", "R32.7.1", "--standin",
                               "--ca-bundle", str(CA_BUNDLE), "--tag", "itest/horovod:dev",
                               timeout=90 * 60)
    assert code == 0, data
    smoke = str(built(data)["smoke"])
    assert "2 workers trained over Gloo with identical replicas" in smoke
    # The stand-in has no CUDA: the image says it is CPU-only, in its label and smoke line.
    assert "CPU-only: no CUDA" in smoke
    image = docker_client.images.get("itest/horovod:dev")
    assert image.labels["io.fleetimg.cuda"] == "false"
    assert image.attrs["Architecture"] == "arm64"
    assert image.labels["io.fleetimg.target"] == "horovod"
    assert "2222/tcp" in image.attrs["Config"]["ExposedPorts"]
    # The extension came from the cross stage's clang, not from a compiler under QEMU.
    compiler = docker_client.containers.run(
        "itest/horovod:dev", ["sh", "-c", "grep -ao 'clang version [0-9.]*' "
                              "/usr/local/lib/python3*/dist-packages/horovod/torch/*.so "
                              "| head -n 1"], platform="linux/arm64", remove=True)
    assert b"clang version" in compiler, compiler


def test_sigterm_stops_the_build_and_cleans_up(standin_base: str, tmp_path: Path) -> None:
    marker = f"started-{uuid.uuid4().hex}"  # never cached: the step must really run
    targets = one_off_target(tmp_path / "targets", "slow", standin_base,
                             f"RUN echo {marker} && sleep 600\n")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetimg", "build", "slow", "--l4t", "R32.7.1", "--standin"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "FLEETIMG_DOCKERFILES": str(targets), "TMPDIR": str(tmpdir)})
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line and "RUN" not in line:
            break
    else:
        pytest.fail(f"the build ended before its RUN step started (exit {proc.wait()})")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 143, rest  # 128 + SIGTERM, as a shell reports it
    assert "interrupted" in rest
    # Neither the docker client nor the staged build context outlives fleetimg.
    assert list(tmpdir.iterdir()) == []
    clients = [p for p in Path("/proc").glob("[0-9]*/cmdline")
               if str(tmpdir).encode() in _read_or_empty(p)]
    assert clients == []


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended while we looked
        return b""


def test_failed_step_is_named(standin_base: str, tmp_path: Path) -> None:
    targets = one_off_target(tmp_path, "broken", standin_base,
                             "RUN echo preparing\nRUN exit 3\n")
    proc = fleetimg("build", "broken", "--l4t", "R32.7.1", "--standin",
                    env={"FLEETIMG_DOCKERFILES": str(targets)})
    assert proc.returncode == 1
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert error == ["error: build failed at step [3/3] RUN exit 3 (exit code 3)"], proc.stderr
