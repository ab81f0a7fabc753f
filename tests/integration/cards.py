"""Helpers for tests on booted lab cards (the `cards_lab` fixture's fleet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from fleetimg.inventory import Fleet
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.conftest import fleetimg_json


def sdcard(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), "sdcard",
                           *args], capture_output=True, text=True, timeout=600, check=False,
                          stdin=subprocess.DEVNULL)


def write_card(fleet: Fleet, node: str, image: Path, out: Path, *extra: str) -> Path:
    proc = sdcard(fleet, "--node", node, "--image", str(image), str(out), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def ssh_to(fleet: Fleet) -> Ssh:
    return Ssh(SshOptions(known_hosts=fleet.known_hosts, connect_timeout=5))


def probe_one(fleet: Fleet, node: str) -> dict[str, Any]:
    """`fleetimg nodes probe --to NODE --json`, which must succeed."""
    code, data = fleetimg_json("-i", str(fleet.path), "nodes", "probe", "--to", node)
    assert code == 0, data
    assert isinstance(data, list) and isinstance(data[0], dict)
    return data[0]


def on(fleet: Fleet, node: str, command: str) -> str:
    return ssh_to(fleet).run(fleet.node(node), command, timeout=60).stdout.strip()
