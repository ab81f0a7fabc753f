"""A board's network change with a deadline: confirmed from the new address, or undone by
the board itself.

The board keeps its old network files, arms a systemd timer that restores them and
reactivates the old connection, then activates the new profile (data/apply-write.sh,
`net_try`). The workstation reconnects at the new address, trusting only the host key it
verified at the old one, and confirms, which stops the timer. If it cannot, the timer fires
on the board: no board is left unreachable, and fleetimg waits to see it back at its old
address to say so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetimg import knownhosts, stop
from fleetimg.apply.board import run_steps
from fleetimg.apply.snapshot import BoardFacts
from fleetimg.errors import FleetimgError, HostKeyChanged
from fleetimg.inventory import Node
from fleetimg.nodestate.model import NM_KEYFILE, keyfile_uuid
from fleetimg.nodestate.spec import ChangeSet
from fleetimg.remote import sh
from fleetimg.ssh import Ssh

ROLLBACK_SECONDS = 30
# The board's own paths a network change touches; all are kept for the rollback.
NETWORK_PATHS = ("/etc/hostname", "/etc/hosts", NM_KEYFILE)
POLL_CONNECT_TIMEOUT = 3
# How long after the rollback fires the board gets to answer at its old address again.
ROLLBACK_GRACE = 30


class NetworkRolledBack(FleetimgError):
    """The board could not be reached at its new address and undid the change itself."""


@dataclass(frozen=True)
class Moved:
    address: str
    seconds: float  # from activation to confirmation


def _poller(ssh: Ssh) -> Ssh:
    """Short connection attempts: a board coming up at its new address answers within a few
    seconds of its address being set."""
    return Ssh(dataclasses.replace(ssh.options, connect_timeout=POLL_CONNECT_TIMEOUT,
                                   persist_seconds=30))


def move(ssh: Ssh, at: Node, to: Node, writes: ChangeSet, facts: BoardFacts, *,
         seconds: int = ROLLBACK_SECONDS,
         on_step: Callable[[str], None] = lambda s: None) -> Moved:
    """Install the network files in `writes` on the board reached as `at`, activate them,
    and confirm from `to` (the node at its inventory address) within `seconds`."""
    keyfile = next(f for f in writes.files if f.path == NM_KEYFILE)
    new_uuid = keyfile_uuid(keyfile.content.decode())
    if new_uuid is None:
        raise FleetimgError("internal: the NetworkManager keyfile has no uuid")
    device = to.module.ethernet
    old_uuid = facts.active.get(device, "")
    if to.dhcp and not at.dhcp:
        # The confirmation comes from the new address, and a lease not yet given has none.
        raise FleetimgError(
            f"{to.name}: apply does not move a running board from a static address to DHCP",
            hint="write its card with `fleetimg sdcard`, or keep its static address in "
            "fleet.toml")
    kh = ssh.options.known_hosts
    if to.known_as != at.known_as:
        keys = knownhosts.keys_for(kh, *at.known_as)
        if not keys:
            raise FleetimgError(f"{to.name}: no host key recorded for {at.address}",
                                hint="run `fleetimg nodes probe` first")
        host, port = to.known_as
        knownhosts.pin(kh, host, keys, port)
    run_steps(ssh, at, [sh("net_try", seconds, device, new_uuid, old_uuid, *NETWORK_PATHS)],
              writes.files)
    start = time.monotonic()
    on_step(f"network change active on {to.name}; confirming from {to.address} "
            f"(rolled back in {seconds} s otherwise)")
    ssh.disconnect(at)
    poll = _poller(ssh)
    last: FleetimgError | None = None
    # Leave the board a margin to receive the confirmation before its timer fires.
    while time.monotonic() - start < seconds - 5:
        stop.check()
        try:
            run_steps(poll, to, ["net_confirm"], timeout=15)
            return Moved(to.address, time.monotonic() - start)
        except HostKeyChanged:
            raise  # someone else answers at the new address: never confirm there
        except FleetimgError as exc:  # not answering yet, or the confirmation failed
            last = exc
            poll.disconnect(to)
            time.sleep(1)
    poll.disconnect(to)
    raise _rolled_back(poll, at, to, seconds, start, last)


def _rolled_back(poll: Ssh, at: Node, to: Node, seconds: int, start: float,
                 last: FleetimgError | None) -> FleetimgError:
    why = f" ({last.message})" if last else ""
    while time.monotonic() - start < seconds + ROLLBACK_GRACE:
        stop.check()
        try:
            poll.run(at, "true", timeout=10)
        except FleetimgError:
            poll.disconnect(at)
            time.sleep(1)
            continue
        return NetworkRolledBack(
            f"{to.name}: not reachable at {to.address} within {seconds} s{why}; the board "
            f"rolled back by itself and answers at {at.address} again",
            hint=f"check {to.name}'s address, the subnet and gateway in fleet.toml: this "
            f"machine must reach {to.address}")
    return NetworkRolledBack(
        f"{to.name}: not reachable at {to.address} within {seconds} s{why}, and not back at "
        f"{at.address} {ROLLBACK_GRACE} s after its rollback was due",
        hint="the board's rollback timer restores its old network files; if it still does "
        "not answer, look at its console (journalctl -t fleetimg-apply)")
