"""DHCP nodes: the inventory's `address = "dhcp"`, what a card gets for it, and how fleetimg
finds the board afterwards (a dnsmasq leases file, a multicast DNS answer). The lab test
(tests/integration/test_dhcp_card.py) boots such a card against a real dnsmasq and avahi."""

from __future__ import annotations

import dataclasses
import socket
import struct
import textwrap
from pathlib import Path

import pytest

from fleetimg import addresses, inventory
from fleetimg.errors import InventoryError
from fleetimg.inventory import Fleet
from fleetimg.nodestate.model import (
    AVAHI_CONF,
    DHCP_HOSTS_MARK,
    NM_DISPATCH_HOSTS,
    NM_KEYFILE,
    Concern,
)
from fleetimg.nodestate.spec import ChangeSet, InodeKind
from tests.unit.test_nodestate import (
    _entry,
    board_parts,
    dhcp_node,
    installed,
    l4t_root,
    part,
    written,
)
from tests.unit.test_nodestate import fleet as fleet

BASE = """
[fleet]
name = "lab"
subnet = "192.168.10.0/24"
gateway = "192.168.10.1"
{fleet_extra}

[[nodes]]
name = "node1"
address = "192.168.10.11"
role = "master"
module = "nano-4gb"

[[nodes]]
name = "node2"
module = "nano-4gb"
{node2}
"""


def load(tmp_path: Path, *, fleet_extra: str = "", node2: str = "") -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(BASE.format(fleet_extra=fleet_extra, node2=node2)))
    return inventory.load(path)


def problems(tmp_path: Path, **kw: str) -> str:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, **kw)
    return info.value.message


# ---- inventory -----------------------------------------------------------------------------

def test_a_dhcp_node_is_reached_by_its_name_until_found(tmp_path: Path) -> None:
    fleet = load(tmp_path, node2='address = "dhcp"')
    node = fleet.node("node2")
    assert node.dhcp and node.address == "node2.local" and node.reach == "node2.local"
    assert node.known_as == ("node2", 22)  # its host key is kept under its name
    assert not fleet.node("node1").dhcp and fleet.node("node1").known_as == ("192.168.10.11", 22)


def test_the_fleet_default_and_an_own_host_name(tmp_path: Path) -> None:
    fleet = load(tmp_path, fleet_extra='address = "dhcp"\nleases = "leases.txt"',
                 node2='host = "jetson-b.lab.example"')
    node = fleet.node("node2")
    assert node.dhcp and node.address == node.reach == "jetson-b.lab.example"
    assert fleet.leases == tmp_path / "leases.txt"
    assert not fleet.node("node1").dhcp  # an address of its own wins over the default


@pytest.mark.parametrize(("kw", "expected"), [
    ({"node2": 'address = "192.168.10.12"\nhost = "node2.local"'},
     "node 'node2'.host: only for address = \"dhcp\""),
    ({"node2": 'address = "dhcp"\nhost = "bad host"'}, "is not a host name"),
    ({"node2": 'address = "dhcp"\nhost = "node1.local"\n[[nodes]]\nname = "node3"\n'
               'module = "nano-4gb"\naddress = "dhcp"\nhost = "node1.local"'},
     "node1.local is also used by node 'node2'"),
    ({"fleet_extra": 'address = "static"'}, "fleet.address: 'static': only \"dhcp\""),
    ({"node2": 'address = "dhcpp"'}, "not an IPv4 address or \"dhcp\": 'dhcpp'"),
    ({}, "node 'node2'.address: missing (an IPv4 address, or \"dhcp\")"),
])
def test_bad_dhcp_settings_are_named_at_their_field(tmp_path: Path, kw: dict[str, str],
                                                    expected: str) -> None:
    assert expected in problems(tmp_path, **kw)


# ---- finding the board ---------------------------------------------------------------------

