"""The CLI as a user meets it: real subprocesses, one-line errors with hints, no tracebacks."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import click
import pytest

from fleetimg.cli.main import cli


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


# The first hour's CLI pass: what a user of docker, kubectl or git expects.

def test_the_inventory_is_found_in_a_parent_directory(tmp_path: Path) -> None:
    assert fleetimg("init", "--nodes", "2", cwd=tmp_path).returncode == 0
    deep = tmp_path / "models" / "resnet"
    deep.mkdir(parents=True)
    proc = fleetimg("nodes", cwd=deep)
    assert proc.returncode == 0, proc.stderr
    assert "node2" in proc.stdout
    # init starts a fleet where it runs: it never overwrites the parent's.
    before = (tmp_path / "fleet.toml").read_text()
    assert fleetimg("init", "--nodes", "3", "--force", cwd=deep).returncode == 0
    assert (deep / "fleet.toml").is_file() and (tmp_path / "fleet.toml").read_text() == before


def test_no_color_is_honoured_on_a_terminal(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Colour only shows on a terminal: the test gives the command one.
    def on_a_terminal(env: dict[str, str]) -> bytes:
        main, sub = pty.openpty()
        try:
            subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(tmp_path / "none.toml"),
                            "nodes"], stdin=subprocess.DEVNULL, stdout=sub, stderr=sub,
                           env={**os.environ, **env}, timeout=60, check=False)
            os.close(sub)
            sub = -1
            out = b""
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # EIO: the terminal's other end is closed
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            os.close(main)
            if sub >= 0:
                os.close(sub)

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert b"\x1b[" in on_a_terminal({})
    without = on_a_terminal({"NO_COLOR": "1"})
    assert b"error: no inventory" in without and b"\x1b[" not in without


def test_shell_completion_is_offered() -> None:
    proc = subprocess.run([sys.executable, "-m", "fleetimg"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "_FLEETIMG_COMPLETE": "bash_source"},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "_fleetimg_completion" in proc.stdout and "complete " in proc.stdout


def test_every_option_explains_itself() -> None:
    def missing(cmd: click.Command, path: list[str]) -> list[str]:
        out = [f"{' '.join(path)} {p.opts[0]}" for p in cmd.params
               if isinstance(p, click.Option) and not p.help and p.name != "help"]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                out += missing(sub, [*path, name])
        return out

    assert missing(cli, ["fleetimg"]) == []
    # Nothing is advertised that is then refused (registry up --on master once was).
    assert "--on" not in fleetimg("registry", "up", "--help").stdout


def test_a_users_install_pulls_no_test_or_dev_packages() -> None:
    # `pip install .` / pipx: runtime dependencies only; the suite's live in extras.
    import re

    from fleetimg import tomlcompat as tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    names = {re.split(r"[<>=!~; \[]", d, maxsplit=1)[0].lower()
             for d in project["project"]["dependencies"]}
    assert not names & {"pytest", "testcontainers", "torch", "numpy", "pillow", "ruff", "mypy",
                        "matplotlib", "mfusepy"}
    assert {"docker", "click"} <= names
