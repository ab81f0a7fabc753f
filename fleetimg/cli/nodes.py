"""`fleetimg nodes`: the inventory, and what each node really runs."""

from __future__ import annotations

import click

from fleetimg import addresses
from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import (
    emit_json,
    error_json,
    human_bytes,
    ok_word,
    render_outcomes,
    table,
)
from fleetimg.inventory import Node
from fleetimg.parallel import NodeOutcome
from fleetimg.probe import NodeProbe, probe_fleet


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def nodes(ctx: click.Context, as_json: bool) -> None:
    """List the inventory (or `nodes probe` to check the boards)."""
    if ctx.invoked_subcommand is not None:
        return
    app: AppContext = ctx.obj
    fleet = app.fleet(resolve=False)
    # DHCP nodes are looked for (lease, multicast DNS): the list says where they are now.
    found = {loc.node: loc for loc in addresses.locate(fleet, fleet.nodes)}
    if as_json:
        emit_json([
            {"name": n.name, "address": found[n.name].address, "dhcp": n.dhcp,
             "host": n.host, "found_by": _found_by(found[n.name]),
             "port": n.port, "role": n.role.value,
             "module": n.module.name, "user": n.user, "l4t": str(n.l4t),
             "runtime": n.runtime.value, "groups": list(n.groups)}
            for n in fleet.nodes
        ])
        return
    click.echo(f"fleet {fleet.name}: {len(fleet.nodes)} node(s) on {fleet.subnet}"
               f" (gateway {fleet.gateway or '-'})")
    click.echo(table(
        ["NAME", "ADDRESS", "ROLE", "MODULE", "L4T", "RUNTIME", "GROUPS"],
        [[n.name, _address_cell(n, found[n.name]), n.role.value, n.module.name, n.l4t,
          n.runtime.value, ",".join(n.groups)] for n in fleet.nodes],
    ))
    for n in fleet.nodes:
        if n.dhcp and found[n.name].address is None:
            click.echo(f"{click.style('warn', fg='yellow')} {n.name}: not found (tried "
                       f"{'; '.join(found[n.name].tried)}); hint: is it powered and on the "
                       "network? [fleet] leases names a dnsmasq leases file")


def _found_by(loc: addresses.Located) -> str | None:
    return loc.found_by.value if loc.found_by else None


def _address_cell(node: Node, loc: addresses.Located) -> str:
    if not node.dhcp:
        return node.address
    if loc.address is None:
        return f"dhcp: {node.reach} not found"
    return f"dhcp: {loc.address} ({_found_by(loc)})"


@nodes.command()
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--parallel", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Nodes probed at once.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def probe(app: AppContext, selection: str, parallel: int, as_json: bool) -> None:
    """Check each node over SSH: L4T/JetPack, board, Docker, K3s, free disk, hostname.

    Unreachable nodes are reported and the rest still probed; exit code 1 if any failed.
    """
    fleet = app.fleet()
    chosen = fleet.select(selection)
    results = probe_fleet(fleet.name, app.ssh(), chosen, parallel=parallel)

    def warnings() -> None:
        for r in results:
            for warning in r.value.warnings if r.value else ():
                click.echo(f"{click.style('warn', fg='yellow')} {r.node.name}: {warning}")

    reachable = sum(r.ok for r in results)
    render_outcomes(
        results, as_json=as_json, row=_probe_row, to_json=_probe_json,
        headers=["NODE", "STATUS", "ARCH", "L4T", "JETPACK", "BOARD", "DOCKER", "RUNTIME",
                 "K3S", "FREE", "HOSTNAME"],
        after_table=warnings, summary=f"{reachable}/{len(results)} node(s) reachable")


def _probe_json(r: NodeOutcome[NodeProbe]) -> dict[str, object]:
    if r.value is None:
        return {"name": r.node.name, "address": r.node.address, "reachable": False,
                **error_json(r.error)}
    return {"reachable": True, **r.value.to_dict()}


def _probe_row(r: NodeOutcome[NodeProbe]) -> list[object]:
    p = r.value
    if p is None:
        return [r.node.name, ok_word(False, no="unreachable"), *["-"] * 9]
    hostname = p.hostname if p.hostname_matches else f"{p.hostname} (!)"
    arch = p.arch + ("+arm64" if p.arm64_emulation and p.arch != "aarch64" else "")
    row: list[object] = [
        p.name, ok_word(True), arch, p.l4t, p.jetpack, p.board, p.docker_version,
        p.docker_runtime, "yes" if p.k3s_version else "no", human_bytes(p.free_bytes), hostname,
    ]
    return row