def test_the_newest_unexpired_lease_names_the_address(tmp_path: Path) -> None:
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text("1000 aa:bb:cc:00:00:01 192.168.10.200 node2 01:aa\n"
                      "3000 aa:bb:cc:00:00:02 192.168.10.201 NODE2 *\n"
                      "2000 aa:bb:cc:00:00:03 192.168.10.202 node2 *\n"
                      "9000 aa:bb:cc:00:00:04 192.168.10.203 node22 *\n"
                      "garbage line\n"
                      "9000 aa:bb:cc:00:00:05 not-an-ip node2 *\n")
    assert addresses.lease_address(leases, "node2", now=500) == "192.168.10.201"
    assert addresses.lease_address(leases, "node2", now=2500) == "192.168.10.201"
    assert addresses.lease_address(leases, "node2", now=3500) is None  # all expired
    leases.write_text("0 aa:bb:cc:00:00:01 192.168.10.210 node2 *\n")  # 0: infinite
    assert addresses.lease_address(leases, "node2", now=1e12) == "192.168.10.210"
    assert addresses.lease_address(tmp_path / "absent", "node2") is None


def test_a_leases_file_behind_a_link_is_not_read(tmp_path: Path) -> None:
    real = tmp_path / "real.leases"
    real.write_text("0 aa:bb:cc:00:00:01 192.168.10.210 node2 *\n")
    link = tmp_path / "dnsmasq.leases"
    link.symlink_to(real)
    assert addresses.lease_address(link, "node2") is None


def test_locate_uses_the_lease_and_resolve_replaces_only_found_addresses(
        tmp_path: Path) -> None:
    (tmp_path / "dnsmasq.leases").write_text("0 aa:bb:cc:00:00:01 192.168.10.210 node2 *\n")
    fleet = load(tmp_path, fleet_extra='leases = "dnsmasq.leases"',
                 node2='address = "dhcp"\nhost = "node2.invalid"')
    found = addresses.locate(fleet, fleet.nodes)
    assert [(f.node, f.address, f.found_by) for f in found] == [
        ("node1", "192.168.10.11", addresses.FoundBy.STATIC),
        ("node2", "192.168.10.210", addresses.FoundBy.LEASE)]
    resolved = addresses.resolve(fleet)
    assert resolved.node("node2").address == "192.168.10.210"
    assert resolved.node("node2").reach == "node2.invalid"  # cards still name it by name
    (tmp_path / "dnsmasq.leases").write_text("")
    lost = addresses.locate(fleet, [fleet.node("node2")])[0]
    assert lost.address is None and lost.found_by is None
    assert lost.tried == (f"lease in {tmp_path / 'dnsmasq.leases'}",
                          "the resolver for node2.invalid")
    assert addresses.resolve(fleet).node("node2").address == "node2.invalid"


def _response(answers: list[tuple[str, str]], *, compress: bool) -> bytes:
    """An mDNS response as avahi sends one: the question echoed, A records after it."""
    question = addresses.mdns_query(7, answers[0][0])[12:]
    out = struct.pack("!HHHHHH", 7, 0x8400, 1, len(answers), 0, 0) + question
    for name, ip in answers:
        owner = b"\xc0\x0c" if compress and name == answers[0][0] else \
            addresses._encode_name(name)
        out += owner + struct.pack("!HHIH", 1, 0x8001, 120, 4) + socket.inet_aton(ip)
    return out


def test_a_multicast_dns_answer_is_read_with_and_without_name_compression() -> None:
    query = addresses.mdns_query(7, "node2.local")
    assert query[:12] == struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0)
    assert query[12:] == b"\x05node2\x05local\x00\x00\x01\x00\x01"
    for compress in (False, True):
        packet = _response([("node2.local", "172.29.217.201"), ("node3.local", "10.0.0.3")],
                           compress=compress)
        assert addresses.parse_a_records(packet) == {"node2.local": "172.29.217.201",
                                                     "node3.local": "10.0.0.3"}
    assert addresses.parse_a_records(query) == {}  # a query is not an answer
    assert addresses.parse_a_records(b"\x00\x07\x84\x00\x00\x01") == {}  # cut short
    looped = struct.pack("!HHHHHH", 7, 0x8400, 0, 1, 0, 0) + b"\xc0\x0c"
    assert addresses.parse_a_records(looped) == {}  # a pointer to itself


