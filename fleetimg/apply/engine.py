"""`fleetimg apply`: bring running boards to the state the inventory describes.

plan_apply reads every board (in parallel) and compares it with the overlay's parts, the
same description of a node `fleetimg sdcard` writes onto a card; it changes nothing.
execute_apply then changes the boards in two steps:
1. nodes whose network profile changes move first, each with a deadline and a rollback
   on the board (network.py);
2. every node that is where the fleet expects it gets the rest. If a move failed, the
   other nodes' /etc/hosts keep that node at the address it still answers at.
A node that fails is reported; the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleetimg import knownhosts, seen
from fleetimg.apply import board
from fleetimg.apply.network import ROLLBACK_SECONDS, Moved, move
from fleetimg.apply.plan import (
    Change,
    Effect,
    PartPlan,
    effects,
    plan_part,
    reset_changes,
    skipped_concerns,
)
from fleetimg.apply.snapshot import BoardFacts, read_board
from fleetimg.errors import ConnectionFailed, FleetimgError, UsageError
from fleetimg.inventory import Fleet, Node
from fleetimg.l4t import parse_nv_tegra_release
from fleetimg.nodestate.memfs import MemFs
from fleetimg.nodestate.model import NM_KEYFILE, Concern, overlay_parts, read_set
from fleetimg.nodestate.secrets import CardSecrets, card_secrets, persist
from fleetimg.nodestate.spec import ChangeSet
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.remote import sh
from fleetimg.ssh import Ssh

REBOOT_TIMEOUT = 300.0


@dataclass(frozen=True)
class ApplyOptions:
    only: frozenset[Concern] | None = None  # None: every concern
    restart: bool = False  # also the restarts and reboots changes need
    reset_identity: bool = False
    from_address: str | None = None  # where the (single) board answers now
    rollback_seconds: int = ROLLBACK_SECONDS
    parallel: int = 8


@dataclass(frozen=True)
class NodePlan:
    node: Node  # as the inventory describes it
    reached: Node  # where it answered (its address may be the old one)
    facts: BoardFacts
    parts: tuple[PartPlan, ...]
    reset: tuple[Change, ...]
    notes: tuple[str, ...]

    @property
    def changes(self) -> list[Change]:
        return [c for p in self.parts for c in p.changes] + list(self.reset)

    @property
    def earlier(self) -> tuple[Effect, ...]:
        """What an earlier apply left for --restart."""
        known = {e.value: e for e in Effect}
        return tuple(known[v] for v in self.facts.pending if v in known)

    @property
    def work(self) -> bool:
        return bool(self.changes or self.earlier)

    @property
    def moves(self) -> bool:
        """Its NetworkManager profile changes: done first, with a rollback."""
        return any(c.path == NM_KEYFILE for c in self.changes)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.node.name, "address": self.node.address,
                "reached_at": self.reached.address,
                "changes": [c.to_dict() for c in self.changes],
                "effects": [e.value for e in effects(self.changes)],
                "pending_from_earlier": [e.value for e in self.earlier],
                "notes": list(self.notes)}


@dataclass(frozen=True)
class ApplyPlan:
    fleet: Fleet
    options: ApplyOptions
    secrets: CardSecrets
    outcomes: tuple[NodeOutcome[NodePlan], ...]

    @property
    def plans(self) -> list[NodePlan]:
        return [o.value for o in self.outcomes if o.value is not None]


@dataclass(frozen=True)
class NodeApplied:
    plan: NodePlan
    changed: int  # changes made
    done: tuple[Effect, ...]  # effects carried out
    pending: tuple[Effect, ...]  # effects that need --restart
    moved: Moved | None = None

    @property
    def result(self) -> str:
        return "applied" if self.changed else "restarted" if self.done else "no changes"

    def to_dict(self) -> dict[str, object]:
        return {**self.plan.to_dict(), "changed": self.changed,
                "result": self.result,
                "done": [e.value for e in self.done],
                "pending": [e.value for e in self.pending],
                "moved_in_seconds": round(self.moved.seconds, 1) if self.moved else None}


def read_paths(fleet: Fleet) -> tuple[str, ...]:
    """What apply fetches from a board: the model's read set (fleetimg.nodestate.model) and
    the board's release. The user's own private keys in ~/.ssh are not among them."""
    return ("/etc/nv_tegra_release", *read_set(fleet.sdcard))


def _candidates(fleet: Fleet, node: Node, options: ApplyOptions) -> list[Node]:
    """Where to look for the board: --from, else where it last answered, then the
    inventory's address."""
    first = options.from_address or seen.last_address(fleet.name, node.name)
    addresses = list(dict.fromkeys(a for a in (first, node.address) if a))
    return [dataclasses.replace(node, address=a) for a in addresses]


