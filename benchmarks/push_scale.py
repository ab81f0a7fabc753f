#!/usr/bin/env python3
"""Push at fleet scale: the same image to 1, 8 and 24 lab nodes over shaped links, direct,
chain and tree, with each run's ratio to one node and where the time went.

The lab ("scale", 172.29.218.0/24) and the shaping are push_fanout's: every link (the
workstation's uplink and each node's, both ways) limited by tc tbf. A relay keeps the
uplink to one copy, so on links alone a chain to 24 nodes would take about one node's
time; what it cannot hide is the lab itself: 24 nodes share this machine's 2 cores, each
running a `docker load` and two SSH encryptions per hop. Each run records the machine's CPU
busy fraction (from /proc/stat) and how close the nodes' links came to their rate, so the
limit is named with numbers: a run is "CPU-bound" when the cores were busier than 90%.

    bash scripts/bench.sh push_scale [--sizes 1,8,24] [--rate-mbit 50] [--base-mb 48]

Writes benchmarks/results/push_scale.json and push_scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from benchmarks import RESULTS_DIR, write_results
from benchmarks.push_fanout import IMAGE, Shaper, compressed_size, run_strategy, wipe
from fleetimg.lab.baseimage import scratch_image
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.ssh import Ssh, SshOptions

STRATEGIES = ("direct", "chain", "tree")
CPU_BOUND = 0.9  # busy fraction of all cores above which a run is CPU-bound


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,24", help="fleet sizes to run")
    ap.add_argument("--rate-mbit", type=float, default=50.0, help="per-link rate")
    ap.add_argument("--base-mb", type=int, default=48, help="incompressible base layer")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (tc, nsenter, lab containers)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    client = docker.from_env()
    scratch_image(IMAGE, [("/opt/base.bin", os.urandom(args.base_mb << 20)),
                          ("/app/app.py", b"print('scale benchmark')\n")],
                  labels={"io.fleetimg.l4t": "R32.7.1", "io.fleetimg.target": "bench"})
    packed = compressed_size(IMAGE)
    one_node = packed * 8 / (args.rate_mbit * 1e6)
    config = LabConfig(name="scale", nodes=max(sizes), subnet="172.29.218.0/24",
                       directory=Path(tempfile.mkdtemp(prefix="scale-lab-")))
    started = time.monotonic()
    fleet = lab_up(config)
    lab_seconds = time.monotonic() - started
    print(f"lab of {config.nodes} nodes up in {lab_seconds:.0f} s", flush=True)
    ssh = Ssh(SshOptions(known_hosts=fleet.known_hosts))
    shaper = Shaper(client, config)
    runs: list[dict[str, object]] = []
    try:
        shaper.apply(args.rate_mbit, args.rate_mbit)
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                for strategy in strategies:
                    wipe(ssh, fleet)
                    before = shaper.uplink_bytes()
                    busy0, total0 = cpu_times()
                    seconds = run_strategy(strategy, fleet, fleet.nodes[:n], Path(tmp))
                    busy1, total1 = cpu_times()
                    sent = shaper.uplink_bytes() - before
                    cpu = (busy1 - busy0) / max(1, total1 - total0)
                    runs.append({"strategy": strategy, "nodes": n, "seconds": round(seconds, 2),
                                 "uplink_bytes": sent, "cpu_busy": round(cpu, 3)})
                    print(f"N={n:<2} {strategy:<7} {seconds:7.1f} s  {sent / 1e6:7.1f} MB "
                          f"through the uplink, CPU {cpu:.0%}", flush=True)
    finally:
        shaper.clear()
        if not args.keep_lab:
            lab_down(config)
    report: dict[str, object] = {
        "node_mbit": args.rate_mbit, "image_mb_compressed": round(packed / 1e6, 1),
        "limit_one_node_s": round(one_node, 2), "lab_up_seconds": round(lab_seconds, 1),
        "cpu": f"{os.cpu_count()} cores shared by the workstation and all lab nodes",
        "cores": os.cpu_count(), "cpu_bound_above": CPU_BOUND, "runs": runs,
    }
    analyse(report)
    write_results("push_scale", report)
    plot(report, RESULTS_DIR / "push_scale.png")
    print(json.dumps(report["ratios"], indent=2))
    return 0


def analyse(report: dict[str, object]) -> None:
    """Add to `report` each run's CPU work per node (core-seconds: busy fraction x wall x
    cores / nodes) and the ratios; with N nodes sharing the cores, a push cannot take less
    than N x that / cores, whatever the links."""
    runs = report["runs"]
    assert isinstance(runs, list)
    cores = int(report["cores"])  # type: ignore[call-overload]
    for r in runs:
        r["cpu_core_seconds_per_node"] = round(
            float(r["cpu_busy"]) * float(r["seconds"]) * cores / int(r["nodes"]), 2)
    report["ratios"] = ratios(runs)


def ratios(runs: list[dict[str, object]]) -> dict[str, object]:
    """Each run's time over the same strategy's one-node time, and whether it was CPU-bound."""
    one = {r["strategy"]: float(r["seconds"]) for r in runs  # type: ignore[arg-type]
           if r["nodes"] == 1}
    out: dict[str, object] = {}
    for r in runs:
        s, n = str(r["strategy"]), int(r["nodes"])  # type: ignore[call-overload]
        if n > 1 and s in one:
            out[f"{s}_N{n}_over_N1"] = round(float(r["seconds"]) / one[s], 2)  # type: ignore[arg-type]
            out[f"{s}_N{n}_cpu_bound"] = float(r["cpu_busy"]) > CPU_BOUND  # type: ignore[arg-type]
    return out


def plot(report: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    assert isinstance(runs, list)
    sizes = sorted({int(r["nodes"]) for r in runs})
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    for strategy in STRATEGIES:
        pts = sorted((int(r["nodes"]), float(r["seconds"]), float(r["cpu_busy"]))
                     for r in runs if r["strategy"] == strategy)
        if pts:
            ax_t.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
            ax_c.plot([p[0] for p in pts], [100 * p[2] for p in pts], marker="o",
                      label=strategy)
    one = float(report["limit_one_node_s"])  # type: ignore[arg-type]
    first = min(float(r["seconds"]) for r in runs if int(r["nodes"]) == 1)
    ax_t.plot(sizes, [one] * len(sizes), "k--", linewidth=1, label="one node at link rate")
    ax_t.plot(sizes, [1.5 * first] * len(sizes), "k:", linewidth=1,
              label="1.5x a one-node push (the goal)")
    ax_t.set(xlabel="nodes", ylabel="wall time (s)", xticks=sizes, yscale="log",
             title=f"push {float(report['image_mb_compressed']):.0f} MB (zstd) at "  # type: ignore[arg-type]
                   f"{report['node_mbit']} Mbit/s per link")
    ax_c.axhline(100 * CPU_BOUND, color="k", linestyle=":", linewidth=1, label="CPU-bound")
    ax_c.set(xlabel="nodes", ylabel="CPU busy during the push (%)", xticks=sizes,
             ylim=(0, 105), title=str(report["cpu"]))
    for ax in (ax_t, ax_c):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
