"""Where DHCP nodes are: a node with `address = "dhcp"` is found by its DHCP lease (a
dnsmasq leases file named in [fleet] leases) or by name: multicast DNS for NAME.local
(avahi-daemon answers on JetPack's desktop image), the system resolver for other names.

Nothing here fails: a node that is not found keeps its name as its address, so SSH says
"could not resolve" for that node alone and the rest of the fleet goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from fleetimg import programs
from fleetimg.errors import CommandError
from fleetimg.inventory import Fleet, Node

log = logging.getLogger("fleetimg.addresses")

MDNS_GROUP = ("224.0.0.251", 5353)
MDNS_TIMEOUT = 1.5
LEASES_MAX = 1 << 20  # a leases file is a few lines per board; refuse to parse a huge one


class FoundBy(str, Enum):
    STATIC = "static"  # the inventory names the address
    LEASE = "lease"  # the leases file in [fleet] leases
    MDNS = "mdns"  # an answer to a multicast DNS query for NAME.local
    RESOLVER = "resolver"  # the system's resolver (DNS, /etc/hosts)


@dataclass(frozen=True, kw_only=True)
class Located:
    node: str
    address: str | None  # None: not found
    found_by: FoundBy | None
    tried: tuple[str, ...]  # what was asked, for the message when nothing answered


def lease_address(leases: Path, name: str, *, now: float | None = None) -> str | None:
    """The address of the newest unexpired lease dnsmasq gave to a client calling itself
    `name` (dnsmasq's leases file: `EXPIRY MAC IP HOSTNAME CLIENT-ID` per line, EXPIRY 0 for
    an infinite lease)."""
    try:
        fd = os.open(leases, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(LEASES_MAX + 1)
    if len(data) > LEASES_MAX:
        log.warning("%s: over %d bytes, not read as a leases file", leases, LEASES_MAX)
        return None
    moment = time.time() if now is None else now
    best: tuple[int, str] | None = None
    for line in data.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3].lower() != name.lower():
            continue
        try:
            expiry = int(fields[0])
            address = str(ipaddress.IPv4Address(fields[2]))
        except ValueError:
            continue
        if expiry != 0 and expiry <= moment:
            continue
        rank = expiry or 1 << 62
        if best is None or rank >= best[0]:
            best = (rank, address)
    return best[1] if best else None


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def mdns_query(query_id: int, name: str) -> bytes:
    """A one-question A query. Sent from a port other than 5353 it is a "legacy unicast"
    query (RFC 6762 section 6.7): the responder answers to that port directly."""
    return struct.pack("!HHHHHH", query_id, 0, 1, 0, 0, 0) + _encode_name(name) + \
        struct.pack("!HH", 1, 1)


def _read_name(packet: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed name at `pos`: the name and the position after it."""
    labels: list[str] = []
    end = -1
    for _ in range(128):  # a loop of pointers is garbage, not a name
        length = packet[pos]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | packet[pos + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end >= 0 else pos + 1)
        labels.append(packet[pos + 1:pos + 1 + length].decode("ascii", errors="replace"))
        pos += 1 + length
    raise ValueError("name compression loops")


def parse_a_records(packet: bytes) -> dict[str, str]:
    """name (lower case, no trailing dot) -> IPv4 address, from a DNS response's answers
    and additional records; {} for anything malformed."""
    try:
        _, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", packet[:12])
        if not flags & 0x8000:
            return {}  # a query, not a response
        pos = 12
        for _ in range(qd):
            _, pos = _read_name(packet, pos)
            pos += 4
        found: dict[str, str] = {}
        for _ in range(an + ns + ar):
            rname, pos = _read_name(packet, pos)
            rtype, _, _, length = struct.unpack("!HHIH", packet[pos:pos + 10])
            pos += 10
            if rtype == 1 and length == 4:
                found[rname.lower().rstrip(".")] = socket.inet_ntoa(packet[pos:pos + 4])
            pos += length
        return found
    except (IndexError, ValueError, struct.error):
        return {}


def _local_ipv4() -> list[str]:
    """This machine's IPv4 addresses but loopback: a query goes out of every interface,
    since the boards may sit on any of them (a lab bridge, a second NIC)."""
    try:
        out = programs.run(["ip", "-j", "-4", "addr", "show"], timeout=10).stdout
        links = json.loads(out or "[]")
    except (CommandError, ValueError):
        return []
    return [a["local"] for link in links for a in link.get("addr_info", [])
            if a.get("local") and not a["local"].startswith("127.")]


