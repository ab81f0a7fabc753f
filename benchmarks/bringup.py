#!/usr/bin/env python3
"""Bring-up: from a fleet.toml and a stock JetPack-shaped image to N booted boards running a
batch inference job, with no manual step, timed phase by phase.

The boards are the lab's card nodes: each card is written by `fleetimg sdcard` (all N at
once, as to N card readers), booted by `fleetimg lab boot` (systemd-nspawn on the card's own
APP partition: the card's NetworkManager, sshd, first boot and Docker engine; all N at
once, as N boards powered on together), then the fleet is probed, the pytorch image built
(on the offline stand-in base: NGC is out of reach here), pushed and run. The commands are
the ones a user runs on real boards (README, "Quick start on real boards"), with the lab
in place of the card readers and the power switch:

    fleetimg sdcard --nodes node2,...,nodeN+1 --devices card2.img,... --image stock.img --yes
    fleetimg lab boot cardI.img                      (each card, together)
    fleetimg nodes probe --to cards
    fleetimg build pytorch --to cards --standin
    fleetimg push pytorch --to cards
    fleetimg run pytorch --to cards --synthetic 8N -- --size 64

    bash scripts/bench.sh bringup [--sizes 4,8]

The stock image is made once and cached (`fleetimg lab sdimage --bootable`, about 2 min the
first time); the stand-in bases likewise (`fleetimg lab base`). Writes
benchmarks/results/bringup.json.
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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import write_results
from fleetimg.l4t import L4TRelease
from fleetimg.lab.cardimage import build_bootable_card
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.paths import state_dir

SUBNET = "172.29.219.0/24"
PHASES = ("cards", "boot", "probe", "build", "push", "run")


@dataclass
class Bringup:
    """One bring-up's phases: seconds and the command lines that ran, in order."""

    seconds: dict[str, float] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    outputs: dict[str, object] = field(default_factory=dict)


def fleetimg(fleet: Path, *args: str, timeout: float = 3600) -> object:
    """`fleetimg -i FLEET ARGS --json`; its JSON, or an error with what it said."""
    # --json before a `--`: what follows it goes to the workload.
    cut = args.index("--") if "--" in args else len(args)
    argv = [*args[:cut], "--json", *args[cut:]]
    proc = subprocess.run([sys.executable, "-m", "fleetimg", "-i", str(fleet), *argv],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"fleetimg {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    return json.loads(proc.stdout)


def bring_up(fleet: Path, lab: str, nodes: Sequence[str], stock: Path, work: Path, *,
             selection: str = "cards") -> Bringup:
    """Cards for `nodes` from `stock`, booted together, probed, built for, pushed to and run
    on. `selection` names the same nodes for the fleet-wide commands."""
    out = Bringup()

    def phase(name: str, *commands: str) -> float:
        out.commands += list(commands)
        return time.monotonic()

    cards = [work / f"{n}.img" for n in nodes]
    start = phase("cards", f"fleetimg sdcard --nodes {','.join(nodes)} --devices "
                  f"{','.join(str(c) for c in cards)} --image {stock} --yes --force")
    written = fleetimg(fleet, "sdcard", "--nodes", ",".join(nodes), "--devices",
                       ",".join(str(c) for c in cards), "--image", str(stock), "--yes",
                       "--force", "--parallel", str(len(nodes)))
    out.seconds["cards"] = time.monotonic() - start
    out.outputs["cards"] = written

    start = phase("boot", *(f"fleetimg lab boot --name {lab} {c}" for c in cards))
    with ThreadPoolExecutor(len(cards)) as pool:
        booted = list(pool.map(lambda c: fleetimg(fleet, "lab", "boot", "--name", lab,
                                                  "--timeout", "600", str(c)), cards))
    out.seconds["boot"] = time.monotonic() - start
    out.outputs["boot"] = booted

    for name, args in (
            ("probe", ("nodes", "probe", "--to", selection)),
            ("build", ("build", "pytorch", "--to", selection, "--standin")),
            ("push", ("push", "pytorch", "--to", selection)),
            ("run", ("run", "pytorch", "--to", selection, "--synthetic",
                     str(8 * len(nodes)), "-o", str(work / "results.jsonl"), "--",
                     "--size", "64", "--batch-size", "4"))):
        start = phase(name, "fleetimg " + " ".join(args))
        out.outputs[name] = fleetimg(fleet, *args)
        out.seconds[name] = time.monotonic() - start
    return out


def stop_cards(lab: str, nodes: Sequence[str]) -> None:
    for n in nodes:
        subprocess.run([sys.executable, "-m", "fleetimg", "lab", "boot", "--name", lab,
                        "--stop", n], capture_output=True, check=False)


def stock_image() -> Path:
    """The lab's stock JetPack-shaped image (R32.7.1, a Nano's), made once."""
    path = state_dir() / "bench" / "bringup-stock-r32.7.1.img"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_bootable_card(path, l4t=L4TRelease(32, 7, 1))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,8", help="how many boards, one run each")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, systemd-nspawn, lab containers)", file=sys.stderr)
        return 2
    subprocess.run([sys.executable, "-m", "fleetimg", "lab", "base"], check=True,
                   stdin=subprocess.DEVNULL)
    stock = stock_image()
    runs = []
    for n in (int(s) for s in args.sizes.split(",")):
        config = LabConfig(name="bringup", nodes=1, card_nodes=n, subnet=SUBNET,
                           directory=Path(tempfile.mkdtemp(prefix="bringup-lab-")))
        lab_down(config)
        fleet = lab_up(config)
        assert fleet.path is not None
        nodes = list(fleet.groups["cards"])
        try:
            with tempfile.TemporaryDirectory(prefix="bringup-cards-") as tmp:
                result = bring_up(fleet.path, config.name, nodes, stock, Path(tmp))
        finally:
            stop_cards(config.name, nodes)
            lab_down(config)
        total = sum(result.seconds.values())
        runs.append({"boards": n, "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                     "total_seconds": round(total, 1), "commands": result.commands})
        print(f"N={n}: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
              + f"; total {total:.0f} s ({total / 60:.1f} min)", flush=True)
    write_results("bringup", {
        "cpu": f"{os.cpu_count()} cores shared by the workstation and every booted board",
        "stock_image": "lab sdimage --bootable (R32.7.1, a Nano's layout; Debian root)",
        "goal": "8 blank cards to a finished pytorch run in <= 600 s, no manual step",
        "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
