"""A DHCP card on the lab: `address = "dhcp"` in fleet.toml, a card that asks the lab's
dnsmasq for its address, and fleetimg finding the board by its lease and by multicast DNS
(avahi-daemon on the card, as on NVIDIA's desktop image), then working with it as with
any node."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from fleetimg import addresses
from fleetimg.inventory import Fleet
from fleetimg.lab.boot import boot_card, stop_card
from fleetimg.lab.manager import LabConfig
from tests.integration.cards import on, probe_one, write_card
from tests.integration.conftest import fleetimg_json

pytestmark = pytest.mark.integration


def test_a_dhcp_card_boots_and_is_found_by_lease_and_by_name(
        dhcp_lab: tuple[LabConfig, Fleet], bootable: Path, tmp_path: Path) -> None:
    config, fleet = dhcp_lab
    assert fleet.path is not None
    node = fleet.node("node1")
    assert node.dhcp and node.address == "node1.local" and fleet.leases == config.leases
    card = write_card(fleet, "node1", bootable, tmp_path / "node1.img")
    booted = boot_card(fleet, config.name, card)
    try:
        low, high = (ipaddress.IPv4Address(a) for a in config.dhcp_range)
        leased = booted.address
        assert low <= ipaddress.IPv4Address(leased) <= high, leased
        # By its lease: what `fleetimg nodes` shows and every command connects to.
        code, listed = fleetimg_json("-i", str(fleet.path), "nodes")
        assert code == 0 and isinstance(listed, list)
        assert (listed[0]["address"], listed[0]["found_by"], listed[0]["dhcp"]) == (
            leased, "lease", True)
        # By name, with no leases file: the card's avahi answers for node1.local.
        by_name = addresses.locate(dataclasses.replace(fleet, leases=None), [node])[0]
        assert (by_name.address, by_name.found_by) == (leased, addresses.FoundBy.MDNS)
        # Over SSH like any node; its own name resolves to its lease (the dispatcher
        # script), not to 127.0.1.1, which Gloo and MPI would bind.
        probe = probe_one(fleet, "node1")
        assert probe["reachable"] and probe["address"] == leased
        assert probe["hostname"] == "node1" and probe["self_address"] == leased
        found = addresses.resolve(fleet)
        assert on(found, "node1", "getent hosts node1").split()[0] == leased
        # The card and `apply` agree: the leased line is not a change to undo.
        code, plan = fleetimg_json("-i", str(fleet.path), "apply", "--dry-run", timeout=600)
        assert code == 0 and isinstance(plan, dict), plan
        assert [n["changes"] for n in plan["nodes"]] == [[]], plan
    finally:
        stop_card("node1")
    # Gone: the node fails alone with where fleetimg looked, and nothing hangs.
    code, probed = fleetimg_json("-i", str(fleet.path), "nodes", "probe", "--to", "node1")
    assert code == 1 and isinstance(probed, list) and not probed[0]["reachable"], probed
