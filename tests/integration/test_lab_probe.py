from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import docker
import pytest

from fleetimg.inventory import Fleet
from fleetimg.lab.manager import LabConfig, lab_down, lab_status, lab_up
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.conftest import fleetimg, fleetimg_json

pytestmark = pytest.mark.integration


def test_probe_reports_lab_nodes(lab_fleet: Fleet) -> None:
    assert lab_fleet.path is not None
    code, data = fleetimg_json("-i", str(lab_fleet.path), "nodes", "probe")
    assert code == 0
    assert isinstance(data, list) and [d["name"] for d in data] == ["node1", "node2", "node3"]
    for entry, node in zip(data, lab_fleet.nodes, strict=True):
        assert entry["reachable"] is True
        assert entry["address"] == node.address
        assert entry["l4t"] == "R32.7.1" and entry["jetpack"] == "4.6.1"
        assert entry["board"] == "t210ref"
        assert entry["docker_version"].startswith("20.10")
        assert entry["hostname"] == node.name and entry["hostname_matches"] is True
        assert entry["hosts_has_name"] is True
        assert entry["arm64_emulation"] is True
        assert entry["free_bytes"] > 1_000_000_000
        assert entry["warnings"] == []


def test_probe_table_output(lab_fleet: Fleet) -> None:
    assert lab_fleet.path is not None
    proc = fleetimg("-i", str(lab_fleet.path), "nodes", "probe", "--to", "workers")
    assert proc.returncode == 0, proc.stderr
    assert "node2" in proc.stdout and "node3" in proc.stdout and "node1 " not in proc.stdout
    assert "R32.7.1" in proc.stdout and "2/2 node(s) reachable" in proc.stdout


def test_unreachable_node_is_reported_while_others_succeed(
    lab_fleet: Fleet, tmp_path: Path
) -> None:
    assert lab_fleet.path is not None
    inv = tmp_path / "fleet.toml"
    text = lab_fleet.path.read_text()
    for name in ("id_ed25519", "known_hosts"):
        shutil.copy(lab_fleet.path.parent / name, tmp_path / name)
    ghost = str(lab_fleet.subnet.network_address + 200)
    inv.write_text(text + f'\n[[nodes]]\nname = "ghost"\naddress = "{ghost}"\n'
                   'module = "nano-2gb"\n')
    code, data = fleetimg_json("-i", str(inv), "nodes", "probe",
                               env={"FLEETIMG_SSH_TIMEOUT": "3"})
    assert code == 1
    assert isinstance(data, list)
    by_name = {d["name"]: d for d in data}
    assert by_name["ghost"]["reachable"] is False
    assert "cannot connect" in by_name["ghost"]["error"]
    assert by_name["ghost"]["hint"]
    assert all(by_name[n]["reachable"] for n in ("node1", "node2", "node3"))


def test_lab_node_loads_and_runs_arm64_images(lab_fleet: Fleet, arm64_image: str) -> None:
    node = lab_fleet.nodes[0]
    ssh = Ssh(SshOptions(known_hosts=lab_fleet.known_hosts))
    save = subprocess.Popen(["docker", "save", arm64_image], stdout=subprocess.PIPE)
    load = ssh.spawn(node, "docker load", stdin=save.stdout)
    assert save.stdout is not None
    save.stdout.close()
    out, err = load.communicate(timeout=300)
    assert save.wait() == 0 and load.returncode == 0, err
    assert arm64_image in out.decode()
    result = ssh.run(node, f"docker run --rm {arm64_image} /usr/bin/uname -m", timeout=120)
    assert result.stdout.strip() == "aarch64"


def test_lab_up_is_idempotent_and_down_leaves_nothing(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    config = LabConfig(name="itest-updown", nodes=1, subnet="172.29.215.0/24",
                       directory=tmp_path / "lab")
    lab_down(config)
    try:
        lab_up(config)
        first = {s.container: docker_client.containers.get(s.container).id
                 for s in lab_status(config.name)}
        lab_up(config)
        second = {s.container: docker_client.containers.get(s.container).id
                  for s in lab_status(config.name)}
        assert first == second and len(first) == 1
    finally:
        removed = lab_down(config)
    assert any(r.startswith("container ") for r in removed)
    assert lab_status(config.name) == []
    assert not docker_client.volumes.list(filters={"name": "fleetimg-itest-updown"})
    assert not docker_client.networks.list(names=["fleetimg-itest-updown"])
    assert not config.dir.exists()


def test_frozen_node_behind_an_open_connection_is_reported_within_the_timeout(
    lab_fleet: Fleet, lab_config: LabConfig, docker_client: docker.DockerClient
) -> None:
    inv = str(lab_fleet.path)
    # A first probe leaves an SSH master open to node3 (ControlPersist), as any run does.
    assert fleetimg_json("-i", inv, "nodes", "probe", "--to", "node3")[0] == 0
    container = docker_client.containers.get(lab_config.container(3))
    container.pause()  # the board hangs: TCP still answers, nothing above it does
    try:
        start = time.monotonic()
        code, data = fleetimg_json("-i", inv, "nodes", "probe", "--to", "node2,node3",
                                   env={"FLEETIMG_SSH_TIMEOUT": "3"})
        took = time.monotonic() - start
    finally:
        container.unpause()
    assert code == 1
    assert isinstance(data, list)
    by_name = {d["name"]: d for d in data}
    assert by_name["node2"]["reachable"] is True
    assert by_name["node3"]["reachable"] is False
    assert "not answering" in by_name["node3"]["error"]
    # Without the check the command waited for the keepalives (~30 s).
    assert took < 10, took
    assert fleetimg_json("-i", inv, "nodes", "probe", "--to", "node3")[0] == 0


def test_lab_up_restarts_a_node_whose_engine_died(
    lab_fleet: Fleet, lab_config: LabConfig, ssh: Ssh
) -> None:
    node = lab_fleet.node("node3")
    ssh.run(node, "sudo -n pkill -x dockerd; while pgrep -x dockerd >/dev/null; do sleep 0.1; "
            "done")
    assert ssh.run(node, "docker version >/dev/null 2>&1", check=False).returncode != 0
    start = time.monotonic()
    steps: list[str] = []
    lab_up(lab_config, steps.append)
    assert time.monotonic() - start < 90
    assert any("restarting the node" in s for s in steps), steps
    assert ssh.run(node, "docker version --format '{{.Server.Version}}'").stdout.strip()
