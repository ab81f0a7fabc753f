"""SD card writing against real block devices: loop devices standing in for card readers.

Every refusal must leave the target byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetimg import programs
from fleetimg.inventory import Fleet
from fleetimg.lab.testimage import APP_START
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.writer import plan_write

pytestmark = pytest.mark.integration


class Loops:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.devices: list[str] = []
        self.mounts: list[Path] = []

    def attach(self, size: int, *, read_only: bool = False, name: str = "card") -> tuple[Path, Path]:
        backing = self.tmp / f"{name}-{len(self.devices)}.bin"
        with backing.open("wb") as fh:
            fh.truncate(size)
            fh.seek(size // 2)
            fh.write(b"old card content")
        argv = ["losetup", "-f", "--show", *(["-r"] if read_only else []), str(backing)]
        dev = programs.run(argv).stdout.strip()
        self.devices.append(dev)
        return Path(dev), backing

    def close(self) -> None:
        for mnt in self.mounts:
            subprocess.run(["umount", str(mnt)], check=False)
        for dev in self.devices:
            subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    loops = Loops(tmp_path)
    yield loops
    loops.close()


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def sdcard(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), "sdcard",
                           *args], capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)


def assert_refused(proc: subprocess.CompletedProcess[str], reason: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ") and reason in first, proc.stderr
    assert "Traceback" not in proc.stderr


def test_write_to_block_device_and_read_back(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path
) -> None:
    fleet = make_fleet()
    dev, _ = loops.attach(512 << 20)
    proc = sdcard(fleet, "--node", "node2", "--image", str(jetson_image), str(dev), "--yes",
                  "--allow-non-removable")
    assert proc.returncode == 0, proc.stderr
    plan = plan_write(jetson_image)
    src = os.open(jetson_image, os.O_RDONLY)
    tgt = os.open(dev, os.O_RDONLY)
    try:
        app_start = APP_START * 512
        for lo, hi in plan.ranges:
            if hi <= app_start or lo >= app_start + (256 << 20):
                assert os.pread(src, hi - lo, lo) == os.pread(tgt, hi - lo, lo), (lo, hi)
    finally:
        os.close(src)
        os.close(tgt)
    fs = Ext4(dev, APP_START * 512)
    assert fs.read_text("/etc/hostname") == "node2\n"
    assert fs.stat("/etc/nv/nvfirstboot") is not None
    fs.fsck()


def test_non_removable_refused_without_flag(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path
) -> None:
    dev, backing = loops.attach(512 << 20)
    before = digest(backing)
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image), str(dev), "--yes")
    assert_refused(proc, "is not a removable drive")
    assert "--allow-non-removable" in proc.stderr
    assert digest(backing) == before


def test_mounted_device_refused(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    dev, backing = loops.attach(512 << 20)
    programs.run(["mke2fs", "-q", "-t", "ext4", str(dev)])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # Read-only, so the filesystem itself never changes the device during the test.
    programs.run(["mount", "-o", "ro", str(dev), str(mnt)])
    loops.mounts.append(mnt)
    before = digest(backing)
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image), str(dev),
                  "--yes", "--allow-non-removable")
    assert_refused(proc, f"is mounted at {mnt}")
    programs.run(["umount", str(mnt)])
    loops.mounts.remove(mnt)
    assert digest(backing) == before


def test_partition_path_refused(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    dev, backing = loops.attach(512 << 20)
    programs.run(["dd", f"if={jetson_image}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"])
    programs.run(["partx", "-a", str(dev)], check=False)
    sys_part = Path(f"/sys/class/block/{dev.name}p1")
    assert sys_part.exists()
    major, minor = (int(x) for x in (sys_part / "dev").read_text().split(":"))
    node = tmp_path / f"{dev.name}p1"  # no udev here: make the node ourselves
    os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
    before = digest(backing)
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image), str(node),
                  "--yes", "--allow-non-removable")
    assert_refused(proc, f"is a partition of /dev/{dev.name}")
    programs.run(["partx", "-d", str(dev)], check=False)
    assert digest(backing) == before


def test_too_small_refused(loops: Loops, make_fleet: Callable[..., Fleet],
                           jetson_image: Path) -> None:
    dev, backing = loops.attach(64 << 20)
    before = digest(backing)
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image), str(dev),
                  "--yes", "--allow-non-removable")
    assert_refused(proc, "is too small")
    assert digest(backing) == before


def test_read_only_refused(loops: Loops, make_fleet: Callable[..., Fleet],
                           jetson_image: Path) -> None:
    dev, backing = loops.attach(512 << 20, read_only=True)
    before = digest(backing)
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image), str(dev),
                  "--yes", "--allow-non-removable")
    assert_refused(proc, "is read-only")
    assert digest(backing) == before


def test_nonexistent_device_refused(make_fleet: Callable[..., Fleet], jetson_image: Path) -> None:
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image),
                  "/dev/fleetimg-no-such-card", "--yes")
    assert_refused(proc, "no such device")


def test_invalid_settings_leave_device_unchanged(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path
) -> None:
    dev, backing = loops.attach(512 << 20)
    before = digest(backing)
    proc = sdcard(make_fleet(key=False), "--node", "node1", "--image", str(jetson_image),
                  str(dev), "--yes", "--allow-non-removable")
    assert_refused(proc, "no way to log in")
    assert digest(backing) == before


def test_confirmation_required_without_yes(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path
) -> None:
    dev, backing = loops.attach(512 << 20)
    before = digest(backing)
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(jetson_image), str(dev),
                  "--allow-non-removable")
    assert_refused(proc, "without confirmation")
    assert digest(backing) == before


def test_several_cards_in_parallel(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path
) -> None:
    a, _ = loops.attach(512 << 20, name="a")
    b, _ = loops.attach(512 << 20, name="b")
    proc = sdcard(make_fleet(), "--nodes", "node1,node3", "--devices", f"{a},{b}",
                  "--image", str(jetson_image), "--yes", "--allow-non-removable")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" ok") >= 2
    assert Ext4(a, APP_START * 512).read_text("/etc/hostname") == "node1\n"
    assert Ext4(b, APP_START * 512).read_text("/etc/hostname") == "node3\n"


def test_loop_device_backed_by_the_source_is_refused(
    loops: Loops, make_fleet: Callable[..., Fleet], jetson_image: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source.img"
    source.write_bytes(jetson_image.read_bytes())
    before = digest(source)
    dev = Path(programs.run(["losetup", "-f", "--show", str(source)]).stdout.strip())
    loops.devices.append(str(dev))
    proc = sdcard(make_fleet(), "--node", "node1", "--image", str(source), str(dev), "--yes",
                  "--allow-non-removable")
    assert_refused(proc, "backed by the source image")
    assert digest(source) == before


def test_interrupted_device_write_is_reported_unfinished(
    loops: Loops, make_fleet: Callable[..., Fleet], large_image: Path
) -> None:
    dev, _ = loops.attach(1200 << 20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetimg", "-i", str(make_fleet().path), "sdcard", "--node",
         "node1", "--image", str(large_image), str(dev), "--yes", "--allow-non-removable"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    # Wait until the card is being written: the image's first bytes are on the device.
    with large_image.open("rb") as fh:
        head = fh.read(4096)
    deadline = time.monotonic() + 60
    while _head(dev) != head:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert f"unfinished: node1: {dev} was only partly written" in stderr


def _head(dev: Path) -> bytes:
    with dev.open("rb") as fh:  # the block device's page cache shows writes at once
        return fh.read(4096)
