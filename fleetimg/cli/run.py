"""`fleetimg run`: the field reports' workloads across the fleet, from the inventory."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import click
from tqdm import tqdm

from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import echo_failure, emit_json, error_json, ok_word, table
from fleetimg.errors import UsageError
from fleetimg.parallel import NodeOutcome
from fleetimg.workload.batch import (
    BatchOptions,
    BatchPlan,
    BatchReport,
    Event,
    EventKind,
    execute_batch,
    parse_slices,
    plan_batch,
)
from fleetimg.workload.horovod import (
    HorovodOptions,
    HorovodReport,
    RankLine,
    execute_horovod,
    failure,
    plan_horovod,
)
from fleetimg.workload.nodes import stop_runs

IMAGE_HELP = "Run this image name on every node as is, instead of the target's pushed images."


@click.group(invoke_without_command=True)
@click.option("--stop", "stop_flag", is_flag=True,
              help="Stop and remove every container `fleetimg run` started on the nodes.")
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --stop).")
@click.pass_context
def run(ctx: click.Context, stop_flag: bool, selection: str, as_json: bool) -> None:
    """Run a workload across the boards, from the images `fleetimg push` put there.

    \b
      fleetimg run pytorch               batch inference, one slice per board
      fleetimg run horovod -np 3         Horovod training across three boards
      fleetimg run --stop                stop what run started, on every node
    """
    if ctx.invoked_subcommand is not None:
        if stop_flag:
            raise UsageError("--stop stops runs; it takes no workload",
                             hint="fleetimg run --stop [--to NODES]")
        return
    if not stop_flag:
        click.echo(ctx.get_help())
        ctx.exit(2)
    app = ctx.find_object(AppContext)
    assert app is not None  # the main group always sets it
    fleet = app.fleet()
    results = stop_runs(app.ssh(), fleet.select(selection))
    _render_stop(results, as_json)


def _render_stop(results: list[NodeOutcome[list[str]]], as_json: bool) -> None:
    if as_json:
        emit_json([{"node": r.node.name, "ok": r.ok, "removed": r.value or [],
                    **error_json(r.error)} for r in results])
    else:
        for r in results:
            if r.ok:
                removed = ", ".join(r.value or []) or "nothing running"
                click.echo(f"{ok_word(True)}   {r.node.name}: {removed}")
            else:
                echo_failure(r.node.name, r.error)
    if any(not r.ok for r in results):
        sys.exit(1)


@run.command("pytorch")
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--images", "images_dir", default=None, metavar="DIR",
              help="Directory of images on every board (an NFS share mounted on each); "
              "default: synthetic images.")
@click.option("--weights", default=None, metavar="FILE",
              help="TorchScript model or ResNet-50 state_dict on every board; `random` (the "
              "default with synthetic images) measures throughput only.")
@click.option("--synthetic", default=120, show_default=True, type=click.IntRange(1),
              help="How many synthetic images the job classifies, over all slices.")
@click.option("--slices", default=None, type=click.IntRange(1),
              help="The job's slice count (TOTAL_JOBS) [default: one per selected node].")
@click.option("--only-slices", "only_text", default=None, metavar="LIST",
              help="Run only these slices (e.g. 1 or 0,2-3): a re-run of failed ones, whose "
              "results replace theirs in the same results file.")
@click.option("--image", "image_ref", default=None, metavar="REF", help=IMAGE_HELP)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              default=BatchOptions.output, show_default=True,
              help="The JSON lines file that collects every image's result.")
@click.option("--dry-run", is_flag=True, help="Show which slice runs where; start nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on standard error.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- WORKER ARGS]")
@pass_app
def pytorch(app: AppContext, selection: str, images_dir: str | None, weights: str | None,
            synthetic: int, slices: int | None, only_text: str | None, image_ref: str | None,
            output: Path, dry_run: bool, quiet: bool, as_json: bool,
            worker_args: tuple[str, ...]) -> None:
    """Batch image classification (ResNet-50), one slice of an indexed job per board.

    Each selected board runs the pytorch image as slice i of T (JOB_COMPLETION_INDEX,
    TOTAL_JOBS: the Indexed Job contract), with the nvidia runtime where the board has it.
    Progress is shown per board; at the end a table of images and images/s per board and
    the total, and every image's result in one JSON lines file (-o). A board that fails is
    reported with its slice and the command that re-runs just that slice. Arguments after
    `--` go to the worker (e.g. `-- --batch-size 4 --size 160`).
    """
    options = BatchOptions(
        target=image_ref or "pytorch", exact_image=image_ref is not None,
        images_dir=images_dir, weights=weights, synthetic=synthetic, slices=slices,
        only_slices=parse_slices(only_text) if only_text else (),
        worker_args=worker_args, output=output)
    ssh = app.ssh()
    plan = plan_batch(ssh, app.fleet().select(selection), options)
    if not as_json:
        _echo_batch_plan(plan)
    if dry_run:
        if as_json:
            emit_json(_batch_plan_json(plan))
        else:
            click.echo("dry run: nothing started")
        return
    # Progress goes to stderr, with --json too: the document on stdout stays whole.
    progress = _BatchProgress(enabled=not quiet)
    try:
        report = execute_batch(ssh, plan, progress.on_event)
    finally:
        progress.close()
    _render_batch(report, as_json)


def _echo_batch_plan(plan: BatchPlan) -> None:
    data = (f"images in {plan.options.images_dir} on the boards" if plan.options.images_dir
            else f"{plan.options.synthetic} synthetic images")
    weights = plan.options.weights or "random"
    click.echo(f"job: {plan.total} slice(s) over {data}, weights {weights}", err=True)
    for s in plan.slices:
        where = s.image or "cannot run"
        click.echo(f"  slice {s.index} -> {s.node.name} ({where})", err=True)


def _batch_plan_json(plan: BatchPlan) -> dict[str, object]:
    return {"slices_total": plan.total, "slices": [
        {"slice": s.index, "node": s.node.name, "image": s.image,
         **error_json(plan.refused.get(s.node.name) if s.image is None else None)}
        for s in plan.slices]}


class _BatchProgress:
    """A bar per slice on a terminal; elsewhere a line when a slice starts and ends, and at
    most one progress line per slice every 10 seconds (logs and CI stay readable)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.lock = threading.Lock()
        self.bars: dict[int, tqdm] = {}  # type: ignore[type-arg]
        self.last: dict[int, float] = {}

    def on_event(self, e: Event) -> None:
        if not self.enabled:
            return
        with self.lock:
            if e.kind is EventKind.STARTED and self.tty:
                self.bars[e.index] = tqdm(desc=f"{e.node} slice {e.index}", total=e.total,
                                          unit="img", position=len(self.bars), leave=False)
            elif e.kind is EventKind.IMAGE and e.index in self.bars:
                bar = self.bars[e.index]
                bar.update(e.done - bar.n)
            elif e.kind is EventKind.STARTED:
                self.last[e.index] = time.monotonic()
                click.echo(f"{e.node}: slice {e.index}: {e.total} images to classify",
                           err=True)
            elif e.kind is EventKind.IMAGE and not self.tty:
                if time.monotonic() - self.last.get(e.index, 0) >= 10:
                    self.last[e.index] = time.monotonic()
                    click.echo(f"{e.node}: slice {e.index}: {e.done}/{e.total or '?'}",
                               err=True)
            elif e.kind is EventKind.LOG:
                self._write(f"{e.node}: {e.text}")
            elif e.kind is EventKind.FINISHED:
                self._write(f"{e.node}: slice {e.index}: done, {e.done} images")
            elif e.kind is EventKind.FAILED:
                self._write(f"{e.node}: slice {e.index}: FAILED: {e.text}")

    def _write(self, text: str) -> None:
        if self.tty:
            tqdm.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _render_batch(report: BatchReport, as_json: bool) -> None:
    rerun = report.rerun_hint()
    if as_json:
        emit_json({
            "slices_total": report.plan.total, "images": report.images,
            "images_per_second": round(report.images_per_second, 3),
            "seconds": round(report.seconds, 1), "output": str(report.output),
            "lines": report.lines, "rerun": rerun,
            "slices": [{"slice": o.index, "node": o.node.name, "ok": o.ok,
                        **(o.stats.__dict__ if o.stats else {}), **error_json(o.error)}
                       for o in report.outcomes]})
    else:
        rows: list[list[object]] = []
        for o in report.outcomes:
            s = o.stats
            rows.append([o.index, o.node.name, ok_word(o.ok, "ok", "FAILED"),
                         s.images if s else None, s.skipped if s else None,
                         f"{s.seconds:.1f}" if s else None,
                         f"{s.images_per_second:.2f}" if s else None, s.device if s else None])
        rows.append(["total", "", "", report.images, "", f"{report.seconds:.1f} wall",
                     f"{report.images_per_second:.2f}", ""])
        click.echo(table(["SLICE", "NODE", "RESULT", "IMAGES", "SKIPPED", "SECONDS",
                          "IMAGES/S", "DEVICE"], rows))
        for o in report.failed:
            echo_failure(o.node.name, o.error)
        click.echo(f"\nresults: {report.output} ({report.lines} image(s))")
        if rerun:
            click.echo(f"re-run the failed slice(s): {rerun}")
    if report.failed:
        sys.exit(1)


