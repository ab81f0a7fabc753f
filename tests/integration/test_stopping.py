"""Ctrl-C and SIGTERM stop a push on the lab fleet: children end, nothing is re-fed, no node
keeps the image's tag or a temporary one, and running again completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import docker
import pytest

from fleetimg.inventory import Fleet
from fleetimg.ssh import Ssh
from tests.integration.conftest import assert_every_node_has, fleetimg_json
from tests.integration.images import build_app_image
from tests.terminal import from_terminal

pytestmark = pytest.mark.integration

# Big enough that 2 s in, the stream is still going to every node.
BIG_MB = 300


@pytest.fixture(scope="module")
def big_image() -> str:
    return build_app_image("fleetimg-test/stop:big", app="print('stop')\n", blob_mb=BIG_MB)


def tags_on(ssh: Ssh, fleet: Fleet, name: str) -> list[str]:
    out = ssh.run(fleet.node(name), "docker images --format '{{.Repository}}:{{.Tag}}'").stdout
    return out.split()


def forget_everywhere(ssh: Ssh, fleet: Fleet, ref: str) -> None:
    for node in fleet.nodes:
        ssh.run(node, f"docker rmi -f {ref} >/dev/null 2>&1; docker image prune -f >/dev/null",
                check=False)


@pytest.mark.parametrize(("fanout", "sig", "to_group", "code"), [
    ("chain", signal.SIGINT, True, 130),  # Ctrl-C in the terminal
    ("chain", signal.SIGTERM, False, 143),  # kill, systemd, a CI timeout
    ("direct", signal.SIGINT, False, 130),  # kill -INT
])
def test_signal_stops_a_push_and_a_rerun_completes(
    lab_fleet: Fleet, ssh: Ssh, docker_client: docker.DockerClient, big_image: str,
    fanout: str, sig: signal.Signals, to_group: bool, code: int,
) -> None:
    forget_everywhere(ssh, lab_fleet, big_image)
    inv = str(lab_fleet.path)
    proc = subprocess.Popen(
        from_terminal([sys.executable, "-m", "fleetimg", "-i", inv, "push", big_image,
                       "--fanout", fanout, "-q"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    time.sleep(2)  # the scenario: a signal 2 s into the push
    assert proc.poll() is None, proc.communicate()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    sent_at = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent_at
    assert proc.returncode == code, out + err
    assert took < 5, f"took {took:.1f} s to stop\n{out}{err}"
    assert "interrupted" in err and "Traceback" not in err
    assert "re-fed" not in out and "re-feeding" not in err
    for node in lab_fleet.nodes:
        tags = tags_on(ssh, lab_fleet, node.name)
        assert big_image not in tags, (node.name, tags)
        assert not [t for t in tags if t.startswith("fleetimg-incoming")], (node.name, tags)
    # No relay script, ssh or docker load is left running on any node (they end as their
    # input closes: allow them a moment).
    for node in lab_fleet.nodes:
        deadline = time.monotonic() + 10
        while left := ssh.run(node, "pgrep -fa 'fleetimg-[r]elay|docker [l]oad|zstd -d[c]' || true"
                              ).stdout.strip():
            assert time.monotonic() < deadline, (node.name, left)
            time.sleep(0.2)
    rc, data = fleetimg_json("-i", inv, "push", big_image, "--fanout", fanout, timeout=600)
    assert rc == 0, data
    assert_every_node_has(ssh, lab_fleet, big_image, docker_client.images.get(big_image).id)
