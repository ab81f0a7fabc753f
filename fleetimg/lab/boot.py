"""`fleetimg lab boot`: boot a card image as a board on the lab fleet's network.

The card's APP partition is attached as a loop device (offset and size from the GPT, so no
partition nodes or udev are needed) and mounted, and systemd-nspawn boots it: everything
the board does comes from the card (hostname, NetworkManager keyfile, user, keys, units),
and whatever it writes lands in the card image, as on a real card. Its network is a veth
pair: one end on the lab's bridge, the other moved into a network namespace of its own and
named as the card's keyfile expects (nspawn's own `host0` would not match `eth0`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
from docker.errors import NotFound

from fleetimg import addresses, knownhosts, programs
from fleetimg.errors import FleetimgError, LabError
from fleetimg.inventory import Fleet, Node
from fleetimg.paths import state_dir
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.gpt import read_table_file

BOOT_TIMEOUT = 120.0
# A board that reboots comes back, as a real one does: systemd-nspawn exits with 133 when
# the container reboots (systemd-nspawn(1)), and this loop starts it again; SIGTERM (lab
# boot --stop) is passed on to nspawn, which shuts the card down cleanly.
#
# On every (re)boot it also lets the card's Docker start containers, as on a board: on a
# cgroup v1 host nspawn mounts the controllers read-only in the card, and runc must create
# its cgroups there. They are remounted writable from the host, in the card's mount
# namespace (the card has no CAP_SYS_ADMIN), once the card's systemd (nspawn's child) runs.
# Best effort: a card whose mounts never show up boots without.
_REBOOT_LOOP = """
writable_cgroups() {
  tries=0
  while [ "$tries" -lt 600 ] && kill -0 "$1" 2>/dev/null; do
    init=$(pgrep -P "$1" -x systemd | head -n 1)
    if [ -n "$init" ] && grep -q ' cgroup ' "/proc/$init/mounts" 2>/dev/null; then
      awk '$3 == "cgroup" && $4 ~ /(^|,)ro(,|$)/ { print $2 }' "/proc/$init/mounts" |
        while read -r dir; do nsenter -t "$init" -m mount -o remount,bind,rw "$dir"; done
      return
    fi
    tries=$((tries + 1)); sleep 0.1
  done
}
stopping=0
trap 'stopping=1; kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  "$@" < /dev/null &
  child=$!
  writable_cgroups "$child" &
  wait "$child"; rc=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
  if [ "$stopping" = 1 ] || [ "$rc" != 133 ]; then exit "$rc"; fi
  echo "fleetimg lab: the card rebooted; starting it again"
done
"""
NM_DIR = "/etc/NetworkManager/system-connections"


@dataclass(frozen=True)
class BootedCard:
    name: str  # the node the card says it is
    lab: str
    card: str
    address: str
    pid: int
    loop: str
    mountpoint: str
    netns: str
    veth: str
    console: str


def _boot_dir() -> Path:
    return state_dir() / "boot"


def _state_file(name: str) -> Path:
    return _boot_dir() / name / "state.json"


def booted_cards() -> list[BootedCard]:
    out = []
    for path in sorted(_boot_dir().glob("*/state.json")):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            out.append(BootedCard(**json.loads(path.read_text())))
    return out


def _app_location(card: Path) -> tuple[int, int]:
    app = read_table_file(card).by_name("APP")
    if app is None:
        raise LabError(f"{card}: no APP partition: not a Jetson card image")
    return app.offset, app.size


def _card_identity(fs: Ext4) -> tuple[str, str]:
    """The node name and the interface name the card's own files give."""
    hostname = (fs.read_text("/etc/hostname") or "").strip()
    interface = "eth0"
    for entry in fs.listdir(NM_DIR):
        text = fs.read_text(f"{NM_DIR}/{entry}") or ""
        if (m := re.search(r"^interface-name=(\S+)", text, re.MULTILINE)):
            interface = m[1]
            break
    return hostname, interface


