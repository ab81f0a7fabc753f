"""`fleetimg run pytorch`: batch inference as an indexed job over the boards, without K3s.

Slice i of T runs on a board as the pytorch image's worker with JOB_COMPLETION_INDEX=i and
TOTAL_JOBS=T, exactly as a Kubernetes Indexed Job would start it, so the same image and the
same slicing serve both. The worker writes one JSON line per image to stdout and two
progress lines to stderr (classify.py documents them); fleetimg streams both back over SSH.

A slice's lines reach the results file only when the slice finished: a slice cut off
mid-way leaves nothing behind, so re-running it with `--only-slices` (which replaces that
slice's lines in the same file) gives every image exactly once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

from fleetimg import newfile, stop
from fleetimg.errors import FleetimgError, RunError, UsageError
from fleetimg.inventory import Node
from fleetimg.parallel import for_each_node
from fleetimg.ssh import SSH_FAILED, Ssh
from fleetimg.workload.nodes import (
    RUN_LABEL,
    Kind,
    Worker,
    container_name,
    prepare_workers,
    stop_runs,
)

# Where a node's files appear inside the worker container.
IMAGES_MOUNT = "/data/images"
WEIGHTS_MOUNT = "/models/weights"


@dataclass(frozen=True)
class HostMount:
    name: str  # the volume's name in a K3s manifest
    host: str  # path on the board
    path: str  # path in the container (read-only)


def worker_inputs(images_dir: str | None, weights: str | None,
                  synthetic: int) -> tuple[dict[str, str], list[HostMount]]:
    """What the pytorch worker is told about its data, the same for `run pytorch` and the
    K3s Indexed Job: its environment and the board's files mounted into it."""
    if images_dir and not weights:
        raise UsageError("--images needs --weights: real images want trained weights",
                         hint="--weights /models/resnet50.pt (a path on the boards), or "
                         "leave out --images to measure throughput on synthetic images")
    env: dict[str, str] = {}
    mounts: list[HostMount] = []
    if images_dir:
        env["IMAGE_DIR"] = IMAGES_MOUNT
        mounts.append(HostMount("images", images_dir, IMAGES_MOUNT))
    else:
        env["SYNTHETIC"] = str(synthetic)
    if weights in (None, "", "random"):
        env["WEIGHTS"] = "random"
    else:
        assert weights is not None
        env["WEIGHTS"] = WEIGHTS_MOUNT
        mounts.append(HostMount("weights", weights, WEIGHTS_MOUNT))
    return env, mounts
# Docker's exit code when `docker run` itself fails (no such image, bad runtime).
DOCKER_RUN_FAILED = 125

_SLICE_RE = re.compile(r"^worker (\d+)/(\d+): (\d+) images to classify$")
_DONE_RE = re.compile(r"^worker (\d+)/(\d+): (\d+) images in ([0-9.]+) s = ([0-9.]+) images/s "
                      r"on (\w+), (\d+) skipped$")


@dataclass(frozen=True)
class BatchOptions:
    target: str = "pytorch"
    exact_image: bool = False  # target is an image name to run as is
    images_dir: str | None = None  # on the nodes (an NFS mount); None: synthetic images
    weights: str | None = None  # on the nodes; None with synthetic images: random weights
    synthetic: int = 120
    slices: int | None = None  # T; default: one per selected node
    only_slices: tuple[int, ...] = ()
    worker_args: tuple[str, ...] = ()
    output: Path = Path("pytorch-results.jsonl")


@dataclass(frozen=True)
class SliceStats:
    images: int
    skipped: int
    seconds: float  # the worker's own time over its images, after the warm-up
    images_per_second: float
    device: str


@dataclass(frozen=True)
class SliceOutcome:
    index: int
    node: Node
    stats: SliceStats | None
    error: FleetimgError | None
    seconds: float  # wall time on the node, container start to end

    @property
    def ok(self) -> bool:
        return self.error is None


