#!/usr/bin/env python3
"""The send pipeline's throughput, stage by stage, to one unshaped lab node.

Each row adds one stage to the pipeline and reports image bytes per second (the rate the
image moves, whatever the compressor makes of it):

1. the source alone (the layer store, or `docker save`), into /dev/null;
2. source | zstd -3 -T0 (the push codec);
3. source | zstd | ssh node 'cat > /dev/null';
4. the whole push: source | zstd | ssh | zstd -dc | docker load (`fleetimg push`).

    python benchmarks/push_pipeline.py [--mb 1500] [--compressible 0.5]

The image's layer is half random, half zeros by default: real layers (libraries, CUDA)
compress about 2:1 with zstd -3. Needs root. Writes benchmarks/results/push_pipeline.json.
The node runs on this machine: its decompression and `docker load` share the 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from benchmarks import write_results
from fleetimg.inventory import Fleet
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.lab.nodeimage import ensure_node_image
from fleetimg.localimage import resolve_image
from fleetimg.push.layerstore import open_store, write_archive
from fleetimg.push.plan import CODECS, CodecName

ZSTD = " ".join(CODECS[CodecName.ZSTD].compress)


def build(tag: str, base: str, mb: int, compressible: float) -> str:
    rand = int(mb * (1 - compressible))
    zeros = mb - rand
    dockerfile = (f"FROM {base}\nRUN head -c {rand}000000 /dev/urandom > /rand && "
                  f"head -c {zeros}000000 /dev/zero > /zeros\n")
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(dockerfile)
        subprocess.run(["docker", "build", "-q", "-t", tag, ctx], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tag


def timed_shell(command: str, source: str, image: str) -> float:
    """Seconds for SOURCE | COMMAND, SOURCE being `layer-store` or `docker-save`."""
    start = time.monotonic()
    if source == "docker-save":
        subprocess.run(f"docker save {image} | {command}", shell=True, check=True,
                       executable="/bin/bash")
        return time.monotonic() - start
    store = open_store()
    assert store is not None, "run as root on the machine that runs dockerd (overlay2)"
    local = resolve_image(docker.from_env(), image)
    proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, executable="/bin/bash")
    assert proc.stdin is not None
    write_archive(store, local.id, local.diff_ids, 0, image, proc.stdin)
    proc.stdin.close()
    proc.wait()
    return time.monotonic() - start


def push(fleet: Fleet, image: str, source: str) -> float:
    env = {**os.environ, "FLEETIMG_PUSH_SOURCE": "save" if source == "docker-save" else ""}
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), "push", image,
                    "--to", "node1", "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1500)
    ap.add_argument("--compressible", type=float, default=0.5)
    args = ap.parse_args()
    client = docker.from_env()
    base = ensure_node_image(client)
    image = build("fleetimg-bench/pipeline:1", base, args.mb, args.compressible)
    size = resolve_image(client, image).size
    config = LabConfig(name="bench-pipe", nodes=1, subnet="172.29.218.0/24",
                       directory=Path(tempfile.mkdtemp(prefix="bench-pipe-")))
    fleet = lab_up(config)
    node = fleet.node("node1")
    ssh = (f"ssh -i {node.ssh_key} -o UserKnownHostsFile={fleet.known_hosts} "
           f"-o StrictHostKeyChecking=accept-new -o BatchMode=yes {node.user}@{node.address}")
    rows: dict[str, dict[str, float]] = {}
    try:
        for source in ("layer-store", "docker-save"):
            stages = {"source": "cat > /dev/null", "+ zstd": f"{ZSTD} > /dev/null",
                      "+ ssh": f"{ZSTD} | {ssh} 'cat > /dev/null'"}
            for name, command in stages.items():
                seconds = timed_shell(command, source, image)
                rows[f"{source} {name}"] = {"seconds": seconds, "mb_per_s": size / seconds / 1e6}
            client_node = f"{ssh} 'docker rmi -f {image} >/dev/null 2>&1; true'"
            subprocess.run(client_node, shell=True, check=True)
            seconds = push(fleet, image, source)
            rows[f"{source} + unzstd + docker load (fleetimg push)"] = {
                "seconds": seconds, "mb_per_s": size / seconds / 1e6}
    finally:
        lab_down(config)
    report = {"image_bytes": size, "compressible": args.compressible, "runs": rows}
    print(f"image {size / 1e6:.0f} MB, {args.compressible:.0%} zeros")
    print(f"{'pipeline':<56} {'seconds':>8} {'MB/s':>8}")
    for k, v in rows.items():
        print(f"{k:<56} {v['seconds']:8.2f} {v['mb_per_s']:8.1f}")
    write_results("push_pipeline", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
