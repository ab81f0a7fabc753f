"""Bring-up without a manual step, at N=2: blank cards written together, booted together,
probed, built for, pushed to and run on, by the same flow `benchmarks/bringup.py` times at
N=4 and N=8 (the commands of the README's quick start, with the lab for card readers and
power). The shared cards lab's R32 nodes are the boards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bringup import bring_up, stop_cards
from fleetimg.inventory import Fleet
from fleetimg.lab.manager import LabConfig

pytestmark = pytest.mark.integration


def test_two_blank_cards_to_a_finished_pytorch_run(
        cards_lab: tuple[LabConfig, Fleet], bootable: Path, standin_pytorch: str,
        tmp_path: Path) -> None:
    # The build phase builds on the stand-in (`--standin`): on a cold machine nothing has
    # made it before this test.
    config, fleet = cards_lab
    assert fleet.path is not None
    nodes = ["node2", "node3"]
    try:
        done = bring_up(fleet.path, config.name, nodes, bootable, tmp_path,
                        selection=",".join(nodes))
    finally:
        stop_cards(config.name, nodes)
    assert list(done.seconds) == ["cards", "boot", "probe", "build", "push", "run"]
    # Every card written and verified; every board up where its card put it.
    cards = done.outputs["cards"]
    assert isinstance(cards, list)
    assert [(c["node"], c["ok"]) for c in cards] == [(n, True) for n in nodes]
    probe = done.outputs["probe"]
    assert isinstance(probe, list)
    assert [(p["name"], p["reachable"], p["firstboot"]) for p in probe] == [
        (n, True, "done") for n in nodes]
    pushed = done.outputs["push"]
    assert isinstance(pushed, dict)
    assert sorted(n["action"] for n in pushed["nodes"]) == ["loaded", "loaded"]
    # Both slices ran on the boards, one per board, every image once.
    ran = done.outputs["run"]
    assert isinstance(ran, dict)
    assert [(s["node"], s["ok"]) for s in ran["slices"]] == [(n, True) for n in nodes]
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 16 and {r["node"] for r in results} == set(nodes)