class EventKind(str, Enum):
    STARTED = "started"  # the worker knows its slice: `total` images
    IMAGE = "image"  # `done` of `total`
    LOG = "log"  # a line the worker logged (a skipped image)
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    node: str
    index: int
    done: int = 0
    total: int = 0
    text: str = ""


@dataclass(frozen=True)
class SlicePlan:
    index: int
    node: Node
    image: str | None  # None: the node cannot run (see refused)


@dataclass(frozen=True)
class BatchPlan:
    total: int
    slices: tuple[SlicePlan, ...]
    workers: tuple[Worker, ...]
    refused: dict[str, FleetimgError]
    options: BatchOptions


@dataclass(frozen=True)
class BatchReport:
    plan: BatchPlan
    outcomes: tuple[SliceOutcome, ...]
    output: Path
    lines: int  # JSON lines in the results file
    seconds: float

    @property
    def failed(self) -> list[SliceOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def images(self) -> int:
        return sum(o.stats.images for o in self.outcomes if o.stats)

    @property
    def images_per_second(self) -> float:
        """The fleet's throughput: the boards' rates added (they run at the same time)."""
        return sum(o.stats.images_per_second for o in self.outcomes if o.stats)

    def rerun_hint(self) -> str | None:
        failed = sorted(o.index for o in self.failed)
        if not failed:
            return None
        bad = {o.node.name for o in self.failed}
        good = [n.name for n in (s.node for s in self.plan.slices) if n.name not in bad]
        return rerun_command(self.plan.options, self.plan.total, failed,
                             sorted(set(good), key=good.index) or sorted(bad))


def rerun_command(options: BatchOptions, total: int, slices: Sequence[int],
                  nodes: Sequence[str]) -> str:
    parts = ["fleetimg run pytorch", *([f"--image {options.target}"] if options.exact_image
                                       else []), f"--to {','.join(nodes)}",
             f"--slices {total}", f"--only-slices {','.join(map(str, slices))}"]
    if options.images_dir:
        parts.append(f"--images {options.images_dir}")
    else:
        parts.append(f"--synthetic {options.synthetic}")
    if options.weights:
        parts.append(f"--weights {options.weights}")
    if options.output != BatchOptions.output:
        parts.append(f"-o {options.output}")
    if options.worker_args:
        parts += ["--", *options.worker_args]
    return " ".join(parts)


def parse_slices(text: str) -> tuple[int, ...]:
    """`1,3` or `0-2,5` as slice indexes."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not (lo.isdigit() and (not dash or hi.isdigit())):
            raise UsageError(f"--only-slices {text!r}: {part!r} is not a slice index or range",
                             hint="e.g. --only-slices 1 or --only-slices 0,2-3")
        out += range(int(lo), int(hi) + 1) if dash else [int(lo)]
    return tuple(sorted(set(out)))


def plan_batch(ssh: Ssh, nodes: Sequence[Node], options: BatchOptions) -> BatchPlan:
    """Which slice runs where, after checking every node can run the image."""
    if not nodes:
        raise UsageError("no nodes selected", hint="--to all-nodes, a group, or node1,node2")
    worker_inputs(options.images_dir, options.weights, options.synthetic)  # checks them
    if options.images_dir is None and options.synthetic < 1:
        raise UsageError(f"--synthetic {options.synthetic}: at least one image",
                         hint="e.g. --synthetic 120")
    total = options.slices or len(nodes)
    wanted = options.only_slices or tuple(range(total))
    outside = [i for i in wanted if i >= total]
    if outside:
        raise UsageError(f"--only-slices {','.join(map(str, outside))}: the job has slices 0 "
                         f"to {total - 1}", hint="--slices T gives the job's slice count "
                         "(the earlier run's node count)")
    workers, refused = prepare_workers(ssh, nodes, options.target, exact=options.exact_image)
    by_name = {w.node.name: w for w in workers}
    slices = tuple(
        SlicePlan(i, node, by_name[node.name].image if node.name in by_name else None)
        for i, node in zip(wanted, _round_robin(nodes, len(wanted)), strict=True))
    return BatchPlan(total, slices, tuple(workers), refused, options)


def _round_robin(nodes: Sequence[Node], count: int) -> Iterator[Node]:
    for i in range(count):
        yield nodes[i % len(nodes)]


def execute_batch(ssh: Ssh, plan: BatchPlan, on_event: Callable[[Event], None] = lambda e: None,
                  ) -> BatchReport:
    """Run every planned slice (each node its slices in turn, the nodes at once); a node
    that fails never stops the others. The results file is written even after a Ctrl-C,
    with the slices that finished."""
    start = time.monotonic()
    workers = {w.node.name: w for w in plan.workers}
    lines: dict[int, list[str]] = {}
    outcomes: dict[int, SliceOutcome] = {}
    guard = threading.Lock()

    def node_run(node: Node) -> None:
        failed: FleetimgError | None = None
        for sp in (s for s in plan.slices if s.node.name == node.name):
            t0 = time.monotonic()
            if sp.image is None or failed is not None:
                error = plan.refused.get(node.name) if sp.image is None else RunError(
                    f"{node.name}: slice {sp.index} not started: an earlier slice failed "
                    f"there ({failed})")
                outcome = SliceOutcome(sp.index, node, None, error, 0.0)
            else:
                try:
                    stats, out = _run_slice(ssh, workers[node.name], sp.index, plan, on_event)
                    outcome = SliceOutcome(sp.index, node, stats, None, time.monotonic() - t0)
                    with guard:
                        lines[sp.index] = out
                except FleetimgError as exc:
                    failed = exc
                    outcome = SliceOutcome(sp.index, node, None, exc, time.monotonic() - t0)
            with guard:
                outcomes[sp.index] = outcome
            if outcome.error is not None:
                on_event(Event(EventKind.FAILED, node.name, sp.index, text=outcome.error.message))

    nodes = list({s.node.name: s.node for s in plan.slices}.values())
    try:
        for ran in for_each_node(nodes, node_run, parallel=len(nodes)):
            # A bug that ended a node's loop early must still show as its slices' failure.
            for sp in plan.slices:
                if ran.error is not None and sp.node.name == ran.node.name \
                        and sp.index not in outcomes:
                    outcomes[sp.index] = SliceOutcome(sp.index, sp.node, None, ran.error, 0.0)
    finally:
        if stop.requested():
            with stop.cleanup():
                stop_runs(ssh, [w.node for w in plan.workers], Kind.PYTORCH)
                stop.note_unfinished(f"slices {_unfinished(plan, outcomes)} of the batch run")
        count = write_results(plan.options.output, plan.total, lines,
                              keep=bool(plan.options.only_slices))
    ordered = tuple(outcomes[s.index] for s in plan.slices if s.index in outcomes)
    return BatchReport(plan, ordered, plan.options.output, count, time.monotonic() - start)


def _unfinished(plan: BatchPlan, outcomes: dict[int, SliceOutcome]) -> str:
    return ",".join(str(s.index) for s in plan.slices
                    if s.index not in outcomes or not outcomes[s.index].ok)


def _slice_command(worker: Worker, index: int, plan: BatchPlan) -> str:
    o = plan.options
    name = container_name(Kind.PYTORCH, str(index))
    inputs, host_mounts = worker_inputs(o.images_dir, o.weights, o.synthetic)
    env = {"JOB_COMPLETION_INDEX": str(index), "TOTAL_JOBS": str(plan.total), **inputs}
    mounts = [a for m in host_mounts for a in ("-v", f"{m.host}:{m.path}:ro")]
    run = worker.command(
        "run", "-d", "--name", name, "--label", f"{RUN_LABEL}={Kind.PYTORCH.value}",
        "--label", f"{RUN_LABEL}.slice={index}", *worker.runtime_args(), *mounts,
        *(a for k, v in env.items() for a in ("-e", f"{k}={v}")), worker.image,
        *o.worker_args)
    # Detached, then followed: the container outlives a dropped SSH session, so `docker
    # wait` gives its real exit code and `run --stop` (or a Ctrl-C) removes it by label.
    d = worker.command()
    return (f"{d} rm -f {name} >/dev/null 2>&1; cid=$({run}) || exit {DOCKER_RUN_FAILED}; "
            f'{d} logs -f "$cid"; rc=$({d} wait "$cid"); {d} rm "$cid" >/dev/null; '
            'exit "$rc"')


def _run_slice(ssh: Ssh, worker: Worker, index: int, plan: BatchPlan,
               on_event: Callable[[Event], None]) -> tuple[SliceStats, list[str]]:
    node = worker.node.name
    state: dict[str, Any] = {"total": 0, "stats": None, "log": []}
    proc = ssh.spawn(worker.node, _slice_command(worker, index, plan))
    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=_read_stderr, daemon=True,
                              args=(proc.stderr, node, index, state, on_event))
    reader.start()
    out: list[str] = []
    try:
        for raw in proc.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # not a result line (a library's print)
            if not isinstance(record, dict) or "file" not in record:
                continue
            record.update(node=node, slice=index, slices=plan.total)
            out.append(json.dumps(record))
            on_event(Event(EventKind.IMAGE, node, index, len(out), state["total"]))
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    stop.child_ended(rc)
    stop.check()
    stats: SliceStats | None = state["stats"]
    if rc == 0 and stats is not None:
        on_event(Event(EventKind.FINISHED, node, index, stats.images, stats.images))
        return stats, out
    raise _slice_error(worker, index, rc, len(out), state)


def _read_stderr(stream: IO[bytes], node: str, index: int, state: dict[str, Any],
                 on_event: Callable[[Event], None]) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if m := _SLICE_RE.match(line):
            state["total"] = int(m.group(3))
            on_event(Event(EventKind.STARTED, node, index, 0, state["total"]))
        elif m := _DONE_RE.match(line):
            state["stats"] = SliceStats(int(m.group(3)), int(m.group(7)), float(m.group(4)),
                                        float(m.group(5)), m.group(6))
        elif line:
            state["log"] = [*state["log"][-19:], line]
            on_event(Event(EventKind.LOG, node, index, text=line))


def _slice_error(worker: Worker, index: int, rc: int, done: int,
                 state: dict[str, Any]) -> RunError:
    node = worker.node.name
    last = state["log"][-1] if state["log"] else ""
    progress = f"after {done} of {state['total'] or '?'} images"
    if rc == SSH_FAILED:
        # The worker's last log line says nothing about a board that went away.
        return RunError(f"{node}: lost the connection during slice {index} {progress}",
                        hint=f"is {node} powered and on the network? "
                        f"`fleetimg nodes probe --to {node}`")
    if rc == DOCKER_RUN_FAILED:
        return RunError(f"{node}: the worker container did not start: "
                        f"{last or 'docker run failed'}",
                        hint=f"try it there: ssh {worker.node.user}@{worker.node.address} "
                        f"{worker.command('run', '--rm', worker.image, '--self-test')}")
    why = {137: "killed (out of memory, or stopped)", 2: "the worker refused its input"}
    return RunError(f"{node}: slice {index} ended with exit code {rc} "
                    f"({why.get(rc, 'failed')}) {progress}" + (f": {last}" if last else ""),
                    hint=f"the worker's log: `fleetimg run pytorch --to {node} --only-slices "
                    f"{index} ...` shows it again; ssh {worker.node.user}@{worker.node.address}")


def write_results(path: Path, total: int, new: dict[int, list[str]], *, keep: bool) -> int:
    """Put finished slices' lines into the results file, written whole, then renamed. With
    `keep` (a re-run of some slices) the file's lines of other slices of the same job (T
    slices) stay; else the file starts over."""
    kept: list[str] = []
    if keep and path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("slices") == total and record.get("slice") not in new:
                kept.append(line)
    if not new and not kept:
        return 0  # nothing finished: an earlier file stays as it was
    body = kept + [line for i in sorted(new) for line in new[i]]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Staged under a random name and renamed over: whole or not at all, and never written
    # through a link someone left where a fixed temporary name would be.
    newfile.write_atomic(path, "".join(f"{line}\n" for line in body).encode())
    return len(body)
