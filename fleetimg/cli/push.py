"""`fleetimg push`: get an image onto nodes, sending only what each one lacks."""

from __future__ import annotations

import sys
import threading

import click
from tqdm import tqdm

from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import echo_failure, emit_json, human_bytes, ok_word, table
from fleetimg.inventory import RelayAuth
from fleetimg.push.engine import Delivery, PushOptions, arrange_delivery, execute, preflight
from fleetimg.push.localimage import docker_client, resolve_image
from fleetimg.push.plan import Action, NodePlan
from fleetimg.push.relay import NODE_KEY_PATH, Fanout, check_auth, require_agent
from fleetimg.push.transfer import NodeResult, Progress


@click.command()
@click.argument("image")
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--via", type=click.Choice(["ssh", "registry"]), default="ssh", show_default=True,
              help="ssh: stream to each node, no registry; registry: push once, nodes pull.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Nodes sent to at once.")
@click.option("--compress", "codec", default="auto", show_default=True,
              type=click.Choice(["auto", "zstd", "pigz", "gzip", "none"]),
              help="auto: zstd when the node has it, else gzip (decompressed on the node).")
@click.option("--fanout", "fanout_text", default="auto", show_default=True, metavar="MODE",
              help="direct: every node from here; chain: node to node, each loading and "
              "passing the stream on; tree[:K]: each node feeds K others. auto: chain from 2 "
              "nodes when relay auth is set, else direct.")
@click.option("--relay-auth", type=click.Choice([a.value for a in RelayAuth]), default=None,
              help="How nodes log in to each other for relays: the fleet-internal key "
              f"({NODE_KEY_PATH} on every node) or your forwarded ssh-agent. "
              "[default: relay_auth in [fleet]]")
@click.option("--dry-run", is_flag=True,
              help="Show what each node would receive and from where; send nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, no bars.")
