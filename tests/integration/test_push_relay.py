"""Relay fan-out on lab nodes: nodes load the stream and pass it on over real node-to-node
SSH with the fleet-internal key that `lab up` installs, as `fleetimg sdcard` would."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from fleetimg.errors import FleetimgError
from fleetimg.inventory import Fleet, RelayAuth
from fleetimg.lab.manager import LabConfig
from fleetimg.localimage import resolve_image
from fleetimg.push.engine import PushOptions, execute, preflight
from fleetimg.push.plan import NodePlan
from fleetimg.push.relay import Fanout
from fleetimg.push.transfer import Progress
from fleetimg.ssh import Ssh
from tests.integration.conftest import (
    assert_every_node_has,
    fleetimg,
    fleetimg_json,
    node_image_id,
)
from tests.integration.images import build_app_image

pytestmark = pytest.mark.integration


def build_on(client: docker.DockerClient, parent: str, tag: str, text: str) -> str:
    """A one-file layer on top of `parent` (COPY needs no emulation)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {parent}\nCOPY extra.txt /app/extra.txt\n"),
                           ("extra.txt", text)):
            raw = data.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    return tag


def wait_back(ssh: Ssh, fleet: Fleet, name: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            ssh.run(fleet.node(name), "docker version >/dev/null", timeout=10)
            return
        except FleetimgError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_chain_sends_one_copy_and_every_node_has_the_image(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient
) -> None:
    image = build_app_image("fleetimg-test/relay:r1", app="print('r1')\n", blob_mb=24)
    code, plan = fleetimg_json("-i", str(lab_fleet.path), "push", image, "--fanout", "chain",
                               "--dry-run")
    assert code == 0, plan
    assert isinstance(plan, dict)
    assert plan["relays"] == ["workstation -> node1 -> node2 -> node3"]
    assert [n["from"] for n in plan["nodes"]] == ["workstation", "node1", "node2"]
    assert node_image_id(ssh, lab_fleet, "node1", image) is None

    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", image, "--fanout", "chain")
    assert code == 0, data
    assert isinstance(data, dict)
    nodes = {n["node"]: n for n in data["nodes"]}
    assert {n: v["action"] for n, v in nodes.items()} == dict.fromkeys(nodes, "loaded")
    assert [nodes[n]["via"] for n in ("node1", "node2", "node3")] == [None, "node1", "node2"]
    # One copy through the workstation's uplink: only the first node's stream leaves it.
    assert nodes["node1"]["sent_bytes"] > 20 << 20
    assert nodes["node2"]["sent_bytes"] == nodes["node3"]["sent_bytes"] == 0
    assert data["sent_bytes"] == nodes["node1"]["sent_bytes"]
    local_id = docker_client.images.get(image).id
    for node in lab_fleet.nodes:
        assert node_image_id(ssh, lab_fleet, node.name, image) == local_id
        tags = ssh.run(node, "docker images --format '{{.Repository}}'").stdout
        assert "fleetimg-incoming" not in tags
    run = ssh.run(lab_fleet.node("node3"), f"docker run --rm {image}", timeout=120)
    assert "r1" in run.stdout


def test_tree_feeds_two_children_from_the_first_node(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient
) -> None:
    image = build_app_image("fleetimg-test/relay:tree", app="print('tree')\n", blob_mb=8)
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", image, "--fanout", "tree:2")
    assert code == 0, data
    assert isinstance(data, dict)
    assert data["relays"] == ["workstation -> node1 -> (node2, node3)"]
    assert [n["via"] for n in data["nodes"]] == [None, "node1", "node1"]
    assert_every_node_has(ssh, lab_fleet, image, docker_client.images.get(image).id)


def test_nodes_missing_other_layers_are_sent_to_directly(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient
) -> None:
    r2 = build_app_image("fleetimg-test/relay:r2", app="print('r2')\n", blob_mb=8)
    code, _ = fleetimg_json("-i", str(lab_fleet.path), "push", r2, "--to", "node1")
    assert code == 0
    r3 = build_on(docker_client, r2, "fleetimg-test/relay:r3", "one more file\n")
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", r3, "--fanout", "chain")
    assert code == 0, data
    assert isinstance(data, dict)
    nodes = {n["node"]: n for n in data["nodes"]}
    # node1 lacks only the new layer; node2 and node3 lack blob and app too: other streams.
    assert nodes["node1"]["layers_sent"] == 1 and nodes["node1"]["via"] is None
    assert nodes["node2"]["layers_sent"] == nodes["node3"]["layers_sent"] == 3
    assert data["relays"] == ["workstation -> node2 -> node3"]
    assert nodes["node3"]["via"] == "node2"
    assert_every_node_has(ssh, lab_fleet, r3, docker_client.images.get(r3).id)


def test_broken_node_to_node_ssh_falls_back_to_direct_with_a_note(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient
) -> None:
    image = build_app_image("fleetimg-test/relay:nokey", app="print('nokey')\n")
    node1 = lab_fleet.node("node1")
    ssh.run(node1, "mv ~/.ssh/id_ed25519 ~/.ssh/id_ed25519.away")
    try:
        code, data = fleetimg_json("-i", str(lab_fleet.path), "push", image,
                                   "--fanout", "chain")
    finally:
        ssh.run(node1, "mv ~/.ssh/id_ed25519.away ~/.ssh/id_ed25519")
    assert code == 0, data
    assert isinstance(data, dict)
    assert data["relays"] == []
    assert any("relay off" in note and "node1 -> node2" in note for note in data["notes"])
    assert all(n["via"] is None and n["action"] == "loaded" for n in data["nodes"])
    assert_every_node_has(ssh, lab_fleet, image, docker_client.images.get(image).id)


def test_agent_forwarding_relays_with_no_key_on_the_nodes(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    assert lab_fleet.path is not None
    image = build_app_image("fleetimg-test/relay:agent", app="print('agent')\n")
    sock = tmp_path / "agent.sock"
    started = subprocess.run(["ssh-agent", "-s", "-a", str(sock)], capture_output=True,
                             text=True, check=True).stdout
    pid = started.split("SSH_AGENT_PID=")[1].split(";")[0]
    env = {"SSH_AUTH_SOCK": str(sock), "SSH_AGENT_PID": pid}
    for node in lab_fleet.nodes:  # only the forwarded agent can log in node to node now
        ssh.run(node, "mv ~/.ssh/id_ed25519 ~/.ssh/id_ed25519.away")
    try:
        subprocess.run(["ssh-add", "-q", str(lab_fleet.path.parent / "id_ed25519")],
                       env={**os.environ, **env}, check=True)
        code, data = fleetimg_json("-i", str(lab_fleet.path), "push", image, "--fanout",
                                   "chain", "--relay-auth", "agent", env=env)
    finally:
        for node in lab_fleet.nodes:
            ssh.run(node, "mv ~/.ssh/id_ed25519.away ~/.ssh/id_ed25519")
        subprocess.run(["ssh-agent", "-k"], env={**os.environ, **env}, capture_output=True,
                       check=False)
    assert code == 0, data
    assert isinstance(data, dict)
    assert data["relays"] == ["workstation -> node1 -> node2 -> node3"], data["notes"]
    assert [n["via"] for n in data["nodes"]] == [None, "node1", "node2"]
    assert_every_node_has(ssh, lab_fleet, image, docker_client.images.get(image).id)


def test_agent_relay_without_an_agent_is_refused(lab_fleet: Fleet) -> None:
    proc = fleetimg("-i", str(lab_fleet.path), "push", "fleetimg-test/relay:r1", "--fanout",
                    "chain", "--relay-auth", "agent", env={"SSH_AUTH_SOCK": ""})
    assert proc.returncode == 2
    assert "no ssh-agent is running" in proc.stderr


def test_relay_without_a_chosen_login_is_refused_before_sending(lab_fleet: Fleet) -> None:
    assert lab_fleet.path is not None
    text = lab_fleet.path.read_text().replace('relay_auth = "internal-key"\n', "")
    inv = lab_fleet.path.with_name("fleet-noauth.toml")
    inv.write_text(text)
    try:
        proc = fleetimg("-i", str(inv), "push", "fleetimg-test/relay:r1", "--fanout", "chain")
        assert proc.returncode == 2, proc.stderr
        assert "error: --fanout chain needs node-to-node SSH" in proc.stderr
        assert "--relay-auth internal-key" in proc.stderr
        # auto never relays without being told how nodes log in, and says so.
        code, plan = fleetimg_json("-i", str(inv), "push", "fleetimg-test/relay:r1",
                                   "--dry-run")
        assert code == 0
        assert isinstance(plan, dict) and plan["relays"] == []
    finally:
        inv.unlink()


def push_chain_and_break(fleet: Fleet, ssh: Ssh, client: docker.DockerClient,
                         config: LabConfig, tag: str,
                         act: Callable[[Container], None]) -> tuple[str, Any, Any]:
    """Push a 64 MB image along node1 -> node2 -> node3 and do `act` to node2's container
    once 16 MB have left the workstation. Returns (image, its LocalImage, the report)."""
    big = build_app_image(tag, app=f"print({tag!r})\n", blob_mb=64)
    image = resolve_image(client, big)
    options = PushOptions(parallel=3, fanout=Fanout("chain"),
                          relay_auth=RelayAuth.INTERNAL_KEY)
    plans = preflight(ssh, fleet.nodes, image, options)
    victim = client.containers.get(config.container(2))
    handled = [0]
    acted = [False]

    def progress_for(plan: NodePlan) -> Progress | None:
        assert plan.node.name == "node1"  # the only stream leaving the workstation

        def on(n: int) -> None:
            handled[0] += n
            if handled[0] > 16 << 20 and not acted[0]:
                acted[0] = True
                act(victim)
        return on

    return big, image, execute(ssh, image, plans, options, progress_for)


def test_relay_node_killed_mid_transfer_downstream_still_finishes(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient, lab_config: LabConfig
) -> None:
    victim = docker_client.containers.get(lab_config.container(2))
    # The relaying board loses power mid-stream.
    big, image, report = push_chain_and_break(lab_fleet, ssh, docker_client, lab_config,
                                              "fleetimg-test/relay:kill", lambda c: c.kill())
    victim.reload()
    by_name = {r.node.name: r for r in report.results}
    assert victim.status == "exited"
    assert by_name["node1"].ok and by_name["node3"].ok, report.results
    assert not by_name["node2"].ok
    assert by_name["node2"].error is not None
    assert "node2" in by_name["node2"].error.message
    node3 = by_name["node3"].value
    assert node3 is not None and "node2" in node3.note
    # Re-fed by node1, which has the image now: one hop, nothing more from the workstation.
    assert node3.via == "node1" and "re-fed from node1" in node3.note, node3
    assert node3.sent_bytes == 0
    assert node_image_id(ssh, lab_fleet, "node3", big) == image.id
    assert node_image_id(ssh, lab_fleet, "node1", big) == image.id

    victim.start()
    wait_back(ssh, lab_fleet, "node2")
    tags = ssh.run(lab_fleet.node("node2"), "docker images --format '{{.Repository}}:{{.Tag}}'")
    assert big not in tags.stdout and "fleetimg-incoming" not in tags.stdout
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", big, "--fanout", "chain")
    assert code == 0, data
    assert isinstance(data, dict)
    actions = {n["node"]: n["action"] for n in data["nodes"]}
    assert actions == {"node1": "skipped", "node2": "loaded", "node3": "skipped"}


STALLING_DOCKER = """#!/bin/sh
# Test stand-in: the first `docker load` stays alive and reads nothing, as a `docker load`
# stopped with SIGSTOP does; everything else is the real docker.
if [ "$1" = load ] && [ ! -e /tmp/fleetimg-test-stalled ]; then
    touch /tmp/fleetimg-test-stalled
    exec sleep 600
fi
exec /usr/bin/docker "$@"
"""


def test_a_relay_whose_load_stops_reading_cuts_it_off_and_the_chain_goes_on(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient, lab_config: LabConfig
) -> None:
    big = build_app_image("fleetimg-test/relay:stall", app="print('stall')\n", blob_mb=48)
    node2 = docker_client.containers.get(lab_config.container(2))
    node2.exec_run(["sh", "-c", f"rm -f /tmp/fleetimg-test-stalled; cat > /usr/local/bin/docker "
                    f"<<'EOF'\n{STALLING_DOCKER}EOF\nchmod 755 /usr/local/bin/docker"])
    try:
        code, data = fleetimg_json("-i", str(lab_fleet.path), "push", big, "--fanout", "chain")
    finally:
        node2.exec_run(["rm", "-f", "/usr/local/bin/docker"])
    assert code == 0, data
    assert isinstance(data, dict)
    nodes = {n["node"]: n for n in data["nodes"]}
    # node2 cut its own load off and went on relaying: node3 got the stream in the chain.
    assert nodes["node3"]["via"] == "node2" and nodes["node3"]["note"] == "", nodes
    assert "cut off by itself" in nodes["node2"]["note"], nodes
    image_id = docker_client.images.get(big).id
    assert_every_node_has(ssh, lab_fleet, big, image_id)


def test_a_paused_relay_is_cut_off_and_the_rest_of_the_fleet_finishes(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient, lab_config: LabConfig
) -> None:
    victim = docker_client.containers.get(lab_config.container(2))
    try:
        # Alive, but takes nothing: a hung board.
        big, image, report = push_chain_and_break(
            lab_fleet, ssh, docker_client, lab_config, "fleetimg-test/relay:pause",
            lambda c: c.pause())
    finally:
        victim.reload()
        if victim.status == "paused":
            victim.unpause()
    by_name = {r.node.name: r for r in report.results}
    assert by_name["node1"].ok and by_name["node3"].ok, report.results
    assert not by_name["node2"].ok
    assert "cut off by node1" in str(by_name["node2"].error), by_name["node2"].error
    node3 = by_name["node3"].value  # below node2 in the chain: fed again, by node1
    assert node3 is not None and "node2" in node3.note and node3.via == "node1", node3
    assert node_image_id(ssh, lab_fleet, "node3", big) == image.id
    wait_back(ssh, lab_fleet, "node2")


def test_every_relayed_node_reports_its_own_progress_as_it_goes(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient
) -> None:
    # Random bytes, so the stream takes seconds even where the base layers are there: the
    # relays report once a second.
    big = build_app_image("fleetimg-test/relay:progress", app="print('progress')\n",
                          blob_mb=320)
    image = resolve_image(docker_client, big)
    options = PushOptions(parallel=3, fanout=Fanout("chain"),
                          relay_auth=RelayAuth.INTERNAL_KEY)
    plans = preflight(ssh, lab_fleet.nodes, image, options)
    lock = threading.Lock()
    seen: dict[str, list[int]] = {}

    def relayed_for(plan: NodePlan) -> Progress | None:
        def on(n: int) -> None:
            with lock:
                seen.setdefault(plan.node.name, []).append(n)
        return on

    report = execute(ssh, image, plans, options, None, relayed_for=relayed_for)
    assert all(r.ok for r in report.results), report.results
    # node2 and node3 are fed by relays; what they received came back from them while the
    # stream ran (once a second; the last second's bytes are not reported), in the
    # workstation's (uncompressed) units.
    assert set(seen) == {"node2", "node3"}, seen
    send = {p.node.name: p.value.send_bytes for p in plans if p.value is not None}
    for name in ("node2", "node3"):
        assert all(n > 0 for n in seen[name]), seen
        assert 0 < sum(seen[name]) <= 1.05 * send[name], (name, seen[name], send[name])