# ---- what the card gets --------------------------------------------------------------------

def test_a_dhcp_card_asks_for_a_lease_under_its_name(fleet: Fleet) -> None:
    f, node = dhcp_node(fleet, 1)
    _, parts = board_parts(f, node, l4t_root())
    files = written(part(parts, Concern.NETWORK))
    keyfile = files[NM_KEYFILE].decode()
    assert "method=auto" in keyfile and f"dhcp-hostname={node.name}" in keyfile
    assert "address1=" not in keyfile
    hosts = files["/etc/hosts"].decode()
    assert f"127.0.1.1\t{node.name}\t{DHCP_HOSTS_MARK}" in hosts
    assert f"# {node.name}: DHCP" not in hosts  # its own line, not a comment
    assert NM_DISPATCH_HOSTS in files
    spec = next(x for x in part(parts, Concern.NETWORK).files if x.path == NM_DISPATCH_HOSTS)
    assert spec.mode == 0o755 and spec.uid == 0  # NetworkManager runs only such scripts
    # The other nodes list it by name only; it lists them at their addresses.
    _, other_parts = board_parts(f, f.nodes[0], l4t_root())
    other_hosts = written(part(other_parts, Concern.NETWORK))["/etc/hosts"].decode()
    assert f"# {node.name}: DHCP, reached as {node.name}.local" in other_hosts
    assert f"{f.nodes[0].address}\t{f.nodes[0].name}" in hosts


def test_a_leased_address_on_the_board_is_not_a_change(fleet: Fleet) -> None:
    from fleetimg.apply.plan import plan_part

    f, node = dhcp_node(fleet, 1)
    members = l4t_root()
    _, parts = board_parts(f, node, members)
    members = installed(members, ChangeSet.merge(parts))
    # What the dispatcher script does on the board when the lease comes.
    hosts = members["/etc/hosts"][1].decode().replace(
        f"127.0.1.1\t{node.name}", f"172.29.217.201\t{node.name}")
    members.update([_entry("/etc/hosts", InodeKind.REGULAR, hosts.encode())])
    fs, parts = board_parts(f, node, members)
    assert [c for p in parts for c in plan_part(p, fs).changes] == []


def test_back_to_a_static_address_removes_the_dispatcher_script(
        fleet: Fleet) -> None:
    f, node = dhcp_node(fleet, 1)
    members = installed(l4t_root(), ChangeSet.merge(board_parts(f, node, l4t_root())[1]))
    _, parts = board_parts(fleet, fleet.nodes[1], members)
    network = part(parts, Concern.NETWORK)
    assert NM_DISPATCH_HOSTS in network.remove
    assert "method=manual" in written(network)[NM_KEYFILE].decode()


def test_an_image_without_avahi_gets_a_note_for_a_local_name(
        fleet: Fleet) -> None:
    f, node = dhcp_node(fleet, 1)
    _, parts = board_parts(f, node, l4t_root())
    assert any("no avahi-daemon" in n for n in part(parts, Concern.NETWORK).notes)
    with_avahi = {**l4t_root(), **dict([_entry(AVAHI_CONF, InodeKind.REGULAR, b"[server]\n")])}
    _, parts = board_parts(f, node, with_avahi)
    assert part(parts, Concern.NETWORK).notes == ()
    named = dataclasses.replace(node, host="jetson-b.lab.example",
                                address="jetson-b.lab.example")
    g = dataclasses.replace(f, nodes=tuple(named if n is node else n for n in f.nodes))
    _, parts = board_parts(g, named, l4t_root())
    assert part(parts, Concern.NETWORK).notes == ()  # a DNS name needs no avahi
