"""The hostile pass, written as the attacks: links planted where fleetimg writes, targets it
cannot replace, names that would break a file or a terminal, impossible boards. Each is
refused or harmless, and every victim file stays byte-identical."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetimg import inventory, newfile, private
from fleetimg.errors import DiskError, FleetimgError
from fleetimg.inventory import Fleet
from fleetimg.l4t import L4TRelease
from fleetimg.lab.testimage import build_test_image
from fleetimg.sdcard.flash import SdcardOptions, plan_card, prepare_source, write_card
from fleetimg.sdcard.source import cache_dir
from tests.sdcard.test_hardening import cli, digest, one_line_error


def sdcard(fleet: Fleet, node: str, image: Path, target: Path, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    return cli("-i", str(fleet.path), "sdcard", "--node", node, "--image", str(image),
               str(target), *extra)


@pytest.fixture
def source(jetson_image: Path, tmp_path: Path) -> Path:
    """The user's source image, a copy the attacks may aim at."""
    src = tmp_path / "src.img"
    src.write_bytes(jetson_image.read_bytes())
    return src


@pytest.mark.parametrize("suffix", [".part", ".bmap.part"])
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_link_where_the_card_is_staged_is_refused(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path, suffix: str,
        kind: str) -> None:
    fleet = make_fleet()
    victim = tmp_path / "victim.img"
    planted = victim.with_name(victim.name + suffix)
    if kind == "symlink":
        planted.symlink_to(source)
    else:
        os.link(source, planted)
    before = digest(source)
    proc = sdcard(fleet, "node2", source, victim)
    one_line_error(proc, 1, "is in the way")
    assert "hint: " in proc.stderr and f"rm {planted}" in proc.stderr
    assert digest(source) == before
    assert stat.S_IMODE(source.stat().st_mode) == 0o644  # not made 0600 either
    # The cause is left for the user to see, and no card appeared.
    assert os.path.lexists(planted) and not victim.exists()


def test_a_link_planted_at_the_secret_temporary_is_not_followed(tmp_path: Path) -> None:
    # The private-file writer once used a fixed .NAME.PID.tmp: a link there got the key.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    key = tmp_path / "id_internal"
    for name in (f".{key.name}.{os.getpid()}.tmp", f"{key.name}.tmp",
                 f".{key.name}.pub.{os.getpid()}.tmp"):
        (tmp_path / name).symlink_to(victim)
    private.new_keypair(key, "fleetimg-test")
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # A link at the final name is replaced, never written through.
    target = tmp_path / "credentials"
    target.symlink_to(victim)
    newfile.write_atomic(target, b"user:secret\n", private=True)
    assert victim.read_text() == "precious\n" and not target.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")
            and not p.is_symlink()] == []


