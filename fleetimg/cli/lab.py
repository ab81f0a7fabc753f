"""`fleetimg lab`: rehearse on a local fleet of containers before touching boards."""

from __future__ import annotations

from pathlib import Path

import click

from fleetimg.cli.render import emit_json, human_bytes, table
from fleetimg.errors import UsageError
from fleetimg.l4t import L4TRelease
from fleetimg.lab.manager import DEFAULT_SUBNET, LabConfig, lab_down, lab_status, lab_up

NAME_HELP = "Lab name: several labs can live side by side."


def _step(message: str) -> None:
    click.echo(click.style("==> ", fg="blue") + message, err=True)


@click.group()
def lab() -> None:
    """A local lab fleet: containers with sshd, Docker and a Jetson L4T release file."""


@lab.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 64),
              help="Container nodes (Jetson-like boards with sshd and Docker).")
@click.option("--l4t", default="R32.7.1", show_default=True,
              help="L4T release the nodes report in /etc/nv_tegra_release.")
@click.option("--module", default="nano-4gb", show_default=True, metavar="MODULE",
              help="The module every node plays (e.g. orin-nano with --l4t R36.4.3: the "
              "device tree, firmware and port name of one).")
@click.option("--subnet", default=DEFAULT_SUBNET, show_default=True,
              help="Docker network for the lab; node N gets address .(10+N).")
@click.option("--name", default="lab", show_default=True, help=NAME_HELP)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where fleet.toml and keys go [default: ~/.local/state/fleetimg/NAME].")
@click.option("--card-nodes", default=0, show_default=True, type=click.IntRange(0, 16),
              help="Extra nodes in fleet.toml with no container: boards you write a card for "
              "(fleetimg sdcard) and boot with `fleetimg lab boot` (group 'cards').")
@click.option("--board", "boards", multiple=True, metavar="NODE=L4T/MODULE",
              help="A node that plays another board, e.g. node3=R36.4.3/orin-nano: its "
              "release file, device tree, firmware and port name say so (repeatable; one lab "
              "can mix families).")
@click.option("--dhcp", is_flag=True,
              help="Card nodes get address = \"dhcp\": a dnsmasq on the lab's network hands "
              "out their addresses, and fleetimg finds them by lease ([fleet] leases) or by "
              "multicast DNS (NAME.local).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def up(nodes: int, l4t: str, module: str, subnet: str, name: str, directory: Path | None,
       card_nodes: int, boards: tuple[str, ...], dhcp: bool, as_json: bool) -> None:
    """Start (or update) the lab fleet and write its fleet.toml. Idempotent."""
    if dhcp and not card_nodes:
        raise UsageError("--dhcp is for card nodes, and this lab has none",
                       hint="add --card-nodes N (boards booted with `fleetimg lab boot`)")
    config = LabConfig(name=name, nodes=nodes, l4t=L4TRelease.parse(l4t), module=module,
                       subnet=subnet, directory=directory, card_nodes=card_nodes,
                       boards=tuple(parse_board(b) for b in boards),
                       dhcp_cards=card_nodes if dhcp else 0)
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
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="The directory `lab up --dir` used [default: ~/.local/state/fleetimg/NAME].")
@click.option("--purge", is_flag=True, help="Also remove the cached lab node image.")
def down(name: str, directory: Path | None, purge: bool) -> None:
    """Remove the lab's containers, volumes, network, keys and fleet.toml."""
    removed = lab_down(LabConfig(name=name, directory=directory), purge_image=purge)
    click.echo(f"lab {name!r}: removed {len(removed)} item(s)" if removed
               else f"lab {name!r}: nothing to remove")


@lab.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--l4t", default="R32.7.1", show_default=True,
              help="R32/R35: a Nano's layout (14 partitions); R36: an Orin Nano's "
              "(15 partitions with esp).")
@click.option("--board", default=None,
              help="BOARD in nv_tegra_release. [default: t210ref; generic on R36]")
