#!/usr/bin/env python3
"""Push an image to 3 lab nodes: the hand method against fleetimg, measured in one run.

Hand method (as a 3-node K3s Nano cluster's field report does it): `docker save | gzip >
file`, then for each node in turn `scp` the file and `docker load` it. fleetimg: `fleetimg
push`, nodes in parallel, only missing layers, zstd. Both start from nodes without the image; then a
one-line app change is pushed again both ways.

    python benchmarks/push_lab.py [--nodes 3] [--blob-mb 0]

Needs root (it brings up its own lab fleet "bench"). Prints a table and writes
benchmarks/results/push_lab.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from benchmarks import write_results
from fleetimg.inventory import Fleet, Node
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.images import build_app_image, ensure_arm64_mini_image


def ssh_base(fleet: Fleet) -> list[str]:
    node = fleet.nodes[0]
    assert node.ssh_key is not None
    return ["-i", str(node.ssh_key), "-o", f"UserKnownHostsFile={fleet.known_hosts}",
            "-o", "BatchMode=yes"]


def hand_method(fleet: Fleet, image: str, work: Path,
                nodes: Sequence[Node] | None = None) -> tuple[float, int]:
    """save | gzip once, then scp + load node after node; (seconds, bytes sent)."""
    nodes = fleet.nodes if nodes is None else nodes
    start = time.monotonic()
    archive = work / "image.tar.gz"
    with archive.open("wb") as out:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["gzip"], stdin=save.stdout, stdout=out, check=True)
        save.wait()
    size = archive.stat().st_size
    for node in nodes:
        dest = f"{node.user}@{node.address}"
        subprocess.run(["scp", "-q", *ssh_base(fleet), str(archive), f"{dest}:/tmp/image.tar.gz"],
                       check=True)
        subprocess.run(["ssh", *ssh_base(fleet), dest,
                        "docker load -q -i /tmp/image.tar.gz && rm /tmp/image.tar.gz"],
                       check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start, size * len(nodes)


def fleetimg_push(fleet: Fleet, image: str) -> tuple[float, int]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), "push",
                           image, "--fanout", "direct", "--json"],
                          capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - start
    return elapsed, int(json.loads(proc.stdout)["sent_bytes"])


def wipe(ssh: Ssh, fleet: Fleet) -> None:
    for node in fleet.nodes:
        ssh.run(node, "docker rmi -f $(docker images -aq) >/dev/null 2>&1; "
                "docker image prune -af >/dev/null", check=False, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--blob-mb", type=int, default=0,
                    help="extra incompressible layer to make the base bigger")
    args = ap.parse_args()
    client = docker.from_env()
    ensure_arm64_mini_image(client)
    v1 = build_app_image("fleetimg-bench/app:v1", app="print('v1')\n", blob_mb=args.blob_mb)
    v2 = build_app_image("fleetimg-bench/app:v2", app="print('v2')\n", blob_mb=args.blob_mb)
    size = sum(int(h["Size"]) for h in client.api.history(v1))
    config = LabConfig(name="bench", nodes=args.nodes, subnet="172.29.216.0/24",
                       directory=Path(tempfile.mkdtemp(prefix="bench-lab-")))
    fleet = lab_up(config)
    ssh = Ssh(SshOptions(known_hosts=fleet.known_hosts))
    rows: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wipe(ssh, fleet)
            t, b = hand_method(fleet, v1, Path(tmp))
            rows["hand: full image"] = {"seconds": t, "bytes": b}
            t, b = hand_method(fleet, v2, Path(tmp))
            rows["hand: after a one-line change"] = {"seconds": t, "bytes": b}
            wipe(ssh, fleet)
            t, b = fleetimg_push(fleet, v1)
            rows["fleetimg: full image"] = {"seconds": t, "bytes": b}
            t, b = fleetimg_push(fleet, v2)
            rows["fleetimg: after a one-line change"] = {"seconds": t, "bytes": b}
            t, b = fleetimg_push(fleet, v2)
            rows["fleetimg: again (no change)"] = {"seconds": t, "bytes": b}
    finally:
        lab_down(config)
    report = {"nodes": args.nodes, "image_bytes": size, "runs": rows}
    print(f"{args.nodes} lab nodes, image {size / 1e6:.0f} MB uncompressed")
    print(f"{'method':<36} {'seconds':>8} {'sent':>10}")
    for k, v in rows.items():
        print(f"{k:<36} {v['seconds']:8.1f} {v['bytes'] / 1e6:8.1f} MB")
    write_results("push_lab", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
