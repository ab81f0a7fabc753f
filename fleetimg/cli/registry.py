"""`fleetimg registry`: a local Distribution registry for large fleets."""

from __future__ import annotations

import click

from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import (
    emit_json,
    error_json,
    human_bytes,
    ok_word,
    render_outcomes,
    table,
)
from fleetimg.push import registry as reg


@click.group()
def registry() -> None:
    """Run a registry on the workstation; nodes pull from it (`push --via registry`)."""


@registry.command()
@click.option("--auth", is_flag=True,
              help="Nodes must log in to pull (user 'fleet', a random password kept 0600 in "
              "fleetimg's state; `registry configure` logs every node in).")
@pass_app
def up(app: AppContext, auth: bool) -> None:
    """Start the registry on this workstation (Debian's docker-registry; idempotent):
    read-only on the fleet's network, pushes only from this machine, no deletes."""
    info = reg.registry_up(app.fleet(), auth=auth)
    click.echo(f"registry at {info.url}: read-only, on the fleet's network only (nodes pull "
               f"there); pushes go through {info.upload_endpoint} on this machine; no deletes; "
               f"storage {info.root}")
    click.echo("next: fleetimg registry configure --to all-nodes")


@registry.command()
def down() -> None:
    """Stop the registry (its storage is kept)."""
    click.echo("registry stopped" if reg.registry_down() else "no registry was running")


@registry.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Where the registry listens, and its repositories, tags and sizes."""
    info = reg.require_registry()
    repos = reg.registry_status(info)
    if as_json:
        emit_json({"url": info.url, "listening": info.listening,
                   "repositories": [r.__dict__ for r in repos]})
        return
    click.echo(f"registry {info.url}")
    for entry in info.listening:
        click.echo(f"  listening on {entry['address']}: {entry['access']}, {entry['for']}")
    click.echo(table(["REPOSITORY", "TAG", "SIZE"],
                     [[r.name, t, human_bytes(r.sizes.get(t))] for r in repos for t in r.tags]))


@registry.command()
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--dry-run", is_flag=True,
              help="Read each node's configuration and say what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def configure(app: AppContext, selection: str, dry_run: bool, as_json: bool) -> None:
    """Let nodes pull from the registry over HTTP: daemon.json's insecure-registries
    (other keys kept, Docker reloaded) or K3s's registries.yaml (other mirrors kept, K3s
    restarted)."""
    info = reg.require_registry()
    results = reg.configure_nodes(app.ssh(), list(app.fleet().select(selection)), info,
                                  dry_run=dry_run)
    render_outcomes(results, as_json=as_json, headers=["NODE", "RESULT", "DETAIL"],
                    row=lambda r: [r.node.name, ok_word(r.ok), r.value or ""],
                    to_json=lambda r: {"node": r.node.name, "ok": r.ok, "result": r.value,
                                       **error_json(r.error)},
                    json_document=lambda rows: {"dry_run": dry_run, "nodes": rows})
