"""The CLI as a user meets it: real subprocesses, one-line errors with hints, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def fleetimg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetimg", *args],
        capture_output=True, text=True, cwd=cwd, timeout=60, check=False,
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") or proc.stderr.startswith("Error: ")
    for needle in needles:
        assert needle in proc.stderr


def test_help_explains() -> None:
    proc = fleetimg("--help")
    assert proc.returncode == 0
    for word in ("init", "nodes", "doctor", "lab", "fleet.toml"):
        assert word in proc.stdout
    assert "--to" in fleetimg("nodes", "probe", "--help").stdout


def test_init_then_nodes(tmp_path: Path) -> None:
    inv = tmp_path / "fleet.toml"
    proc = fleetimg("-i", str(inv), "init", "--nodes", "4", "--subnet", "192.168.10.0/24")
    assert proc.returncode == 0, proc.stderr
    listing = fleetimg("-i", str(inv), "nodes", "--json")
    nodes = json.loads(listing.stdout)
    assert [n["name"] for n in nodes] == ["node1", "node2", "node3", "node4"]
    assert nodes[0]["role"] == "master" and nodes[0]["address"] == "192.168.10.11"
    table = fleetimg("-i", str(inv), "nodes")
    assert "node4" in table.stdout and "192.168.10.14" in table.stdout


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    inv = tmp_path / "fleet.toml"
    inv.write_text("# mine\n")
    proc = fleetimg("-i", str(inv), "init")
    assert_clean_error(proc, 2, "already exists", "hint: use --force")
    assert inv.read_text() == "# mine\n"


def test_init_bad_subnet(tmp_path: Path) -> None:
    proc = fleetimg("-i", str(tmp_path / "f.toml"), "init", "--subnet", "10.0.0.300/24")
    assert_clean_error(proc, 2, "--subnet", "hint:")
    assert not (tmp_path / "f.toml").exists()


def test_missing_inventory(tmp_path: Path) -> None:
    proc = fleetimg("nodes", cwd=tmp_path)
    assert_clean_error(proc, 2, "no inventory at fleet.toml", "fleetimg init")


def test_invalid_inventory_lists_problems(tmp_path: Path) -> None:
    inv = tmp_path / "fleet.toml"
    inv.write_text('[fleet]\nsubnet = "10.0.0.0/24"\n[[nodes]]\nname = "a_b"\n'
                   'address = "10.0.1.5"\nmodule = "nano-4gb"\n')
    proc = fleetimg("-i", str(inv), "nodes")
    assert_clean_error(proc, 2, "node 'a_b'.name", "node 'a_b'.address", "2 problems")


def test_unknown_selection(tmp_path: Path) -> None:
    inv = tmp_path / "fleet.toml"
    fleetimg("-i", str(inv), "init", "--nodes", "2")
    proc = fleetimg("-i", str(inv), "nodes", "probe", "--to", "node7")
    assert_clean_error(proc, 2, "unknown node or group 'node7'", "all-nodes")


def test_bad_l4t_option() -> None:
    proc = fleetimg("lab", "up", "--l4t", "4.6.1x")
    assert_clean_error(proc, 2, "not an L4T release", "R32.7.1")


@pytest.mark.parametrize("args", [["nodes", "--bogus"], ["frobnicate"]])
def test_click_usage_errors(args: list[str]) -> None:
    proc = fleetimg(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
