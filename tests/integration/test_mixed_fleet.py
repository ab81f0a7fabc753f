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
from tests.integration.conftest import LAB_NAME, fleetimg_json
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
