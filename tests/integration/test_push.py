"""fleetimg push against real Docker engines on lab nodes, over real SSH.

The tests run in file order and build on each other's state, as a user's pushes would.
"""

from __future__ import annotations

import io
import ipaddress
import json
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests

from fleetimg.errors import FleetimgError
from fleetimg.inventory import Fleet, load
from fleetimg.lab.manager import LabConfig
from fleetimg.localimage import resolve_image
from fleetimg.push.engine import PushOptions, execute, preflight
from fleetimg.push.plan import NodePlan
from fleetimg.push.registry import MANIFEST_TYPES
from fleetimg.ssh import Ssh
from tests.integration.conftest import (
    assert_every_node_has,
    fleetimg,
    fleetimg_json,
    node_image_id,
)
from tests.integration.images import build_app_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app_v1(arm64_image: str) -> str:
    return build_app_image("fleetimg-test/push-app:v1", app="print('v1')\n")


def test_push_to_three_nodes_then_repush_is_noop(
    lab_fleet: Fleet, ssh: Ssh, app_v1: str, docker_client: docker.DockerClient
) -> None:
    _, plan = fleetimg_json("-i", str(lab_fleet.path), "push", app_v1, "--dry-run")
    assert isinstance(plan, dict)
    # An earlier test may have loaded the base layer onto a node already.
    wants = {n["node"]: n["send_layers"] for n in plan["nodes"]}
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", app_v1, "--to", "all-nodes",
                               "--fanout", "direct")
    assert code == 0, data
    assert isinstance(data, dict)
    local_id = docker_client.images.get(app_v1).id
    assert [n["action"] for n in data["nodes"]] == ["loaded"] * 3
    for n in data["nodes"]:
        assert n["layers_sent"] == wants[n["node"]]
        if wants[n["node"]] == 2:
            assert n["sent_bytes"] > 10 << 20
    for node in lab_fleet.nodes:
        assert node_image_id(ssh, lab_fleet, node.name, app_v1) == local_id
        assert node_image_id(ssh, lab_fleet, node.name, "fleetimg-incoming") is None
    code, again = fleetimg_json("-i", str(lab_fleet.path), "push", app_v1)
    assert code == 0
    assert isinstance(again, dict)
    assert [n["action"] for n in again["nodes"]] == ["skipped"] * 3
    assert again["sent_bytes"] == 0


def test_app_only_change_sends_only_the_new_layer(
    lab_fleet: Fleet, ssh: Ssh, app_v1: str, docker_client: docker.DockerClient
) -> None:
    v2 = build_app_image("fleetimg-test/push-app:v2", app="print('v2: one line changed')\n")
    full = resolve_image(docker_client, v2).size
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", v2)
    assert code == 0, data
    assert isinstance(data, dict)
    for n in data["nodes"]:
        assert n["action"] == "loaded" and n["layers_sent"] == 1
        assert n["sent_bytes"] < 0.05 * full
    # Only the new layer was read, from the engine's layer store, not the whole image.
    assert {n["source"] for n in data["nodes"]} - {None} == {"layer-store"}
    assert 0 < sum(n["read_bytes"] for n in data["nodes"]) < 0.05 * full
    local_id = docker_client.images.get(v2).id
    assert node_image_id(ssh, lab_fleet, "node2", v2) == local_id
    run = ssh.run(lab_fleet.node("node2"), f"docker run --rm {v2}", timeout=120)
    assert "v2: one line changed" in run.stdout


def test_without_the_layer_store_docker_save_reads_the_whole_image(
    lab_fleet: Fleet, ssh: Ssh, app_v1: str, docker_client: docker.DockerClient
) -> None:
    v2s = build_app_image("fleetimg-test/push-app:v2-save", app="print('v2 via save')\n")
    full = resolve_image(docker_client, v2s).size
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", v2s,
                               env={"FLEETIMG_PUSH_SOURCE": "save"})
    assert code == 0, data
    assert isinstance(data, dict)
    assert {n["source"] for n in data["nodes"]} - {None} == {"docker-save"}
    assert sum(n["read_bytes"] for n in data["nodes"]) >= full
    assert [(n["action"], n["layers_sent"]) for n in data["nodes"]] == [("loaded", 1)] * 3
    assert_every_node_has(ssh, lab_fleet, v2s, docker_client.images.get(v2s).id)


