"""`fleetimg lab`: rehearse on a local fleet of containers before touching boards."""

from __future__ import annotations

from pathlib import Path

import click

from fleetimg.cli.render import emit_json, table
from fleetimg.l4t import L4TRelease
from fleetimg.lab.manager import DEFAULT_SUBNET, LabConfig, lab_down, lab_status, lab_up

NAME_HELP = "Lab name: several labs can live side by side."


def _step(message: str) -> None:
    click.echo(click.style("==> ", fg="blue") + message, err=True)


@click.group()
def lab() -> None:
    """A local lab fleet: containers with sshd, Docker and a Jetson L4T release file."""


@lab.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--l4t", default="R32.7.1", show_default=True,
              help="L4T release the nodes report in /etc/nv_tegra_release.")
@click.option("--subnet", default=DEFAULT_SUBNET, show_default=True,
              help="Docker network for the lab; node N gets address .(10+N).")
@click.option("--name", default="lab", show_default=True, help=NAME_HELP)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where fleet.toml and keys go [default: ~/.local/state/fleetimg/NAME].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def up(nodes: int, l4t: str, subnet: str, name: str, directory: Path | None,
       as_json: bool) -> None:
    """Start (or update) the lab fleet and write its fleet.toml. Idempotent."""
    config = LabConfig(name=name, nodes=nodes, l4t=L4TRelease.parse(l4t), subnet=subnet,
                       directory=directory)
    fleet = lab_up(config, on_step=_step)
    if as_json:
        emit_json({"name": name, "inventory": str(config.fleet_file),
                   "nodes": [{"name": n.name, "address": n.address} for n in fleet.nodes]})
        return
    click.echo(f"lab {name!r}: {len(fleet.nodes)} node(s) up, L4T {config.l4t}")
    click.echo(f"inventory: {config.fleet_file}")
    click.echo(f"use it:    export FLEETIMG_INVENTORY={config.fleet_file}")


@lab.command()
@click.option("--name", default="lab", show_default=True, help=NAME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str, as_json: bool) -> None:
    """Show the lab's node containers."""
    nodes = lab_status(name)
    if as_json:
        emit_json([n.__dict__ for n in nodes])
        return
    if not nodes:
        click.echo(f"lab {name!r} is not running (`fleetimg lab up`)")
        return
    click.echo(table(["NODE", "CONTAINER", "STATE", "ADDRESS", "IMAGE"],
                     [[n.name, n.container, n.state, n.address, n.image] for n in nodes]))


@lab.command()
@click.option("--name", default="lab", show_default=True, help=NAME_HELP)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None)
@click.option("--purge", is_flag=True, help="Also remove the cached lab node image.")
def down(name: str, directory: Path | None, purge: bool) -> None:
    """Remove the lab's containers, volumes, network, keys and fleet.toml."""
    removed = lab_down(LabConfig(name=name, directory=directory), purge_image=purge)
    click.echo(f"lab {name!r}: removed {len(removed)} item(s)" if removed
               else f"lab {name!r}: nothing to remove")
