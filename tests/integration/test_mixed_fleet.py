"""One lab fleet, two generations: a Nano on R32.7.1 and an Orin Nano on R36.4.3 (JetPack
6.2). Probe tells them apart; push gives each only what its release runs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from fleetimg.inventory import Fleet
from fleetimg.l4t import L4TRelease
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.conftest import LAB_NAME, fleetimg, fleetimg_json
from tests.integration.images import build_app_image

pytestmark = pytest.mark.integration

MIXED_SUBNET = os.environ.get("FLEETIMG_ITEST_MIXED_SUBNET", "172.29.217.0/24")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory,
          docker_client: docker.DockerClient) -> Iterator[Fleet]:
    config = LabConfig(name=f"{LAB_NAME}-mixed", nodes=2, subnet=MIXED_SUBNET,
                       directory=tmp_path_factory.mktemp("mixed-lab"),
                       boards=((2, L4TRelease(36, 4, 3), "orin-nano"),))
    lab_down(config)
    yield lab_up(config)
    lab_down(config)


def test_probe_tells_a_nano_from_an_orin_nano(mixed: Fleet) -> None:
    assert mixed.node("node2").module.name == "orin-nano"
    code, data = fleetimg_json("-i", str(mixed.path), "nodes", "probe")
    assert code == 0, data
    assert isinstance(data, list)
    nano, orin = data
    assert (nano["l4t"], nano["board"], nano["module"]) == ("R32.7.1", "t210ref",
                                                           "nano-4gb/nano-2gb")
    assert "eth0" in nano["interfaces"] and nano["firmware"] is None
    assert (orin["l4t"], orin["jetpack"], orin["board"]) == ("R36.4.3", "6.2", "generic")
    assert orin["module"] == "orin-nano" and orin["firmware"] == "36.4.3"
    assert "enP8p1s0" in orin["interfaces"] and "eth0" not in orin["interfaces"]
    assert nano["warnings"] == [] and orin["warnings"] == []


def test_push_gives_each_generation_only_what_it_runs(mixed: Fleet,
                                                     docker_client: docker.DockerClient) -> None:
    inv = str(mixed.path)
    old = build_app_image("fleetimg-test/mixed:r36.2", app="print('36.2')\n", l4t="R36.2.0")
    code, data = fleetimg_json("-i", inv, "push", old, "--to", "node2")
    assert code == 1 and isinstance(data, dict)
    assert data["sent_bytes"] == 0
    assert "either side of R36.4" in data["nodes"][0]["error"]
    new = build_app_image("fleetimg-test/mixed:r36.4", app="print('36.4')\n", l4t="R36.4.0")
    code, data = fleetimg_json("-i", inv, "push", new, "--fanout", "direct")
    assert code == 1 and isinstance(data, dict)
    by_node = {n["node"]: n for n in data["nodes"]}
    assert by_node["node2"]["ok"] and by_node["node2"]["action"] == "loaded"
    assert not by_node["node1"]["ok"] and "never across majors" in by_node["node1"]["error"]


def test_all_releases_build_then_push_gives_each_node_its_own_image(
        mixed: Fleet, standin_pytorch: str, docker_client: docker.DockerClient) -> None:
    inv = str(mixed.path)
    code, data = fleetimg_json("-i", inv, "build", "pytorch", "--standin", "--all-releases",
                               "--no-smoke", timeout=1200)
    assert code == 0, data
    assert isinstance(data, list)
    assert [(d["l4t"], d["nodes"]) for d in data] == [("R32.7.1", ["node1"]),
                                                       ("R36.4.0", ["node2"])]
    code, data = fleetimg_json("-i", inv, "push", "pytorch", "--to", "all-nodes",
                               timeout=1200)
    assert code == 0, data
    assert isinstance(data, dict)
    by_node = {n["node"]: n for n in data["nodes"]}
    assert by_node["node1"]["image"] == "fleetimg/pytorch:r32.7.1"
    assert by_node["node2"]["image"] == "fleetimg/pytorch:r36.4.0"
    assert all(n["ok"] for n in data["nodes"])
    ssh = Ssh(SshOptions(known_hosts=mixed.known_hosts))
    for name, tag in (("node1", "r32.7.1"), ("node2", "r36.4.0")):
        node = mixed.node(name)
        label = ssh.run(node, "docker image inspect --format "
                        "'{{index .Config.Labels \"io.fleetimg.l4t\"}}' "
                        f"fleetimg/pytorch:{tag}").stdout.strip()
        assert label == tag.upper()
        # Each node runs its own image: the worker's self-test, on the node's engine.
        out = ssh.run(node, f"docker run --rm fleetimg/pytorch:{tag} --self-test", timeout=600)
        assert "self-test ok" in out.stdout + out.stderr, name


def test_a_target_with_no_image_for_a_nodes_family_refuses_that_node(
        mixed: Fleet, docker_client: docker.DockerClient) -> None:
    build_app_image("fleetimg-test/only-r32:1", app="print(32)\n", l4t="R32.7.1",
                    target="only-r32")
    code, data = fleetimg_json("-i", str(mixed.path), "push", "only-r32", "--dry-run")
    assert code == 1 and isinstance(data, dict)
    by_node = {n["node"]: n for n in data["nodes"]}
    assert by_node["node1"]["action"] == "send"
    assert by_node["node2"]["action"] == "refuse"
    assert "no only-r32 image runs on L4T R36.4.3 (built for R32.7.1)" in by_node["node2"]["reason"]


def test_the_registry_path_gives_each_family_its_own_image(
        mixed: Fleet, docker_client: docker.DockerClient) -> None:
    inv = str(mixed.path)
    r32 = build_app_image("fleetimg-test/regmix:r32.7.1", app="print(32)\n", l4t="R32.7.1",
                          target="regmix")
    r36 = build_app_image("fleetimg-test/regmix:r36.4.0", app="print(36)\n", l4t="R36.4.0",
                          target="regmix")
    proc = fleetimg("-i", inv, "registry", "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        proc = fleetimg("-i", inv, "registry", "configure")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        code, data = fleetimg_json("-i", inv, "push", "regmix", "--via", "registry",
                                   timeout=600)
        assert code == 0, data
        assert isinstance(data, dict) and data["via"] == "registry"
        assert [i["image"] for i in data["images"]] == [r32, r36] or \
            [i["image"] for i in data["images"]] == [r36, r32]
        by_node = {n["node"]: n for n in data["nodes"]}
        assert (by_node["node1"]["image"], by_node["node1"]["action"]) == (r32, "pulled")
        assert (by_node["node2"]["image"], by_node["node2"]["action"]) == (r36, "pulled")
        ssh = Ssh(SshOptions(known_hosts=mixed.known_hosts))
        for name, ref in (("node1", r32), ("node2", r36)):
            got = ssh.run(mixed.node(name), f"docker image inspect --format '{{{{.Id}}}}' {ref}"
                          ).stdout.strip()
            assert got == docker_client.images.get(ref).id, name
    finally:
        fleetimg("registry", "down")
