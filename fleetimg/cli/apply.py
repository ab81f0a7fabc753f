"""`fleetimg apply`: make running boards match the inventory, over SSH."""

from __future__ import annotations

import sys

import click

from fleetimg.apply.engine import (
    ApplyOptions,
    ApplyPlan,
    NodeApplied,
    NodePlan,
    execute_apply,
    plan_apply,
)
from fleetimg.apply.network import ROLLBACK_SECONDS
from fleetimg.apply.plan import Action
from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import echo_failure, emit_json, error_json, ok_word, render_outcomes
from fleetimg.errors import UsageError
from fleetimg.nodestate.model import Concern
from fleetimg.parallel import NodeOutcome

_MARKS = {Action.CREATE: "+", Action.MODIFY: "~", Action.OWNER: "~", Action.LINK: "~",
          Action.REMOVE: "-", Action.RESET: "!"}
_CONCERNS = [c.value for c in Concern if c is not Concern.IDENTITY]


def _only(text: str | None) -> frozenset[Concern] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in _CONCERNS]
    if bad:
        raise UsageError(f"--only: unknown concern {', '.join(bad)}",
                         hint=f"choose from {', '.join(_CONCERNS)} (comma-separated)")
    return frozenset(Concern(n) for n in names)


@click.command()
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--only", "only_text", metavar="CONCERNS",
              help=f"Only these parts of the state: {', '.join(_CONCERNS)}.")
@click.option("--reset", "reset", type=click.Choice(["identity"]),
              help="identity: a cloned board gets its own machine-id and SSH host keys "
              "(fleetimg's known_hosts learns the new ones).")
@click.option("--from", "from_address", metavar="ADDRESS",
              help="Where the one selected board answers now, when fleet.toml already has "
              "its new address [default: where it last answered].")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the boards.")
@click.option("--restart", is_flag=True,
              help="Also restart what the changes need (docker, k3s) and reboot if needed.")
@click.option("--diff", "show_diff", is_flag=True,
              help="Show each changed file's diff (never of secret files).")
@click.option("--rollback-after", default=ROLLBACK_SECONDS, show_default=True,
              type=click.IntRange(15, 600), metavar="SECONDS",
              help="A network change not confirmed from the new address by then is undone "
              "by the board itself.")
@click.option("--parallel", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Boards changed at once.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def apply(app: AppContext, selection: str, only_text: str | None, reset: str | None,
          from_address: str | None, dry_run: bool, yes: bool, restart: bool,
          show_diff: bool, rollback_after: int, parallel: int, as_json: bool) -> None:
    """Bring running boards to the state their card would give them: hostname, /etc/hosts,
    static address, user, keys, sudo, Docker's nvidia runtime, K3s join, power mode, swap.

    For boards that boot from eMMC and never get a card, and for drift on any board. Each
    board's changes are shown first; a second run changes nothing. A new address is
    activated with a deadline: if this machine cannot reach the board there within
    --rollback-after seconds, the board puts its old network back by itself.
    Only the keys fleetimg manages in authorized_keys are touched.
    """
    fleet = app.fleet()
    options = ApplyOptions(only=_only(only_text), restart=restart,
                           reset_identity=reset == "identity", from_address=from_address,
                           rollback_seconds=rollback_after, parallel=parallel)
    ssh = app.ssh()
    plan = plan_apply(fleet, fleet.select(selection), ssh, options)
    work = any(p.changes for p in plan.plans) or (restart and any(p.earlier for p in plan.plans))
    if dry_run or not work:
        _render_plan(plan, as_json, show_diff, dry_run)
        return
    if not as_json:
        _show_changes(plan, show_diff)
    _confirm(plan, yes)
    results = execute_apply(ssh, plan, on_step=lambda s: None if as_json else click.echo(s))
    _render_results(results, as_json)


def _show_changes(plan: ApplyPlan, show_diff: bool) -> None:
    for p in plan.plans:
        where = p.node.address if p.reached.address == p.node.address else \
            f"{p.reached.address} -> {p.node.address}"
        click.echo(click.style(f"{p.node.name} ({where})", bold=True)
                   + ("" if p.changes else ": no changes"))
        for c in p.changes:
            effect = f"  [{c.effect.value}]" if c.effect else ""
            click.echo(f"  {_MARKS[c.action]} {c.concern.value:<9} {c.path}  "
                       f"{c.action.value}{': ' + c.detail if c.detail else ''}{effect}")
            if show_diff:
                for line in c.diff:
                    click.echo(f"      {line}")
        if p.earlier:
            click.echo(f"  pending from an earlier apply: "
                       f"{', '.join(e.value for e in p.earlier)} (--restart does it)")
        for note in p.notes:
            click.echo(f"  note: {note}")
    for o in plan.outcomes:
        echo_failure(o.node.name, o.error)


def _render_plan(plan: ApplyPlan, as_json: bool, show_diff: bool, dry_run: bool) -> None:
    failed = [o for o in plan.outcomes if not o.ok]
    changed = [p for p in plan.plans if p.changes]
    if as_json:
        emit_json({"dry_run": dry_run, "nodes": [_plan_json(o) for o in plan.outcomes]})
    else:
        _show_changes(plan, show_diff)
        if changed:
            click.echo(f"\n{sum(len(p.changes) for p in changed)} change(s) on "
                       f"{len(changed)} node(s); nothing changed (--dry-run)")
        else:
            click.echo(f"\nno changes: {len(plan.plans)} node(s) match the inventory")
    if failed:
        sys.exit(1)


def _plan_json(o: NodeOutcome[NodePlan]) -> dict[str, object]:
    if o.value is None:
        return {"name": o.node.name, "address": o.node.address, "ok": False,
                **error_json(o.error)}
    return {"ok": True, **o.value.to_dict(),
            "result": "would change" if o.value.changes else "no changes"}


def _confirm(plan: ApplyPlan, yes: bool) -> None:
    if yes:
        return
    count = sum(1 for p in plan.plans if p.work)
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to change {count} board(s) without confirmation",
                         hint="look at `fleetimg apply --dry-run`, then pass --yes")
    if not click.confirm(f"\nchange {count} board(s)?", default=False):
        raise UsageError("nothing changed")


def _render_results(results: list[NodeOutcome[NodeApplied]], as_json: bool) -> None:
    def row(r: NodeOutcome[NodeApplied]) -> list[object]:
        if r.value is None:
            return [r.node.name, ok_word(False), "-", "-", "-"]
        v = r.value
        return [r.node.name, ok_word(True, v.result), v.changed,
                ", ".join(e.value for e in v.done) or "-",
                ", ".join(e.value for e in v.pending) or "-"]

    def after() -> None:
        for r in results:
            if r.value is not None and r.value.pending:
                click.echo(f"{click.style('note', fg='yellow')} {r.node.name}: "
                           f"{', '.join(e.value for e in r.value.pending)} still needed: "
                           "run again with --restart")

    def to_json(r: NodeOutcome[NodeApplied]) -> dict[str, object]:
        if r.value is None:
            return {"name": r.node.name, "ok": False, **error_json(r.error)}
        return {"ok": True, **r.value.to_dict()}

    ok = [r for r in results if r.ok]
    render_outcomes(results, as_json=as_json, row=row, to_json=to_json,
                    headers=["NODE", "RESULT", "CHANGES", "DONE", "PENDING"],
                    json_document=lambda rows: {"dry_run": False, "nodes": rows},
                    after_table=after,
                    summary=f"{len(ok)}/{len(results)} node(s) applied; "
                    f"{sum(r.value.changed for r in ok if r.value)} change(s)")