@run.command("horovod")
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("-np", "--np", "np", default=None, type=click.IntRange(1),
              help="Ranks in all [default: one per selected node].")
@click.option("--image", "image_ref", default=None, metavar="REF", help=IMAGE_HELP)
@click.option("--port", default=2222, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the image's SSH server (host network) on every node.")
@click.option("--keep", is_flag=True,
              help="Leave the SSH server containers running afterwards (`run --stop` ends "
              "them).")
@click.option("--allow-cpu-only", is_flag=True,
              help="Train with a Horovod built without CUDA (--cpu-only) even on boards "
              "with a GPU: the training then runs on the CPU.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result at the end.")
@click.argument("train", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRAIN ARGS]")
@pass_app
def horovod(app: AppContext, selection: str, np: int | None, image_ref: str | None, port: int,
            keep: bool, allow_cpu_only: bool, as_json: bool, train: tuple[str, ...]) -> None:
    """Train across boards with horovodrun (Gloo over the fleet network).

    Starts the horovod image's SSH server (port 2222, user mpiuser, host network) on every
    selected node, gives mpiuser the fleet-internal key and the other nodes' host keys,
    writes the hostfile from the inventory and launches horovodrun from the first node.
    Every rank's output is shown with its node. The run fails unless every rank finishes
    and, with the image's own script, the replicas end identical.

    After `--`: options for the image's script (`-- --steps 50`), or a whole command
    (`-- python3 /app/my_train.py --epochs 3`).
    """
    options = HorovodOptions(target=image_ref or "horovod", exact_image=image_ref is not None,
                             np=np, train=train, port=port, keep=keep,
                             allow_cpu_only=allow_cpu_only)
    ssh = app.ssh()
    fleet = app.fleet()
    plan = plan_horovod(ssh, fleet.select(selection), options)

    def on_line(line: RankLine) -> None:
        where = f"{line.node}[{line.rank}]" if line.rank is not None else line.node
        click.echo(f"{where}: {line.text}", err=as_json)

    def on_step(text: str) -> None:
        click.echo(f"==> {text}", err=True)

    report = execute_horovod(ssh, fleet, plan, on_line, on_step)
    _render_horovod(report, as_json)


def _render_horovod(report: HorovodReport, as_json: bool) -> None:
    error = None if report.ok else failure(report)
    if as_json:
        emit_json({"ok": report.ok, "np": report.plan.np, "hosts": report.plan.hosts,
                   "interface": report.plan.iface, "exit_code": report.exit_code,
                   "verdict": report.verdict, "seconds": round(report.seconds, 1),
                   **error_json(error)})
    elif error is None:
        click.echo(f"\n{ok_word(True)} {report.plan.np} ranks on {report.plan.hosts} in "
                   f"{report.seconds:.0f} s" + (f": {report.verdict}" if report.verdict else ""))
    else:
        click.echo()
        echo_failure("horovod", error)
    if error is not None:
        sys.exit(1)
