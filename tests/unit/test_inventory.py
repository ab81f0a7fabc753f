from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetimg import inventory
from fleetimg.errors import InventoryError, UsageError
from fleetimg.inventory import Role, Runtime
from fleetimg.l4t import L4TRelease

GOOD = """
[fleet]
name = "lab"
user = "jetson"
subnet = "192.168.10.0/24"
gateway = "192.168.10.1"
dns = ["192.168.10.1", "1.1.1.1"]
l4t = "R32.7.1"
runtime = "docker"

[[nodes]]
name = "node1"
address = "192.168.10.11"
role = "master"
module = "nano-4gb"
groups = ["nfs"]

[[nodes]]
name = "node2"
address = "192.168.10.12"
role = "worker"
module = "nano-2gb"
l4t = "R32.6.1"
runtime = "k3s"
user = "ubuntu"
port = 2222

[[nodes]]
name = "node3"
address = "192.168.10.13"
module = "xavier-nx"
groups = ["nfs", "gpu-big"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str) -> inventory.Fleet:
    return inventory.load(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(InventoryError) as info:
        load_text(tmp_path, text)
    return info.value.message


def test_good_inventory_resolves_defaults_and_overrides(tmp_path: Path) -> None:
    fleet = load_text(tmp_path, GOOD)
    assert fleet.name == "lab"
    assert [n.name for n in fleet.nodes] == ["node1", "node2", "node3"]
    n1, n2, n3 = fleet.nodes
    assert n1.role is Role.MASTER and n1.user == "jetson" and n1.port == 22
    assert n1.l4t == L4TRelease(32, 7, 1) and n1.runtime is Runtime.DOCKER
    assert n2.l4t == L4TRelease(32, 6, 1) and n2.runtime is Runtime.K3S
    assert n2.user == "ubuntu" and n2.port == 2222
    assert n3.role is Role.WORKER  # default role
    assert n3.module.compute_capability == "7.2"
    assert fleet.dns == ("192.168.10.1", "1.1.1.1")
    assert fleet.groups == {"nfs": ("node1", "node3"), "gpu-big": ("node3",)}


def test_nodes_are_frozen(tmp_path: Path) -> None:
    node = load_text(tmp_path, GOOD).nodes[0]
    with pytest.raises(AttributeError):
        node.address = "10.0.0.1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("all-nodes", ["node1", "node2", "node3"]),
        ("masters", ["node1"]),
        ("workers", ["node2", "node3"]),
        ("node3,node1", ["node1", "node3"]),
        ("nfs", ["node1", "node3"]),
        ("masters, gpu-big", ["node1", "node3"]),
        ("node2,workers", ["node2", "node3"]),
    ],
)
def test_selection(tmp_path: Path, selection: str, expected: list[str]) -> None:
    fleet = load_text(tmp_path, GOOD)
    assert [n.name for n in fleet.select(selection)] == expected


@pytest.mark.parametrize("selection", ["node9", "all", "node1,,node2", "", "gpu"])
def test_selection_errors(tmp_path: Path, selection: str) -> None:
    fleet = load_text(tmp_path, GOOD)
    with pytest.raises(UsageError) as info:
        fleet.select(selection)
    assert info.value.exit_code == 2
    assert info.value.hint


def test_unknown_selection_names_the_term_and_lists_groups(tmp_path: Path) -> None:
    fleet = load_text(tmp_path, GOOD)
    with pytest.raises(UsageError) as info:
        fleet.select("node1,gpus")
    assert "'gpus'" in info.value.message
    assert info.value.hint is not None and "all-nodes" in info.value.hint and "nfs" in info.value.hint


def replace(old: str, new: str, text: str = GOOD) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (replace('name = "node2"', 'name = "node_2"'), "node 'node_2'.name: not a valid hostname"),
        (replace('name = "node2"', 'name = "-node2"'), "not a valid hostname"),
        (replace('name = "node2"', 'name = "' + "a" * 64 + '"'), "not a valid hostname"),
        (replace('name = "node2"', 'name = "NODE1"'), "duplicate hostname"),
        (replace('name = "node2"', 'name = "workers"'), "reserved group name"),
        (replace('"192.168.10.12"', '"192.168.10.11"'), "node 'node2'.address: 192.168.10.11 is also used by"),
        (replace('"192.168.10.12"', '"192.168.11.12"'), "node 'node2'.address: 192.168.11.12 is outside the subnet"),
        (replace('"192.168.10.12"', '"192.168.10.1"'), "is the gateway's address"),
        (replace('"192.168.10.12"', '"192.168.10.255"'), "network or broadcast"),
        (replace('"192.168.10.12"', '"node2.local"'), "not an IPv4 address"),
        (replace('gateway = "192.168.10.1"', 'gateway = "192.168.20.1"'), "fleet.gateway: 192.168.20.1 is outside the subnet"),
        (replace('subnet = "192.168.10.0/24"', 'subnet = "192.168.10.1/24"'), "fleet.subnet: not an IPv4 network"),
        (replace('module = "nano-2gb"', 'module = "nano-8gb"'), "node 'node2'.module: unknown module 'nano-8gb'"),
        (replace('role = "worker"', 'role = "boss"'), "node 'node2'.role: unknown value 'boss'"),
        (replace('runtime = "k3s"', 'runtime = "podman"'), "node 'node2'.runtime: unknown value 'podman'"),
        (replace('l4t = "R32.6.1"', 'l4t = "JetPack 4.6"'), "node 'node2'.l4t: not an L4T release"),
        (replace("port = 2222", "port = 70000"), "node 'node2'.port: must be a TCP port"),
        (replace('user = "ubuntu"', 'usr = "ubuntu"'), "node 'node2'.usr: unknown field"),
        (replace('runtime = "docker"', 'runtime = "docker"\ntimeout = 3'), "fleet.timeout: unknown field"),
        (replace('groups = ["nfs"]', 'groups = ["nfs", "node2"]'), "group 'node2': has the same name as a node"),
        (replace('groups = ["nfs"]', 'groups = ["all-nodes"]'), "is implicit"),
        (replace('module = "xavier-nx"', ""), "node 'node3'.module: missing"),
        (replace('address = "192.168.10.13"', ""), "node 'node3'.address: missing"),
        (replace('subnet = "192.168.10.0/24"', ""), "fleet.subnet: missing"),
        ("[fleet]\nsubnet = \"10.0.0.0/24\"\n", "nodes: no [[nodes]] entries"),
        (GOOD + "\n[extra]\nx = 1\n", "extra: unknown table"),
    ],
)
def test_validation_names_node_and_field(tmp_path: Path, text: str, expected: str) -> None:
    message = problems(tmp_path, text)
    assert expected in message


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = replace('module = "nano-2gb"', 'module = "nano-8gb"')
    text = replace('"192.168.10.13"', '"10.0.0.13"', text)
    message = problems(tmp_path, text)
    assert "2 problems" in message
    assert "node 'node2'.module" in message and "node 'node3'.address" in message


def test_missing_key_file_is_an_error(tmp_path: Path) -> None:
    message = problems(tmp_path, replace('user = "jetson"', 'user = "jetson"\nssh_key = "keys/id_fleet"'))
    assert "fleet.ssh_key: file" in message and "keys/id_fleet does not exist" in message


def test_key_path_relative_to_inventory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_fleet").write_text("KEY")
    fleet = load_text(tmp_path, replace('user = "jetson"', 'user = "jetson"\nssh_key = "keys/id_fleet"'))
    assert fleet.nodes[0].ssh_key == tmp_path / "keys" / "id_fleet"


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        inventory.load(tmp_path / "nope.toml")
    assert info.value.hint is not None and "fleetimg init" in info.value.hint
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_text(tmp_path, "[fleet\nname=1")


@pytest.mark.parametrize("nodes", [1, 4, 24])
def test_starter_file_loads(tmp_path: Path, nodes: int) -> None:
    text = inventory.starter_toml(nodes=nodes, subnet="192.168.10.0/24")
    fleet = load_text(tmp_path, text)
    assert len(fleet.nodes) == nodes
    assert fleet.nodes[0].role is Role.MASTER
    assert all(n.role is Role.WORKER for n in fleet.nodes[1:])
    assert "# " in text  # commented for a person


def test_starter_rejects_bad_input() -> None:
    with pytest.raises(UsageError):
        inventory.starter_toml(nodes=4, subnet="192.168.10.0/33")
    with pytest.raises(UsageError):
        inventory.starter_toml(nodes=300, subnet="192.168.10.0/24")
    with pytest.raises(UsageError):
        inventory.starter_toml(nodes=2, subnet="192.168.10.0/24", module="rpi4")


def test_a_fleet_name_that_could_break_a_file_is_refused_before_writing(
        tmp_path: Path) -> None:
    # Quotes, a backslash and a newline would break (or inject into) fleet.toml and every
    # card's authorized_keys (the name is in the internal key's comment).
    with pytest.raises(UsageError, match=r"fleet\.name: .*letters, digits"):
        inventory.starter_toml(nodes=2, subnet="192.168.10.0/24",
                               name='lab "a"\\b\nsubnet = "10.0.0.0/8"')
