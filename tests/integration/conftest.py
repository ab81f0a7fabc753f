"""Integration fixtures: a real Docker engine, a real lab fleet, real sshd on every node.

The lab is built once per test run and shared; tests that need to break a node use their
own containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from fleetimg.inventory import Fleet
from fleetimg.l4t import L4TRelease
from fleetimg.lab.cardimage import build_bootable_card
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.lab.standin import (
    ensure_standin_base,
    ensure_standin_debian,
    ensure_standin_pytorch,
    ensure_standin_triton_igpu,
)
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.images import ensure_arm64_mini_image

# Another name and subnet let a second checkout run its suite beside this one.
LAB_NAME = os.environ.get("FLEETIMG_ITEST_LAB", "itest")
LAB_SUBNET = os.environ.get("FLEETIMG_ITEST_SUBNET", "172.29.214.0/24")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env()
    client.ping()
    return client


# The machine's bundle: on our machines HTTPS leaves through a TLS-intercepting proxy whose
# CA is only there, exactly the case --ca-bundle exists for.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="session")
def standin_base(docker_client: docker.DockerClient) -> str:
    return ensure_standin_base(docker_client)


@pytest.fixture(scope="session")
def standin_pytorch(docker_client: docker.DockerClient, standin_base: str) -> str:
    return ensure_standin_pytorch(docker_client, CA_BUNDLE)


@pytest.fixture(scope="session")
def standin_horovod(docker_client: docker.DockerClient, standin_pytorch: str) -> str:
    """What the horovod target builds on: the l4t-pytorch stand-in, and the Debian one for
    its cross-compile stage. Returns the former."""
    ensure_standin_debian(docker_client)
    return standin_pytorch


@pytest.fixture(scope="session")
def standin_triton_igpu(docker_client: docker.DockerClient, standin_base: str) -> str:
    return ensure_standin_triton_igpu(docker_client)


@pytest.fixture(scope="session")
def lab_config(tmp_path_factory: pytest.TempPathFactory) -> LabConfig:
    return LabConfig(name=LAB_NAME, nodes=3, subnet=LAB_SUBNET,
                     directory=tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="session")
def lab_fleet(docker_client: docker.DockerClient, lab_config: LabConfig) -> Iterator[Fleet]:
    lab_down(lab_config)  # leftovers of an interrupted earlier run
    fleet = lab_up(lab_config)
    yield fleet
    lab_down(lab_config)


# The lab of booted cards (card boot and apply tests share it and the card images):
CARD_SUBNET = os.environ.get("FLEETIMG_ITEST_CARD_SUBNET", "172.29.216.0/24")


@pytest.fixture(scope="session")
def cards_lab(tmp_path_factory: pytest.TempPathFactory,
              docker_client: docker.DockerClient) -> Iterator[tuple[LabConfig, Fleet]]:
    # node4 is an Orin Nano on JetPack 6.2: its card is an R36 one.
    config = LabConfig(name=f"{LAB_NAME}-cards", nodes=1, card_nodes=3, subnet=CARD_SUBNET,
                       directory=tmp_path_factory.mktemp("cards-lab"),
                       boards=((4, L4TRelease(36, 4, 3), "orin-nano"),))
    lab_down(config)
    fleet = lab_up(config)
    yield config, fleet
    lab_down(config)


# A lab of one DHCP card: its own network and dnsmasq, so the shared cards lab stays static.
DHCP_SUBNET = os.environ.get("FLEETIMG_ITEST_DHCP_SUBNET", "172.29.221.0/24")


@pytest.fixture(scope="session")
def dhcp_lab(tmp_path_factory: pytest.TempPathFactory,
             docker_client: docker.DockerClient) -> Iterator[tuple[LabConfig, Fleet]]:
    config = LabConfig(name=f"{LAB_NAME}-dhcp", nodes=0, card_nodes=1, dhcp_cards=1,
                       subnet=DHCP_SUBNET, directory=tmp_path_factory.mktemp("dhcp-lab"))
    lab_down(config)
    fleet = lab_up(config)
    yield config, fleet
    lab_down(config)


@pytest.fixture(scope="session")
def bootable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bootable_card(tmp_path_factory.mktemp("bootable") / "bootable.img",
                               l4t=L4TRelease(32, 7, 1))


@pytest.fixture(scope="session")
def bootable_orin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bootable_card(tmp_path_factory.mktemp("bootable") / "orin.img",
                               l4t=L4TRelease(36, 4, 3))


@pytest.fixture(scope="session")
def arm64_image(docker_client: docker.DockerClient) -> str:
    return ensure_arm64_mini_image(docker_client)


def fleetimg(*args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetimg", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout, check=False,
    )


def fleetimg_json(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 300) -> tuple[int, object]:
    proc = fleetimg(*args, "--json", env=env, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def inventory_arg(path: Path) -> tuple[str, str]:
    return ("-i", str(path))


@pytest.fixture(scope="session")
def ssh(lab_fleet: Fleet) -> Ssh:
    return Ssh(SshOptions(known_hosts=lab_fleet.known_hosts))


def node_image_id(ssh: Ssh, fleet: Fleet, name: str, ref: str) -> str | None:
    out = ssh.run(fleet.node(name), f"docker image inspect --format '{{{{.Id}}}}' {ref}",
                  check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def assert_every_node_has(ssh: Ssh, fleet: Fleet, ref: str, image_id: str) -> None:
    for node in fleet.nodes:
        assert node_image_id(ssh, fleet, node.name, ref) == image_id, node.name
