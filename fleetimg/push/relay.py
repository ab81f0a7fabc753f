"""Relay fan-out: the workstation streams an image to one node, which loads it and passes the
same compressed bytes on to further nodes over SSH (a chain, or a tree of degree K).

The workstation's uplink then carries one copy whatever the fleet size. Relays are only a
transport: afterwards the workstation checks every node itself by image ID before naming the
image, and re-feeds directly any node whose stream broke (a dead relay cuts off everything
below it), so a failed relay costs time, never a wrong or partial tag.

Nodes relay only to nodes that lack exactly the same layers and use the same codec and
runtime (the stream is byte-identical); anyone else is sent to directly.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cache
from importlib import resources
from pathlib import Path

from fleetimg import knownhosts, programs
from fleetimg.errors import FleetimgError, UsageError
from fleetimg.inventory import Node, RelayAuth
from fleetimg.parallel import for_each_node
from fleetimg.push.plan import Action, NodePlan
from fleetimg.push.transfer import load_command
from fleetimg.ssh import Ssh

# Where `fleetimg sdcard` ([sdcard] internal_ssh_key) and `fleetimg lab up` put the
# fleet-internal private key on every node.
NODE_KEY_PATH = "~/.ssh/id_ed25519"
# Relaying to a single node saves nothing; from two nodes on, the uplink carries one copy
# instead of N.
AUTO_MIN_NODES = 2


class FanoutMode(str, Enum):
    """How a push reaches the nodes."""

    AUTO = "auto"  # chain when two or more nodes can relay, else direct
    DIRECT = "direct"  # every node from the workstation
    CHAIN = "chain"  # the workstation feeds one node, each node the next
    TREE = "tree"  # each node feeds `degree` others


@dataclass(frozen=True)
class Fanout:
    mode: FanoutMode
    degree: int = 2  # children per node in a tree

    def __post_init__(self) -> None:
        # A plain string from a caller becomes the enum here, or fails: an unknown mode never
        # silently becomes a tree.
        object.__setattr__(self, "mode", FanoutMode(self.mode))

    @classmethod
    def parse(cls, text: str) -> Fanout:
        name, _, degree = text.strip().lower().partition(":")
        mode = next((m for m in FanoutMode if m.value == name), None)
        if mode in (FanoutMode.AUTO, FanoutMode.DIRECT, FanoutMode.CHAIN) and not degree:
            return cls(mode, 1 if mode is FanoutMode.CHAIN else 2)
        if mode is FanoutMode.TREE:
            if not degree:
                return cls(FanoutMode.TREE, 2)
            if degree.isdigit() and 2 <= int(degree) <= 16:
                return cls(FanoutMode.TREE, int(degree))
        raise UsageError(f"--fanout {text!r} is not a fan-out",
                         hint="use direct, chain, tree or tree:K (K = 2..16 children per node)")

    def __str__(self) -> str:
        return f"tree:{self.degree}" if self.mode is FanoutMode.TREE else self.mode.value


def check_auth(fanout: Fanout, auth: RelayAuth | None) -> None:
    """An explicit relay needs an explicit way for nodes to log in to each other."""
    if fanout.mode in (FanoutMode.CHAIN, FanoutMode.TREE) and auth is None:
        raise UsageError(
            f"--fanout {fanout} needs node-to-node SSH, and no way to log in was chosen",
            hint="pass --relay-auth internal-key (the fleet-internal key on every node, "
            "[sdcard] internal_ssh_key) or --relay-auth agent (forward your ssh-agent), "
            "or set relay_auth in [fleet]")


def resolve(fanout: Fanout, relayable: int, auth: RelayAuth | None) -> tuple[Fanout, str]:
    """The fan-out to use and, when it is not what was asked, why."""
    check_auth(fanout, auth)
    if fanout.mode is FanoutMode.DIRECT:
        return fanout, ""
    if fanout.mode is FanoutMode.AUTO:
        if relayable < AUTO_MIN_NODES:
            return Fanout(FanoutMode.DIRECT), ""
        if auth is None:
            return Fanout(FanoutMode.DIRECT), (
                "sending to every node from here: relays need node-to-node SSH; set "
                "relay_auth in [fleet] or pass --relay-auth internal-key|agent")
        # A chain lets every node receive at its full link rate; a tree of degree K splits
        # each relay's uplink K ways. Trees only pay off where links are uneven.
        return Fanout(FanoutMode.CHAIN, 1), ""
    return fanout, ""


def topology(names: Sequence[str], fanout: Fanout) -> dict[str, str | None]:
    """Each node's parent (None: the workstation), in breadth-first order of `names`."""
    if fanout.mode is FanoutMode.DIRECT:
        return dict.fromkeys(names)
    parents: dict[str, str | None] = {}
    for i, name in enumerate(names):
        if i == 0:
            parents[name] = None
        elif fanout.mode is FanoutMode.CHAIN:
            parents[name] = names[i - 1]
        else:
            parents[name] = names[(i - 1) // fanout.degree]
    return parents


def depth(parents: Mapping[str, str | None], name: str) -> int:
    hops = 0
    parent = parents[name]
    while parent is not None:
        hops += 1
        parent = parents[parent]
    return hops


def relay_key(plan: NodePlan) -> tuple[str, int, str] | None:
    """Nodes with equal keys receive byte-identical streams; None: not sent to at all."""
    if plan.action is not Action.SEND or plan.codec is None:
        return None
    # k3s streams carry the real name (Docker's a temporary one): never shared across runtimes.
    return plan.node.runtime.value, plan.have_layers, plan.codec.name


def group_plans(plans: Sequence[NodePlan]) -> list[list[NodePlan]]:
    """Sendable plans grouped by identical stream, in inventory order."""
    groups: dict[tuple[str, int, str], list[NodePlan]] = {}
    for plan in plans:
        key = relay_key(plan)
        if key is not None:
            groups.setdefault(key, []).append(plan)
    return list(groups.values())


@dataclass(frozen=True)
class RelayGroup:
    members: tuple[NodePlan, ...]
    parents: Mapping[str, str | None]
    table: str  # base64 of the table relay.sh reads

    @property
    def root(self) -> NodePlan:
        return next(p for p in self.members if self.parents[p.node.name] is None)

    def plan(self, name: str) -> NodePlan:
        return next(p for p in self.members if p.node.name == name)

    def children(self, name: str) -> list[str]:
        return [n for n, parent in self.parents.items() if parent == name]

    def below(self, name: str) -> list[str]:
        """Every node whose stream passes through `name`."""
        out: list[str] = []
        todo = self.children(name)
        while todo:
            child = todo.pop(0)
            out.append(child)
            todo += self.children(child)
        return out

    def tree_lines(self, width: int = 6) -> list[str]:
        """The relay tree drawn as text: a node feeding one other continues its line
        (`node1 -> node2`, wrapped every `width` nodes), one feeding several branches."""
        lines: list[str] = []

        def run_from(name: str) -> list[str]:
            run = [name]
            while len(kids := self.children(run[-1])) == 1:
                run.append(kids[0])
            return run

        def draw(name: str, lead: str, rest: str) -> None:
            run = run_from(name)
            chunks = [run[i:i + width] for i in range(0, len(run), width)]
            lines.append(lead + " -> ".join(chunks[0]))
            lines.extend(f"{rest}  -> " + " -> ".join(c) for c in chunks[1:])
            kids = self.children(run[-1])
            for i, kid in enumerate(kids):
                last = i == len(kids) - 1
                draw(kid, rest + ("`- " if last else "+- "), rest + ("   " if last else "|  "))

        draw(self.root.node.name, "workstation -> ", "  ")
        return lines

    def describe(self) -> str:
        def branch(name: str) -> str:
            kids = self.children(name)
            if not kids:
                return name
            if len(kids) == 1:
                return f"{name} -> {branch(kids[0])}"
            return f"{name} -> ({', '.join(branch(k) for k in kids)})"
        return "workstation -> " + branch(self.root.node.name)


@cache
def _script_b64() -> str:
    text = resources.files("fleetimg").joinpath("data/relay.sh").read_text()
    return base64.b64encode(text.encode()).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def known_host_lines(known_hosts: Path, nodes: Sequence[Node]) -> list[str]:
    """The workstation's verified host keys for these nodes, for the relays' strict check."""
    lines = []
    for node in nodes:
        if node.dhcp:
            # Kept under the node's name (HostKeyAlias); a relay connects to its address.
            at = knownhosts.host_pattern(node.address, node.port)
            lines += [f"{at} {key}" for key in knownhosts.keys_for(known_hosts,
                                                                     *node.known_as)]
        else:
            lines += knownhosts.entries(known_hosts, node.address, node.port)
    return lines


def build_table(members: Sequence[NodePlan], parents: Mapping[str, str | None],
                auth: RelayAuth, host_lines: Sequence[str],
                loads: Mapping[str, str] | None = None) -> str:
    """`loads`: a node's own command instead of its load (a source node that has the image
    already relays without loading)."""
    rows = [f"A key {NODE_KEY_PATH}" if auth is RelayAuth.INTERNAL_KEY else "A agent"]
    rows += [f"K {line}" for line in host_lines]
    for plan in members:
        node = plan.node
        parent = parents[node.name] or "-"
        load = (loads or {}).get(node.name) or load_command(plan)
        rows.append(f"N {node.name} {parent} {node.user}@{node.address} {node.port} "
                    f"{_b64(load)}")
    return _b64("\n".join(rows) + "\n")


def remote_command(name: str, table: str, *, check: bool = False) -> str:
    script = _script_b64()
    env = "FLEETIMG_RELAY_CHECK=1 " if check else ""
    # Only base64 and node names (validated labels) appear: nothing needs nested quoting.
    return (f'{env}bash -c "$(echo {script} | base64 -d)" fleetimg-relay '
            f"{shlex.quote(name)} {script} {table}")


_REPORT = re.compile(r"^fleetimg-relay: (\S+) exit (\d+) ?(.*)$")
_EDGE = re.compile(r"^fleetimg-relay: edge (\S+) (ok|failed)(?:: (.*))?$")
_CUT = re.compile(r"^fleetimg-relay: (\S+) cut off (by .*)$")


def parse_reports(output: str) -> dict[str, tuple[int, str]]:
    """Per-hop results printed by relay.sh: node -> (exit status of its ssh, last line)."""
    reports: dict[str, tuple[int, str]] = {}
    for line in output.splitlines():
        m = _REPORT.match(line.strip())
        if m:
            reports[m.group(1)] = (int(m.group(2)), m.group(3).strip())
    return reports


def parse_cuts(output: str) -> dict[str, str]:
    """Nodes a watchdog cut off (relay.sh, or the workstation's) and why."""
    cuts: dict[str, str] = {}
    for line in output.splitlines():
        m = _CUT.match(line.strip())
        if m:
            cuts[m.group(1)] = m.group(2).strip()
    return cuts


def parse_edges(output: str) -> dict[str, str | None]:
    """relay.sh's check mode: child -> None when it can log in, else the ssh error."""
    edges: dict[str, str | None] = {}
    for line in output.splitlines():
        m = _EDGE.match(line.strip())
        if m:
            edges[m.group(1)] = None if m.group(2) == "ok" else (m.group(3) or "ssh failed")
    return edges


def check_edges(ssh: Ssh, group: RelayGroup, parallel: int) -> list[str]:
    """Can every relay log in to its children? One `ssh child true` per edge, nothing sent.
    Returns the problems, each naming both ends."""
    relays = [p.node for p in group.members if group.children(p.node.name)]
    outcomes = for_each_node(
        relays, lambda n: ssh.run(n, remote_command(n.name, group.table, check=True),
                                  timeout=60, check=False),
        parallel=parallel)
    problems: list[str] = []
    for outcome in outcomes:
        if outcome.value is None:
            problems.append(f"{outcome.node.name}: {outcome.error}")
            continue
        edges = parse_edges(outcome.value.stdout)
        for child, failure in edges.items():
            if failure is not None:
                problems.append(f"{outcome.node.name} -> {child}: {failure}")
        for child in group.children(outcome.node.name):
            if child not in edges:
                tail = (outcome.value.stderr.strip().splitlines() or ["no answer"])[-1]
                problems.append(f"{outcome.node.name} -> {child}: relay check failed ({tail})")
    return problems


def arrange(ssh: Ssh, plans: Sequence[NodePlan], fanout: Fanout, auth: RelayAuth | None,
            parallel: int) -> tuple[list[RelayGroup], list[NodePlan], list[str]]:
    """Split sendable plans into relay groups and direct sends; notes say what changed."""
    notes: list[str] = []
    groups: list[RelayGroup] = []
    direct: list[NodePlan] = [p for p in plans if relay_key(p) is None]
    for members in group_plans(plans):
        chosen, why = resolve(fanout, len(members), auth)
        if why and why not in notes:
            notes.append(why)
        if chosen.mode is FanoutMode.DIRECT or len(members) < 2:
            direct += members
            continue
        assert auth is not None
        parents = topology([p.node.name for p in members], chosen)
        table = build_table(members, parents, auth,
                            known_host_lines(ssh.options.known_hosts,
                                             [p.node for p in members]))
        group = RelayGroup(tuple(members), parents, table)
        try:
            problems = check_edges(ssh, group, parallel)
        except FleetimgError as exc:
            problems = [exc.message]
        if problems:
            fix = (f"each node needs the fleet-internal key at {NODE_KEY_PATH} ([sdcard] "
                   "internal_ssh_key = true)" if auth is RelayAuth.INTERNAL_KEY else
                   "the forwarded agent must hold a key every node accepts")
            notes.append("relay off for " + ", ".join(p.node.name for p in members) +
                         ": node-to-node SSH failed (" + "; ".join(problems[:3]) +
                         f"); sending to each from here. {fix}")
            direct += members
            continue
        groups.append(group)
    order = {p.node.name: i for i, p in enumerate(plans)}
    direct.sort(key=lambda p: order[p.node.name])
    return groups, direct, notes


def require_agent() -> None:
    """--relay-auth agent forwards the workstation's ssh-agent: it must hold a key."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        raise UsageError("--relay-auth agent but no ssh-agent is running (SSH_AUTH_SOCK unset)",
                         hint="eval $(ssh-agent) && ssh-add KEY, or use --relay-auth "
                         "internal-key")
    if programs.run(["ssh-add", "-l"], check=False).returncode != 0:
        raise UsageError("--relay-auth agent but the ssh-agent holds no key",
                         hint="ssh-add the key the boards accept")