def test_a_leftover_of_a_killed_run_is_replaced(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path) -> None:
    fleet = make_fleet()
    out = tmp_path / "node2.img"
    for suffix in (".part", ".bmap.part"):
        left = out.with_name(out.name + suffix)
        left.write_bytes(b"half a card\n")
        left.chmod(0o600)
    proc = sdcard(fleet, "node2", source, out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.with_name("node2.img.bmap").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    marked: list[Path] = []

    def mark(path: Path) -> Path:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        marked.append(path)
        return path

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_target_that_cannot_be_replaced_is_refused_before_writing(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path,
        immutable: Callable[[Path], Path]) -> None:
    fleet = make_fleet()
    out = tmp_path / "node2.img"
    out.write_bytes(b"an older card\n")
    immutable(out)
    proc = sdcard(fleet, "node2", source, out, "--force")
    one_line_error(proc, 1, "immutable")
    assert "chattr -ia" in proc.stderr
    assert out.read_bytes() == b"an older card\n"
    directory = tmp_path / "locked"
    directory.mkdir()
    immutable(directory)
    proc = sdcard(fleet, "node2", source, directory / "node2.img")
    one_line_error(proc, 1, f"cannot write in {directory}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml", "id_fleet",
                                                          "id_fleet.pub", "locked",
                                                          "node2.img", "src.img"]


def test_a_failure_at_the_final_rename_leaves_no_secret_behind(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path,
        immutable: Callable[[Path], Path]) -> None:
    # Planning found the target replaceable; it became immutable while the card was
    # written. The finished card (key, token, hash inside) must not stay as a .part.
    fleet = make_fleet('internal_ssh_key = true')
    out = tmp_path / "node2.img"
    out.write_bytes(b"an older card\n")
    options = SdcardOptions(force=True, verify=False)
    plan = plan_card(fleet, fleet.node("node2"), out, prepare_source(source), options)
    immutable(out)
    with pytest.raises(DiskError, match="Operation not permitted") as info:
        write_card(plan, options)
    assert info.value.hint is not None and "nothing was left behind" in info.value.hint
    assert out.read_bytes() == b"an older card\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("node2.img.")]


@pytest.mark.parametrize("name", ['lab\nssh-ed25519 AAAA attacker', "lab\x1b[2Jwiped", "a b"])
def test_a_fleet_name_that_breaks_lines_or_terminals_is_refused(
        make_fleet: Callable[..., Fleet], name: str) -> None:
    fleet = make_fleet()
    assert fleet.path is not None
    fleet.path.write_text(fleet.path.read_text().replace(
        'name = "jetson-fleet"', f"name = {json.dumps(name)}"))
    proc = cli("-i", str(fleet.path), "nodes")
    one_line_error(proc, 2, "problem")
    assert "fleet.name" in proc.stderr and "\x1b" not in proc.stderr
    # Whatever a caller passes, a key comment stays one token on one line.
    assert private.keypair("x\ny z")[1].decode().split()[2] == "x_y_z"


@pytest.mark.parametrize(("module", "release", "needle"), [
    ("nano-4gb", "R36.4.3", "does not run on a Jetson Nano 4GB"),
    ("orin-nano", "R32.7.1", "does not run on a Jetson Orin Nano"),
    ("tx2", "R35.4.1", "does not run on a Jetson TX2"),
])
def test_a_module_on_a_release_it_never_ran_is_refused(
        make_fleet: Callable[..., Fleet], module: str, release: str, needle: str) -> None:
    fleet = make_fleet()
    assert fleet.path is not None
    head, sep, node2 = fleet.path.read_text().partition('name = "node2"\n')
    node2 = node2.replace('module = "nano-4gb"', f'module = "{module}"\nl4t = "{release}"', 1)
    fleet.path.write_text(head + sep + node2)
    proc = cli("-i", str(fleet.path), "nodes")
    one_line_error(proc, 2, "problem")
    assert needle in proc.stderr and "(on " in proc.stderr  # names the modules that fit


@pytest.mark.parametrize(("module", "release", "needle"), [
    ("tx2", "R32.7.1", "has no SD card slot"),
    ("agx-xavier", "R32.7.1", "has no SD card slot"),
    ("orin-nx", "R36.4.3", "has no SD card slot"),
    ("nano-emmc", "R32.7.1", "has no SD card slot"),
    ("orin-nano-module", "R36.4.3", "has no SD card slot"),
    ("xavier-nx-emmc", "R35.4.1", "has no SD card slot"),
    ("xavier-nx", "R32.7.1", "is built for Jetson Nano / TX1 (t210)"),
])
def test_a_card_the_module_cannot_boot_is_refused(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path, module: str,
        release: str, needle: str) -> None:
    fleet = make_fleet()
    assert fleet.path is not None
    head, sep, node2 = fleet.path.read_text().partition('name = "node2"\n')
    node2 = node2.replace('module = "nano-4gb"', f'module = "{module}"\nl4t = "{release}"'
                          '\nfirmware = "36.4.3"', 1)
    fleet.path.write_text(head + sep + node2)
    out = tmp_path / "node2.img"
    out.write_bytes(b"untouched\n")
    proc = sdcard(fleet, "node2", source, out, "--force")
    one_line_error(proc, 2, needle)
    assert "hint: " in proc.stderr
    if "slot" in needle:
        assert "fleetimg apply --to node2" in proc.stderr
    assert out.read_bytes() == b"untouched\n" and digest(source) == digest(source)


def test_an_r36_card_for_a_nano_is_refused(make_fleet: Callable[..., Fleet], images: Path,
                                           tmp_path: Path) -> None:
    orin = build_test_image(images / "hostile-r36.img", l4t=L4TRelease(36, 4, 3),
                            board="generic")
    proc = sdcard(make_fleet(), "node2", orin, tmp_path / "node2.img")
    one_line_error(proc, 2, "is an L4T R36.4.3 image, which a Jetson Nano 4GB")
    assert "runs R32.1.0 to R32 (JetPack 4)" in proc.stderr
    assert not list(tmp_path.glob("node2.img*"))


def test_the_same_node_twice_is_refused_up_front(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path) -> None:
    proc = cli("-i", str(make_fleet().path), "sdcard", "--nodes", "node2,node2", "--devices",
               f"{tmp_path / 'a.img'},{tmp_path / 'b.img'}", "--image", str(source))
    one_line_error(proc, 2, "node node2 is given twice in --nodes")
    assert not list(tmp_path.glob("?.img*"))


def test_an_image_that_is_a_directory_or_a_device_is_one_line(
        make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = make_fleet()
    proc = sdcard(fleet, "node2", tmp_path, tmp_path / "node2.img")
    one_line_error(proc, 1, "is a directory")
    proc = sdcard(fleet, "node2", Path("/dev/null"), tmp_path / "node2.img")
    one_line_error(proc, 1, "is not a regular file")
    assert "dd if=" in proc.stderr
    assert "fleetimg bug" not in proc.stderr


def test_garbage_that_decompresses_leaves_no_cache_and_names_the_users_file(
        make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    garbage = tmp_path / "jetson.img.gz"
    garbage.write_bytes(gzip.compress(os.urandom(1 << 20)))
    env = {"FLEETIMG_STATE_DIR": str(tmp_path / "state")}
    proc = cli("-i", str(make_fleet().path), "sdcard", "--node", "node2", "--image",
               str(garbage), str(tmp_path / "node2.img"), env=env)
    one_line_error(proc, 1, str(garbage))
    assert "images" not in proc.stderr.splitlines()[0]  # not the cache's path
    cached = tmp_path / "state" / "images"
    assert not cached.exists() or not list(cached.iterdir())
    assert cache_dir() != cached  # this test's own cache, not the suite's


def test_a_readable_k3s_token_file_is_refused(make_fleet: Callable[..., Fleet],
                                              tmp_path: Path) -> None:
    token = tmp_path / "k3s-token"
    token.write_text("K10secret::server:abc\n")
    token.chmod(0o644)
    fleet = make_fleet()
    assert fleet.path is not None
    fleet.path.write_text(fleet.path.read_text().replace(
        "[sdcard]\n", '[sdcard]\nk3s_token_file = "k3s-token"\n'))
    proc = cli("-i", str(fleet.path), "nodes")
    one_line_error(proc, 2, "problem")
    assert f"chmod 600 {token}" in proc.stderr
    token.chmod(0o600)
    assert inventory.load(fleet.path).sdcard.k3s_token_file == token


def test_a_target_that_is_no_regular_file_is_one_line_with_a_hint(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path) -> None:
    (tmp_path / "cards").mkdir()
    proc = sdcard(make_fleet(), "node2", source, tmp_path / "cards", "--force")
    one_line_error(proc, 2, "exists and is not a regular file")
    assert "hint: name a file for the card image" in proc.stderr


def test_a_secret_beside_the_inventory_is_never_read_through_a_link(
        make_fleet: Callable[..., Fleet], source: Path, tmp_path: Path) -> None:
    # k3s-node-passwords/node2 -> a file of someone else's: its content would land on the card.
    victim = tmp_path / "victim"
    victim.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    fleet = make_fleet(runtime="k3s")
    planted = tmp_path / "k3s-node-passwords" / "node2"
    planted.parent.mkdir()
    planted.symlink_to(victim)
    out = tmp_path / "node2.img"
    proc = sdcard(fleet, "node2", source, out)
    one_line_error(proc, 1, "cannot read it as a secret file (a symbolic link)")
    assert f"rm {planted}" in proc.stderr
    assert not out.exists() and victim.read_text().startswith("root:")


def test_a_link_planted_where_a_lab_image_is_staged_is_refused(tmp_path: Path) -> None:
    # `fleetimg lab sdimage OUT` staged OUT.part: it removed whatever stood there first.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "lab.img"
    planted = out.with_name("lab.img.part")
    planted.symlink_to(victim)
    with pytest.raises(DiskError, match="is in the way"):
        build_test_image(out)
    assert victim.read_text() == "precious\n" and planted.is_symlink() and not out.exists()
    # A failure half-way leaves nothing: here, an APP too small for its skeleton.
    planted.unlink()
    with pytest.raises(FleetimgError):
        build_test_image(out, app_size=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
