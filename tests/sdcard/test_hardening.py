"""Card writing as a careless or hostile user meets it: interrupts, existing files, damaged
downloads, concurrent runs, secrets on disk. Real images, real ext4, real processes."""

from __future__ import annotations

import hashlib
import lzma
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from fleetimg.inventory import Fleet
from fleetimg.sdcard.source import cache_dir
from tests.terminal import from_terminal


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetimg", *args], capture_output=True,
                          text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and needle in proc.stderr.splitlines()[0], \
        proc.stderr


def test_existing_image_file_is_not_overwritten_without_force(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    out = tmp_path / "node1.img"
    out.write_bytes(b"somebody's other card image\n" * 1000)
    before = digest(out)
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node1", "--image",
               str(jetson_image), str(out))
    one_line_error(proc, 2, "already exists")
    assert "--force" in proc.stderr
    assert digest(out) == before
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node1", "--image",
               str(jetson_image), str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert digest(out) != before


def test_target_that_is_the_source_under_another_name_is_refused(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    source = tmp_path / "source.img"
    source.write_bytes(jetson_image.read_bytes())
    link = tmp_path / "card.img"
    os.link(source, link)
    before = digest(source)
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node1", "--image", str(source),
               str(link), "--force")
    one_line_error(proc, 2, "is the source image itself")
    assert digest(source) == before


def test_card_image_and_internal_key_are_private(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet("internal_ssh_key = true")
    out = tmp_path / "node1.img"
    # As under `sudo fleetimg ...`: the files belong to the user who ran sudo.
    env = {"SUDO_UID": "4321", "SUDO_GID": "4322"} if os.geteuid() == 0 else {}
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node1", "--image",
               str(jetson_image), str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    key = fleet.base_dir / "fleet_internal_ed25519"
    for path in (out, key):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, path
        if env:
            assert (st.st_uid, st.st_gid) == (4321, 4322), path


def test_truncated_zip_is_one_line_and_caches_nothing(
    make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(jetson_image, "sd-blob.img")
    cut = tmp_path / "jetson-sd-card-image.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    proc = cli("-i", str(fleet.path), "sdcard", "--node", "node1", "--image", str(cut),
               str(tmp_path / "node1.img"))
    one_line_error(proc, 1, "cannot decompress")
    assert not (tmp_path / "node1.img").exists()
    assert not list(cache_dir().glob("jetson-sd-card-image*"))


def test_two_runs_decompressing_one_image_both_succeed(jetson_image: Path,
                                                       tmp_path: Path) -> None:
    src = tmp_path / "shared.img.xz"
    src.write_bytes(lzma.compress(jetson_image.read_bytes(), preset=0))
    code = ("import sys; from pathlib import Path; from fleetimg.sdcard.source import "
            "resolve_source; print(resolve_source(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {Path(o[0].strip()) for o in outs}
    assert len(paths) == 1
    assert digest(paths.pop()) == digest(jetson_image)
    assert not list(cache_dir().glob("shared*.part"))


def test_interrupt_during_card_write_leaves_no_file(
    make_fleet: Callable[..., Fleet], large_image: Path, tmp_path: Path
) -> None:
    fleet = make_fleet()
    out = tmp_path / "node1.img"
    part = out.with_name(out.name + ".part")
    proc = subprocess.Popen(
        from_terminal([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), "sdcard",
                       "--node", "node1", "--image", str(large_image), str(out)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not part.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # Writing has begun: Ctrl-C in the terminal signals the whole process group.
    os.killpg(proc.pid, signal.SIGINT)
    stopped = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - stopped < 3, stderr
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() and not part.exists()
