#!/usr/bin/env python3
"""Push at fleet scale on shaped links: hand method, parallel direct, chain, tree, registry.

A lab fleet of 8 nodes ("fanout", 172.29.217.0/24) with every link shaped by tc tbf:
  - the workstation's uplink (egress of the lab bridge device on this machine), shared by
    everything it sends to nodes;
  - each node's link, both ways (egress of its host-side veth = what it receives; egress of
    its eth0 inside the node = what it relays on).
For N = 1, 2, 4, 8 nodes, starting each run from nodes without the image, it times:
  hand      docker save | gzip > file, then scp + docker load node after node (the manual workflow)
  direct    fleetimg push --fanout direct --parallel 8 (every node from the workstation)
  chain     fleetimg push --fanout chain (workstation -> node1 -> node2 -> ...)
  tree      fleetimg push --fanout tree:2
  registry  fleetimg push --via registry (docker-registry on the workstation, nodes pull)
and the bytes that crossed the uplink (tx counter of the bridge device: bytes the
workstation sent into the lab, node-to-node traffic is bridged past it).

The image is an arm64 image FROM scratch with a large incompressible base layer and a
small app layer, so the compressed size is the real size and the 2 shared CPU cores of this
machine stay out of the way of the links being measured.

    bash scripts/bench.sh push_fanout [--rate-mbit 50] [--base-mb 48] [--sizes 1,2,4,8]

Writes benchmarks/results/push_fanout.json and push_fanout.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from benchmarks import RESULTS_DIR, write_results
from benchmarks.push_lab import hand_method
from fleetimg.inventory import Fleet, Node
from fleetimg.lab.baseimage import scratch_image
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.ssh import Ssh, SshOptions

STRATEGIES = ("hand", "direct", "chain", "tree", "registry")
IMAGE = "fleetimg-bench/fanout:v1"


class Shaper:
    """tbf on every link of the lab network; uplink bytes from the bridge's tx counter."""

    def __init__(self, client: docker.DockerClient, config: LabConfig) -> None:
        network = client.networks.get(config.network)
        self.bridge = f"br-{network.id[:12]}"
        self.nodes: list[tuple[int, str]] = []  # (pid, host-side veth)
        by_index = {i: name for name, i in _ifindexes().items()}
        for i in range(1, config.nodes + 1):
            container = client.containers.get(config.container(i))
            pid = int(container.attrs["State"]["Pid"])
            iflink = int(_run(["nsenter", "-t", str(pid), "-n", "cat",
                               "/sys/class/net/eth0/iflink"]).strip())
            self.nodes.append((pid, by_index[iflink]))

    def apply(self, node_mbit: float, uplink_mbit: float) -> None:
        _tbf(["tc"], self.bridge, uplink_mbit)
        for pid, veth in self.nodes:
            _tbf(["tc"], veth, node_mbit)
            _tbf(["nsenter", "-t", str(pid), "-n", "tc"], "eth0", node_mbit)

    def clear(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.bridge, "root"],
                       capture_output=True, check=False)
        for pid, veth in self.nodes:
            subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"],
                           capture_output=True, check=False)
            subprocess.run(["nsenter", "-t", str(pid), "-n", "tc", "qdisc", "del", "dev",
                            "eth0", "root"], capture_output=True, check=False)

    def uplink_bytes(self) -> int:
        return int(Path(f"/sys/class/net/{self.bridge}/statistics/tx_bytes").read_text())


def _ifindexes() -> dict[str, int]:
    return {d.name: int((d / "ifindex").read_text())
            for d in Path("/sys/class/net").iterdir() if (d / "ifindex").exists()}


def _run(argv: Sequence[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _tbf(prefix: list[str], dev: str, mbit: float) -> None:
    # burst of ~4 ms at the rate, at least 32 KB: smooth enough for TCP at these rates.
    burst = max(32 * 1024, int(mbit * 1e6 / 8 * 0.004))
    _run([*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
          "burst", str(burst), "latency", "200ms"])


def fleetimg(fleet: Fleet, *args: str, as_json: bool = True) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet.path), *args,
                           *(["--json"] if as_json else [])],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fleetimg {' '.join(args)} failed: {proc.stderr.strip()}"
                           f"\n{proc.stdout[-2000:]}")
    data = json.loads(proc.stdout) if as_json else {}
    return data if isinstance(data, dict) else {"items": data}