@pass_app
def push(app: AppContext, image: str, selection: str, via: str, parallel: int, codec: str,
         fanout_text: str, relay_auth: str | None, dry_run: bool, quiet: bool,
         as_json: bool) -> None:
    """Deliver IMAGE (a local image, or a build target's newest image) to nodes.

    Every node is checked first (reachable, platform, L4T compatibility from the image's
    io.fleetimg.l4t label, free disk, layers it already has); then each receives only the
    layers it lacks, compressed, and its image ID is verified before the name is moved.
    """
    fleet = app.fleet()
    nodes = fleet.select(selection)
    if via == "registry":
        from fleetimg.cli.registry import push_via_registry

        push_via_registry(app, image, nodes, parallel=parallel, dry_run=dry_run,
                          as_json=as_json)
        return
    fanout = Fanout.parse(fanout_text)
    auth = RelayAuth(relay_auth) if relay_auth else fleet.relay_auth
    check_auth(fanout, auth)
    local = resolve_image(docker_client(), image)
    ssh = app.ssh(forward_agent=auth is RelayAuth.AGENT)
    if auth is RelayAuth.AGENT and fanout.mode != "direct":
        require_agent()
    options = PushOptions(parallel=parallel, codec=codec, fanout=fanout, relay_auth=auth)
    plans = preflight(ssh, nodes, local, options)
    delivery = arrange_delivery(ssh, plans, options)
    if not as_json:
        click.echo(f"{local.ref} ({local.id[7:19]}, {local.platform}, "
                   f"L4T {local.l4t or 'unlabelled'}, {len(local.diff_ids)} layers, "
                   f"{human_bytes(local.size)})")
        click.echo(table(["NODE", "ACTION", "HAS", "SENDS", "BYTES", "CODEC", "WHY"],
                         [_plan_row(p.node.name, p.value, p.error) for p in plans]))
        for group in delivery.groups:
            click.echo(f"relay: {group.describe()}")
        for note in delivery.notes:
            click.echo(f"note: {note}")
    if dry_run:
        if as_json:
            emit_json({"image": local.ref, "id": local.id, "nodes": [
                {**p.value.to_dict(), "from": _source(delivery, p.node.name)} if p.value else
                {"node": p.node.name, "action": "unreachable",
                 "reason": p.error.message if p.error else ""} for p in plans],
                "relays": [g.describe() for g in delivery.groups], "notes": delivery.notes})
        else:
            click.echo("dry run: nothing sent")
        if any(not p.ok or (p.value and p.value.action is Action.REFUSE) for p in plans):
            sys.exit(1)
        return
    # Bars only on a terminal: in a log or CI they are carriage-return frames.
    show_bars = not (quiet or as_json) and sys.stderr.isatty()
    total = sum(p.send_bytes for p in delivery.uplink_plans)
    lock = threading.Lock()
    total_bar = tqdm(desc="total", total=total, unit="B", unit_scale=True,
                     disable=not show_bars or total == 0, position=0)
    bars: list[tqdm] = []  # type: ignore[type-arg]

    def progress_for(plan: NodePlan) -> Progress | None:
        if not show_bars or plan.action is not Action.SEND:
            return None
        with lock:
            bar = tqdm(desc=plan.node.name, total=plan.send_bytes or None, unit="B",
                       unit_scale=True, position=len(bars) + 1, leave=False)
            bars.append(bar)

        def on(n: int) -> None:
            bar.update(n)
            with lock:
                total_bar.update(n)
        return on

    report = execute(ssh, local, plans, options, progress_for, delivery)
    for bar in bars:
        bar.close()
    total_bar.close()
    if as_json:
        emit_json({"image": local.ref, "id": local.id, "sent_bytes": report.sent_bytes,
                   "relays": [g.describe() for g in delivery.groups], "notes": delivery.notes,
                   "nodes": [{"node": r.node.name, "ok": r.ok,
                              **(r.value.__dict__ if r.value else {}),
                              "error": r.error.message if r.error else None}
                             for r in report.results]})
    else:
        click.echo(table(["NODE", "RESULT", "FROM", "SENT", "LAYERS", "TIME", "CODEC"], [
            [r.node.name, ok_word(True, r.value.action), _from(r.value),
             human_bytes(r.value.sent_bytes), r.value.layers_sent, f"{r.value.seconds:.1f} s",
             r.value.codec or "-"]
            if r.value else [r.node.name, ok_word(False, no="failed"), "-", "-", "-",
                             f"{r.seconds:.1f} s", "-"]
            for r in report.results]))
        for r in report.results:
            if r.value and r.value.note:
                click.echo(f"* {r.node.name}: {r.value.note}")
        for r in report.failed:
            echo_failure(r.node.name, r.error)
        click.echo(f"\n{len(report.results) - len(report.failed)}/{len(report.results)} "
                   f"node(s) have {local.ref}; {human_bytes(report.sent_bytes)} sent from here")
    if report.failed:
        sys.exit(1)


def _source(delivery: Delivery, name: str) -> str | None:
    """Where a node's stream comes from: "workstation", a relaying node, or None."""
    if any(p.node.name == name for p in delivery.direct):
        return "workstation"
    for group in delivery.groups:
        if name in group.parents:
            return group.parents[name] or "workstation"
    return None


def _from(result: NodeResult) -> str:
    if result.action in ("skipped", "tagged"):
        return "-"
    return (result.via or "workstation") + ("*" if result.note else "")


def _plan_row(name: str, plan: NodePlan | None, error: Exception | None) -> list[object]:
    if plan is None:
        return [name, ok_word(False, no="unreachable"), "-", "-", "-", "-",
                str(error) if error else ""]
    action = ok_word(plan.action is not Action.REFUSE, plan.action.value, plan.action.value)
    return [name, action, plan.have_layers, plan.send_layers, human_bytes(plan.send_bytes),
            plan.codec.name if plan.codec else "-", plan.reason]
