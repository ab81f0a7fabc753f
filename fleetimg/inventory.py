"""fleet.toml: the one description of the fleet every command works from.

Loading resolves fleet defaults into immutable Node records once; it either returns a whole,
valid Fleet or raises InventoryError listing every problem with its node and field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from fleetimg import newfile
from fleetimg import tomlcompat as tomllib
from fleetimg.errors import InventoryError, UsageError
from fleetimg.l4t import KNOWN_FAMILIES_TEXT, UNSUPPORTED_FAMILIES, L4TRelease
from fleetimg.paths import default_known_hosts


class Role(str, Enum):
    MASTER = "master"
    WORKER = "worker"


class Runtime(str, Enum):
    DOCKER = "docker"
    K3S = "k3s"


# JetPack 4.2, the first release for the Nano: the floor of every R32 module.
_JETPACK_42 = L4TRelease(32, 1, 0)


@dataclass(frozen=True)
class Module:
    name: str
    description: str
    soc: str
    compute_capability: str
    # Part numbers in /proc/device-tree/compatible that mean this module.
    part_numbers: tuple[str, ...] = ()
    # The devkit's Ethernet port as the kernel names it: a Realtek PCIe NIC on the Orin
    # Nano/NX devkits (unverified on every carrier: probe reads `ip -o link`).
    ethernet: str = "eth0"
    # The first L4T release NVIDIA shipped for the module and the last major that has one
    # (docs/releases.md, "Modules and releases"): JetPack 4 was the last for the Nano and
    # TX2, JetPack 5 for Xavier; Orin starts at JetPack 5.
    first: L4TRelease = _JETPACK_42
    last_major: int = 32
    # Whether the module boots from an SD card: only devkit modules have the slot (Nano
    # p3448-0000/-0003, Xavier NX p3668-0000, the Orin Nano devkit's p3767-0005). The rest
    # boot from eMMC or NVMe, flashed over USB: `fleetimg apply` sets them up instead.
    sd_card: bool = False
    # BOARD in an R32 image's /etc/nv_tegra_release for this module's family; from R35
    # on, NVIDIA writes a neutral value (R36: "generic").
    r32_boards: tuple[str, ...] = ()

    def supports(self, release: L4TRelease) -> bool:
        return self.first <= release and release.major <= self.last_major

    @property
    def releases_text(self) -> str:
        last = {32: "R32 (JetPack 4)", 35: "R35 (JetPack 5)", 36: "R36 (JetPack 6)"}
        return f"{self.first} to {last.get(self.last_major, f'R{self.last_major}')}"


_T210 = ("t210ref",)
_T186 = ("t186ref",)
_XAVIER = ("t186ref", "t194ref")

MODULES: Mapping[str, Module] = {
    m.name: m
    for m in (
        Module("nano-4gb", "Jetson Nano 4GB (devkit, SD card)", "t210", "5.3", ("p3448",),
               sd_card=True, r32_boards=_T210),
        Module("nano-2gb", "Jetson Nano 2GB (devkit, SD card)", "t210", "5.3",
               ("p3448", "p3541"), first=L4TRelease(32, 4, 4), sd_card=True,
               r32_boards=_T210),
        Module("nano-emmc", "Jetson Nano 4GB production module (eMMC)", "t210", "5.3",
               ("p3448-0002",), r32_boards=_T210),
        Module("tx1", "Jetson TX1", "t210", "5.3", ("p2180",), r32_boards=_T210),
        Module("tx2", "Jetson TX2", "t186", "6.2", ("p3310", "p3489"), r32_boards=_T186),
        Module("tx2-nx", "Jetson TX2 NX", "t186", "6.2", ("p3636",), r32_boards=_T186),
        Module("xavier-nx", "Jetson Xavier NX (devkit, SD card)", "t194", "7.2",
               ("p3668-0000",), first=L4TRelease(32, 4, 2), last_major=35, sd_card=True,
               r32_boards=_XAVIER),
        Module("xavier-nx-emmc", "Jetson Xavier NX production module (eMMC)", "t194", "7.2",
               ("p3668-0001", "p3668-0003"), first=L4TRelease(32, 4, 2), last_major=35,
               r32_boards=_XAVIER),
        Module("agx-xavier", "Jetson AGX Xavier", "t194", "7.2", ("p2888",), last_major=35,
               r32_boards=_XAVIER),
        Module("orin-nano", "Jetson Orin Nano (devkit, SD card)", "t234", "8.7",
               ("p3767-0005",), "enP8p1s0", first=L4TRelease(35, 3, 1), last_major=36,
               sd_card=True),
        Module("orin-nano-module", "Jetson Orin Nano 4GB/8GB production module (NVMe)",
               "t234", "8.7", ("p3767-0003", "p3767-0004"), "enP8p1s0",
               first=L4TRelease(35, 3, 1), last_major=36),
        Module("orin-nx", "Jetson Orin NX", "t234", "8.7", ("p3767-0000", "p3767-0001"),
               "enP8p1s0", first=L4TRelease(35, 2, 1), last_major=36),
        Module("agx-orin", "Jetson AGX Orin", "t234", "8.7", ("p3701",),
               first=L4TRelease(34, 1, 0), last_major=36),
    )
}


def fitting_modules(release: L4TRelease) -> list[str]:
    return [m.name for m in MODULES.values() if m.supports(release)]


def modules_for_compatible(compatible: str) -> tuple[str, ...]:
    """Inventory module names a device-tree `compatible` string can mean (a Nano's p3448
    is either Nano module), best first; () when none is known."""
    return tuple(m.name for m in MODULES.values()
                 if any(part in compatible for part in m.part_numbers))

IMPLICIT_GROUPS = ("all-nodes", "masters", "workers")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$", re.IGNORECASE)
_FLEET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SHA512_CRYPT_RE = re.compile(r"\$6\$(rounds=[0-9]{4,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}")

FLEET_KEYS = {
    "name", "user", "ssh_key", "port", "subnet", "gateway", "dns", "l4t", "runtime",
    "known_hosts", "relay_auth", "firmware", "address", "leases",
}
# `address = "dhcp"`: the board asks the network for its address; fleetimg finds it by name.
DHCP = "dhcp"


class RelayAuth(str, Enum):
    """How nodes log in to each other to relay a push."""

    INTERNAL_KEY = "internal-key"  # the fleet-internal key ([sdcard] internal_ssh_key)
    AGENT = "agent"  # the workstation's forwarded ssh-agent


# The fleet-internal key pair for node-to-node SSH lives beside fleet.toml under this name.
INTERNAL_KEY_NAME = "fleet_internal_ed25519"
SDCARD_KEYS = {
    "image", "user", "password_hash", "authorized_keys", "groups", "headless", "max_power",
    "swap", "docker_nvidia_default", "k3s_server", "k3s_token_file", "internal_ssh_key",
    "power_mode",
}
DEFAULT_USER_GROUPS = (
    "adm", "cdrom", "sudo", "audio", "dip", "video", "plugdev", "i2c", "gpio", "lpadmin",
    "gdm", "sambashare", "weston-launch", "render", "docker",
)
_SWAP_RE = re.compile(r"^(off|zram|[1-9][0-9]*[MG])$")
NODE_KEYS = {
    "name", "address", "role", "module", "groups", "user", "ssh_key", "port", "l4t", "runtime",
    "firmware", "host",
}


@dataclass(frozen=True)
class Node:
    name: str
    # What SSH connects to: the static IPv4 address, or for a DHCP node the name it is
    # found by (`host`, by default NAME.local) until `addresses.resolve` puts the address
    # it was found at here.
    address: str
    role: Role
    module: Module
    user: str
    ssh_key: Path | None
    port: int
    l4t: L4TRelease
    runtime: Runtime
    groups: tuple[str, ...] = ()
    # The board's QSPI/UEFI firmware release where known (`nvbootctrl dump-slots-info`):
    # a card of a newer L4T major does not boot on older firmware.
    firmware: L4TRelease | None = None
    dhcp: bool = False  # the card asks for its address; fleetimg finds it by name or lease
    # A DHCP node's name on the network (`host`, by default NAME.local): what other nodes
    # and the cards name it by, whatever address it was found at.
    host: str | None = None

    @property
    def reach(self) -> str:
        """How cards and configuration files name the node: its static address, or for a
        DHCP node its host name (a found address is only good until the lease changes)."""
        return self.host if self.dhcp and self.host else self.address

    @property
    def known_as(self) -> tuple[str, int]:
        """The host and port its key is kept under in known_hosts: a DHCP node's own name
        (ssh's HostKeyAlias, which takes no port), since its address changes; else its
        address and port."""
        return (self.name, 22) if self.dhcp else (self.address, self.port)


@dataclass(frozen=True)
class SdcardSettings:
    """[sdcard]: what `fleetimg sdcard` writes onto every card besides the per-node identity."""

    image: Path | None = None
    user: str = "jetson"
    password_hash: str | None = None  # SHA-512 crypt; None = key-only login
    authorized_keys: tuple[Path, ...] = ()
    groups: tuple[str, ...] = DEFAULT_USER_GROUPS
    headless: bool = True
    max_power: bool = True
    swap: str = "zram"  # off (K3s), zram (NVIDIA's default) or a swap file size like 4G
    docker_nvidia_default: bool = True
    k3s_server: str | None = None
    k3s_token_file: Path | None = None
    internal_ssh_key: bool = False
    # A power mode by name from the board's /etc/nvpmodel.conf ("25W"); else max_power.
    power_mode: str | None = None


@dataclass(frozen=True)
class Fleet:
    name: str
    path: Path | None
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    dns: tuple[str, ...]
    known_hosts: Path
    nodes: tuple[Node, ...]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sdcard: SdcardSettings = field(default_factory=SdcardSettings)
    # How nodes log in to each other to relay a push: "internal-key" (the fleet-internal
    # key from [sdcard] internal_ssh_key at ~/.ssh/id_ed25519 on every node), "agent"
    # (the workstation's forwarded ssh-agent) or None (no relays).
    relay_auth: RelayAuth | None = None
    # A dnsmasq leases file that names DHCP nodes' addresses (the lab's, or a router's
    # copied over); None: DHCP nodes are found by name only.
    leases: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def masters(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role is Role.MASTER)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UsageError(
            f"no node named {name!r} in the inventory",
            hint=f"known nodes: {', '.join(n.name for n in self.nodes)}",
        )

    def group_names(self) -> list[str]:
        return [*IMPLICIT_GROUPS, *sorted(self.groups)]

    def select(self, selection: str) -> tuple[Node, ...]:
        """Resolve '--to' syntax: comma-separated groups and node names, in inventory order."""
        wanted: set[str] = set()
        terms = [t.strip() for t in selection.split(",")]
        if not selection.strip() or any(not t for t in terms):
            raise UsageError(
                f"empty selection {selection!r}",
                hint="use --to all-nodes, --to workers, or --to node1,node3",
            )
        by_name = {n.name: n for n in self.nodes}
        for term in terms:
            if term == "all-nodes":
                wanted.update(by_name)
            elif term == "masters":
                wanted.update(n.name for n in self.nodes if n.role is Role.MASTER)
            elif term == "workers":
                wanted.update(n.name for n in self.nodes if n.role is Role.WORKER)
            elif term in self.groups:
                wanted.update(self.groups[term])
            elif term in by_name:
                wanted.add(term)
            else:
                raise UsageError(
                    f"unknown node or group {term!r} in selection {selection!r}",
                    hint=(
                        f"groups: {', '.join(self.group_names())}; "
                        f"nodes: {', '.join(by_name)}"
                    ),
                )
        chosen = tuple(n for n in self.nodes if n.name in wanted)
        if not chosen:
            raise UsageError(f"selection {selection!r} matches no node")
        return chosen


# A fleet.toml of 24 nodes is about 3 KB; a file thousands of times larger is not one, and
# parsing it would take minutes.
MAX_INVENTORY_BYTES = 1 << 20


def load(path: Path) -> Fleet:
    """Read and validate fleet.toml."""
    if not path.exists():
        raise InventoryError(
            f"no inventory at {path}",
            hint="create one with `fleetimg init --nodes 4 --subnet 192.168.10.0/24`, "
            "or point to it with -i FILE / FLEETIMG_INVENTORY",
        )
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    if size > MAX_INVENTORY_BYTES:
        raise InventoryError(f"{path} is {size:,} bytes: too large for a fleet inventory "
                             f"(at most {MAX_INVENTORY_BYTES:,})",
                             hint="point -i at your fleet.toml; 24 nodes take about 3 KB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})",
                             hint="TOML files are UTF-8: re-save it as UTF-8 "
                             f"(e.g. `iconv -f latin1 -t utf-8 {path}`)") from exc
    except IsADirectoryError as exc:
        raise InventoryError(f"{path} is a directory, not an inventory file",
                             hint="point -i at the fleet.toml inside it") from exc
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}",
                             hint="fix the line and column named; `fleetimg init -o "
                             "example.toml` writes a valid, commented example") from exc
    return parse(data, base_dir=path.parent, path=path)


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, p: _Problems) -> None:
    for key in table:
        if key not in allowed:
            p.add(f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _str(value: Any, where: str, p: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        p.add(where, f"must be a non-empty string, got {value!r}")
        return None
    return value.strip()


def _path(value: Any, base_dir: Path, where: str, p: _Problems, must_exist: bool) -> Path | None:
    text = _str(value, where, p)
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if must_exist and not path.is_file():
        p.add(where, f"{path} is a directory, not a file" if path.is_dir()
              else f"file {path} does not exist")
    return path


def _secret_path(value: Any, base_dir: Path, where: str, p: _Problems) -> Path | None:
    """A file that holds a secret: like ssh, refuse one that others can read."""
    path = _path(value, base_dir, where, p, must_exist=True)
    mode = path.stat().st_mode if path is not None and path.is_file() else 0
    if mode & 0o077:
        p.add(where, f"{path} can be read by other users (mode {mode & 0o777:o}): run "
              f"`chmod 600 {path}`")
    return path


def _release(value: Any, where: str, p: _Problems) -> L4TRelease | None:
    text = _str(value, where, p)
    if text is None:
        return None
    try:
        release = L4TRelease.parse(text)
    except UsageError as exc:
        p.add(where, exc.message)
        return None
    if release.major in UNSUPPORTED_FAMILIES:
        p.add(where, f"{release} is {UNSUPPORTED_FAMILIES[release.major]}, which fleetimg "
              f"does not support yet (supported: {KNOWN_FAMILIES_TEXT})")
        return None
    if not release.family_known:
        p.add(where, f"{release} is not an L4T release fleetimg knows (known families: "
              f"{KNOWN_FAMILIES_TEXT}); e.g. R32.7.1 = JetPack 4.6.1")
        return None
    return release


def _power_mode(value: Any, p: _Problems) -> str | None:
    text = _str(value, "sdcard.power_mode", p)
    if text is not None and not re.fullmatch(r"[A-Za-z0-9_]{1,32}", text):
        p.add("sdcard.power_mode", f"{text!r}: a mode name from nvpmodel.conf, e.g. 25W or "
              "MAXN_SUPER")
        return None
    return text


def _firmware(value: Any, where: str, p: _Problems) -> L4TRelease | None:
    text = _str(value, where, p)
    if text is None:
        return None
    try:
        return L4TRelease.parse(text.split("-")[0])  # "36.4.3-gcid-38968081" as printed
    except UsageError:
        p.add(where, f"{text!r}: a firmware release like 35.5.0 (`sudo nvbootctrl "
              "dump-slots-info` prints it)")
        return None


def _user(value: Any, where: str, p: _Problems) -> str | None:
    text = _str(value, where, p)
    if text is not None and not _USER_RE.match(text):
        p.add(where, f"{text!r} is not a valid Linux user name (lowercase letters, digits, "
              "_ and -, starting with a letter or _)")
        return None
    return text


def _enum(enum: type[Role] | type[Runtime] | type[RelayAuth], value: Any, where: str,
          p: _Problems) -> Any:
    text = _str(value, where, p)
    if text is None:
        return None
    try:
        return enum(text)
    except ValueError:
        p.add(where, f"unknown value {text!r} (one of: {', '.join(e.value for e in enum)})")
        return None


def _port(value: Any, where: str, p: _Problems) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        p.add(where, f"must be a TCP port number, got {value!r}")
        return None
    return value


def parse(data: Mapping[str, Any], *, base_dir: Path, path: Path | None = None) -> Fleet:
    """The inventory from its TOML tables; every problem is collected, then reported at
    once, each at its field ("node 'node2'.address: ...")."""
    p = _Problems()
    for key in sorted(set(data) - {"fleet", "nodes", "sdcard"}):
        p.add(key, "unknown table (expected [fleet], [sdcard] and [[nodes]])")
    fleet_t = data.get("fleet", {})
    if not isinstance(fleet_t, Mapping):
        raise InventoryError(f"{path or 'inventory'}: fleet must be a table, got "
                             f"{fleet_t!r}", hint="write it as a [fleet] section; "
                             "`fleetimg init -o example.toml` shows one")
    d = _fleet_defaults(fleet_t, base_dir, p)
    nodes_raw = data.get("nodes", [])
    if not isinstance(nodes_raw, list) or not nodes_raw:
        p.add("nodes", "no [[nodes]] entries")
        nodes_raw = []
    seen = _Seen()
    nodes = [n for i, raw in enumerate(nodes_raw)
             if (n := _node(raw, i, d, seen, base_dir, p)) is not None]
    sdcard = _parse_sdcard(data.get("sdcard", {}), base_dir, d.user, d.ssh_key, d.runtime, p)
    lower_names = set(seen.names)
    for g in seen.groups:
        if g.lower() in lower_names:
            p.add(f"group {g!r}", "has the same name as a node")
    if p.items:
        where = str(path) if path else "inventory"
        count = len(p.items)
        raise InventoryError(
            f"{where}: {count} problem{'s' if count > 1 else ''}:\n  " + "\n  ".join(p.items),
            hint="fix the fields above; `fleetimg init` shows a commented example",
        )
    assert d.subnet is not None
    return Fleet(name=d.name, path=path, subnet=d.subnet, gateway=d.gateway, dns=d.dns,
                 known_hosts=d.known_hosts, nodes=tuple(nodes),
                 groups={g: tuple(members) for g, members in seen.groups.items()},
                 sdcard=sdcard, relay_auth=d.relay_auth, leases=d.leases)


@dataclass(frozen=True)
class _FleetDefaults:
    """[fleet]: the fleet's own settings and the defaults every node inherits."""

    name: str
    user: str
    ssh_key: Path | None
    port: int
    l4t: L4TRelease | None
    runtime: Runtime | None
    known_hosts: Path
    firmware: L4TRelease | None
    relay_auth: RelayAuth | None
    subnet: ipaddress.IPv4Network | None
    gateway: ipaddress.IPv4Address | None
    dns: tuple[str, ...]
    dhcp: bool = False  # [fleet] address = "dhcp": nodes without an address use DHCP
    leases: Path | None = None


@dataclass
class _Seen:
    """What earlier [[nodes]] used: names and addresses must be unique."""

    names: dict[str, str] = field(default_factory=dict)  # lower-case name -> index
    addresses: dict[str, str] = field(default_factory=dict)  # address -> where
    groups: dict[str, list[str]] = field(default_factory=dict)


def _fleet_defaults(fleet_t: Mapping[str, Any], base_dir: Path, p: _Problems) -> _FleetDefaults:
    _check_keys(fleet_t, FLEET_KEYS, "fleet", p)
    subnet = _subnet(fleet_t, p)
    return _FleetDefaults(
        name=_fleet_name(fleet_t.get("name", "fleet"), p),
        user=_user(fleet_t.get("user", "jetson"), "fleet.user", p) or "jetson",
        ssh_key=_path(fleet_t.get("ssh_key"), base_dir, "fleet.ssh_key", p, must_exist=True),
        port=_port(fleet_t.get("port", 22), "fleet.port", p) or 22,
        l4t=_release(fleet_t.get("l4t", "R32.7.1"), "fleet.l4t", p),
        runtime=_enum(Runtime, fleet_t.get("runtime", "docker"), "fleet.runtime", p),
        known_hosts=_path(fleet_t.get("known_hosts"), base_dir, "fleet.known_hosts", p,
                          must_exist=False) or default_known_hosts(),
        firmware=_firmware(fleet_t.get("firmware"), "fleet.firmware", p),
        relay_auth=(_enum(RelayAuth, fleet_t.get("relay_auth"), "fleet.relay_auth", p)
                    if "relay_auth" in fleet_t else None),
        subnet=subnet,
        gateway=_gateway(fleet_t, subnet, p),
        dns=_dns(fleet_t, p),
        dhcp=_fleet_dhcp(fleet_t, p),
        leases=_path(fleet_t.get("leases"), base_dir, "fleet.leases", p, must_exist=False),
    )


def _fleet_dhcp(fleet_t: Mapping[str, Any], p: _Problems) -> bool:
    text = _str(fleet_t.get("address"), "fleet.address", p)
    if text is not None and text != DHCP:
        p.add("fleet.address", f"{text!r}: only \"dhcp\" (nodes without an address of "
              "their own use DHCP); static addresses go on each [[nodes]]")
    return text == DHCP


def _fleet_name(value: Any, p: _Problems) -> str:
    # The name reaches key comments, container and volume names and the terminal: a safe
    # set only (a newline in it once added a key line to every card's authorized_keys).
    text = _str(value, "fleet.name", p)
    if text is not None and not _FLEET_NAME_RE.match(text):
        p.add("fleet.name", f"{text!r}: letters, digits, '.', '_' and '-' only, starting "
              "with a letter or digit, at most 63 characters")
        return "fleet"
    return text or "fleet"


def _subnet(fleet_t: Mapping[str, Any], p: _Problems) -> ipaddress.IPv4Network | None:
    text = _str(fleet_t.get("subnet"), "fleet.subnet", p)
    if text is None:
        if "subnet" not in fleet_t:
            p.add("fleet.subnet", "missing (e.g. subnet = \"192.168.10.0/24\")")
        return None
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        p.add("fleet.subnet", f"not an IPv4 network in CIDR form: {exc}")
        return None


def _gateway(fleet_t: Mapping[str, Any], subnet: ipaddress.IPv4Network | None,
             p: _Problems) -> ipaddress.IPv4Address | None:
    text = _str(fleet_t.get("gateway"), "fleet.gateway", p)
    if text is None:
        return None
    try:
        gateway = ipaddress.IPv4Address(text)
    except ValueError:
        p.add("fleet.gateway", f"not an IPv4 address: {text!r}")
        return None
    if subnet is not None and gateway not in subnet:
        p.add("fleet.gateway", f"{gateway} is outside the subnet {subnet}")
    return gateway


def _dns(fleet_t: Mapping[str, Any], p: _Problems) -> tuple[str, ...]:
    raw = fleet_t.get("dns", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        p.add("fleet.dns", "must be a list of IPv4 addresses")
        return ()
    dns: list[str] = []
    for i, entry in enumerate(raw):
        try:
            dns.append(str(ipaddress.IPv4Address(str(entry))))
        except ValueError:
            p.add(f"fleet.dns[{i}]", f"not an IPv4 address: {entry!r}")
    return tuple(dns)


def _node(raw: Any, i: int, d: _FleetDefaults, seen: _Seen, base_dir: Path,
          p: _Problems) -> Node | None:
    """One [[nodes]] entry, with [fleet]'s defaults for what it leaves out."""
    if not isinstance(raw, Mapping):
        p.add(f"nodes[{i}]", "must be a table")
        return None
    where = f"node {raw.get('name')!r}" if isinstance(raw.get("name"), str) else f"nodes[{i}]"
    _check_keys(raw, NODE_KEYS, where, p)
    name = _node_name(raw, i, where, seen, p)
    address, dhcp = _node_address(raw, where, d, seen, p)
    role = _enum(Role, raw.get("role", "worker"), f"{where}.role", p)
    module = _node_module(raw, where, p)
    node_groups = _node_groups(raw, where, name, seen, p)
    user = _user(raw.get("user"), f"{where}.user", p) or d.user
    key = (_path(raw.get("ssh_key"), base_dir, f"{where}.ssh_key", p, must_exist=True)
           if "ssh_key" in raw else d.ssh_key)
    port = _port(raw.get("port"), f"{where}.port", p) or d.port
    l4t = _release(raw.get("l4t"), f"{where}.l4t", p) if "l4t" in raw else d.l4t
    runtime = (_enum(Runtime, raw.get("runtime"), f"{where}.runtime", p)
               if "runtime" in raw else d.runtime)
    firmware = (_firmware(raw.get("firmware"), f"{where}.firmware", p)
                if "firmware" in raw else d.firmware)
    if module is not None and l4t is not None and not module.supports(l4t):
        p.add(f"{where}.l4t", f"{l4t} does not run on a {module.description}, which runs "
              f"{module.releases_text} (on {l4t}: {', '.join(fitting_modules(l4t)) or 'none'})")
        return None
    if name is None or address is None or role is None or module is None or l4t is None \
            or runtime is None:
        return None
    return Node(name=name, address=address, role=role, module=module, user=user,
                ssh_key=key, port=port, l4t=l4t, runtime=runtime, groups=tuple(node_groups),
                firmware=firmware, dhcp=dhcp, host=address if dhcp else None)


def _node_name(raw: Mapping[str, Any], i: int, where: str, seen: _Seen,
               p: _Problems) -> str | None:
    name = _str(raw.get("name"), f"{where}.name", p)
    if name is None:
        if "name" not in raw:
            p.add(f"{where}.name", "missing")
        return None
    if not _LABEL_RE.match(name):
        p.add(f"{where}.name", "not a valid hostname (RFC 1123: letters, digits and '-', "
              "1-63 chars, not starting or ending with '-')")
    elif name.lower() in seen.names:
        p.add(f"{where}.name", f"duplicate hostname (also nodes[{seen.names[name.lower()]}])")
    elif name in IMPLICIT_GROUPS:
        p.add(f"{where}.name", f"{name!r} is a reserved group name")
    seen.names[name.lower()] = str(i)
    return name


def _node_address(raw: Mapping[str, Any], where: str, d: _FleetDefaults, seen: _Seen,
                  p: _Problems) -> tuple[str | None, bool]:
    """The address SSH connects to, and whether the node uses DHCP."""
    text = _str(raw.get("address"), f"{where}.address", p)
    host = _str(raw.get("host"), f"{where}.host", p)
    if text == DHCP or (text is None and "address" not in raw and d.dhcp):
        name = raw.get("name")
        found_by = host or (f"{name}.local" if isinstance(name, str) else None)
        if host is not None and not all(_LABEL_RE.match(label) for label in host.split(".")):
            p.add(f"{where}.host", f"{host!r} is not a host name (e.g. node2.local)")
        if found_by is not None and found_by in seen.addresses:
            p.add(f"{where}.host", f"{found_by} is also used by {seen.addresses[found_by]}")
        if found_by is not None:
            seen.addresses[found_by] = where
        return found_by, True
    if host is not None:
        p.add(f"{where}.host", "only for address = \"dhcp\": a static node is reached at "
              "its address")
    if text is None:
        if "address" not in raw:
            p.add(f"{where}.address", "missing (an IPv4 address, or \"dhcp\")")
        return None, False
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        p.add(f"{where}.address", f"not an IPv4 address or \"dhcp\": {text!r}")
        return None, False
    subnet = d.subnet
    if subnet is not None and addr not in subnet:
        p.add(f"{where}.address", f"{addr} is outside the subnet {subnet}")
    elif subnet is not None and addr in (subnet.network_address, subnet.broadcast_address):
        p.add(f"{where}.address", f"{addr} is the subnet's network or broadcast address")
    if d.gateway is not None and addr == d.gateway:
        p.add(f"{where}.address", f"{addr} is the gateway's address")
    address = str(addr)
    if address in seen.addresses:
        p.add(f"{where}.address", f"{addr} is also used by {seen.addresses[address]}")
    seen.addresses[address] = where
    return address, False


def _node_module(raw: Mapping[str, Any], where: str, p: _Problems) -> Module | None:
    name = _str(raw.get("module"), f"{where}.module", p)
    if name is None:
        if "module" not in raw:
            p.add(f"{where}.module", f"missing (one of: {', '.join(MODULES)})")
        return None
    module = MODULES.get(name)
    if module is None:
        p.add(f"{where}.module", f"unknown module {name!r} (one of: {', '.join(MODULES)})")
    return module


def _node_groups(raw: Mapping[str, Any], where: str, name: str | None, seen: _Seen,
                 p: _Problems) -> list[str]:
    raw_groups = raw.get("groups", [])
    if not isinstance(raw_groups, list):
        p.add(f"{where}.groups", "must be a list of group names")
        return []
    out: list[str] = []
    for g in raw_groups:
        if not isinstance(g, str) or not _GROUP_RE.match(g):
            p.add(f"{where}.groups", f"invalid group name {g!r}")
        elif g in IMPLICIT_GROUPS:
            p.add(f"{where}.groups", f"{g!r} is implicit; no need to list it")
        else:
            out.append(g)
            if name is not None:
                seen.groups.setdefault(g, []).append(name)
    return out


def _bool(table: Mapping[str, Any], key: str, default: bool, p: _Problems) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        p.add(f"sdcard.{key}", f"must be true or false, got {value!r}")
        return default
    return value


def _parse_sdcard(
    table: Any, base_dir: Path, fleet_user: str, ssh_key: Path | None,
    runtime: Runtime | None, p: _Problems,
) -> SdcardSettings:
    if not isinstance(table, Mapping):
        p.add("sdcard", "must be a table ([sdcard])")
        return SdcardSettings()
    _check_keys(table, SDCARD_KEYS, "sdcard", p)
    # Defaults to [fleet] user, which is checked (and reported) there.
    user = _user(table.get("user"), "sdcard.user", p) or fleet_user
    pw = _str(table.get("password_hash"), "sdcard.password_hash", p)
    if pw is not None and not _SHA512_CRYPT_RE.fullmatch(pw):
        # It lands verbatim in /etc/shadow: a ':' or a newline would forge other fields or
        # lines (a passwordless root). JetPack 4's glibc knows no yescrypt ($y$): $6$ only.
        p.add("sdcard.password_hash",
              "must be one SHA-512 crypt hash ($6$salt$ and 86 characters of [./0-9A-Za-z], "
              "nothing else): make one with `openssl passwd -6`")
        pw = None
    keys_raw = table.get("authorized_keys")
    keys: list[Path] = []
    if keys_raw is None:
        if ssh_key is not None and ssh_key.with_name(ssh_key.name + ".pub").is_file():
            keys.append(ssh_key.with_name(ssh_key.name + ".pub"))
    elif not isinstance(keys_raw, list):
        p.add("sdcard.authorized_keys", "must be a list of public key files")
    else:
        for i, entry in enumerate(keys_raw):
            key = _path(entry, base_dir, f"sdcard.authorized_keys[{i}]", p, must_exist=True)
            if key is not None:
                keys.append(key)
    groups_raw = table.get("groups", list(DEFAULT_USER_GROUPS))
    if not isinstance(groups_raw, list) or not all(isinstance(g, str) for g in groups_raw):
        p.add("sdcard.groups", "must be a list of group names")
        groups_raw = list(DEFAULT_USER_GROUPS)
    default_swap = "off" if runtime is Runtime.K3S else "zram"
    swap = _str(table.get("swap", default_swap), "sdcard.swap", p) or default_swap
    if not _SWAP_RE.match(swap):
        p.add("sdcard.swap", f"{swap!r}: use off (K3s), zram, or a swap file size like 4G")
    server = _str(table.get("k3s_server"), "sdcard.k3s_server", p)
    if server is not None and not re.match(r"^https://[A-Za-z0-9.-]+(:\d+)?$", server):
        p.add("sdcard.k3s_server", f"{server!r}: expected https://HOST:6443")
    return SdcardSettings(
        image=_path(table.get("image"), base_dir, "sdcard.image", p, must_exist=False),
        user=user,
        password_hash=pw,
        authorized_keys=tuple(keys),
        groups=tuple(groups_raw),
        headless=_bool(table, "headless", True, p),
        max_power=_bool(table, "max_power", True, p),
        swap=swap,
        docker_nvidia_default=_bool(table, "docker_nvidia_default", True, p),
        k3s_server=server,
        k3s_token_file=_secret_path(table.get("k3s_token_file"), base_dir,
                                    "sdcard.k3s_token_file", p),
        internal_ssh_key=_bool(table, "internal_ssh_key", False, p),
        power_mode=_power_mode(table.get("power_mode"), p),
    )


_STARTER_SDCARD = """\
# What `fleetimg sdcard` writes on every card (hostname, /etc/hosts and the static
# address come from [[nodes]]). All optional.
[sdcard]
# JetPack SD card image used when --image is not given (.img, .zip, .xz, .gz).
# image = "jetson-nano-jp461-sd-card-image.zip"
# Login user created instead of the oem-config wizard; key-only unless a hash is set
# (openssl passwd -6). Keys default to ssh_key + .pub.
# user = "jetson"
# password_hash = "$6$..."
# authorized_keys = ["~/.ssh/id_ed25519.pub"]
# Boot to a console (multi-user.target); the highest power mode by name (MAXN_SUPER or
# MAXN), or power_mode = "25W" for another mode of the board's nvpmodel.conf.
# headless = true
# max_power = true
# swap: off (K3s wants none), zram (NVIDIA default) or a swap file size like 4G (MPI).
# swap = "zram"
# docker_nvidia_default = true
# K3s agents join the master: token file is a secret, written 0600.
# k3s_server = "https://192.168.10.11:6443"
# k3s_token_file = "k3s-token"
# A fleet-internal key pair for node-to-node SSH (MPI/Horovod, push relays).
# internal_ssh_key = false
"""


def starter_toml(
    *, nodes: int, subnet: str, name: str = "jetson-fleet", l4t: str = "R32.7.1",
    module: str = "nano-4gb", runtime: str = "docker",
) -> str:
    """A commented fleet.toml for `fleetimg init`; the result always passes load()."""
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise UsageError(
            f"--subnet {subnet!r}: {exc}", hint="e.g. --subnet 192.168.10.0/24"
        ) from exc
    if module not in MODULES:
        raise UsageError(f"unknown module {module!r}", hint=f"one of: {', '.join(MODULES)}")
    L4TRelease.parse(l4t)
    hosts = list(network.hosts())
    if not 1 <= nodes <= len(hosts) - 11:
        raise UsageError(
            f"--nodes {nodes} does not fit in {network}",
            hint="use between 1 and 200 nodes, or a larger subnet",
        )
    gateway = hosts[0]
    lines = [
        "# fleetimg inventory: the one description of your Jetson fleet.",
        "# Every command reads it: fleetimg nodes probe, build, push, sdcard.",
        "# Select nodes with --to all-nodes | masters | workers | GROUP | node1,node3.",
        "",
        "[fleet]",
        tomllib.assign("name", name),
        '# SSH login on every board (override per node with user = "...").',
        tomllib.assign("user", "jetson"),
        "# Private key for that login; leave out to use your ssh-agent / ~/.ssh/config.",
        '# ssh_key = "~/.ssh/id_ed25519"',
        "# Network the boards live on; static addresses are written to SD cards.",
        tomllib.assign("subnet", network),
        tomllib.assign("gateway", gateway),
        tomllib.assign("dns", [str(gateway)]),
        "# L4T release the boards run (head -n1 /etc/nv_tegra_release); JetPack 4.6.1 = R32.7.1.",
        tomllib.assign("l4t", l4t),
        "# Container runtime on the boards: docker or k3s.",
        tomllib.assign("runtime", runtime),
        "# How boards log in to each other when `push` relays an image board to board:",
        '# "internal-key" (needs [sdcard] internal_ssh_key = true on the cards) or "agent"',
        "# (your ssh-agent, forwarded). Unset: every board is sent to from this machine.",
        '# relay_auth = "internal-key"',
        "",
        _STARTER_SDCARD,
    ]
    for i in range(nodes):
        lines += [
            "[[nodes]]",
            tomllib.assign("name", f"node{i + 1}"),
            tomllib.assign("address", hosts[10 + i]),
            tomllib.assign("role", "master" if i == 0 else "worker"),
            tomllib.assign("module", module, ", ".join(MODULES)),
        ]
        if i == 0:
            lines.append('# groups = ["nfs-server"]  # extra groups for --to')
        lines.append("")
    text = "\n".join(lines)
    try:
        parse(tomllib.loads(text), base_dir=Path.cwd())
    except InventoryError as exc:
        # An option the inventory itself refuses (--l4t R99.1, --name "a b", a module on a
        # release it never ran): said now, before anything is written.
        problems = exc.message.split(":\n  ", 1)[-1].replace("\n  ", "; ")
        raise UsageError(f"these options make an invalid inventory: {problems}",
                         hint="fix --l4t, --module or --name; `fleetimg init --help` "
                         "lists them") from exc
    return text


def write_starter(target: Path, text: str, *, force: bool) -> None:
    """Put a starter inventory at `target`: whole or not at all, never through a link."""
    if target.is_dir():
        raise UsageError(f"{target} is a directory",
                         hint=f"name the file to write, e.g. -o {target / 'fleet.toml'}")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="use --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    newfile.write_atomic(target, text.encode())