@click.option("--app-size", default="256M", show_default=True,
              help="Size of the APP (root) partition, e.g. 256M or 2G.")
@click.option("--payload", default="16M", show_default=True,
              help="Incompressible data in the root filesystem (stands in for CUDA & co).")
@click.option("--booted", is_flag=True, help="Make it look like a card from a booted board.")
@click.option("--bootable", is_flag=True,
              help="A card that really boots (`fleetimg lab boot`): Debian with systemd, "
              "NetworkManager, sshd and Docker in APP, plus JetPack's first-boot machinery as "
              "stand-ins. Built once (debootstrap, root), then cached.")
def sdimage(output: Path, l4t: str, board: str | None, app_size: str, payload: str,
            booted: bool, bootable: bool) -> None:
    """Build a Jetson-like SD card image (GPT, APP partition 1 but last) for rehearsals."""
    from fleetimg.lab.testimage import build_test_image

    release = L4TRelease.parse(l4t)
    board = board or ("generic" if release.major >= 36 else "t210ref")

    if bootable:
        from fleetimg.lab.cardimage import build_bootable_card

        if booted:
            raise UsageError("--booted and --bootable do not go together",
                             hint="boot a --bootable card with `fleetimg lab boot` instead")
        out = build_bootable_card(output, l4t=release, board=board, on_step=_step)
        click.echo(f"wrote {out} (bootable, L4T {l4t}); next: fleetimg sdcard --node NODE "
                   f"--image {out} CARD.img, then fleetimg lab boot CARD.img")
        return
    out = build_test_image(output, app_size=_size(app_size), l4t=release, board=board,
                           booted=booted, payload=_size(payload))
    click.echo(f"wrote {out} ({human_bytes(out.stat().st_size)}, L4T {l4t}"
               f"{', booted' if booted else ''})")


def parse_board(text: str) -> tuple[int, L4TRelease, str]:
    from fleetimg.inventory import MODULES

    node, _, spec = text.partition("=")
    release, _, module = spec.partition("/")
    index = node.strip().removeprefix("node")
    if not index.isdigit() or not release or module not in MODULES:
        raise UsageError(f"--board {text!r}: expected NODE=L4T/MODULE",
                         hint=f"e.g. --board node3=R36.4.3/orin-nano; modules: "
                         f"{', '.join(MODULES)}")
    return int(index), L4TRelease.parse(release), module


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper()
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise UsageError(f"not a size: {text!r}", hint="e.g. 256M or 2G") from None


@lab.command("app")
@click.argument("tag")
@click.option("--line", default="print('hello from the lab')",
              help="The one line of app code (change it to rehearse an app-only push).")
@click.option("--l4t", default="R32.7.1", show_default=True,
              help="L4T release written into the io.fleetimg.l4t label.")
def app_cmd(tag: str, line: str, l4t: str) -> None:
    """Build a small arm64 app image on a local Debian base, to rehearse pushes."""
    import docker

    from fleetimg.lab.baseimage import app_image

    L4TRelease.parse(l4t)
    app_image(docker.from_env(), tag, app=line + "\n", l4t=l4t)
    click.echo(f"built {tag} (linux/arm64, io.fleetimg.l4t={l4t})")


@lab.command("base")
@click.option("--pytorch/--no-pytorch", default=True, show_default=True,
              help="Also build the l4t-pytorch stand-in (CPU PyTorch from PyPI).")
@click.option("--replicas", is_flag=True,
              help="Also build the replicas of NVIDIA's real l4t-pytorch bases (R32, R35, "
              "R36: no CUDA libraries, CUDA behind absolute links, a dead pip index; and a "
              "CUDA 13 GPU base with torch and a real nvcc, about 4 GB), for "
              "`fleetimg build TARGET --base fleetimg/l4t-replica:r32-pytorch`.")