def test_config_only_rebuild_sends_no_layer(lab_fleet: Fleet, ssh: Ssh,
                                            docker_client: docker.DockerClient) -> None:
    # A rebuild that changes only the config (a label) gets a new image ID; every layer is
    # on the nodes, the top one under a config-dependent name.
    v2 = "fleetimg-test/push-app:v2"
    relabelled = "fleetimg-test/push-app:v2-relabelled"
    docker_client.images.build(fileobj=io.BytesIO(f"FROM {v2}\nLABEL rebuilt=yes\n".encode()),
                               tag=relabelled, rm=True)
    assert docker_client.images.get(relabelled).id != docker_client.images.get(v2).id
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", relabelled)
    assert code == 0, data
    assert isinstance(data, dict)
    assert [(n["action"], n["layers_sent"]) for n in data["nodes"]] == [("loaded", 0)] * 3
    assert_every_node_has(ssh, lab_fleet, relabelled, docker_client.images.get(relabelled).id)


def test_dry_run_shows_bytes_and_sends_nothing(lab_fleet: Fleet, ssh: Ssh) -> None:
    v3 = build_app_image("fleetimg-test/push-app:v3", app="print('v3')\n")
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", v3, "--dry-run")
    assert code == 0
    assert isinstance(data, dict)
    assert all(n["action"] == "send" and n["send_layers"] == 1 for n in data["nodes"])
    assert node_image_id(ssh, lab_fleet, "node1", v3) is None


def test_l4t_incompatible_node_refused_before_any_transfer(lab_fleet: Fleet, ssh: Ssh) -> None:
    jp5 = build_app_image("fleetimg-test/push-app:jp5", app="print('jp5')\n", l4t="R35.4.1")
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", jp5)
    assert code == 1
    assert isinstance(data, dict)
    assert data["sent_bytes"] == 0
    for n in data["nodes"]:
        assert n["ok"] is False and "never across majors" in n["error"]
    assert node_image_id(ssh, lab_fleet, "node1", jp5) is None
    proc = fleetimg("-i", str(lab_fleet.path), "push", jp5, "-q")
    assert proc.returncode == 1 and "refuse" in proc.stdout and "Traceback" not in proc.stderr


def test_k3s_node_imports_into_containerd(lab_fleet: Fleet, ssh: Ssh, app_v1: str,
                                          tmp_path: Path) -> None:
    assert lab_fleet.path is not None
    for name in ("id_ed25519", "known_hosts"):
        shutil.copy(lab_fleet.path.parent / name, tmp_path / name)
    inv = tmp_path / "fleet.toml"
    inv.write_text(lab_fleet.path.read_text().replace('name = "node3"\n',
                                                      'name = "node3"\nruntime = "k3s"\n'))
    code, data = fleetimg_json("-i", str(inv), "push", app_v1, "--to", "node3")
    assert code == 0, data
    assert isinstance(data, dict)
    assert data["nodes"][0]["action"] == "imported"
    listing = ssh.run(load(inv).node("node3"), "sudo -n ctr -n k8s.io images ls -q").stdout
    assert "docker.io/fleetimg-test/push-app:v1" in listing.split()
    # Pinned, as K3s pins its own imports: the kubelet's image GC leaves it alone.
    labels = ssh.run(load(inv).node("node3"), "sudo -n ctr -n k8s.io images ls "
                     "name==docker.io/fleetimg-test/push-app:v1").stdout
    assert "io.cri-containerd.pinned=pinned" in labels
    code, again = fleetimg_json("-i", str(inv), "push", app_v1, "--to", "node3")
    assert isinstance(again, dict) and again["nodes"][0]["action"] == "skipped"


