"""Bad inputs found by a hostile test pass: each is one line with a hint, never a traceback,
never damage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.cli.render import node_message
from fleetimg.errors import InventoryError, UsageError
from fleetimg.l4t import L4TRelease
from fleetimg.sdcard.flash import FIRMWARE_CHECK
from tests.unit.test_cli import assert_clean_error, fleetimg

HASH = ("$6$abcdefgh$" + "A" * 86)


def starter(tmp_path: Path, replace: tuple[str, str] | None = None, extra: str = "") -> Path:
    text = inventory.starter_toml(nodes=2, subnet="192.168.10.0/24")
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "fleet.toml"
    path.write_text(text.replace("[sdcard]\n", "[sdcard]\n" + extra + "\n"))
    return path


def test_non_utf8_inventory_is_one_line(tmp_path: Path) -> None:
    inv = starter(tmp_path)
    inv.write_bytes(inv.read_bytes().replace(b'"jetson-fleet"', b'"fl\xe8et"'))
    proc = fleetimg("-i", str(inv), "nodes")
    assert_clean_error(proc, 2, "not UTF-8", "hint:")
    assert len(proc.stderr.splitlines()) == 2


def test_inventory_directory_is_one_line(tmp_path: Path) -> None:
    proc = fleetimg("-i", str(tmp_path), "nodes")
    assert_clean_error(proc, 2, "is a directory")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e3", "99999"])
def test_bad_ssh_timeout_is_one_line(tmp_path: Path, value: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    inv = starter(tmp_path)
    monkeypatch.setenv("FLEETIMG_SSH_TIMEOUT", value)
    proc = fleetimg("-i", str(inv), "nodes", "probe")
    assert_clean_error(proc, 2, "FLEETIMG_SSH_TIMEOUT", "hint:")


@pytest.mark.parametrize("value", [
    f"{HASH}:0:0:99999",  # would forge the shadow line's other fields
    f"{HASH}\\nroot::0:0:99999:7:::",  # would add a passwordless root line
    "$6$x",  # a prefix is not a hash
    "$1$abcdefgh$" + "A" * 22,  # MD5
    "$y$j9T$abc$def",  # yescrypt: JetPack 4's glibc cannot check it
    HASH[:20] + "\\u0007" + HASH[20:],  # a control character inside
])
def test_password_hash_must_be_one_sha512_crypt_string(tmp_path: Path, value: str) -> None:
    inv = starter(tmp_path, extra=f'password_hash = "{value}"')
    with pytest.raises(InventoryError, match=r"sdcard\.password_hash"):
        inventory.load(inv)


def test_real_sha512_hashes_are_accepted(tmp_path: Path) -> None:
    rounds = "$6$rounds=5000$saltsalt$" + "b" * 86
    for value in (HASH, rounds):
        fleet = inventory.load(starter(tmp_path, extra=f'password_hash = "{value}"'))
        assert fleet.sdcard.password_hash == value


@pytest.mark.parametrize("release", ["R99.1", "R1.0", "R33.1"])
def test_unknown_l4t_family_is_refused(tmp_path: Path, release: str) -> None:
    inv = starter(tmp_path, ('l4t = "R32.7.1"', f'l4t = "{release}"'))
    proc = fleetimg("-i", str(inv), "nodes")
    assert_clean_error(proc, 2, "fleet.l4t", "not an L4T release fleetimg knows")


def test_newer_point_release_of_a_known_family_is_accepted(tmp_path: Path) -> None:
    fleet = inventory.load(starter(tmp_path, ('l4t = "R32.7.1"', 'l4t = "R32.7.9"')))
    assert str(fleet.nodes[0].l4t) == "R32.7.9"


def test_bad_fleet_user_is_reported_where_it_is_written(tmp_path: Path) -> None:
    inv = starter(tmp_path, ('user = "jetson"', 'user = "Bad User"'))
    with pytest.raises(InventoryError) as info:
        inventory.load(inv)
    assert "fleet.user" in info.value.message
    assert "sdcard.user" not in info.value.message


def test_bad_sdcard_user_is_reported_there(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"sdcard\.user"):
        inventory.load(starter(tmp_path, extra='user = "x:y"'))


@pytest.mark.parametrize(("message", "line"), [
    ("node2: refused: L4T mismatch", "node2: refused: L4T mismatch"),
    ("node2 (10.0.0.2:22): cannot connect", "node2 (10.0.0.2:22): cannot connect"),
    ("disk full", "node2: disk full"),
    ("node20: other node", "node2: node20: other node"),
])
def test_failure_lines_name_the_node_once(message: str, line: str) -> None:
    assert node_message("node2", message) == line


@pytest.mark.parametrize(("release", "name"), [("R38.2.0", "JetPack 7.0/7.1 (Thor)"),
                                               ("R39.0", "JetPack 7.2")])
def test_jetpack_7_is_refused_naming_what_is_supported(tmp_path: Path, release: str,
                                                       name: str) -> None:
    inv = starter(tmp_path, ('l4t = "R32.7.1"', f'l4t = "{release}"'))
    proc = fleetimg("-i", str(inv), "nodes")
    assert_clean_error(proc, 2, f"is {name}, which fleetimg does not support yet",
                       "R36 = JetPack 6")


def test_apply_unknown_concern_is_one_line(tmp_path: Path) -> None:
    proc = fleetimg("-i", str(starter(tmp_path)), "apply", "--only", "users,wifi")
    assert_clean_error(proc, 2, "unknown concern wifi", "network, users")


def test_apply_from_names_one_board(tmp_path: Path) -> None:
    proc = fleetimg("-i", str(starter(tmp_path)), "apply", "--from", "192.168.10.77")
    assert_clean_error(proc, 2, "select exactly one node", "--to node4")


# The hostile pass's smaller findings: each one line with a hint, nothing written.

def test_toml_syntax_errors_and_a_fleet_that_is_no_table_have_hints(tmp_path: Path) -> None:
    inv = tmp_path / "fleet.toml"
    inv.write_text("[fleet\nname = 1\n")
    assert_clean_error(fleetimg("-i", str(inv), "nodes"), 2, "not valid TOML", "hint: ")
    inv.write_text("fleet = 3\n")
    assert_clean_error(fleetimg("-i", str(inv), "nodes"), 2, f"{inv}: fleet must be a table",
                       "hint: ")


def test_an_ssh_key_that_is_a_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    inv = starter(tmp_path, ('# ssh_key = "~/.ssh/id_ed25519"', 'ssh_key = "keys"'))
    assert_clean_error(fleetimg("-i", str(inv), "nodes"), 2, "is a directory, not a file")


def test_an_empty_inventory_variable_means_unset(tmp_path: Path) -> None:
    starter(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "nodes"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FLEETIMG_INVENTORY": ""})
    assert proc.returncode == 0, proc.stderr
    assert "node1" in proc.stdout


def test_a_huge_file_is_not_parsed_as_an_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "fleet.toml"
    with inv.open("w") as fh:
        fh.write("[fleet]\n")
        fh.write("# padding\n" * 200_000)
    assert_clean_error(fleetimg("-i", str(inv), "nodes"), 2, "too large for a fleet inventory")


@pytest.mark.parametrize(("args", "needle"), [
    (["--l4t", "R99.1"], "not an L4T release fleetimg knows"),
    (["--l4t", "R36.4.3"], "does not run on a Jetson Nano 4GB"),
    (["--name", "a\nb"], "fleet.name"),
])
def test_init_refuses_what_the_inventory_would_refuse_and_writes_nothing(
        tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "fleet.toml"
    assert_clean_error(fleetimg("init", "-o", str(out), *args), 2, needle, "hint: ")
    assert list(tmp_path.iterdir()) == []


def test_init_into_a_directory_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "fleetdir"
    target.mkdir()
    proc = fleetimg("init", "-o", str(target), "--force")
    assert_clean_error(proc, 2, "is a directory", f"-o {target / 'fleet.toml'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleetdir"]
    assert list(target.iterdir()) == []


def test_a_release_with_absurd_digits_is_refused() -> None:
    with pytest.raises(UsageError, match="not an L4T release"):
        L4TRelease.parse("R32.7.99999999999999999999")


def test_errors_are_json_on_stdout_with_json(tmp_path: Path) -> None:
    inv = starter(tmp_path)
    proc = fleetimg("-i", str(inv), "push", "no-such-image", "--json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "UsageError" and error["exit_code"] == 2
    assert "no-such-image" in error["message"]
    # No `fleetimg build <ref>` for a name that is no target: what can be pushed instead.
    assert "fleetimg build no-such-image" not in error["hint"]
    assert "docker images" in error["hint"]
    proc = fleetimg("-i", str(inv), "nodes", "--json", "--no-such-option")
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"]["exit_code"] == 2


def test_the_log_is_private_and_holds_commands_only_with_verbose(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "FLEETIMG_STATE_DIR": str(state)}
    inv = starter(tmp_path)
    for verbose in ([], ["-v"]):
        subprocess.run([sys.executable, "-m", "fleetimg", *verbose, "-i", str(inv), "doctor"],
                       capture_output=True, text=True, timeout=120, env=env, check=False)
        log = state / "fleetimg.log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
        assert ("+ " in log.read_text()) == bool(verbose)


def test_the_firmware_check_command_can_be_pasted() -> None:
    assert FIRMWARE_CHECK == "sudo nvbootctrl dump-slots-info"
