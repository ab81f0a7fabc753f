from __future__ import annotations

import gzip
import lzma
import zipfile
from pathlib import Path

import pytest

from fleetimg.errors import DiskError
from fleetimg.lab.testimage import APP_START, T210
from fleetimg.sdcard.ext4 import parse_free_blocks, parse_stat
from fleetimg.sdcard.gpt import read_table_file
from fleetimg.sdcard.source import resolve_source
from fleetimg.sdcard.writer import merge, plan_write
from tests.conftest import DATA


def test_test_image_is_jetson_like(jetson_image: Path) -> None:
    table = read_table_file(jetson_image)
    assert len(table.partitions) == 14
    app = table.by_name("APP")
    assert app is not None and app.number == 1 and app.first_lba == APP_START
    assert all(p.first_lba < app.first_lba for p in table.partitions if p is not app)
    assert {p.name for p in table.partitions} == {"APP", *(n for n, _, _ in T210.before_app)}


def test_not_a_gpt_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(DiskError, match="no GPT"):
        plan_write(junk)


def test_corrupt_gpt_header(tmp_path: Path, jetson_image: Path) -> None:
    bad = tmp_path / "bad.img"
    with jetson_image.open("rb") as src, bad.open("wb") as dst:
        dst.write(src.read(1 << 20))
    with bad.open("r+b") as fh:
        fh.seek(512 + 40)
        fh.write(b"\xff\xff")
    with pytest.raises(DiskError, match="checksum"):
        plan_write(bad)


def test_plan_maps_only_allocated_blocks(jetson_image: Path) -> None:
    plan = plan_write(jetson_image)
    assert plan.image_bytes == jetson_image.stat().st_size
    assert plan.mapped_bytes < plan.image_bytes / 2
    assert plan.ranges[0][0] == 0  # protective MBR, GPT and firmware partitions
    assert plan.ranges[-1][1] == plan.image_bytes  # backup GPT at the end
    assert all(lo % 4096 == 0 for lo, _ in plan.ranges)


def test_merge_aligns_and_joins() -> None:
    assert merge([(10, 20), (4000, 4100), (9000, 9001)], 100_000) == ((0, 12288),)
    assert merge([(20000, 20001), (10, 20)], 100_000) == ((0, 4096), (16384, 20480))
    assert merge([(0, 5000)], 4500) == ((0, 4500),)


def test_parse_dumpe2fs_and_stat_captured() -> None:
    text = (DATA / "dumpe2fs.txt").read_text()
    block, first, count, free = parse_free_blocks(text)
    assert (block, first, count) == (1024, 1, 32768)
    assert free[0] == (2330, 8193) and (8450, 16385) in free
    full_group = "Block size: 4096\nFirst block: 0\nBlock count: 100\n" \
        "Group 0: (Blocks 0-49)\n  Free blocks: \n  Free inodes: 114\n" \
        "Group 1: (Blocks 50-99)\n  Free blocks: 60-99\n  Free inodes: \n"
    assert parse_free_blocks(full_group) == (4096, 0, 100, [(60, 100)])
    inode = parse_stat("/etc/hostname", (DATA / "debugfs-stat.txt").read_text())
    assert inode is not None and inode.kind == "regular" and inode.mode == 0o644
    assert (inode.uid, inode.gid, inode.size) == (0, 0, 3)


@pytest.mark.parametrize("kind", ["gz", "xz", "zip"])
def test_compressed_sources_decompress_to_same_image(
    jetson_image: Path, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETIMG_STATE_DIR", str(tmp_path / "state"))
    raw = jetson_image.read_bytes()
    src = tmp_path / f"jetson.img.{kind}"
    if kind == "gz":
        src.write_bytes(gzip.compress(raw, compresslevel=1))
    elif kind == "xz":
        src.write_bytes(lzma.compress(raw, preset=0))
    else:
        src = tmp_path / "jetson-sd-card-image.zip"
        with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.write(jetson_image, "sd-blob-b01.img")
    seen: list[int] = []
    out = resolve_source(src, lambda done, total: seen.append(done))
    assert out.read_bytes() == raw
    assert seen and seen[-1] == len(raw)
    assert out.stat().st_blocks * 512 < len(raw)  # zeros left as holes
    assert resolve_source(src) == out  # cached


def test_truncated_compressed_source_leaves_nothing(tmp_path: Path, jetson_image: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETIMG_STATE_DIR", str(tmp_path / "state"))
    src = tmp_path / "cut.img.gz"
    src.write_bytes(gzip.compress(jetson_image.read_bytes()[: 4 << 20])[:-100])
    with pytest.raises(DiskError, match="cannot decompress"):
        resolve_source(src)
    assert not list((tmp_path / "state" / "images").glob("*"))