def mdns_lookup(names: Iterable[str], *, timeout: float = MDNS_TIMEOUT,
                interfaces: Sequence[str] | None = None) -> dict[str, str]:
    """Ask every local interface's link for each NAME.local at once; name -> address for
    those that answered within `timeout` (asked twice, as a datagram can be lost)."""
    wanted = {n.lower().rstrip(".") for n in names}
    found: dict[str, str] = {}
    socks: list[socket.socket] = []
    try:
        for local in interfaces if interfaces is not None else _local_ipv4():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                socket.inet_aton(local))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                sock.bind((local, 0))
        queries = [mdns_query(i + 1, n) for i, n in enumerate(sorted(wanted))]
        deadline = time.monotonic() + timeout
        resend_at = time.monotonic() + timeout / 3
        _send(socks, queries)
        while socks and wanted - set(found) and (left := deadline - time.monotonic()) > 0:
            if time.monotonic() >= resend_at:
                _send(socks, [mdns_query(i + 1, n) for i, n in
                              enumerate(sorted(wanted - set(found)))])
                resend_at = deadline + 1
            ready, _, _ = select.select(socks, [], [], min(left, 0.1))
            for sock in ready:
                with contextlib.suppress(OSError):
                    packet, _ = sock.recvfrom(9000)
                    found.update({k: v for k, v in parse_a_records(packet).items()
                                  if k in wanted})
    finally:
        for sock in socks:
            sock.close()
    return found


def _send(socks: Sequence[socket.socket], queries: Sequence[bytes]) -> None:
    for sock in socks:
        for query in queries:
            with contextlib.suppress(OSError):
                sock.sendto(query, MDNS_GROUP)


def _resolver(host: str) -> str | None:
    with contextlib.suppress(OSError, UnicodeError):
        infos = socket.getaddrinfo(host, 22, socket.AF_INET, socket.SOCK_STREAM)
        if infos:
            return str(infos[0][4][0])
    return None


def locate(fleet: Fleet, nodes: Sequence[Node]) -> list[Located]:
    """Where each node is: its static address, else its lease, else its name answered
    by multicast DNS (NAME.local) or the system resolver (any other name)."""
    out: dict[str, Located] = {}
    pending: list[Node] = []
    for node in nodes:
        if not node.dhcp:
            out[node.name] = Located(node=node.name, address=node.address,
                                     found_by=FoundBy.STATIC, tried=())
        elif fleet.leases and (ip := lease_address(fleet.leases, node.name)):
            out[node.name] = Located(node=node.name, address=ip, found_by=FoundBy.LEASE,
                                     tried=(f"lease in {fleet.leases}",))
        else:
            pending.append(node)
    mdns_names = [n.address for n in pending if n.address.lower().endswith(".local")]
    answered = mdns_lookup(mdns_names) if mdns_names else {}
    for node in pending:
        tried: tuple[str, ...] = (f"lease in {fleet.leases}",) if fleet.leases else ()
        host = node.address
        if host.lower().endswith(".local"):
            ip, how = answered.get(host.lower()), FoundBy.MDNS
            tried += (f"multicast DNS for {host}",)
        else:
            ip, how = _resolver(host), FoundBy.RESOLVER
            tried += (f"the resolver for {host}",)
        out[node.name] = Located(node=node.name, address=ip, found_by=how if ip else None,
                                 tried=tried)
    return [out[n.name] for n in nodes]


def resolve(fleet: Fleet) -> Fleet:
    """The fleet with each DHCP node's address where it was found (unfound ones keep their
    name). A fleet without DHCP nodes is returned as it is, at no cost."""
    if not any(n.dhcp for n in fleet.nodes):
        return fleet
    found = {loc.node: loc for loc in locate(fleet, fleet.nodes)}
    nodes = []
    for node in fleet.nodes:
        loc = found[node.name]
        if node.dhcp and loc.address:
            log.info("%s: found at %s by %s", node.name, loc.address,
                     loc.found_by.value if loc.found_by else "?")
            node = dataclasses.replace(node, address=loc.address)
        elif node.dhcp:
            log.info("%s: not found (tried %s)", node.name, "; ".join(loc.tried))
        nodes.append(node)
    return dataclasses.replace(fleet, nodes=tuple(nodes))