def _reach(ssh: Ssh, fleet: Fleet, node: Node, options: ApplyOptions) -> \
        tuple[Node, BoardFacts, MemFs]:
    last: FleetimgError | None = None
    candidates = _candidates(fleet, node, options)
    for at in candidates:
        try:
            facts, fs = read_board(ssh, at, read_paths(fleet))
        except ConnectionFailed as exc:
            last = exc
            continue
        seen.record(fleet.name, {node.name: at.address})
        return at, facts, fs
    assert last is not None
    if not options.from_address and len(candidates) == 1:
        # Never seen elsewhere: if the inventory holds its future address, say how to reach
        # it where it is.
        raise ConnectionFailed(last.message, hint=f"{last.hint}; if fleet.toml already has "
                               f"{node.name}'s new address, pass --from OLD_ADDRESS (or run "
                               "`fleetimg nodes probe` before editing the address)") from last
    raise last


def _plan_node(fleet: Fleet, node: Node, reached: Node, facts: BoardFacts, fs: MemFs,
               secrets: CardSecrets, options: ApplyOptions) -> NodePlan:
    release = node.l4t
    tegra = fs.read_text("/etc/nv_tegra_release")
    if tegra:
        with contextlib.suppress(UsageError):  # a garbled file: the inventory's release
            release = parse_nv_tegra_release(tegra).release
    parts = overlay_parts(fleet, node, fs, secrets, image_release=release,
                          reset_identity=options.reset_identity, board=True)
    notes = [n for p in parts for n in p.notes]
    skipped = skipped_concerns(facts)
    chosen: list[PartPlan] = []
    for part in parts:
        if options.only is not None and part.concern not in options.only and not (
                part.concern is Concern.IDENTITY and options.reset_identity):
            continue
        if part.concern in skipped:
            notes.append(f"{part.concern.value}: skipped: {skipped[part.concern]}")
            continue
        if part.concern is Concern.NETWORK and not facts.networkmanager:
            part = dataclasses.replace(part, files=tuple(
                f for f in part.files if f.path != NM_KEYFILE))
            notes.append("network: NetworkManager does not run here: the address is not "
                         "managed (hostname and /etc/hosts are)")
        chosen.append(plan_part(part, fs))
    reset = reset_changes() if options.reset_identity else ()
    return NodePlan(node, reached, facts, tuple(chosen), reset, tuple(notes))


def plan_apply(fleet: Fleet, nodes: Sequence[Node], ssh: Ssh, options: ApplyOptions,
               on_done: Callable[[NodeOutcome[NodePlan]], None] | None = None) -> ApplyPlan:
    """Read every selected board and work out what would change; changes nothing."""
    if options.from_address and len(nodes) != 1:
        raise UsageError("--from names where one board answers: select exactly one node",
                         hint="fleetimg apply --to node4 --from 192.168.1.77")
    secrets = card_secrets(fleet, fleet.nodes)

    def one(node: Node) -> NodePlan:
        reached, facts, fs = _reach(ssh, fleet, node, options)
        if facts.network_try_pending:
            raise FleetimgError(f"{node.name}: an earlier network change is still being "
                                "tried on the board", hint="wait for it to be confirmed or "
                                "rolled back (at most a minute), then run apply again")
        return _plan_node(fleet, node, reached, facts, fs, secrets, options)

    outcomes = for_each_node(nodes, one, parallel=options.parallel, on_done=on_done)
    return ApplyPlan(fleet, options, secrets, tuple(outcomes))


def execute_apply(ssh: Ssh, plan: ApplyPlan,
                  on_step: Callable[[str], None] = lambda s: None,
                  on_done: Callable[[NodeOutcome[NodeApplied]], None] | None = None,
                  ) -> list[NodeOutcome[NodeApplied]]:
    """Make the changes `plan` found. Outcomes in the plan's node order; a node that could
    not be read is reported with its reading error."""
    persist(plan.secrets)
    options = plan.options
    plans = {p.node.name: p for p in plan.plans}
    moved, failed = _move_all(ssh, plan, on_step)
    # Where each node really is now: a failed mover stays listed at the address it answers.
    effective = dataclasses.replace(plan.fleet, nodes=tuple(
        dataclasses.replace(n, address=plans[n.name].reached.address)
        if n.name in failed else n for n in plan.fleet.nodes))

    def rest(node: Node) -> NodeApplied:
        if node.name in failed:
            raise failed[node.name]
        p = plans[node.name]
        at = p.node if node.name in moved else p.reached
        if effective != plan.fleet:  # /etc/hosts must list the failed movers where they are
            facts, fs = read_board(ssh, at, read_paths(plan.fleet))
            p = _plan_node(effective, effective.node(node.name), at, facts, fs, plan.secrets,
                           options)
        return _finish(ssh, p, at, moved.get(node.name), options)

    outcomes = {o.node.name: o for o in for_each_node(
        [plan.fleet.node(n) for n in plans], rest, parallel=options.parallel,
        on_done=on_done)}
    return [outcomes.get(o.node.name) or NodeOutcome(o.node, None, o.error, o.seconds)
            for o in plan.outcomes]


