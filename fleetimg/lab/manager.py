"""`fleetimg lab up|status|down`: a local fleet of containers that behave like Jetson nodes.

Each node runs sshd and its own Docker engine, answers with a Jetson-like
/etc/nv_tegra_release and runs arm64 images through the host's QEMU binfmt (registered
with F, so the interpreter is found inside nested containers too). `lab up` writes a
ready fleet.toml, an SSH key and a known_hosts file that already holds every node's key.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container

from fleetimg import newfile, private, programs
from fleetimg import tomlcompat as tomllib
from fleetimg.errors import FleetimgError, LabError
from fleetimg.inventory import INTERNAL_KEY_NAME, MODULES, Fleet, Node, load
from fleetimg.l4t import L4TRelease, format_nv_tegra_release
from fleetimg.lab.boot import booted_cards, stop_card
from fleetimg.lab.jetpack_standins import LAB_COMPATIBLE, MODULE_TEGRA_BOARD
from fleetimg.lab.nodeimage import LAB_USER, ensure_node_image
from fleetimg.paths import state_dir
from fleetimg.ssh import Ssh, SshOptions

log = logging.getLogger("fleetimg.lab")

LABEL = "io.fleetimg.lab"
DEFAULT_SUBNET = "172.29.213.0/24"
DEFAULT_L4T = L4TRelease(32, 7, 1)
DHCP_LEASES = "dnsmasq.leases"  # in the lab's directory

# What works here instead of --privileged (which fails with "unable to apply caps"):
# docs/lab-machines.md.
CONTAINER_OPTIONS: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
    "tmpfs": {"/run": "", "/tmp": ""},
}


@dataclass(frozen=True)
class LabConfig:
    name: str = "lab"
    nodes: int = 3
    l4t: L4TRelease = DEFAULT_L4T
    module: str = "nano-4gb"  # what every node plays unless `boards` says otherwise
    subnet: str = DEFAULT_SUBNET
    directory: Path | None = None
    # Nodes written into fleet.toml without a container: boards that boot from a card
    # (`fleetimg sdcard` then `fleetimg lab boot`), numbered after the container nodes.
    card_nodes: int = 0
    # Nodes that play another board than the rest: {index: (release, module)}, e.g. an Orin
    # Nano on R36.4.3 beside Nanos on R32.7.1 (one lab, two families).
    boards: tuple[tuple[int, L4TRelease, str], ...] = ()
    # The last this many card nodes ask for their address by DHCP: a dnsmasq on the lab's
    # network hands them out and keeps the leases fleet.toml names ([fleet] leases).
    dhcp_cards: int = 0

    def uses_dhcp(self, index: int) -> bool:
        return index > self.nodes + self.card_nodes - self.dhcp_cards

    def board_of(self, index: int) -> LabBoard:
        for i, release, module in self.boards:
            if i == index:
                return LabBoard(release, module)
        return LabBoard(self.l4t, self.module)

    @property
    def dir(self) -> Path:
        return self.directory or state_dir() / self.name

    @property
    def network(self) -> str:
        return f"fleetimg-{self.name}"

    @property
    def fleet_file(self) -> Path:
        return self.dir / "fleet.toml"

    def container(self, index: int) -> str:
        return f"fleetimg-{self.name}-node{index}"

    def volume(self, index: int) -> str:
        return f"fleetimg-{self.name}-node{index}-docker"

    def address(self, index: int) -> str:
        net = ipaddress.IPv4Network(self.subnet)
        return str(net.network_address + 10 + index)

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    @property
    def dhcp_range(self) -> tuple[str, str]:
        """The top quarter of the subnet, far above the static nodes (.11 up to .74)."""
        net = ipaddress.IPv4Network(self.subnet)
        quarter = net.num_addresses // 4
        return (str(net.broadcast_address - quarter), str(net.broadcast_address - 2))

    @property
    def leases(self) -> Path:
        return self.dir / DHCP_LEASES


@dataclass(frozen=True)
class LabBoard:
    """What one lab node tells probe it is (docs/releases.md, "The module")."""

    l4t: L4TRelease
    module: str

    @property
    def tegra_board(self) -> str:
        return "generic" if self.l4t.major >= 36 else MODULE_TEGRA_BOARD.get(self.module,
                                                                               "t210ref")

    @property
    def compatible(self) -> str:
        return LAB_COMPATIBLE.get(self.module, "")

    @property
    def firmware(self) -> str:
        # Module firmware matches the release the lab node runs (a flashed board's does).
        return f"{self.l4t.major}.{self.l4t.minor}.{self.l4t.patch}" if self.l4t.major >= 36 \
            else ""

    @property
    def ethernet(self) -> str:
        return MODULES[self.module].ethernet


@dataclass(frozen=True)
class LabNodeStatus:
    name: str
    container: str
    state: str
    address: str | None
    image: str | None


def _client() -> docker.DockerClient:
    try:
        return docker.from_env(timeout=120)
    except DockerException as exc:
        raise LabError(
            f"Docker engine not reachable: {exc}",
            hint="`fleetimg doctor` says how to start it",
        ) from exc


def _validate(config: LabConfig) -> None:
    try:
        net = ipaddress.IPv4Network(config.subnet, strict=True)
    except ValueError as exc:
        raise LabError(f"--subnet {config.subnet!r}: {exc}", hint="e.g. 172.29.213.0/24") from exc
    if config.module not in MODULES:
        raise LabError(f"--module {config.module!r}: not a module fleetimg knows",
                       hint=f"modules: {', '.join(sorted(MODULES))}")
    for index, release, _module in config.boards:
        if not 1 <= index <= config.nodes + config.card_nodes:
            raise LabError(f"--board node{index}: the lab has node1 to "
                           f"node{config.nodes + config.card_nodes}")
        if not release.family_known:
            raise LabError(f"--board node{index}: {release} is not an L4T release fleetimg "
                           "knows", hint="e.g. R32.7.1, R35.4.1, R36.4.3")
    if not 0 <= config.dhcp_cards <= config.card_nodes:
        raise LabError(f"{config.dhcp_cards} DHCP card nodes of {config.card_nodes}")
    if not 0 <= config.card_nodes <= 16:
        raise LabError(f"--card-nodes {config.card_nodes}: 0 to 16")
    if not 1 <= config.nodes + config.card_nodes <= min(64, net.num_addresses - 12):
        raise LabError(f"--nodes {config.nodes}: a lab has 1 to 64 nodes",
                       hint="the machine has 2 cores; 3 to 8 nodes is plenty")


def _write_files(config: LabConfig) -> None:
    d = config.dir
    d.mkdir(parents=True, exist_ok=True)
    private.new_keypair(d / "id_ed25519", f"fleetimg-{config.name}")
    # The fleet-internal key, as `fleetimg sdcard` installs it with internal_ssh_key: every
    # node holds it and accepts it, so nodes can relay pushes to each other.
    internal = d / INTERNAL_KEY_NAME
    private.new_keypair(internal, f"fleetimg-{config.name}-internal")
    known: list[str] = []
    for i in range(1, config.nodes + 1):
        node_dir = d / f"node{i}"
        private.new_keypair(node_dir / "ssh_host_ed25519_key", f"node{i}")
        (node_dir / "authorized_keys").write_text(
            (d / "id_ed25519.pub").read_text()
            + internal.with_name(internal.name + ".pub").read_text())
        shutil.copy(internal, node_dir / "id_ed25519")
        pub = (node_dir / "ssh_host_ed25519_key.pub").read_text().split()
        known.append(f"{config.address(i)} {pub[0]} {pub[1]}")
    (d / "known_hosts").write_text("\n".join(known) + "\n")
    lines = [
        f"# Lab fleet {config.name!r} written by `fleetimg lab up`: containers playing Jetson",
        "# Nanos on this machine. `fleetimg lab down` removes them and this directory.",
        "[fleet]",
        tomllib.assign("name", config.name),
        tomllib.assign("user", LAB_USER),
        tomllib.assign("ssh_key", "id_ed25519"),
        tomllib.assign("known_hosts", "known_hosts"),
        tomllib.assign("subnet", config.subnet),
        tomllib.assign("gateway", config.gateway),
        tomllib.assign("dns", [config.gateway]),
        tomllib.assign("l4t", config.l4t),
        tomllib.assign("runtime", "docker"),
        tomllib.assign("relay_auth", "internal-key"),
        *([tomllib.assign("leases", DHCP_LEASES, "the lab's dnsmasq: DHCP card nodes")]
          if config.dhcp_cards else []),
        "",
        "[sdcard]",
        tomllib.assign("internal_ssh_key", True),
        tomllib.assign("swap", "off"),
        "",
    ]
    for i in range(1, config.nodes + config.card_nodes + 1):
        board = config.board_of(i)
        lines += [
            "[[nodes]]",
            tomllib.assign("name", f"node{i}"),
            tomllib.assign("address", "dhcp" if config.uses_dhcp(i) else config.address(i)),
            tomllib.assign("role", "master" if i == 1 else "worker"),
            tomllib.assign("module", board.module),
            *([tomllib.assign("l4t", board.l4t)] if board.l4t != config.l4t else []),
            *([tomllib.assign("firmware", board.firmware)] if board.firmware else []),
            *([tomllib.assign("groups", ["cards"], "boots from a card: fleetimg lab boot")]
              if i > config.nodes else []),
            "",
        ]
    newfile.write_atomic(config.fleet_file, "\n".join(lines).encode())


def _ensure_network(client: docker.DockerClient, config: LabConfig) -> None:
    try:
        net = client.networks.get(config.network)
    except NotFound:
        pass
    else:
        configs = net.attrs.get("IPAM", {}).get("Config") or [{}]
        if configs[0].get("Subnet") == config.subnet:
            return
        raise LabError(
            f"network {config.network} exists with subnet {configs[0].get('Subnet')}, "
            f"not {config.subnet}",
            hint=f"`fleetimg lab down --name {config.name}` first",
        )
    ipam = docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=config.subnet, gateway=config.gateway)]
    )
    try:
        client.networks.create(config.network, driver="bridge", ipam=ipam,
                               labels={LABEL: config.name})
    except APIError as exc:
        raise LabError(
            f"cannot create network {config.network} ({config.subnet}): {exc.explanation}",
            hint="choose a free subnet with --subnet (see `docker network ls`)",
        ) from exc


def _dhcp_pid(config: LabConfig) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((config.dir / "dnsmasq.pid").read_text().strip())
        if programs.pid_alive(pid):
            return pid
    return None


def _ensure_dhcp(client: docker.DockerClient, config: LabConfig) -> None:
    """dnsmasq as the lab network's DHCP server (no DNS): started once, kept by `lab up`
    runs, stopped by `lab down`. Bound to the lab's bridge only, so it answers nothing
    else on this machine."""
    if _dhcp_pid(config) is not None:
        return
    programs.require_tool("dnsmasq")
    net = client.networks.get(config.network)
    bridge = f"br-{(net.id or '')[:12]}"
    low, high = config.dhcp_range
    netmask = str(ipaddress.IPv4Network(config.subnet).netmask)
    programs.run([
        "dnsmasq", "--conf-file=/dev/null", "--port=0", f"--interface={bridge}",
        "--bind-interfaces", "--except-interface=lo", f"--dhcp-range={low},{high},{netmask},1h",
        f"--dhcp-option=option:router,{config.gateway}", "--dhcp-authoritative",
        f"--dhcp-leasefile={config.leases}", f"--pid-file={config.dir / 'dnsmasq.pid'}",
        f"--log-facility={config.dir / 'dnsmasq.log'}", "--log-dhcp", "--user=root",
    ], timeout=30)


def _stop_dhcp(config: LabConfig) -> bool:
    pid = _dhcp_pid(config)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while programs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _spec_hash(config: LabConfig, image: str, index: int) -> str:
    board = config.board_of(index)
    text = "|".join([image, str(board.l4t), board.module, config.address(index),
                     str(config.dir)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _lab_containers(client: docker.DockerClient, name: str) -> list[Container]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL}={name}"})
    return sorted(found, key=lambda c: c.name or "")


def _board_environment(board: LabBoard) -> dict[str, str]:
    """What lab-init.sh writes so the node looks like `board` to probe."""
    env = {"FLEETIMG_TEGRA_RELEASE": format_nv_tegra_release(board.l4t,
                                                             board.tegra_board).strip()}
    if board.compatible:
        env["FLEETIMG_DT_COMPATIBLE"] = board.compatible
    if board.firmware:
        env["FLEETIMG_FIRMWARE"] = board.firmware
    if board.ethernet != "eth0":
        env["FLEETIMG_ETHERNET"] = board.ethernet
    return env


def _start_node(
    client: docker.DockerClient, config: LabConfig, image: str, index: int
) -> None:
    name = config.container(index)
    spec = _spec_hash(config, image, index)
    try:
        existing = client.containers.get(name)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.labels.get(f"{LABEL}.spec") == spec:
            if existing.status != "running":
                existing.start()
            return
        existing.remove(force=True)
    container = client.containers.create(
        image,
        name=name,
        hostname=f"node{index}",
        detach=True,
        labels={LABEL: config.name, f"{LABEL}.node": f"node{index}", f"{LABEL}.spec": spec},
        environment=_board_environment(config.board_of(index)),
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            config.volume(index): {"bind": "/var/lib/docker", "mode": "rw"},
            f"{config.container(index)}-containerd": {"bind": "/var/lib/containerd",
                                                      "mode": "rw"},
            str(config.dir / f"node{index}"): {"bind": "/fleetimg", "mode": "ro"},
        },
        network=config.network,
        networking_config={
            config.network: client.api.create_endpoint_config(
                ipv4_address=config.address(index)
            )
        },
        **CONTAINER_OPTIONS,
    )
    container.start()


# A node whose sshd answers but whose engine does not for this long is restarted (once):
# dockerd inside a lab node can die (killed, out of memory) while the container runs on.
ENGINE_GRACE_SECONDS = 10.0


def _wait_ready(fleet: Fleet, revive: Callable[[Node], None], *, only: set[str],
                timeout: float = 120) -> None:
    ssh = Ssh(SshOptions(known_hosts=fleet.known_hosts, connect_timeout=3))
    deadline = time.monotonic() + timeout
    pending = [n for n in fleet.nodes if n.name in only]
    last_error: FleetimgError | None = None
    engine_down_since: dict[str, float] = {}
    revived: set[str] = set()
    while pending and time.monotonic() < deadline:
        node = pending[0]
        try:
            ssh.run(node, "true", timeout=10)
        except FleetimgError as exc:
            last_error = exc
            time.sleep(0.5)
            continue
        # Ready means: sshd answers with the expected key and the node's engine is up.
        probe = ssh.run(node, "docker version --format '{{.Server.Version}}'", timeout=10,
                        check=False)
        if probe.returncode != 0:
            since = engine_down_since.setdefault(node.name, time.monotonic())
            if time.monotonic() - since > ENGINE_GRACE_SECONDS and node.name not in revived:
                revived.add(node.name)
                ssh.disconnect(node)
                revive(node)
            last_error = LabError(f"{node.name}: Docker engine not answering")
            time.sleep(0.5)
            continue
        pending.pop(0)
    if pending:
        raise LabError(
            f"lab nodes not ready after {timeout:.0f} s: {', '.join(n.name for n in pending)}"
            + (f" ({last_error.message})" if last_error else ""),
            hint=f"look inside: docker logs fleetimg-{fleet.name}-{pending[0].name}",
        )


def lab_up(config: LabConfig, on_step: Callable[[str], None] = lambda s: None) -> Fleet:
    _validate(config)
    programs.require_tool("ssh-keygen")
    client = _client()
    image = ensure_node_image(client, on_step)
    _write_files(config)
    _ensure_network(client, config)
    if config.dhcp_cards:
        on_step(f"DHCP for card nodes: dnsmasq on {config.network} "
                f"({' to '.join(config.dhcp_range)})")
        _ensure_dhcp(client, config)
    on_step(f"starting {config.nodes} node(s) on {config.network} ({config.subnet})")
    for i in range(1, config.nodes + 1):
        _start_node(client, config, image, i)
    wanted = {config.container(i) for i in range(1, config.nodes + 1)}
    for extra in _lab_containers(client, config.name):
        if extra.name not in wanted:
            on_step(f"removing {extra.name} (beyond --nodes {config.nodes})")
            extra.remove(force=True, v=True)
            for suffix in ("docker", "containerd"):
                _remove_volume(client, f"{extra.name}-{suffix}")
    fleet = load(config.fleet_file)
    on_step("waiting for sshd and Docker on every node")

    def revive(node: Node) -> None:
        on_step(f"{node.name}: sshd answers but its Docker engine does not; restarting the node")
        client.containers.get(config.container(int(node.name.removeprefix("node")))).restart(
            timeout=5)

    containers = {f"node{i}" for i in range(1, config.nodes + 1)}
    _wait_ready(fleet, revive, only=containers)
    return fleet


def lab_status(name: str = "lab") -> list[LabNodeStatus]:
    client = _client()
    out = []
    for c in _lab_containers(client, name):
        networks = c.attrs.get("NetworkSettings", {}).get("Networks", {})
        address = networks.get(f"fleetimg-{name}", {}).get("IPAddress") or None
        tags = c.image.tags if c.image is not None else []
        out.append(
            LabNodeStatus(
                name=c.labels.get(f"{LABEL}.node", c.name or "?"),
                container=c.name or "?",
                state=c.status,
                address=address,
                image=tags[0] if tags else None,
            )
        )
    return out


def _remove_volume(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(NotFound):
        client.volumes.get(name).remove(force=True)


def lab_down(
    config: LabConfig, *, purge_image: bool = False,
    on_step: Callable[[str], None] = lambda s: None,
) -> list[str]:
    """Remove the lab's containers, volumes, network and directory. Returns what was removed."""
    client = _client()
    removed: list[str] = []
    for booted in booted_cards():
        if booted.lab == config.name:
            on_step(f"stopping booted card {booted.name}")
            stop_card(booted.name)
            removed.append(f"booted card {booted.name}")
    if config.fleet_file.exists():
        try:
            fleet = load(config.fleet_file)
        except FleetimgError:
            fleet = None
        if fleet is not None:
            ssh = Ssh(SshOptions(known_hosts=fleet.known_hosts))
            for node in fleet.nodes:
                ssh.disconnect(node)
    for c in _lab_containers(client, config.name):
        on_step(f"removing container {c.name}")
        c.remove(force=True, v=True)
        removed.append(f"container {c.name}")
    for vol in client.volumes.list(filters={"name": f"fleetimg-{config.name}-node"}):
        vol.remove(force=True)
        removed.append(f"volume {vol.name}")
    if _stop_dhcp(config):
        removed.append(f"dnsmasq on {config.network}")
    try:
        client.networks.get(config.network).remove()
        removed.append(f"network {config.network}")
    except NotFound:
        pass
    if config.dir.exists():
        shutil.rmtree(config.dir)
        removed.append(f"directory {config.dir}")
    if purge_image:
        for image in client.images.list(name="fleetimg/lab-node"):
            client.images.remove(image.id or "", force=True)
            removed.append(f"image {', '.join(image.tags) or image.id}")
    return removed
