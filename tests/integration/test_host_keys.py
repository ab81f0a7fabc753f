"""A board whose SSH host key changed must be refused, never silently accepted."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import docker
import pytest
from testcontainers.core.container import DockerContainer

from fleetimg import programs
from fleetimg.inventory import Fleet
from fleetimg.lab.manager import CONTAINER_OPTIONS, LabConfig
from fleetimg.lab.nodeimage import node_image_tag
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.conftest import fleetimg_json

pytestmark = pytest.mark.integration


def start_node(lab_config: LabConfig, files: Path, address: str) -> DockerContainer:
    client = docker.from_env()
    options = {k: v for k, v in CONTAINER_OPTIONS.items() if k != "tmpfs"}
    container = (
        DockerContainer(node_image_tag())
        .with_volume_mapping(str(files), "/fleetimg", "ro")
        .with_env("FLEETIMG_STORAGE_DRIVER", "vfs")
        .with_tmpfs_mount("/run")
        .with_tmpfs_mount("/tmp")
        .with_kwargs(
            hostname="keynode",
            network=lab_config.network,
            networking_config={
                lab_config.network: client.api.create_endpoint_config(ipv4_address=address)
            },
            **options,
        )
    )
    container.start()
    wait_for_port(address, 22)
    return container


def wait_for_port(address: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1) as conn:
                if conn.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def host_key_files(tmp_path: Path, name: str, lab_fleet: Fleet) -> Path:
    files = tmp_path / name
    files.mkdir()
    programs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                str(files / "ssh_host_ed25519_key")])
    assert lab_fleet.path is not None
    shutil.copy(lab_fleet.path.parent / "id_ed25519.pub", files / "authorized_keys")
    return files


def test_changed_host_key_is_refused(
    lab_fleet: Fleet, lab_config: LabConfig, tmp_path: Path
) -> None:
    assert lab_fleet.path is not None
    address = str(lab_fleet.subnet.network_address + 150)
    inv = tmp_path / "fleet.toml"
    shutil.copy(lab_fleet.path.parent / "id_ed25519", tmp_path / "id_ed25519")
    inv.write_text(
        "[fleet]\nuser = \"jetson\"\nssh_key = \"id_ed25519\"\nknown_hosts = \"known_hosts\"\n"
        f'subnet = "{lab_fleet.subnet}"\n'
        f'[[nodes]]\nname = "keynode"\naddress = "{address}"\nmodule = "nano-4gb"\n'
    )
    first_key = host_key_files(tmp_path, "first", lab_fleet)
    node = start_node(lab_config, first_key, address)
    try:
        code, data = fleetimg_json("-i", str(inv), "nodes", "probe")
        assert code == 0, data
        learned = (tmp_path / "known_hosts").read_text()
        assert (first_key / "ssh_host_ed25519_key.pub").read_text().split()[1] in learned
    finally:
        node.stop()
    # Same address, another machine: the board was reflashed, or someone else answers.
    from fleetimg.inventory import load

    Ssh(SshOptions(known_hosts=tmp_path / "known_hosts")).disconnect(load(inv).nodes[0])
    second_key = host_key_files(tmp_path, "second", lab_fleet)
    node = start_node(lab_config, second_key, address)
    try:
        code, data = fleetimg_json("-i", str(inv), "nodes", "probe")
        assert code == 1
        assert isinstance(data, list)
        assert data[0]["reachable"] is False
        assert "host key changed" in data[0]["error"]
        assert "ssh-keygen" in data[0]["hint"] and "-R" in data[0]["hint"]
        assert (tmp_path / "known_hosts").read_text() == learned
    finally:
        node.stop()