def _move_all(ssh: Ssh, plan: ApplyPlan, on_step: Callable[[str], None]) -> \
        tuple[dict[str, Moved], dict[str, FleetimgError]]:
    """Every node whose NetworkManager profile changes, in parallel, each with its deadline:
    the nodes confirmed at their new address, and the errors of those that rolled back."""
    plans = {p.node.name: p for p in plan.plans if p.moves}

    def move_one(node: Node) -> Moved:
        p = plans[node.name]
        network = next(pp for pp in p.parts if pp.concern is Concern.NETWORK)
        return move(ssh, p.reached, p.node, network.writes, p.facts,
                    seconds=plan.options.rollback_seconds, on_step=on_step)

    moved: dict[str, Moved] = {}
    failed: dict[str, FleetimgError] = {}
    for o in for_each_node([p.node for p in plans.values()], move_one,
                           parallel=plan.options.parallel):
        if o.value is not None:
            moved[o.node.name] = o.value
            seen.record(plan.fleet.name, {o.node.name: o.value.address})
        elif o.error is not None:
            failed[o.node.name] = o.error
    return moved, failed


def _finish(ssh: Ssh, p: NodePlan, at: Node, moved: Moved | None,
            options: ApplyOptions) -> NodeApplied:
    """Everything but the network move: files, identity reset, then the effects."""
    writes = [pp.writes for pp in p.parts if not (moved and pp.concern is Concern.NETWORK)]
    merged = ChangeSet.merge(writes)
    steps = board.write_steps(merged)
    wanted = effects(c for c in p.changes if not (moved and c.concern is Concern.NETWORK))
    done: list[Effect] = []
    if Effect.HOSTNAME in wanted:
        steps.append(sh("hostname", p.node.name) + " 2>/dev/null || true")
        done.append(Effect.HOSTNAME)
    if p.reset:
        steps += ["reset_identity", "restart_ssh"]
        done.append(Effect.SSH)
    pending = list(dict.fromkeys([*(e for e in wanted if not e.now), *p.earlier]))
    # Restarts need systemd; a node without it (a lab container) keeps them pending.
    restart = options.restart and p.facts.systemd and bool(pending)
    if pending and not restart:
        steps.append(sh("note_pending", *(e.value for e in pending)))
    if steps:
        board.run_steps(ssh, at, steps, merged.files)
    if p.reset:
        _pin_new_host_keys(ssh, at)
    if restart:
        _restart(ssh, at, pending)
        done += pending
        pending = []
    if moved:
        done.insert(0, Effect.RECONNECT)
    return NodeApplied(p, len(p.changes), tuple(done), tuple(pending), moved)


def _pin_new_host_keys(ssh: Ssh, at: Node) -> None:
    """Read the new host keys over the connection already verified, then trust only them."""
    out = ssh.run(at, "cat /etc/ssh/ssh_host_*_key.pub", timeout=30).stdout
    keys = [ln for ln in out.splitlines() if len(ln.split()) >= 2]
    if not keys:
        raise FleetimgError(f"{at.name}: no SSH host keys after the reset",
                            hint="look at the board: ssh-keygen -A should have made them")
    host, port = at.known_as
    knownhosts.pin(ssh.options.known_hosts, host, keys, port)
    ssh.disconnect(at)


def _restart(ssh: Ssh, at: Node, pending: list[Effect]) -> None:
    steps = ["clear_pending"]
    if Effect.DOCKER in pending:
        steps.append("restart_unit docker")
    if Effect.K3S in pending:
        steps.append("restart_unit k3s k3s-agent")
    if Effect.SETTINGS in pending:
        steps.append("settings_now")
    if Effect.ZRAM in pending:
        steps.append("systemctl stop nvzramconfig 2>/dev/null || true")
    board.run_steps(ssh, at, steps)
    if Effect.REBOOT in pending:
        _reboot(ssh, at)


def _reboot(ssh: Ssh, at: Node) -> None:
    """Reboot and wait until the board answers with a new boot ID."""
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    before = ssh.run(at, boot_id, timeout=30).stdout.strip()
    # From a unit of its own, so this SSH command returns before the board goes down.
    board.run_steps(ssh, at, ["systemd-run --quiet --on-active=2 systemctl reboot"])
    ssh.disconnect(at)
    deadline = time.monotonic() + REBOOT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if ssh.run(at, boot_id, timeout=15).stdout.strip() not in ("", before):
                return
        except FleetimgError:
            ssh.disconnect(at)
        time.sleep(2)
    raise FleetimgError(f"{at.name}: did not come back from its reboot within "
                        f"{REBOOT_TIMEOUT:.0f} s", hint=f"look at the board; then "
                        f"`fleetimg nodes probe --to {at.name}`")