def wipe(ssh: Ssh, fleet: Fleet) -> None:
    def one(node: Node) -> None:
        ssh.run(node, f"docker rmi -f {IMAGE} >/dev/null 2>&1; "
                "docker image prune -af >/dev/null 2>&1; "
                "docker images -q | xargs -r docker rmi -f >/dev/null 2>&1; true",
                check=False, timeout=120)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, fleet.nodes))


def run_strategy(strategy: str, fleet: Fleet, nodes: Sequence[Node], work: Path) -> float:
    to = ",".join(n.name for n in nodes)
    start = time.monotonic()
    if strategy == "hand":
        hand_method(fleet, IMAGE, work, nodes)
    elif strategy == "registry":
        data = fleetimg(fleet, "push", IMAGE, "--via", "registry", "--to", to,
                        "--parallel", "8")
        assert all(n.get("ok", True) for n in data["nodes"]), data  # type: ignore[union-attr]
    else:
        fanout = {"direct": "direct", "chain": "chain", "tree": "tree:2"}[strategy]
        data = fleetimg(fleet, "push", IMAGE, "--to", to, "--fanout", fanout,
                        "--parallel", "8")
        actions = [n["action"] for n in data["nodes"]]  # type: ignore[union-attr, index]
        assert actions == ["loaded"] * len(nodes), data
    return time.monotonic() - start


def compressed_size(image: str) -> int:
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    out = subprocess.run(["zstd", "-3", "-T0", "-c"], stdin=save.stdout, capture_output=True,
                         check=True).stdout
    save.wait()
    return len(out)


