#!/usr/bin/env python3
"""A delta push costs what changed: a big image whose top layer changed by 1 MB, pushed to
lab nodes that have the rest, against pushing a whole 1 MB image, in one run.

Both ways of reading the image are measured: the engine's layer store (only the missing
layer is read) and `docker save` (FLEETIMG_PUSH_SOURCE=save: the whole image is read).

    python benchmarks/push_delta.py [--nodes 3] [--base-gb 4]

Needs root (its own lab fleet "bench-delta", and the engine's store). Prints a table and
writes benchmarks/results/push_delta.json. The goal: delta / small <= 2.
"""

from __future__ import annotations

import argparse
import json
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


def build(tag: str, dockerfile: str, files: dict[str, bytes] | None = None) -> str:
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(dockerfile)
        for name, data in (files or {}).items():
            (Path(ctx) / name).write_bytes(data)
        subprocess.run(["docker", "build", "-q", "--no-cache", "-t", tag, ctx], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tag


def push(fleet: Fleet, image: str, source: str | None = None) -> dict[str, float]:
    env = {**os.environ, **({"FLEETIMG_PUSH_SOURCE": source} if source else {})}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), "push",
                           image, "--json"], capture_output=True, text=True, check=True, env=env)
    seconds = time.monotonic() - start
    report = json.loads(proc.stdout)
    return {"seconds": seconds, "sent_bytes": report["sent_bytes"],
            "read_bytes": sum(n.get("read_bytes") or 0 for n in report["nodes"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--base-gb", type=float, default=4.0)
    args = ap.parse_args()
    base_bytes = int(args.base_gb * 1e9)
    node_image = ensure_node_image(docker.from_env())
    big = build("fleetimg-bench/delta:base",
                f"FROM {node_image}\nRUN head -c {base_bytes} /dev/urandom > /big\n")
    # Incompressible, so neither push is helped by the compressor.
    small = build("fleetimg-bench/delta:small", "FROM scratch\nCOPY one-mb /one-mb\n",
                  {"one-mb": os.urandom(1_000_000)})
    config = LabConfig(name="bench-delta", nodes=args.nodes, subnet="172.29.219.0/24",
                       directory=Path(tempfile.mkdtemp(prefix="bench-delta-")))
    fleet = lab_up(config)
    runs: dict[str, dict[str, float]] = {}
    try:
        push(fleet, big)  # the nodes have everything but what the deltas change
        runs["1 MB image"] = push(fleet, small)
        for source in ("layer-store", "save"):
            delta = build(f"fleetimg-bench/delta:{source}",
                          f"FROM {big}\nRUN head -c 1000000 /dev/urandom > /changed\n")
            runs[f"delta, read from {source}"] = push(
                fleet, delta, "save" if source == "save" else None)
    finally:
        lab_down(config)
    small_s = runs["1 MB image"]["seconds"]
    report = {"nodes": args.nodes, "base_bytes": base_bytes, "runs": runs,
              "ratio_layer_store": runs["delta, read from layer-store"]["seconds"] / small_s,
              "ratio_save": runs["delta, read from save"]["seconds"] / small_s}
    print(f"{args.nodes} lab nodes, base layer {base_bytes / 1e9:.1f} GB")
    print(f"{'push':<28} {'seconds':>8} {'read':>10} {'sent':>10}")
    for k, v in runs.items():
        print(f"{k:<28} {v['seconds']:8.2f} {v['read_bytes'] / 1e6:8.1f} MB "
              f"{v['sent_bytes'] / 1e6:8.2f} MB")
    print(f"delta / 1 MB image: {report['ratio_layer_store']:.2f} (layer store), "
          f"{report['ratio_save']:.2f} (docker save); goal <= 2")
    write_results("push_delta", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
