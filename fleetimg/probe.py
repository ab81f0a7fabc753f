"""`fleetimg nodes probe`: read-only facts about each node, gathered over SSH in parallel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from fleetimg import seen
from fleetimg.errors import FleetimgError, UsageError
from fleetimg.inventory import Node, modules_for_compatible
from fleetimg.l4t import L4TRelease, parse_nv_tegra_release
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.ssh import Ssh


@dataclass(frozen=True)
class NodeProbe:
    name: str
    address: str
    arch: str
    hostname: str
    l4t: L4TRelease | None
    board: str | None
    docker_version: str | None
    docker_runtime: str | None
    docker_runtimes: tuple[str, ...]
    docker_root: str | None
    docker_error: str | None
    docker_sudo: bool
    free_bytes: int | None
    k3s_version: str | None
    hostname_matches: bool
    hosts_has_name: bool
    arm64_emulation: bool
    tools: tuple[str, ...] = field(default=())
    self_address: str | None = None  # what the node's name resolves to there
    firstboot: str | None = None  # fleetimg's first boot: done, pending, failed: STEPS
    compatible: tuple[str, ...] = ()  # /proc/device-tree/compatible
    module: str | None = None  # the inventory module(s) that compatible means, "a/b"
    module_expected: str | None = None  # the inventory's
    l4t_package: str | None = None  # nvidia-l4t-core's exact version
    firmware: str | None = None  # QSPI/UEFI firmware ("Current version" of nvbootctrl)
    interfaces: tuple[str, ...] = ()
    apply_pending: tuple[str, ...] = ()  # what `apply` left for --restart

    @property
    def jetpack(self) -> str | None:
        return self.l4t.jetpack if self.l4t else None

    @property
    def runs_arm64(self) -> bool:
        return self.arch == "aarch64" or self.arm64_emulation

    @property
    def warnings(self) -> list[str]:
        out = []
        if not self.hostname_matches:
            out.append(f"hostname is {self.hostname!r}, inventory says {self.name!r}")
        if not self.hosts_has_name:
            out.append(f"/etc/hosts lacks {self.name!r} (sudo may hang resolving it)")
        if self.self_address and self.self_address != self.address:
            out.append(f"{self.name!r} resolves to {self.self_address} on the node, not its "
                       f"fleet address {self.address}: Gloo/MPI would bind that")
        if self.module and self.module_expected and \
                self.module_expected not in self.module.split("/"):
            out.append(f"the inventory says {self.module_expected}, the board is "
                       f"{self.module} ({self.compatible[0] if self.compatible else '?'})")
        if self.firstboot and self.firstboot.startswith("failed"):
            out.append(f"fleetimg first boot {self.firstboot.replace('failed:', 'failed at')} "
                       "(journalctl -u fleetimg-firstboot)")
        if self.apply_pending:
            out.append(f"apply changed files that need {', '.join(self.apply_pending)}: "
                       "`fleetimg apply --restart`")
        if self.docker_error:
            out.append(self.docker_error)
        if self.l4t is None:
            out.append("no /etc/nv_tegra_release: not an L4T system")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["l4t"] = str(self.l4t) if self.l4t else None
        d["jetpack"] = self.jetpack
        d["docker_runtimes"] = list(self.docker_runtimes)
        d["tools"] = list(self.tools)
        d["apply_pending"] = list(self.apply_pending)
        d["warnings"] = self.warnings
        return d


def probe_script() -> str:
    return resources.files("fleetimg").joinpath("data/probe.sh").read_text()


def parse_probe_output(node: Node, text: str) -> NodeProbe:
    """Turn the probe script's key=value lines into a NodeProbe."""
    kv: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            kv[key] = value.strip()
    if kv.get("probe") != "done":
        raise FleetimgError(
            f"{node.name}: probe output incomplete",
            hint="the node's /bin/sh or coreutils may be broken; run `fleetimg nodes probe -v`",
        )
    l4t = board = None
    if kv.get("tegra"):
        try:
            tegra = parse_nv_tegra_release(kv["tegra"])
        except UsageError:
            pass
        else:
            l4t, board = tegra.release, tegra.board
    compatible = tuple(kv.get("compatible", "").split())
    free_kb = kv.get("free_kb", "")
    hostname = kv.get("hostname", "")
    return NodeProbe(
        name=node.name,
        address=node.address,
        arch=kv.get("arch", "unknown"),
        hostname=hostname,
        l4t=l4t,
        board=board,
        docker_version=kv.get("docker_version") or None,
        docker_runtime=kv.get("docker_runtime") or None,
        docker_runtimes=tuple(r for r in kv.get("docker_runtimes", "").split(",") if r),
        docker_root=kv.get("docker_root") or None,
        docker_error=kv.get("docker_error") or None,
        docker_sudo=kv.get("docker_sudo") == "yes",
        free_bytes=int(free_kb) * 1024 if free_kb.isdigit() else None,
        k3s_version=kv.get("k3s") or None,
        hostname_matches=hostname.split(".")[0].lower() == node.name.lower(),
        hosts_has_name=kv.get("hosts_has_name") == "yes",
        arm64_emulation=kv.get("arm64_emulation") == "yes",
        tools=tuple(t for t in kv.get("tools", "").split(",") if t),
        self_address=kv.get("self_address") or None,
        firstboot=kv.get("firstboot") or None,
        compatible=compatible,
        module="/".join(modules_for_compatible(" ".join(compatible))) or None,
        module_expected=node.module.name,
        l4t_package=kv.get("l4t_package") or None,
        firmware=kv.get("firmware") or None,
        interfaces=tuple(i for i in kv.get("interfaces", "").split(",") if i),
        apply_pending=tuple(e for e in kv.get("apply_pending", "").split(",") if e),
    )


def probe_node(ssh: Ssh, node: Node, timeout: float = 60) -> NodeProbe:
    result = ssh.run(node, f"sh -s -- {node.name}", input=probe_script(), timeout=timeout)
    return parse_probe_output(node, result.stdout)


def probe_nodes(
    ssh: Ssh,
    nodes: Sequence[Node],
    *,
    parallel: int = 8,
    on_done: Callable[[NodeOutcome[NodeProbe]], None] | None = None,
) -> list[NodeOutcome[NodeProbe]]:
    return for_each_node(nodes, lambda n: probe_node(ssh, n), parallel=parallel, on_done=on_done)


def probe_fleet(
    fleet_name: str,
    ssh: Ssh,
    nodes: Sequence[Node],
    *,
    parallel: int = 8,
    on_done: Callable[[NodeOutcome[NodeProbe]], None] | None = None,
) -> list[NodeOutcome[NodeProbe]]:
    """probe_nodes, remembering where each node answered: `apply` looks for a board there
    once the inventory gives it a new address."""
    results = probe_nodes(ssh, nodes, parallel=parallel, on_done=on_done)
    seen.record(fleet_name, {o.node.name: o.node.address for o in results if o.ok})
    return results


def probed_releases(ssh: Ssh, nodes: Sequence[Node]) -> dict[str, L4TRelease]:
    """The L4T each reachable node reports (nodes that cannot be probed are left out: the
    inventory's release stands for them)."""
    return {o.node.name: o.value.l4t for o in probe_nodes(ssh, nodes)
            if o.value is not None and o.value.l4t is not None}