def test_registry_end_to_end(lab_fleet: Fleet, ssh: Ssh,
                             docker_client: docker.DockerClient) -> None:
    inv = str(lab_fleet.path)
    v4 = build_app_image("fleetimg-test/push-app:v4", app="print('via registry')\n")
    assert fleetimg("-i", inv, "registry", "up").returncode == 0
    try:
        # A dry run reads every node's configuration and writes nothing.
        node1 = lab_fleet.node("node1")
        before = ssh.run(node1, "sudo -n cat /etc/docker/daemon.json 2>/dev/null; true").stdout
        code, plan = fleetimg_json("-i", inv, "registry", "configure", "--dry-run")
        assert code == 0, plan
        assert isinstance(plan, dict) and plan["dry_run"] is True
        assert {n["node"] for n in plan["nodes"]} == {n.name for n in lab_fleet.nodes}
        assert all(n["result"].startswith(("would add", "already configured"))
                   for n in plan["nodes"]), plan
        assert ssh.run(node1, "sudo -n cat /etc/docker/daemon.json 2>/dev/null; true"
                       ).stdout == before
        proc = fleetimg("-i", inv, "registry", "configure")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # A dry run of the registry path is a JSON document too, and sends nothing.
        code, dry = fleetimg_json("-i", inv, "push", v4, "--via", "registry", "--dry-run")
        assert code == 0, dry
        assert isinstance(dry, dict) and dry["dry_run"] is True
        assert [(n["action"], n["from"]) for n in dry["nodes"]] == [("pull", "registry")] * 3
        code, data = fleetimg_json("-i", inv, "push", v4, "--via", "registry")
        assert code == 0, data
        assert isinstance(data, dict)
        assert (data["via"], data["dry_run"]) == ("registry", False)
        assert [(n["action"], n["via"], n["ok"]) for n in data["nodes"]] == [
            ("pulled", "registry", True)] * 3
        # What each node downloaded: the registry's compressed blobs of its missing layers.
        assert all(n["sent_bytes"] > 0 for n in data["nodes"])
        assert data["sent_bytes"] == sum(n["sent_bytes"] for n in data["nodes"])
        # The SSH path's document, key for key, plan and report.
        code, ssh_dry = fleetimg_json("-i", inv, "push", v4, "--dry-run")
        assert isinstance(ssh_dry, dict) and ssh_dry["via"] == "ssh"
        assert set(ssh_dry) == set(dry) and set(ssh_dry["nodes"][0]) == set(dry["nodes"][0])
        code, again = fleetimg_json("-i", inv, "push", v4, "--via", "registry")
        assert code == 0 and isinstance(again, dict)
        assert [n["action"] for n in again["nodes"]] == ["skipped"] * 3
        code, ssh_push = fleetimg_json("-i", inv, "push", v4)
        assert isinstance(ssh_push, dict)
        assert set(ssh_push) == set(again)
        assert set(ssh_push["nodes"][0]) == set(again["nodes"][0])
        assert_every_node_has(ssh, lab_fleet, v4, docker_client.images.get(v4).id)
        code, status = fleetimg_json("registry", "status")
        assert code == 0
        assert isinstance(status, dict)
        repos = {r["name"]: r for r in status["repositories"]}
        assert "v4" in repos["fleetimg-test/push-app"]["tags"]
        daemon = ssh.run(lab_fleet.node("node1"), "cat /etc/docker/daemon.json").stdout
        assert f"{lab_fleet.gateway}:5000" in daemon
        assert_registry_serves_only_the_fleet(lab_fleet, ssh, "fleetimg-test/push-app")
    finally:
        fleetimg("registry", "down")


def test_registry_with_auth_serves_only_logged_in_nodes(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient, isolated_state: Path
) -> None:
    inv = str(lab_fleet.path)
    v5 = build_app_image("fleetimg-test/push-app:v5", app="print('with auth')\n")
    proc = fleetimg("-i", inv, "registry", "up", "--auth")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        creds = isolated_state / "registry" / "credentials"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        user, _, password = creds.read_text().strip().partition(":")
        fleet_side = f"http://{lab_fleet.gateway}:5000/v2/"
        assert requests.get(fleet_side, timeout=10).status_code == 401
        assert requests.get(fleet_side, auth=(user, password), timeout=10).status_code == 200
        proc = fleetimg("-i", inv, "registry", "configure")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "logged in" in proc.stdout
        assert password not in proc.stdout + proc.stderr
        code, data = fleetimg_json("-i", inv, "push", v5, "--via", "registry")
        assert code == 0, data
        assert_every_node_has(ssh, lab_fleet, v5, docker_client.images.get(v5).id)
        # A node that never logged in cannot pull.
        node = lab_fleet.node("node3")
        ssh.run(node, f"docker logout {lab_fleet.gateway}:5000 >/dev/null")
        denied = ssh.run(node, f"docker pull {lab_fleet.gateway}:5000/fleetimg-test/push-app:v5",
                         check=False)
        assert denied.returncode != 0
        assert "no basic auth credentials" in denied.stderr or "unauthorized" in denied.stderr
    finally:
        fleetimg("registry", "down")


def listening(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[3] for line in out.splitlines()}