@click.option("--ca-bundle", type=click.Path(path_type=Path),
              help="CA bundle for pip behind a TLS-intercepting proxy (a build secret).")
def base_cmd(pytorch: bool, replicas: bool, ca_bundle: Path | None) -> None:
    """Build offline arm64 stand-ins for NGC's l4t-base, l4t-pytorch and the tritonserver
    igpu image, and one for Docker Hub's debian:bookworm-slim (debootstrap).

    `fleetimg build TARGET --standin` builds on them; nothing comes from NGC or Docker Hub.
    The replicas (--replicas) are as harsh as the real bases at build time
    (docs/replicas.md): a build that passes on them passes on NGC's.
    """
    import docker

    from fleetimg.lab.standin import (
        ensure_standin_base,
        ensure_standin_debian,
        ensure_standin_pytorch,
        ensure_standin_triton_igpu,
    )

    client = docker.from_env()
    built = [ensure_standin_base(client, _step), ensure_standin_triton_igpu(client, _step),
             ensure_standin_debian(client, _step)]
    if pytorch or replicas:
        built.append(ensure_standin_pytorch(client, ca_bundle, _step))
    if replicas:
        from fleetimg.lab.replicas import REPLICAS, ensure_replica

        built += [ensure_replica(client, tag, ca_bundle, _step) for tag in REPLICAS]
    click.echo("stand-in bases: " + ", ".join(built))


@lab.command("boot")
@click.argument("card", required=False, type=click.Path(path_type=Path))
@click.option("--name", default="lab", show_default=True, help=NAME_HELP)
@click.option("--list", "list_only", is_flag=True, help="Show booted cards.")
@click.option("--stop", "stop_name", metavar="NODE", help="Shut a booted card down.")
@click.option("--timeout", default=120, show_default=True, type=click.IntRange(5, 900),
              help="Seconds to wait for the card to answer SSH at its address.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def boot_cmd(ctx: click.Context, card: Path | None, name: str, list_only: bool,
             stop_name: str | None, timeout: int, as_json: bool) -> None:
    """Boot CARD (an image written by `fleetimg sdcard`) as a board on the lab's network.

    systemd-nspawn boots the card's APP partition; the board takes its hostname, static
    address, user and keys from the card, and what it writes lands in the card image.
    Waits until it answers SSH at the address its card gave it. Needs root.

    The card's node comes from the lab's fleet.toml, or from -i / FLEETIMG_INVENTORY when
    given (a lab fleet moved elsewhere with --dir); the lab is then the one that fleet
    names, unless --name says otherwise.
    """
    from fleetimg import inventory
    from fleetimg.lab.boot import boot_card, booted_cards, stop_card

    if list_only:
        cards = booted_cards()
        if as_json:
            emit_json([c.__dict__ for c in cards])
        elif not cards:
            click.echo("no booted cards")
        else:
            click.echo(table(["NODE", "LAB", "ADDRESS", "CARD", "CONSOLE"],
                             [[c.name, c.lab, c.address, c.card, c.console] for c in cards]))
        return
    if stop_name:
        click.echo(f"{stop_name}: stopped" if stop_card(stop_name)
                   else f"{stop_name}: not booted")
        return
    if card is None:
        raise UsageError("missing CARD", hint="fleetimg lab boot node4.img (or --list, --stop)")
    given = ctx.find_root().params.get("inventory_path")
    if given is not None:
        fleet = inventory.load(given)
        if ctx.get_parameter_source("name") is click.core.ParameterSource.DEFAULT:
            name = fleet.name
    else:
        fleet = inventory.load(LabConfig(name=name).fleet_file)
    booted = boot_card(fleet, name, card, timeout=timeout, on_step=_step)
    if as_json:
        emit_json(booted.__dict__)
        return
    click.echo(f"{booted.name} is up at {booted.address} (card {booted.card}); "
               f"stop it with: fleetimg lab boot --stop {booted.name}")
