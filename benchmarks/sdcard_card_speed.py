#!/usr/bin/env python3
"""SD card writers at an SD card's speed: dd, bmaptool and fleetimg write the same image to a
"card" that writes at 20, 40 and 90 MB/s and reads at 90 MB/s.

The card is a loop device over a rate-limited FUSE file (benchmarks/fusecard.py): these
machines have no blkio cgroup, device-mapper or nbd. The goal: fleetimg (without its
read-back) within 10% of (bytes it writes / card rate).

    python benchmarks/sdcard_card_speed.py [--app-size 512M] [--payload 240M]
                                           [--rates 20,40,90]

Needs root, fuse3 and the `bench` extra (mfusepy). Writes
benchmarks/results/sdcard_card_speed.json.
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
from benchmarks.sdcard_write import drop_caches, sh, size
from fleetimg.lab.testimage import build_test_image
from fleetimg.sdcard.bmap import write_bmap
from fleetimg.sdcard.writer import WritePlan, plan_write, verify_mapped, write_mapped

READ_MBPS = 90  # a UHS-I card's reads


class Card:
    """A mounted rate-limited FUSE file with a loop device over it."""

    def __init__(self, work: Path, size_bytes: int, write_mbps: float) -> None:
        self.mount = work / "fuse"
        self.mount.mkdir(exist_ok=True)
        backing = work / "card.bin"
        backing.unlink(missing_ok=True)
        self.server = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fusecard.py")), str(self.mount),
             str(backing), str(size_bytes), str(write_mbps), str(READ_MBPS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (self.mount / "card").exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError("the FUSE card did not come up (fuse3 and mfusepy?)")
            time.sleep(0.1)
        self.loop = subprocess.run(["losetup", "-f", "--show", str(self.mount / "card")],
                                   check=True, capture_output=True, text=True).stdout.strip()

    def close(self) -> None:
        subprocess.run(["losetup", "-d", self.loop], check=False)
        subprocess.run(["umount", str(self.mount)], check=False)
        self.server.wait(timeout=20)


def fleetimg_writer(plan: WritePlan, card: Card, verify: bool) -> Callable[[], None]:
    def run() -> None:
        fd = os.open(card.loop, os.O_RDWR | os.O_EXCL)
        try:
            digest = write_mapped(plan, fd)
        finally:
            os.close(fd)
        if verify:
            verify_mapped(plan, Path(card.loop), digest)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app-size", default="512M")
    ap.add_argument("--payload", default="240M")
    ap.add_argument("--rates", default="20,40,90")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root for loop devices and FUSE", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cardspeed-"))
    try:
        image = build_test_image(work / "jetson.img", app_size=size(args.app_size),
                                 payload=size(args.payload))
        plan = plan_write(image)
        bmap = write_bmap(image, work / "jetson.img.bmap")  # fleetimg's own block map
        card_bytes = -(-(plan.image_bytes + (16 << 20)) // 512) * 512
        runs: dict[str, dict[str, float]] = {}
        for rate in (float(r) for r in args.rates.split(",")):
            card = Card(work, card_bytes, rate)
            try:
                loop = card.loop
                writers: dict[str, Callable[[], None]] = {
                    "dd bs=4M conv=fsync": lambda loop=loop: sh(  # type: ignore[misc]
                        "dd", f"if={image}", f"of={loop}", "bs=4M", "conv=fsync",
                        "status=none"),
                    "bmaptool copy": lambda loop=loop: sh(  # type: ignore[misc]
                        "bmaptool", "-q", "copy", "--bmap", str(bmap), str(image), loop),
                    "fleetimg": fleetimg_writer(plan, card, False),
                    "fleetimg with read-back": fleetimg_writer(plan, card, True),
                }
                for name, fn in writers.items():
                    drop_caches()
                    start = time.monotonic()
                    fn()
                    runs[f"{rate:g} MB/s: {name}"] = {"rate_mbps": rate,
                                                      "seconds": time.monotonic() - start}
            finally:
                card.close()
            bound = plan.mapped_bytes / (rate * 1e6)
            runs[f"{rate:g} MB/s: fleetimg"]["vs_bound"] = \
                runs[f"{rate:g} MB/s: fleetimg"]["seconds"] / bound
        report = {"image_bytes": plan.image_bytes, "mapped_bytes": plan.mapped_bytes,
                  "read_mbps": READ_MBPS, "runs": runs}
        print(f"image {plan.image_bytes / 1e6:.0f} MB, {plan.mapped_bytes / 1e6:.0f} MB mapped;"
              f" card reads at {READ_MBPS} MB/s")
        print(f"{'card write rate: writer':<44} {'seconds':>8}")
        for k, v in runs.items():
            extra = f"  ({v['vs_bound']:.2f}x mapped/rate)" if "vs_bound" in v else ""
            print(f"{k:<44} {v['seconds']:8.2f}{extra}")
        write_results("sdcard_card_speed", report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