def _bridge(network: str) -> str:
    try:
        net = docker.from_env().networks.get(network)
    except NotFound:
        raise LabError(f"no lab network {network}",
                       hint="start the lab first: fleetimg lab up --card-nodes 1") from None
    return f"br-{(net.id or '')[:12]}"


def _forget_host_key(fleet: Fleet, node: Node) -> None:
    # A card boots with host keys made on its first boot: in the lab, every card booted for
    # a node is a re-flashed board, so the lab's known_hosts forgets the old key.
    knownhosts.forget(fleet.known_hosts, *node.known_as)


def _wait_for_ssh(address: str, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not programs.pid_alive(pid):
            return False
        with contextlib.suppress(OSError), \
                socket.create_connection((address, 22), timeout=2) as sock:
            sock.settimeout(2)
            if sock.recv(4).startswith(b"SSH-"):
                return True
        time.sleep(0.3)
    return False


def _wait_for_lease(fleet: Fleet, node: Node, pid: int, timeout: float) -> str | None:
    """A DHCP card's address, once its lease (or its multicast DNS answer) names it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and programs.pid_alive(pid):
        found = addresses.locate(fleet, [node])[0].address
        if found is not None:
            return found
        time.sleep(0.5)
    return None


def _first_failed_unit(console: str) -> str | None:
    for line in console.splitlines():
        if "FAILED" in line and "Failed to start" in line:
            return re.sub(r"\x1b\[[0-9;]*m", "", line).split("Failed to start", 1)[1].strip()
    return None


def _card_node(fleet: Fleet, card: Path, offset: int) -> tuple[Node, str]:
    """The fleet node a card was written for, and the interface its keyfile names."""
    hostname, interface = _card_identity(Ext4(card, offset))
    try:
        node = fleet.node(hostname)
    except FleetimgError:
        raise LabError(f"{card} says it is {hostname!r}, which is not a node of "
                       f"{fleet.name}", hint="write the card with fleetimg sdcard --node NAME "
                       "from this lab's fleet.toml") from None
    for other in booted_cards():
        if other.name == node.name and programs.pid_alive(other.pid):
            raise LabError(f"{node.name} is already booted from {other.card}",
                           hint=f"fleetimg lab boot --stop {node.name}")
    return node, interface


def _plug_in(netns: str, host_end: str, inner: str, interface: str, bridge: str) -> None:
    """A veth pair from the lab's bridge into the card's network namespace, named inside
    as the card's keyfile expects (eth0, or enP8p1s0 on an Orin Nano)."""
    programs.run(["ip", "netns", "add", netns])
    programs.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", inner])
    programs.run(["ip", "link", "set", inner, "netns", netns])
    programs.run(["ip", "-n", netns, "link", "set", inner, "name", interface])
    programs.run(["ip", "-n", netns, "link", "set", "lo", "up"])
    programs.run(["ip", "link", "set", host_end, "master", bridge])
    programs.run(["ip", "link", "set", host_end, "up"])


def boot_card(fleet: Fleet, lab_name: str, card: Path, *, timeout: float = BOOT_TIMEOUT,
              on_step: Callable[[str], None] = lambda s: None) -> BootedCard:
    """Boot `card` on the lab's network; return once it answers SSH at its address."""
    programs.require_tool("systemd-nspawn")
    if not card.is_file():
        raise LabError(f"{card}: no such card image",
                       hint="write one: fleetimg sdcard --node NODE --image BOOTABLE.img CARD")
    offset, size = _app_location(card)
    node, interface = _card_node(fleet, card, offset)
    # Network namespaces and links are one set for the whole machine: named per lab and node,
    # so two labs' node4 (a test run beside the demo's lab) never meet.
    tag = hashlib.sha256(f"{lab_name}/{node.name}".encode()).hexdigest()[:6]
    state_path = _state_file(node.name)
    workdir = state_path.parent
    stop_card(node.name)  # leftovers of a crashed boot
    workdir.mkdir(parents=True, exist_ok=True)
    mountpoint = workdir / "root"
    mountpoint.mkdir(exist_ok=True)
    netns, host_end, inner = f"fleetimg-{lab_name}-{node.name}", f"fb{tag}h", f"fb{tag}c"
    loop = programs.run(["losetup", "-f", "--show", "-o", str(offset), "--sizelimit",
                       str(size), str(card)]).stdout.strip()
    state = BootedCard(node.name, lab_name, str(card), node.address, 0, loop,
                       str(mountpoint), netns, host_end, str(workdir / "console.log"))
    state_path.write_text(json.dumps(asdict(state)))
    try:
        programs.run(["mount", loop, str(mountpoint)])
        _forget_host_key(fleet, node)
        _plug_in(netns, host_end, inner, interface, _bridge(f"fleetimg-{lab_name}"))
        on_step(f"booting {card} as {node.name} ({node.address}) with systemd-nspawn")
        with open(state.console, "wb") as console:
            # CAP_NET_ADMIN: NetworkManager on the card brings its own interface up. The
            # keyring calls: runc (the card's Docker starting a container) makes a session
            # keyring, which nspawn's default seccomp filter refuses.
            proc = programs.spawn(
                ["sh", "-c", _REBOOT_LOOP, "fleetimg-lab-boot",
                 "systemd-nspawn", "-D", str(mountpoint), "--boot", "--register=no",
                 "--keep-unit", f"--machine={node.name}",
                 f"--network-namespace-path=/run/netns/{netns}",
                 "--capability=CAP_NET_ADMIN",
                 "--system-call-filter=add_key keyctl request_key"],
                stdin=None, stdout=console, stderr=console, detach=True)
        state = BootedCard(**{**asdict(state), "pid": proc.pid})
        state_path.write_text(json.dumps(asdict(state)))
        started = time.monotonic()
        if node.dhcp:
            leased = _wait_for_lease(fleet, node, proc.pid, timeout)
            if leased is None:
                raise LabError(f"{node.name} took no DHCP lease within {timeout:.0f} s",
                               hint=f"the card's console is in {state.console}; the lab's "
                               "dnsmasq logs beside its fleet.toml")
            on_step(f"{node.name} leased {leased}")
            state = BootedCard(**{**asdict(state), "address": leased})
            state_path.write_text(json.dumps(asdict(state)))
        if not _wait_for_ssh(state.address, proc.pid,
                             max(5.0, timeout - (time.monotonic() - started))):
            text = Path(state.console).read_text(errors="replace")
            failed = _first_failed_unit(text)
            tail = " / ".join(ln.strip() for ln in text.splitlines()[-4:] if ln.strip())
            raise LabError(
                f"{node.name} did not answer SSH at {state.address} within {timeout:.0f} s"
                + (f"; first failed unit: {failed}" if failed else "")
                + f"; console: {tail}",
                hint=f"the whole console is in {state.console}")
    except BaseException:
        stop_card(node.name)
        raise
    return state


def stop_card(name: str) -> bool:
    """Shut a booted card down and undo its loop device, mount, namespace and link."""
    path = _state_file(name)
    if not path.exists():
        return False
    try:
        state = BootedCard(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink()
        return False
    if state.pid and programs.pid_alive(state.pid):
        # nspawn turns SIGTERM into a clean shutdown of the card's systemd.
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while programs.pid_alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if programs.pid_alive(state.pid):
            # The reboot loop and nspawn share its process group (a session of their own).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.pid, signal.SIGKILL)
    programs.run(["umount", state.mountpoint], check=False)
    programs.run(["losetup", "-d", state.loop], check=False)
    programs.run(["ip", "link", "del", state.veth], check=False)
    programs.run(["ip", "netns", "del", state.netns], check=False)
    path.unlink(missing_ok=True)
    return True
