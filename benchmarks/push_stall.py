#!/usr/bin/env python3
"""Relays never stall: a chain push to 3 lab nodes, undisturbed, then with node2 (the middle
relay) paused or killed once 16 MB have left the workstation, in one run.

Reports each push's time, the extra time the fault cost, what the workstation sent and who
re-fed node3 (below node2). The goal: a frozen hop is cut off within 15 s and a dead one
within 10 s, the rest of the chain going on; re-feeds come from a node that has the image.

    python benchmarks/push_stall.py [--blob-mb 200]

Needs root (its own lab fleet "bench-stall"). Writes benchmarks/results/push_stall.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from benchmarks import write_results
from fleetimg.inventory import RelayAuth
from fleetimg.lab.manager import LabConfig, lab_down, lab_up
from fleetimg.localimage import resolve_image
from fleetimg.push.engine import PushOptions, execute, preflight
from fleetimg.push.plan import NodePlan
from fleetimg.push.relay import Fanout
from fleetimg.push.transfer import Progress
from fleetimg.ssh import Ssh, SshOptions
from tests.integration.images import build_app_image, ensure_arm64_mini_image


class RefeedClock(logging.Handler):
    """When the engine starts re-feeding (its "re-feeding" log line), in wall time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None and record.getMessage().startswith("re-feeding"):
            self.at = record.created


def breaker(victim: Any, fault: str,
            fault_at: list[float]) -> Callable[[NodePlan], Progress | None]:
    """Progress for the workstation's stream that does `fault` to node2 at 16 MB."""
    handled = [0]

    def progress_for(plan: NodePlan) -> Progress | None:
        def on(n: int) -> None:
            handled[0] += n
            if fault != "none" and handled[0] > 16 << 20 and handled[0] - n <= 16 << 20:
                fault_at.append(time.time())
                getattr(victim, fault)()  # pause() or kill()
        return on
    return progress_for


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blob-mb", type=int, default=200)
    args = ap.parse_args()
    client = docker.from_env()
    ensure_arm64_mini_image(client)
    config = LabConfig(name="bench-stall", nodes=3, subnet="172.29.217.0/24",
                       directory=Path(tempfile.mkdtemp(prefix="bench-stall-")))
    fleet = lab_up(config)
    ssh = Ssh(SshOptions(known_hosts=fleet.known_hosts))
    options = PushOptions(parallel=3, fanout=Fanout("chain"), relay_auth=RelayAuth.INTERNAL_KEY)
    runs: dict[str, dict[str, object]] = {}
    try:
        for fault in ("none", "pause", "kill"):
            ref = build_app_image(f"fleetimg-bench/stall:{fault}", app=f"print('{fault}')\n",
                                  blob_mb=args.blob_mb)
            image = resolve_image(client, ref)
            plans = preflight(ssh, fleet.nodes, image, options)
            victim = client.containers.get(config.container(2))
            fault_at: list[float] = []
            progress_for = breaker(victim, fault, fault_at)
            clock = RefeedClock()
            engine_log = logging.getLogger("fleetimg.push")
            engine_log.setLevel(logging.INFO)
            engine_log.addHandler(clock)
            start = time.monotonic()
            try:
                report = execute(ssh, image, plans, options, progress_for)
            finally:
                engine_log.removeHandler(clock)
                victim.reload()
                if victim.status == "paused":
                    victim.unpause()
                elif victim.status == "exited":
                    victim.start()
            seconds = time.monotonic() - start
            by_name = {r.node.name: r for r in report.results}
            node3 = by_name["node3"].value
            runs[fault] = {
                "seconds": round(seconds, 2),
                "sent_from_workstation": report.sent_bytes,
                "node3_via": node3.via if node3 else None,
                "node3_note": node3.note if node3 else None,
                "node2": "ok" if by_name["node2"].ok else str(by_name["node2"].error),
                # From the fault to the re-feed of the nodes below node2 starting.
                "refeed_after_fault_seconds": round(clock.at - fault_at[0], 2)
                if clock.at is not None and fault_at else None,
            }
            time.sleep(3)  # node2 back up (sshd) before the next round's pre-flight
    finally:
        lab_down(config)
    base = float(runs["none"]["seconds"])  # type: ignore[arg-type]
    for fault in ("pause", "kill"):
        runs[fault]["extra_seconds"] = round(float(runs[fault]["seconds"]) - base, 2)  # type: ignore[arg-type]
    report = {"blob_mb": args.blob_mb, "runs": runs}
    for fault, r in runs.items():
        print(f"{fault:<6} {r['seconds']:>7} s  extra {r.get('extra_seconds', 0):>6} s  "
              f"sent {int(r['sent_from_workstation']) / 1e6:7.1f} MB  "  # type: ignore[call-overload]
              f"re-fed {r['refeed_after_fault_seconds']} s after the fault  "
              f"node3 via {r['node3_via']}  node2: {str(r['node2'])[:60]}")
    write_results("push_stall", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
