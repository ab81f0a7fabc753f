#!/usr/bin/env python3
"""Compare SD card writers on the same image and the same target, in one run.

Image: a Jetson-like SD card image whose 1 GiB APP root is about half empty.
Target: a loop device over a file (a stand-in for a card reader). Page caches are dropped
before every run and every writer ends with fsync, so each time includes reaching the disk.

    python benchmarks/sdcard_write.py [--app-size 1G] [--payload 480M] [--runs 1]

Prints a table and writes benchmarks/results/sdcard_write.json. Needs root (loop devices),
dd, bmaptool (apt-get install bmap-tools) and sgdisk/e2fsprogs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import write_results
from fleetimg.lab.testimage import build_test_image
from fleetimg.sdcard.writer import plan_write, verify_mapped, write_mapped


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units \
        else int(text)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[], None]) -> float:
    drop_caches()
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app-size", default="1G")
    ap.add_argument("--payload", default="480M")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root for loop devices", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sdbench-", dir=args.workdir))
    loop = ""
    try:
        image = build_test_image(work / "jetson.img", app_size=size(args.app_size),
                                 payload=size(args.payload))
        dense = work / "jetson-dense.img"
        sh("cp", "--sparse=never", str(image), str(dense))
        plan = plan_write(image)
        backing = work / "card.bin"
        with backing.open("wb") as fh:
            fh.truncate(plan.image_bytes + (64 << 20))
        loop = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                              capture_output=True, text=True).stdout.strip()
        bmap = work / "jetson.bmap"
        bmap_dense = work / "jetson-dense.bmap"
        sh("bmaptool", "create", "-o", str(bmap), str(image))
        sh("bmaptool", "create", "-o", str(bmap_dense), str(dense))

        def fleetimg(verify: bool) -> Callable[[], None]:
            def run() -> None:
                fd = os.open(loop, os.O_RDWR | os.O_EXCL)
                try:
                    digest = write_mapped(plan, fd)
                finally:
                    os.close(fd)
                if verify:
                    verify_mapped(plan, Path(loop), digest)
            return run

        writers: dict[str, Callable[[], None]] = {
            "dd bs=4M conv=fsync": lambda: sh("dd", f"if={image}", f"of={loop}", "bs=4M",
                                             "conv=fsync", "status=none"),
            "bmaptool copy (sparse image)": lambda: sh(
                "bmaptool", "copy", "--bmap", str(bmap), str(image), loop),
            "bmaptool copy (dense image, as unzip leaves it)": lambda: sh(
                "bmaptool", "copy", "--bmap", str(bmap_dense), str(dense), loop),
            "fleetimg (no verify)": fleetimg(False),
            "fleetimg (with read-back verify)": fleetimg(True),
        }
        results = {}
        for name, fn in writers.items():
            times = [timed(fn) for _ in range(args.runs)]
            results[name] = min(times)
        dd = results["dd bs=4M conv=fsync"]
        report = {
            "image_bytes": plan.image_bytes,
            "mapped_bytes": plan.mapped_bytes,
            "app_fill": round(plan.mapped_bytes / plan.image_bytes, 3),
            "seconds": {k: round(v, 3) for k, v in results.items()},
            "speedup_vs_dd": {k: round(dd / v, 2) for k, v in results.items()},
            "dd_write_rate_MBps": round(plan.image_bytes / dd / 1e6, 1),
            "fleetimg_bound_seconds": round(plan.mapped_bytes / (plan.image_bytes / dd), 3),
        }
        print(f"image {plan.image_bytes / 1e6:.0f} MB, of which {plan.mapped_bytes / 1e6:.0f} MB "
              f"allocated ({report['app_fill']:.0%}); dd rate {report['dd_write_rate_MBps']} MB/s")
        print(f"{'writer':<50} {'seconds':>8} {'vs dd':>7}")
        for k, v in results.items():
            print(f"{k:<50} {v:8.2f} {dd / v:6.2f}x")
        print(f"goal: fleetimg <= allocated / write rate = {report['fleetimg_bound_seconds']} s")
        write_results("sdcard_write", report)
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