def assert_registry_serves_only_the_fleet(fleet: Fleet, ssh: Ssh, repo: str) -> None:
    fleet_side = f"{fleet.gateway}:5000"
    assert listening(5000) == {fleet_side}
    assert listening(5001) == {"127.0.0.1:5001"}
    code, status = fleetimg_json("registry", "status")
    assert code == 0 and isinstance(status, dict)
    assert {e["address"]: e["access"] for e in status["listening"]} == {
        fleet_side: "read-only", "127.0.0.1:5001": "push"}
    # Every other address of this machine: nothing listens there.
    addrs = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                           check=True).stdout
    others = [f.split("/")[0] for line in addrs.splitlines() for f in line.split()[3:4]
              if ipaddress.IPv4Address(f.split("/")[0]) not in fleet.subnet]
    assert others
    for addr in others:
        with pytest.raises(OSError):
            socket.create_connection((addr, 5000), timeout=3).close()
    # On the fleet side an upload is refused, from this machine and from a node on the fleet.
    base = f"http://{fleet_side}/v2"
    assert requests.post(f"{base}/{repo}/blobs/uploads/", timeout=10).status_code != 202
    raw = ssh.run(fleet.node("node2"), (
        f"exec 3<>/dev/tcp/{fleet.gateway}/5000; printf 'POST /v2/{repo}/blobs/uploads/ "
        "HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n' >&3; head -n 1 <&3")).stdout
    assert raw.startswith("HTTP/1.") and " 202 " not in raw, raw
    # Nobody deletes, even through the upload side.
    tags = requests.get(f"{base}/{repo}/tags/list", timeout=10).json()["tags"]
    head = requests.head(f"{base}/{repo}/manifests/{tags[0]}", timeout=10,
                         headers={"Accept": MANIFEST_TYPES})
    digest = head.headers["Docker-Content-Digest"]
    for side in (base, "http://127.0.0.1:5001/v2"):
        assert requests.delete(f"{side}/{repo}/manifests/{digest}",
                               timeout=10).status_code in (403, 405)
    assert requests.head(f"{base}/{repo}/manifests/{digest}", timeout=10,
                         headers={"Accept": MANIFEST_TYPES}).status_code == 200


def test_node_dying_mid_transfer_is_reported_and_leaves_no_tag(
    lab_fleet: Fleet, ssh: Ssh, lab_config: LabConfig, docker_client: docker.DockerClient
) -> None:
    big = build_app_image("fleetimg-test/push-app:big", app="print('big')\n", blob_mb=48)
    image = resolve_image(docker_client, big)
    options = PushOptions(parallel=3)
    plans = preflight(ssh, lab_fleet.nodes, image, options)
    victim = docker_client.containers.get(lab_config.container(2))
    killed = []

    def progress_for(plan: NodePlan):  # type: ignore[no-untyped-def]
        if plan.node.name != "node2":
            return None

        def on(n: int) -> None:
            if not killed:
                killed.append(True)
                victim.kill()  # the board loses power mid-transfer
        return on

    report = execute(ssh, image, plans, options, progress_for)
    by_name = {r.node.name: r for r in report.results}
    assert killed
    assert by_name["node1"].ok and by_name["node3"].ok
    assert not by_name["node2"].ok
    assert by_name["node2"].error is not None
    assert "node2" in by_name["node2"].error.message

    victim.start()
    node2 = lab_fleet.node("node2")
    deadline = time.monotonic() + 90
    while True:
        try:
            ssh.run(node2, "docker version >/dev/null", timeout=10)
            break
        except FleetimgError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert node_image_id(ssh, lab_fleet, "node2", big) is None
    tags = ssh.run(node2, "docker images --format '{{.Repository}}:{{.Tag}}'").stdout
    assert big not in tags and "fleetimg-incoming" not in tags
    # Running again finishes the job, sending only what node2 still lacks.
    code, data = fleetimg_json("-i", str(lab_fleet.path), "push", big)
    assert code == 0, data
    assert isinstance(data, dict)
    actions = {n["node"]: n["action"] for n in data["nodes"]}
    assert actions == {"node1": "skipped", "node2": "loaded", "node3": "skipped"}
    assert node_image_id(ssh, lab_fleet, "node2", big) == image.id


def test_two_pushes_of_one_image_at_once_both_report_honestly(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient
) -> None:
    twin = build_app_image("fleetimg-test/push-app:twin", app="print('twin')\n", blob_mb=64)
    argv = [sys.executable, "-m", "fleetimg", "-i", str(lab_fleet.path), "push", twin,
            "--fanout", "direct", "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for out, _ in outs:
        report = json.loads(out)
        for node in report["nodes"]:
            # Each push loads under its own temporary name: neither takes the other's and
            # re-feeds, and what went out is what is reported.
            assert node["ok"] and "re-fed" not in node["note"], node
            if node["action"] == "loaded":
                assert node["sent_bytes"] > 60_000_000, node
        assert report["sent_bytes"] == sum(n["sent_bytes"] for n in report["nodes"])
    assert_every_node_has(ssh, lab_fleet, twin, docker_client.images.get(twin).id)
    for node in lab_fleet.nodes:
        tags = ssh.run(node, "docker images --format '{{.Repository}}'").stdout.split()
        assert "fleetimg-incoming" not in tags, node.name
