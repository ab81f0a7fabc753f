"""`fleetimg sdcard`: write JetPack SD cards (or per-node image files) with a first-boot overlay."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import click
from tqdm import tqdm

from fleetimg.cli.context import AppContext, pass_app
from fleetimg.cli.render import emit_json, human_bytes, ok_word, render_outcomes, table
from fleetimg.errors import UsageError
from fleetimg.parallel import NodeOutcome
from fleetimg.sdcard import drives
from fleetimg.sdcard.flash import (
    CardPlan,
    CardProgress,
    CardResult,
    SdcardOptions,
    SourceImage,
    plan_cards,
    prepare_source,
    write_cards,
)
from fleetimg.sdcard.source import is_compressed


def _pairs(node: str | None, target: Path | None, nodes: str | None,
           devices: str | None) -> list[tuple[str, Path]]:
    if nodes or devices:
        if node or target:
            raise UsageError("use either --node NAME TARGET or --nodes ... --devices ...")
        names = [n.strip() for n in (nodes or "").split(",") if n.strip()]
        targets = [Path(d.strip()) for d in (devices or "").split(",") if d.strip()]
        if len(names) != len(targets) or not names:
            raise UsageError(f"--nodes has {len(names)} name(s) but --devices has "
                             f"{len(targets)}", hint="give one device per node, in order")
        if len(set(targets)) != len(targets):
            raise UsageError("the same device is given twice in --devices",
                             hint="give each card its own device or file")
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise UsageError(f"node {twice} is given twice in --nodes",
                             hint="one card per node: each card carries the node's "
                             "hostname and address")
        return list(zip(names, targets, strict=True))
    if not node or target is None:
        raise UsageError("missing --node NAME or TARGET",
                         hint="fleetimg sdcard --node node2 /dev/sdb  (or an image file path); "
                         "fleetimg sdcard --list shows drives")
    return [(node, target)]


def _print_drives(as_json: bool) -> None:
    found = list(drives.list_drives())
    if as_json:
        emit_json([{"path": str(d.path), "size": d.size, "removable": d.removable,
                    "read_only": d.read_only, "model": d.model, "bus": d.bus,
                    "mounted": list(d.mountpoints), "system": d.system} for d in found])
        return
    rows = []
    for d in found:
        flags = [f for f, on in (("SYSTEM", d.system), ("mounted", bool(d.mountpoints)),
                                 ("read-only", d.read_only), ("large", d.size > drives.LARGE_DRIVE))
                 if on]
        rows.append([d.path, human_bytes(d.size), "yes" if d.removable else "no",
                     d.description, ",".join(flags)])
    if not rows:
        click.echo("no drives found")
        return
    click.echo(table(["DEVICE", "SIZE", "REMOVABLE", "DESCRIPTION", "NOTES"], rows))
    click.echo("\nSystem, mounted and non-removable drives are refused when writing "
               "(non-removable ones unless --allow-non-removable).")


def _show_plan(plan: CardPlan) -> None:
    where = (f"{plan.target} ({human_bytes(plan.drive.size)}, {plan.drive.description})"
             if plan.drive else f"{plan.target} (image file)")
    click.echo(f"{click.style(plan.node.name, bold=True)} -> {where}")
    for w in plan.warnings:
        click.echo(f"  {click.style('warn', fg='yellow')} {w}")
    for entry in plan.overlay.summary():
        detail = entry.get("target") or f"{entry.get('mode', '')} {entry.get('owner', '')}"
        click.echo(f"  {entry['kind']:<8} {entry['path']}  {detail}".rstrip())
    for note in plan.overlay.notes:
        click.echo(f"  note: {note}")


def _confirm(plans: list[CardPlan], yes: bool) -> None:
    devices = [p for p in plans if p.is_device]
    if not devices or yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("refusing to erase a drive without confirmation",
                         hint="type the device name at the prompt, or pass --yes in scripts")
    for p in devices:
        assert p.drive is not None
        answer = click.prompt(
            click.style(f"Everything on {p.target} ({human_bytes(p.drive.size)}) will be "
                        f"erased. Type {p.drive.name} to continue", fg="red"),
            default="", show_default=False)
        if answer.strip() not in (p.drive.name, str(p.target)):
            raise click.Abort()


@click.command()
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option("--node", help="Inventory node the card is for.")
@click.option("--image", "image", type=click.Path(path_type=Path),
              help="JetPack SD card image: .img, .zip, .img.xz, .img.gz "
              "[default: [sdcard] image in fleet.toml].")
@click.option("--nodes", help="Several cards at once: node1,node2 (with --devices).")
@click.option("--devices", help="Devices for --nodes, in the same order: /dev/sdb,/dev/sdc.")
@click.option("--list", "list_only", is_flag=True, help="Show candidate drives and exit.")
@click.option("--dry-run", is_flag=True, help="Check everything and show what would be written.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask to type the device name.")
@click.option("--no-verify", is_flag=True, help="Skip reading the card back.")
@click.option("--force", is_flag=True, help="Replace an existing image file TARGET.")
@click.option("--allow-cloned", is_flag=True,
              help="Accept an image from a booted board and reset its identity.")
@click.option("--allow-non-removable", is_flag=True,
              help="Allow a drive the kernel does not flag removable (some USB readers).")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 16),
              help="Cards written at once (--nodes/--devices).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, no bars.")
@pass_app
def sdcard(app: AppContext, target: Path | None, node: str | None, image: Path | None,
           nodes: str | None, devices: str | None, list_only: bool, dry_run: bool, yes: bool,
           no_verify: bool, force: bool, allow_cloned: bool, allow_non_removable: bool,
           parallel: int, as_json: bool) -> None:
    """Write a JetPack SD card for a node: headless, named, static IP, your SSH key.

    TARGET is a whole disk (/dev/sdb, /dev/mmcblk0) or an image file to create. Only the
    image's allocated blocks are written, then read back and checked. The card boots
    without the oem-config wizard while NVIDIA's per-board first boot still runs.
    """
    if list_only:
        _print_drives(as_json)
        return
    fleet = app.fleet(resolve=False)
    pairs = [(fleet.node(n), t) for n, t in _pairs(node, target, nodes, devices)]
    src = image or fleet.sdcard.image
    if src is None:
        raise UsageError("no SD card image given",
                         hint="pass --image FILE or set [sdcard] image in fleet.toml")
    source = _prepare(src, bar=not as_json and is_compressed(src) and sys.stderr.isatty())
    options = SdcardOptions(verify=not no_verify, allow_cloned=allow_cloned,
                            allow_non_removable=allow_non_removable, force=force)
    plans = plan_cards(fleet, pairs, source, options)
    if not as_json:
        _echo_plans(source, plans)
    if dry_run:
        if as_json:
            emit_json(_plan_json(source, plans))
        else:
            click.echo("dry run: nothing written")
        return
    _confirm(plans, yes)
    bars = _CardBars(source.plan.mapped_bytes,
                     enabled=not as_json and sys.stderr.isatty())
    try:
        results = write_cards(plans, options, parallel=parallel,
                              progress_for=bars.progress_for)
    finally:
        bars.close()
    render_outcomes(
        results, as_json=as_json,
        headers=["NODE", "TARGET", "WRITTEN", "TIME", "VERIFIED", "RESULT"],
        row=lambda r: _result_row(plans, r),
        to_json=lambda r: {"node": r.node.name, "ok": r.ok,
                           **(r.value.__dict__ if r.value else {}),
                           "error": r.error.message if r.error else None})


def _prepare(src: Path, *, bar: bool) -> SourceImage:
    """The image, decompressed once if it is .zip/.xz/.gz (a bar on a terminal)."""
    progress = tqdm(desc="decompress", unit="B", unit_scale=True, leave=False) if bar else None

    def on_decompress(done: int, total: int) -> None:
        if progress is not None:
            progress.total = total
            progress.n = done
            progress.refresh()

    try:
        return prepare_source(src, on_decompress)
    finally:
        if progress is not None:
            progress.close()


def _echo_plans(source: SourceImage, plans: list[CardPlan]) -> None:
    tegra = source.report.tegra
    click.echo(f"image {source.original}: L4T {tegra.release if tegra else '?'} "
               f"(JetPack {tegra.release.jetpack if tegra else '?'}), board "
               f"{tegra.board_description if tegra else '?'}; "
               f"{human_bytes(source.plan.mapped_bytes)} of "
               f"{human_bytes(source.plan.image_bytes)} to write")
    for marker in (*source.report.booted_markers, *source.report.configured_markers):
        click.echo(f"  {click.style('note', fg='yellow')} {marker}")
    for p in plans:
        _show_plan(p)


def _plan_json(source: SourceImage, plans: list[CardPlan]) -> dict[str, object]:
    tegra = source.report.tegra
    return {"image": str(source.original), "l4t": str(tegra.release) if tegra else None,
            "mapped_bytes": source.plan.mapped_bytes, "image_bytes": source.plan.image_bytes,
            "cards": [{"node": p.node.name, "target": str(p.target),
                       "warnings": list(p.warnings), "overlay": p.overlay.summary()}
                      for p in plans]}


class _CardBars:
    """One bar per card on a terminal, relabelled per phase (write, verify); nothing in a
    log, where the result table says what was written."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.lock = threading.Lock()
        self.bars: dict[str, tqdm] = {}  # type: ignore[type-arg]

    def progress_for(self, plan: CardPlan) -> CardProgress:
        if not self.enabled:
            return lambda phase, n, total: None
        with self.lock:
            b = tqdm(desc=f"{plan.node.name} write", total=self.total, unit="B",
                     unit_scale=True, position=len(self.bars), leave=True)
            self.bars[plan.node.name] = b
        state = {"phase": "write"}

        def on(phase: str, n: int, total: int) -> None:
            if phase != state["phase"]:
                state["phase"] = phase
                b.set_description(f"{plan.node.name} {phase}")
                b.reset(total=total)
            b.update(n)
        return on

    def close(self) -> None:
        for b in self.bars.values():
            b.close()


def _result_row(plans: list[CardPlan], r: NodeOutcome[CardResult]) -> list[object]:
    v = r.value
    return [r.node.name, by_target(plans, r.node.name),
            human_bytes(v.written_bytes) if v else "-", f"{v.seconds:.1f} s" if v else "-",
            ("yes" if v.verified else "skipped") if v else "-", ok_word(r.ok, "ok", "FAILED")]


def by_target(plans: list[CardPlan], node: str) -> str:
    return next(str(p.target) for p in plans if p.node.name == node)