def plot(report: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    assert isinstance(runs, list)
    sizes = sorted({int(r["nodes"]) for r in runs})
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for strategy in STRATEGIES:
        pts = sorted((int(r["nodes"]), float(r["seconds"]), int(r["uplink_bytes"]))
                     for r in runs if r["strategy"] == strategy)
        if not pts:
            continue
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
        ax_b.plot([p[0] for p in pts], [p[2] / 1e6 for p in pts], marker="o", label=strategy)
    one = float(report["limit_one_node_s"])  # type: ignore[arg-type]
    ax_t.plot(sizes, [one] * len(sizes), "k--", linewidth=1, label="one node at link rate")
    ax_t.plot(sizes, [one * n for n in sizes], "k:", linewidth=1,
              label="N copies through the uplink")
    ax_t.set(xlabel="nodes", ylabel="wall time (s)", xticks=sizes,
             title=f"push {float(report['image_mb_compressed']):.0f} MB (zstd) at "
                   f"{report['node_mbit']} Mbit/s per link")
    ax_b.set(xlabel="nodes", ylabel="MB through the workstation uplink", xticks=sizes,
             title="bytes leaving the workstation")
    ax_t.legend(fontsize=8)
    ax_b.legend(fontsize=8)
    ax_t.grid(alpha=0.3)
    ax_b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2,4,8", help="fleet sizes to run")
    ap.add_argument("--rate-mbit", type=float, default=50.0, help="per-node link rate")
    ap.add_argument("--uplink-mbit", type=float, default=None,
                    help="workstation uplink rate [default: same as a node's link]")
    ap.add_argument("--base-mb", type=int, default=48, help="incompressible base layer")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (tc, nsenter, lab containers)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    uplink = args.uplink_mbit or args.rate_mbit
    client = docker.from_env()
    scratch_image(IMAGE, [("/opt/base.bin", os.urandom(args.base_mb << 20)),
                          ("/app/app.py", b"print('fanout benchmark')\n")],
                  labels={"io.fleetimg.l4t": "R32.7.1", "io.fleetimg.target": "bench"})
    packed = compressed_size(IMAGE)
    config = LabConfig(name="fanout", nodes=max(sizes), subnet="172.29.217.0/24",
                       directory=Path(tempfile.mkdtemp(prefix="fanout-lab-")))
    fleet = lab_up(config)
    ssh = Ssh(SshOptions(known_hosts=fleet.known_hosts))
    shaper = Shaper(client, config)
    runs: list[dict[str, object]] = []
    try:
        if "registry" in strategies:
            fleetimg(fleet, "registry", "up", as_json=False)
            fleetimg(fleet, "registry", "configure", as_json=False)
        shaper.apply(args.rate_mbit, uplink)
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                for strategy in strategies:
                    wipe(ssh, fleet)
                    before = shaper.uplink_bytes()
                    seconds = run_strategy(strategy, fleet, fleet.nodes[:n], Path(tmp))
                    sent = shaper.uplink_bytes() - before
                    runs.append({"strategy": strategy, "nodes": n, "seconds": round(seconds, 2),
                                 "uplink_bytes": sent})
                    print(f"N={n:<2} {strategy:<9} {seconds:7.1f} s  "
                          f"{sent / 1e6:8.1f} MB through the uplink", flush=True)
    finally:
        shaper.clear()
        if "registry" in strategies:
            subprocess.run([sys.executable, "-m", "fleetimg", "registry", "down"],
                           capture_output=True, check=False)
        if not args.keep_lab:
            lab_down(config)
    one_node = packed * 8 / (args.rate_mbit * 1e6)
    report: dict[str, object] = {
        "node_mbit": args.rate_mbit, "uplink_mbit": uplink,
        "image_mb_compressed": round(packed / 1e6, 1), "image_bytes_compressed": packed,
        "limit_one_node_s": round(one_node, 2),
        "limit_note": "image bytes (zstd) / per-node link rate; N copies through one uplink "
                      "take N times as long",
        "cpu": f"{os.cpu_count()} cores shared by the workstation and all lab nodes",
        "runs": runs,
    }
    report["goals"] = goals(runs, packed)
    write_results("push_fanout", report)
    plot(report, RESULTS_DIR / "push_fanout.png")
    print_table(report, sizes, strategies)
    print(f"wrote {RESULTS_DIR / 'push_fanout.png'}")
    return 0


def goals(runs: list[dict[str, object]], packed: int) -> dict[str, object]:
    t = {(str(r["strategy"]), int(r["nodes"])): float(r["seconds"])  # type: ignore[arg-type]
         for r in runs}
    b = {(str(r["strategy"]), int(r["nodes"])): int(r["uplink_bytes"])  # type: ignore[arg-type]
         for r in runs}
    out: dict[str, object] = {}
    top = max((n for _, n in t), default=0)
    for relay in ("chain", "tree"):
        if (relay, 1) in t and (relay, top) in t:
            out[f"{relay}_N{top}_over_N1"] = round(t[relay, top] / t[relay, 1], 2)
        if (relay, top) in t and ("direct", top) in t:
            out[f"direct_over_{relay}_N{top}"] = round(t["direct", top] / t[relay, top], 2)
        if (relay, top) in b:
            out[f"{relay}_N{top}_uplink_copies"] = round(b[relay, top] / packed, 2)
    return out


def print_table(report: dict[str, object], sizes: list[int], strategies: list[str]) -> None:
    runs = report["runs"]
    assert isinstance(runs, list)
    cell = {(r["strategy"], r["nodes"]): r for r in runs}
    print(f"\nimage {report['image_mb_compressed']} MB compressed, links "
          f"{report['node_mbit']} Mbit/s, one node at link rate "
          f"{report['limit_one_node_s']} s")
    print(f"{'strategy':<10}" + "".join(f"{'N=' + str(n):>22}" for n in sizes))
    for s in strategies:
        print(f"{s:<10}" + "".join(
            f"{cell[s, n]['seconds']:>9.1f} s {cell[s, n]['uplink_bytes'] / 1e6:>7.0f} MB"
            if (s, n) in cell else f"{'-':>22}" for n in sizes))
    print("goals:", json.dumps(report["goals"]))


if __name__ == "__main__":
    sys.exit(main())
