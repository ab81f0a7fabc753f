"""`fleetimg push`: get an image onto nodes, sending only what each one lacks."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import click
from tqdm import tqdm

from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import (
    echo_failure,
    emit_json,
    human_bytes,
    ok_word,
    render_outcomes,
    table,
)
from fleetimg.inventory import Node, RelayAuth
from fleetimg.localimage import docker_client
from fleetimg.parallel import NodeOutcome
from fleetimg.push.engine import (
    Delivery,
    FleetPlan,
    FleetReport,
    ImagePlan,
    PushOptions,
    execute_fleet_push,
    plan_fleet_push,
)
from fleetimg.push.plan import Action, CodecName, NodePlan
from fleetimg.push.relay import NODE_KEY_PATH, Fanout, FanoutMode, check_auth, require_agent
from fleetimg.push.transfer import NodeResult, Progress, ResultAction
from fleetimg.push.viaregistry import (
    FROM_REGISTRY,
    RegistryPushPlan,
    execute_registry_push,
    plan_registry_push,
)


@click.command()
@click.argument("image")
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--via", type=click.Choice(["ssh", "registry"]), default="ssh", show_default=True,
              help="ssh: stream to each node, no registry; registry: push once, nodes pull.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Nodes sent to at once.")
@click.option("--compress", "codec", default="auto", show_default=True,
              type=click.Choice(["auto", *(c.value for c in CodecName)]),
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
    """Deliver IMAGE (a local image, or a build target's images) to nodes.

    A build target's name gives each node the newest image built for that target whose L4T
    runs on the node (`fleetimg build TARGET --all-releases` makes one per family); a node
    that no built image runs on is refused with the build that fixes it.

    Every node is checked first (reachable, platform, L4T compatibility from the image's
    io.fleetimg.l4t label, free disk, layers it already has); then each receives only the
    layers it lacks, compressed, and its image ID is verified before the name is moved.
    """
    fleet = app.fleet()
    nodes = fleet.select(selection)
    if via == "registry":
        _push_via_registry(app, image, nodes, parallel=parallel, dry_run=dry_run,
                           quiet=quiet, as_json=as_json)
        return
    fanout = Fanout.parse(fanout_text)
    auth = RelayAuth(relay_auth) if relay_auth else fleet.relay_auth
    check_auth(fanout, auth)
    client = docker_client()
    ssh = app.ssh(forward_agent=auth is RelayAuth.AGENT)
    if auth is RelayAuth.AGENT and fanout.mode is not FanoutMode.DIRECT:
        require_agent()
    options = PushOptions(parallel=parallel, codec=None if codec == "auto" else CodecName(codec),
                          fanout=fanout, relay_auth=auth)
    plan = plan_fleet_push(ssh, client, image, nodes, options)
    if not as_json:
        _echo_plan(plan)
    if dry_run:
        if as_json:
            emit_json(_plan_json(plan))
        else:
            click.echo("dry run: nothing sent")
        if plan.refuses_any:
            sys.exit(1)
        return
    # Bars only on a terminal: in a log or CI they are carriage-return frames.
    bars = _Bars(sum(p.send_bytes for ip in plan.images for p in ip.delivery.uplink_plans),
                 enabled=not (quiet or as_json) and sys.stderr.isatty())
    try:
        report = execute_fleet_push(ssh, plan, options, bars.progress_for, bars.relayed_for)
    finally:
        bars.close()
    _render_report(plan, report, as_json)


def _push_via_registry(app: AppContext, image: str, nodes: Sequence[Node], *, parallel: int,
                       dry_run: bool, quiet: bool, as_json: bool) -> None:
    """The registry path, planned, shown and reported as the SSH path is."""
    ssh = app.ssh()
    rplan = plan_registry_push(ssh, docker_client(), image, nodes, parallel=parallel)
    plan = rplan.fleet
    if not as_json:
        _echo_plan(plan, pulling=rplan.pulling)
    if dry_run:
        if as_json:
            emit_json(_plan_json(plan, registry=rplan))
        else:
            click.echo("dry run: nothing sent")
        if plan.refuses_any:
            sys.exit(1)
        return
    enabled = not (quiet or as_json) and sys.stderr.isatty()
    bar = tqdm(desc="pulled", total=len(rplan.pulling), unit="node", disable=not enabled)
    lock = threading.Lock()

    def pulled(p: NodePlan, got: int) -> None:
        with lock:
            bar.set_postfix_str(f"{p.node.name} {human_bytes(got)}")
            bar.update(1)

    def step(text: str) -> None:
        if not as_json:
            tqdm.write(text, file=sys.stderr)

    try:
        report = execute_registry_push(ssh, rplan, parallel=parallel, on_step=step,
                                       on_pulled=pulled)
    finally:
        bar.close()
    _render_report(plan, report, as_json, registry=rplan)


class _Bars:
    """A total bar, one bar per node the workstation streams to, and one per node a relay
    feeds (from the progress the relays report)."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.lock = threading.Lock()
        self.total = tqdm(desc="total", total=total, unit="B", unit_scale=True,
                          disable=not enabled or total == 0, position=0)
        self.bars: list[tqdm] = []  # type: ignore[type-arg]

    def progress_for(self, plan: NodePlan) -> Progress | None:
        if not self.enabled or plan.action is not Action.SEND:
            return None
        with self.lock:
            bar = tqdm(desc=plan.node.name, total=plan.send_bytes or None, unit="B",
                       unit_scale=True, position=len(self.bars) + 1, leave=False)
            self.bars.append(bar)

        def on(n: int) -> None:
            bar.update(n)
            with self.lock:
                self.total.update(n)
        return on

    def relayed_for(self, plan: NodePlan) -> Progress | None:
        """A node a relay feeds: its own bar, from what it reports having received."""
        if not self.enabled:
            return None
        with self.lock:
            bar = tqdm(desc=f"{plan.node.name} (relayed)", total=plan.send_bytes or None,
                       unit="B", unit_scale=True, position=len(self.bars) + 1, leave=False)
            self.bars.append(bar)

        def on(n: int) -> None:
            with self.lock:
                bar.update(min(n, max(0, (bar.total or n) - bar.n)))
        return on

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
        self.total.close()


def _echo_plan(plan: FleetPlan, *, pulling: set[str] | None = None) -> None:
    """`pulling`: with --via registry, the nodes that pull (their ACTION says so)."""
    for ip in plan.images:
        local = ip.image
        whom = (f" for {', '.join(p.node.name for p in ip.plans)}"
                if len(plan.images) > 1 or plan.unassigned else "")
        click.echo(f"{local.ref} ({local.id[7:19]}, {local.platform}, "
                   f"L4T {local.l4t or 'unlabelled'}, {len(local.diff_ids)} layers, "
                   f"{human_bytes(local.size)}){whom}")
        click.echo(table(["NODE", "ACTION", "HAS", "SENDS", "BYTES", "CODEC", "WHY"],
                         [_plan_row(p.node.name, p.value, p.error,
                                    pull=p.node.name in (pulling or set()))
                          for p in ip.plans]))
        for group in ip.delivery.groups:
            click.echo("relay:")
            click.echo("\n".join(f"  {line}" for line in group.tree_lines()))
        for note in ip.delivery.notes:
            click.echo(f"note: {note}")
    for u in plan.unassigned:
        echo_failure(u.node.name, u.error)


def _plan_json(plan: FleetPlan, *,
               registry: RegistryPushPlan | None = None) -> dict[str, object]:
    nodes: list[dict[str, object]] = []
    pulling = registry.pulling if registry else set()

    def planned(ip: ImagePlan, p: NodePlan) -> dict[str, object]:
        if p.node.name in pulling:
            return {**p.to_dict(), "action": "pull", "image": ip.image.ref,
                    "from": FROM_REGISTRY}
        return {**p.to_dict(), "image": ip.image.ref, "from": _source(ip.delivery, p.node.name)}

    for ip in plan.images:
        nodes += [planned(ip, p.value) if p.value else
                  {"node": p.node.name, "action": "unreachable", "image": ip.image.ref,
                   "reason": p.error.message if p.error else ""} for p in ip.plans]
    nodes += [{"node": u.node.name, "action": "refuse", "image": None,
               "reason": u.error.message if u.error else ""} for u in plan.unassigned]
    return {**_images_json(plan, registry), "dry_run": True, "nodes": nodes}


def _images_json(plan: FleetPlan,
                 registry: RegistryPushPlan | None = None) -> dict[str, object]:
    """What the plan and the report both start with: the way, the images, relays, notes."""
    first = plan.images[0].image if plan.images else None
    return {"via": "registry" if registry else "ssh",
            "registry": registry.registry.url if registry else None,
            "image": first.ref if first else None, "id": first.id if first else None,
            "images": [{"image": ip.image.ref, "id": ip.image.id,
                        "l4t": str(ip.image.l4t) if ip.image.l4t else None,
                        "nodes": [p.node.name for p in ip.plans]} for ip in plan.images],
            "relays": [g.describe() for ip in plan.images for g in ip.delivery.groups],
            "notes": [n for ip in plan.images for n in ip.delivery.notes]}


def _render_report(plan: FleetPlan, report: FleetReport, as_json: bool, *,
                   registry: RegistryPushPlan | None = None) -> None:
    image_of = {p.node.name: ip.image.ref for ip in plan.images for p in ip.plans}
    results = report.results

    def to_json(r: NodeOutcome[NodeResult]) -> dict[str, object]:
        return {"node": r.node.name, "ok": r.ok, "image": image_of.get(r.node.name),
                **(r.value.__dict__ if r.value else {}),
                "error": r.error.message if r.error else None}

    def document(nodes: list[dict[str, object]]) -> dict[str, object]:
        return {**_images_json(plan, registry), "dry_run": False,
                "sent_bytes": report.sent_bytes, "nodes": nodes}

    def notes() -> None:
        for r in results:
            if r.value and r.value.note:
                click.echo(f"* {r.node.name}: {r.value.note}")

    refs = " / ".join(ip.image.ref for ip in plan.images) or "the image"
    render_outcomes(
        results, as_json=as_json, to_json=to_json, json_document=document, row=_result_row,
        headers=["NODE", "RESULT", "FROM", "SENT", "LAYERS", "TIME", "CODEC"],
        after_table=notes,
        summary=f"{len(results) - len(report.failed)}/{len(results)} node(s) have {refs}; "
                + (f"{human_bytes(report.sent_bytes)} pulled from the registry at "
                   f"{registry.registry.url}" if registry else
                   f"{human_bytes(report.sent_bytes)} sent from here"))


def _result_row(r: NodeOutcome[NodeResult]) -> list[object]:
    v = r.value
    if v is None:
        return [r.node.name, ok_word(False, no="failed"), "-", "-", "-", f"{r.seconds:.1f} s",
                "-"]
    return [r.node.name, ok_word(True, v.action.value), _from(v), human_bytes(v.sent_bytes),
            v.layers_sent, f"{v.seconds:.1f} s", v.codec.value if v.codec else "-"]


def _source(delivery: Delivery, name: str) -> str | None:
    """Where a node's stream comes from: "workstation", a relaying node, or None."""
    if any(p.node.name == name for p in delivery.direct):
        return "workstation"
    for group in delivery.groups:
        if name in group.parents:
            return group.parents[name] or "workstation"
    return None


def _from(result: NodeResult) -> str:
    if result.action in (ResultAction.SKIPPED, ResultAction.TAGGED):
        return "-"
    return (result.via or "workstation") + ("*" if result.note else "")


def _plan_row(name: str, plan: NodePlan | None, error: Exception | None, *,
              pull: bool = False) -> list[object]:
    if plan is None:
        return [name, ok_word(False, no="unreachable"), "-", "-", "-", "-",
                str(error) if error else ""]
    if pull:  # --via registry: the registry compresses; the node pulls what it lacks
        return [name, ok_word(True, "pull"), plan.have_layers, plan.send_layers,
                human_bytes(plan.send_bytes), "-", plan.reason]
    action = ok_word(plan.action is not Action.REFUSE, plan.action.value, plan.action.value)
    return [name, action, plan.have_layers, plan.send_layers, human_bytes(plan.send_bytes),
            plan.codec.name if plan.codec else "-", plan.reason]
