"""Relay fan-out planning: shapes, grouping by identical stream, the node-side table, and
what relay.sh reports (captured from lab nodes)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from fleetimg.errors import UsageError
from fleetimg.inventory import Fleet, Runtime, parse
from fleetimg.push.engine import why_missing
from fleetimg.push.plan import CODECS, Action, CodecName, NodePlan
from fleetimg.push.relay import (
    Fanout,
    FanoutMode,
    RelayAuth,
    RelayGroup,
    build_table,
    depth,
    group_plans,
    parse_edges,
    parse_reports,
    remote_command,
    resolve,
    topology,
)
from fleetimg.push.transfer import ImageSource, StreamOutcome
from tests.conftest import DATA


def fleet(n: int) -> Fleet:
    nodes = [{"name": f"node{i}", "address": f"10.0.0.{10 + i}", "module": "nano-4gb"}
             for i in range(1, n + 1)]
    return parse({"fleet": {"subnet": "10.0.0.0/24"}, "nodes": nodes}, base_dir=Path("/tmp"))


def send(f: Fleet, name: str, have: int = 0, codec: CodecName = CodecName.ZSTD,
         docker: str = "docker") -> NodePlan:
    return NodePlan(f.node(name), Action.SEND, "", have_layers=have, send_layers=3 - have,
                    codec=CODECS[codec], docker=docker)


def outcome(*, rc: int, output: str, broken: bool = False) -> StreamOutcome:
    return StreamOutcome(sent=100, raw=200, read=200, source=ImageSource.LAYER_STORE, rc=rc,
                         broken=broken, output=output, failure=None)


@pytest.mark.parametrize(("text", "mode", "degree"), [
    ("auto", "auto", 2), ("direct", "direct", 2), ("chain", "chain", 1), ("tree", "tree", 2),
    ("tree:3", "tree", 3), ("TREE:16", "tree", 16),
])
def test_fanout_parses(text: str, mode: str, degree: int) -> None:
    fanout = Fanout.parse(text)
    assert (fanout.mode, fanout.degree) == (mode, degree)


@pytest.mark.parametrize("text", ["star", "tree:1", "tree:17", "tree:x", "chain:2", ""])
def test_bad_fanout_names_the_choices(text: str) -> None:
    with pytest.raises(UsageError) as info:
        Fanout.parse(text)
    assert "tree:K" in (info.value.hint or "")


def test_auto_relays_only_with_a_chosen_login_and_two_nodes() -> None:
    auto = Fanout.parse("auto")
    assert resolve(auto, 1, RelayAuth.INTERNAL_KEY) == (Fanout("direct"), "")
    assert resolve(auto, 2, RelayAuth.AGENT)[0] == Fanout("chain", 1)
    chosen, why = resolve(auto, 8, None)
    assert chosen.mode == "direct" and "relay_auth" in why


def test_explicit_relay_without_login_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as info:
        resolve(Fanout.parse("tree:2"), 5, None)
    assert "--relay-auth" in (info.value.hint or "")
    assert resolve(Fanout.parse("direct"), 5, None)[0].mode == "direct"


def test_chain_and_tree_shapes() -> None:
    names = [f"n{i}" for i in range(1, 8)]
    chain = topology(names, Fanout("chain", 1))
    assert chain == {"n1": None, "n2": "n1", "n3": "n2", "n4": "n3", "n5": "n4", "n6": "n5",
                     "n7": "n6"}
    assert depth(chain, "n7") == 6
    tree = topology(names, Fanout("tree", 2))
    assert tree == {"n1": None, "n2": "n1", "n3": "n1", "n4": "n2", "n5": "n2", "n6": "n3",
                    "n7": "n3"}
    assert max(depth(tree, n) for n in names) == 2
    tree3 = topology(names, Fanout("tree", 3))
    assert [tree3[n] for n in names] == [None, "n1", "n1", "n1", "n2", "n2", "n2"]
    assert topology(names, Fanout("direct")) == dict.fromkeys(names)


def test_groups_hold_only_nodes_that_get_the_same_bytes() -> None:
    f = fleet(6)
    plans = [send(f, "node1", have=1), send(f, "node2", have=2), send(f, "node3", have=1),
             send(f, "node4", have=1, codec=CodecName.PIGZ),
             NodePlan(f.node("node5"), Action.SKIP, "has it"),
             send(f, "node6", have=1, docker="sudo -n docker")]
    groups = group_plans(plans)
    assert [[p.node.name for p in g] for g in groups] == [
        ["node1", "node3", "node6"], ["node2"], ["node4"]]


def test_k3s_nodes_relay_only_among_themselves() -> None:
    f = fleet(3)
    k3s = NodePlan(dataclasses.replace(f.node("node3"), runtime=Runtime.K3S), Action.SEND, "",
                   codec=CODECS[CodecName.ZSTD])
    groups = group_plans([send(f, "node1"), send(f, "node2"), k3s])
    assert [[p.node.name for p in g] for g in groups] == [["node1", "node2"], ["node3"]]


def test_table_carries_login_host_keys_and_each_nodes_load_command() -> None:
    f = fleet(3)
    plans = [send(f, "node1"), send(f, "node2", docker="sudo -n docker"), send(f, "node3")]
    parents = topology(["node1", "node2", "node3"], Fanout("chain", 1))
    table = base64.b64decode(build_table(plans, parents, RelayAuth.INTERNAL_KEY,
                                         ["10.0.0.12 ssh-ed25519 AAAAkey"])).decode()
    rows = table.splitlines()
    assert rows[0] == "A key ~/.ssh/id_ed25519"
    assert rows[1] == "K 10.0.0.12 ssh-ed25519 AAAAkey"
    n2 = rows[3].split()
    assert n2[:5] == ["N", "node2", "node1", "jetson@10.0.0.12", "22"]
    assert base64.b64decode(n2[5]).decode() == "zstd -dc | sudo -n docker load -q"
    assert rows[2].split()[2] == "-"
    agent = base64.b64decode(build_table(plans, parents, RelayAuth.AGENT, [])).decode()
    assert agent.splitlines()[0] == "A agent"
    # A node that has the image already re-feeds others without loading it again.
    source = base64.b64decode(build_table(plans, parents, RelayAuth.INTERNAL_KEY, [],
                                          loads={"node1": "cat > /dev/null"})).decode()
    n1 = source.splitlines()[1].split()
    assert base64.b64decode(n1[5]).decode() == "cat > /dev/null"


def test_remote_command_needs_no_nested_quoting() -> None:
    f = fleet(3)
    plans = [send(f, n) for n in ("node1", "node2", "node3")]
    table = build_table(plans, topology(["node1", "node2", "node3"], Fanout("chain", 1)),
                        RelayAuth.INTERNAL_KEY, [])
    cmd = remote_command("node2", table)
    assert cmd.startswith('bash -c "$(echo ') and cmd.endswith(f" node2 {cmd.split()[-2]} {table}")
    assert "'" not in cmd
    assert remote_command("node2", table, check=True).startswith("FLEETIMG_RELAY_CHECK=1 ")


def test_reports_from_a_relay_name_each_hop() -> None:
    reports = parse_reports((DATA / "relay-output.txt").read_text())
    assert reports == {
        "node2": (1, "Error processing tar file(exit status 1): archive/tar: invalid tar header"),
        "node3": (255, "ssh: connect to host 172.29.220.13 port 2: Connection refused"),
    }
    edges = parse_edges((DATA / "relay-check.txt").read_text())
    assert edges == {"node2": None,
                     "node3": "ssh: connect to host 172.29.220.13 port 2: Connection refused"}


def test_why_a_node_was_missed_points_at_the_break() -> None:
    f = fleet(5)
    names = ["node1", "node2", "node3", "node4", "node5"]
    plans = tuple(send(f, n) for n in names)
    group = RelayGroup(plans, topology(names, Fanout("chain", 1)), "")
    assert group.describe() == "workstation -> node1 -> node2 -> node3 -> node4 -> node5"
    assert group.below("node3") == ["node4", "node5"]
    out = outcome(rc=0, output="fleetimg-relay: node3 exit 255 Broken pipe\n")
    reports = parse_reports(out.output)
    missing = {"node3", "node4", "node5"}
    assert why_missing(group, "node3", missing, out, reports) == \
        "relay node2 -> node3 ended with exit 255 (Broken pipe)"
    assert why_missing(group, "node5", missing, out, reports) == \
        "cut off: the stream broke at node3, above it in the relay"
    lost = outcome(rc=255, broken=True, output="client_loop: send disconnect\n")
    assert why_missing(group, "node1", set(names), lost, {}) == \
        "stream from the workstation ended with exit 255 (client_loop: send disconnect)"
    # A watchdog's cut, by a relay or by the workstation, is named as such.
    cut = outcome(rc=0, output="fleetimg-relay: node4 cut off by node3: took nothing for 8 s\n"
                  "fleetimg-relay: node4 exit 143\n")
    assert why_missing(group, "node4", {"node4", "node5"}, cut, parse_reports(cut.output)) == \
        "cut off by node3: took nothing for 8 s"
    tree = RelayGroup(plans, topology(names, Fanout("tree", 2)), "")
    assert tree.describe() == "workstation -> node1 -> (node2 -> (node4, node5), node3)"
    assert why_missing(tree, "node3", {"node3"}, out, {}) == "no report from its relay node1"


def test_the_relay_tree_is_drawn_for_the_dry_run() -> None:
    names = [f"node{i}" for i in range(1, 9)]
    plans = tuple(send(fleet(8), n) for n in names)
    chain = RelayGroup(plans, topology(names, Fanout("chain", 1)), "")
    assert chain.tree_lines(width=4) == [
        "workstation -> node1 -> node2 -> node3 -> node4",
        "    -> node5 -> node6 -> node7 -> node8"]
    tree = RelayGroup(plans, topology(names, Fanout("tree", 2)), "")
    assert tree.tree_lines() == [
        "workstation -> node1",
        "  +- node2",
        "  |  +- node4 -> node8",
        "  |  `- node5",
        "  `- node3",
        "     +- node6",
        "     `- node7"]


def test_an_unknown_fanout_mode_never_becomes_a_tree() -> None:
    # It once did: every mode that was not direct or chain was laid out as a tree.
    with pytest.raises(ValueError):
        Fanout("bogus")
    assert Fanout("chain", 1).mode is FanoutMode.CHAIN
