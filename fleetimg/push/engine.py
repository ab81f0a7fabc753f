"""`fleetimg push`: pre-flight every node, arrange relays, then deliver in parallel; one
node's failure never stops the others."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import docker

from fleetimg import programs, remote, stop
from fleetimg.errors import ConnectionFailed, FleetimgError
from fleetimg.inventory import Node, RelayAuth, Runtime
from fleetimg.localimage import LocalImage, assign_images
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.push.plan import CODECS, Action, CodecName, NodePlan, plan_push
from fleetimg.push.relay import (
    Fanout,
    FanoutMode,
    RelayGroup,
    arrange,
    build_table,
    known_host_lines,
    parse_cuts,
    parse_reports,
    remote_command,
    topology,
)
from fleetimg.push.transfer import (
    NodeResult,
    Progress,
    ResultAction,
    StreamOutcome,
    drop_incoming,
    finish,
    incoming_tag,
    push_node,
    stream,
    stream_tag,
)
from fleetimg.ssh import SSH_FAILED, Ssh

log = logging.getLogger("fleetimg.push")

# Nodes a broken relay cut off are re-fed by relay once more, then directly.
MAX_RELAY_ROUNDS = 2


@dataclass(frozen=True)
class PushOptions:
    parallel: int = 4
    codec: CodecName | None = None  # None: the best both ends have
    fanout: Fanout = field(default_factory=lambda: Fanout(FanoutMode.DIRECT))
    relay_auth: RelayAuth | None = None


@dataclass(frozen=True)
class Delivery:
    """Who gets the stream from where: relay groups, direct sends, and why it differs from
    what was asked."""

    groups: list[RelayGroup]
    direct: list[NodePlan]
    notes: list[str]

    @property
    def uplink_plans(self) -> list[NodePlan]:
        """The plans whose stream leaves the workstation."""
        return [*self.direct, *(g.root for g in self.groups)]


@dataclass(frozen=True)
class PushReport:
    image: LocalImage
    plans: list[NodeOutcome[NodePlan]]
    results: list[NodeOutcome[NodeResult]]
    delivery: Delivery | None = None

    @property
    def failed(self) -> list[NodeOutcome[NodeResult]]:
        return [r for r in self.results if not r.ok]

    @property
    def sent_bytes(self) -> int:
        """Bytes through the workstation's uplink."""
        return sum(r.value.sent_bytes for r in self.results if r.value)


@dataclass(frozen=True)
class ImagePlan:
    """One image, the pre-flight plan of each node it goes to, and the relays."""

    image: LocalImage
    plans: list[NodeOutcome[NodePlan]]
    delivery: Delivery


@dataclass(frozen=True)
class FleetPlan:
    """What `push` will do: an image plan per image (one, or one per L4T family when a
    build target is pushed to a mixed fleet), and the nodes no image was found for."""

    images: list[ImagePlan]
    unassigned: list[NodeOutcome[NodePlan]]

    @property
    def refuses_any(self) -> bool:
        return bool(self.unassigned) or any(
            not p.ok or (p.value is not None and p.value.action is Action.REFUSE)
            for ip in self.images for p in ip.plans)


@dataclass(frozen=True)
class FleetReport:
    reports: list[PushReport]
    unassigned: list[NodeOutcome[NodeResult]]

    @property
    def results(self) -> list[NodeOutcome[NodeResult]]:
        return [*(r for rep in self.reports for r in rep.results), *self.unassigned]

    @property
    def failed(self) -> list[NodeOutcome[NodeResult]]:
        return [r for r in self.results if not r.ok]

    @property
    def sent_bytes(self) -> int:
        return sum(rep.sent_bytes for rep in self.reports)


def plan_fleet_push(ssh: Ssh, client: docker.DockerClient, ref: str, nodes: Sequence[Node],
                    options: PushOptions) -> FleetPlan:
    """Resolve IMAGE (or a target's image per family), pre-flight every node, arrange the
    relays. Nothing is sent."""
    assignments, refused = assign_images(client, ref, nodes)
    images = []
    for a in assignments:
        plans = preflight(ssh, a.nodes, a.image, options)
        images.append(ImagePlan(a.image, plans, arrange_delivery(ssh, plans, options)))
    unassigned: list[NodeOutcome[NodePlan]] = [
        NodeOutcome(n, None, refused[n.name], 0.0) for n in nodes if n.name in refused]
    return FleetPlan(images, unassigned)


def execute_fleet_push(ssh: Ssh, plan: FleetPlan, options: PushOptions,
                       progress_for: Callable[[NodePlan], Progress | None] | None = None,
                       relayed_for: Callable[[NodePlan], Progress | None] | None = None,
                       ) -> FleetReport:
    """Deliver each image of the plan in turn (each image's nodes in parallel).
    `progress_for` gives the progress of a stream from here; `relayed_for` that of a node a
    relay feeds (read from the node, in the same uncompressed bytes)."""
    reports = [execute(ssh, ip.image, ip.plans, options, progress_for, ip.delivery,
                       relayed_for) for ip in plan.images]
    unassigned: list[NodeOutcome[NodeResult]] = [
        NodeOutcome(u.node, None, u.error, 0.0) for u in plan.unassigned]
    return FleetReport(reports, unassigned)


def local_tools() -> set[str]:
    return {t for t in ("zstd", "pigz", "gzip") if programs.find_tool(t)}


def preflight(ssh: Ssh, nodes: Sequence[Node], image: LocalImage,
              options: PushOptions) -> list[NodeOutcome[NodePlan]]:
    return plan_push(ssh, nodes, image, codec=options.codec, local_tools=local_tools(),
                     parallel=max(options.parallel, 8))


def arrange_delivery(ssh: Ssh, plans: list[NodeOutcome[NodePlan]],
                     options: PushOptions) -> Delivery:
    ready = [p.value for p in plans if p.value is not None]
    groups, direct, notes = arrange(ssh, ready, options.fanout, options.relay_auth,
                                    parallel=max(options.parallel, 8))
    return Delivery(groups, direct, notes)


def execute(ssh: Ssh, image: LocalImage, plans: list[NodeOutcome[NodePlan]],
            options: PushOptions,
            progress_for: Callable[[NodePlan], Progress | None] | None = None,
            delivery: Delivery | None = None,
            relayed_for: Callable[[NodePlan], Progress | None] | None = None) -> PushReport:
    if delivery is None:
        delivery = arrange_delivery(ssh, plans, options)
    outcomes: dict[str, NodeOutcome[NodeResult]] = {}
    for p in plans:
        if p.error is not None:
            outcomes[p.node.name] = NodeOutcome(p.node, None, p.error, p.seconds)

    def direct_one(plan: NodePlan) -> list[NodeOutcome[NodeResult]]:
        return for_each_node(
            [plan.node], lambda _: push_node(ssh, plan, image,
                                             progress_for(plan) if progress_for else None))

    def group_one(group: RelayGroup) -> list[NodeOutcome[NodeResult]]:
        progress = progress_for(group.root) if progress_for else None
        relayed = (lambda name: relayed_for(group.plan(name))) if relayed_for else None
        return run_group(ssh, image, group, options, progress, relayed=relayed)

    try:
        with ThreadPoolExecutor(max_workers=max(1, options.parallel)) as pool:
            futures = [pool.submit(direct_one, p) for p in delivery.direct]
            futures += [pool.submit(group_one, g) for g in delivery.groups]
            for future in stop.as_completed(futures):
                for outcome in future.result():
                    outcomes[outcome.node.name] = outcome
    except BaseException:
        if stop.requested():
            discard_incoming(ssh, [p.value for p in plans if p.value is not None], image)
        raise
    stop.check()  # a stop that came as the last node finished still counts
    results = [outcomes[p.node.name] for p in plans]
    return PushReport(image, plans, results, delivery)


def run_group(ssh: Ssh, image: LocalImage, group: RelayGroup, options: PushOptions,
              progress: Progress | None, *, round_: int = 1,
              relayed: Callable[[str], Progress | None] | None = None,
              ) -> list[NodeOutcome[NodeResult]]:
    """Stream to the group's root, which relays; verify every member; re-feed the rest."""
    start = time.monotonic()
    root = group.root
    k3s = root.node.runtime is Runtime.K3S
    out = stream(ssh, root, image, remote_command(root.node.name, group.table),
                 skip_layers=root.have_layers,
                 repo_tag=stream_tag(root, image), progress=progress, relayed=relayed)
    stop.check()  # the stream ended because of a stop: verify nothing, re-feed nothing
    reports = parse_reports(out.output)
    elapsed = time.monotonic() - start

    def verify(node: Node) -> NodeResult:
        plan = group.plan(node.name)
        finish(ssh, plan, image)
        assert plan.codec is not None
        is_root = plan is root
        action = ResultAction.IMPORTED if k3s else ResultAction.LOADED
        return NodeResult(node=node.name, action=action,
                          sent_bytes=out.sent if is_root else 0, raw_bytes=out.raw,
                          layers_sent=plan.send_layers,
                          seconds=elapsed if is_root else time.monotonic() - start,
                          codec=plan.codec.name, via=group.parents[node.name],
                          read_bytes=out.read if is_root else 0,
                          source=out.source if is_root else None)

    # A node the watchdog cut off for taking nothing may be frozen, and one whose SSH hop
    # failed (exit 255) may be gone: checking either costs the SSH timeout (10 s). The
    # others are verified, and the orphans below re-fed, while they are checked; they are
    # re-fed last, if they answer at all.
    cut = (set(parse_cuts(out.output))
           | {name for name, (code, _) in reports.items() if code == SSH_FAILED}
           | ({root.node.name} if out.rc == SSH_FAILED else set()))
    cut &= {p.node.name for p in group.members}
    parallel = max(8, options.parallel)
    with ThreadPoolExecutor(max_workers=1) as pool:
        checking = pool.submit(for_each_node, [p.node for p in group.members
                                               if p.node.name in cut], verify,
                               parallel=parallel)
        verified = for_each_node([p.node for p in group.members if p.node.name not in cut],
                                 verify, parallel=parallel)
        results = [v for v in verified if v.ok]
        sources = [group.plan(v.node.name) for v in results]
        rest = _redeliver(ssh, image, group, verified, cut, out, reports, options, round_,
                          sources)
        verified_cut = checking.result()
    results += [v for v in verified_cut if v.ok]
    return results + rest + _redeliver(ssh, image, group, verified_cut, cut, out, reports,
                                       options, round_, sources)


def _redeliver(ssh: Ssh, image: LocalImage, group: RelayGroup,
               verified: list[NodeOutcome[NodeResult]], cut: set[str], out: StreamOutcome,
               reports: dict[str, tuple[int, str]], options: PushOptions, round_: int,
               sources: Sequence[NodePlan]) -> list[NodeOutcome[NodeResult]]:
    """The members of `verified` that lack the image: reported if unreachable, else
    delivered again. Nodes cut off count as missing when naming where the stream broke."""
    missing = {v.node.name for v in verified if not v.ok}
    if not missing:
        return []
    why = {name: why_missing(group, name, missing | cut, out, reports) for name in missing}
    # A node that cannot even be reached now is reported as it is, not planned again.
    gone = [dataclasses.replace(v, error=_with_reason(v.error, why[v.node.name]))
            for v in verified if isinstance(v.error, ConnectionFailed)]
    again = [v.node for v in verified if not v.ok and not isinstance(v.error, ConnectionFailed)]
    if again:
        log.info("re-feeding %s", ", ".join(f"{n.name} ({why[n.name]})" for n in again))
    return gone + refeed(ssh, image, again, why, options, round_=round_ + 1, sources=sources)


def why_missing(group: RelayGroup, name: str, missing: set[str], out: StreamOutcome,
                reports: dict[str, tuple[int, str]]) -> str:
    """Where the stream to `name` broke: at its own hop, or at a relay above it."""
    parent = group.parents[name]
    cut = parse_cuts(out.output).get(name)
    if cut is not None:
        return f"cut off {cut}"
    if parent is not None and parent in missing:
        top = parent
        while (up := group.parents[top]) is not None and up in missing:
            top = up
        return f"cut off: the stream broke at {top}, above it in the relay"
    if parent is None:
        if out.failure is not None:
            return f"reading the local image failed: {out.failure}"
        tail = [ln for ln in out.output.strip().splitlines()
                if not ln.startswith("fleetimg-relay: ")]
        return (f"stream from the workstation ended with exit {out.rc}"
                + (f" ({tail[-1]})" if tail else ""))
    if name in reports:
        code, last = reports[name]
        return f"relay {parent} -> {name} ended with exit {code}" + (f" ({last})" if last else "")
    return f"no report from its relay {parent}"


def refeed(ssh: Ssh, image: LocalImage, nodes: Sequence[Node], why: dict[str, str],
           options: PushOptions, *, round_: int,
           sources: Sequence[NodePlan] = ()) -> list[NodeOutcome[NodeResult]]:
    """Deliver again to nodes a relay did not reach. They are planned again (a node may be
    gone, or hold some layers now). A node that has the image now feeds them over the
    fleet's own network where it can (one hop, not the workstation's uplink); else the
    reachable ones relay among themselves once more (one copy from here, not one each),
    and after that round only direct sends are tried."""
    if not nodes:
        return []
    stop.check()
    replans = plan_push(ssh, nodes, image, codec=options.codec, local_tools=local_tools(),
                        parallel=max(8, options.parallel))
    gone: list[NodeOutcome[NodeResult]] = [
        NodeOutcome(p.node, None, _with_reason(p.error, why[p.node.name]), p.seconds)
        for p in replans if p.error is not None]
    ready = [p for p in replans if p.value is not None]
    fed, ready = _feed_from_node(ssh, image, ready, sources, options, why)
    retry = dataclasses.replace(options, fanout=Fanout(FanoutMode.DIRECT)) \
        if round_ > MAX_RELAY_ROUNDS else options
    delivery = arrange_delivery(ssh, ready, retry)
    results: list[NodeOutcome[NodeResult]] = []
    for group in delivery.groups:
        results += run_group(ssh, image, group, retry, None, round_=round_)
    results += for_each_node([p.node for p in delivery.direct],
                             lambda n: push_node(ssh, _plan_of(delivery.direct, n), image),
                             parallel=options.parallel)
    noted = [dataclasses.replace(o, value=dataclasses.replace(
                 o.value, note=o.value.note or f"re-fed: {why[o.node.name]}"))
             if o.value is not None else
             dataclasses.replace(o, error=_with_reason(o.error, why[o.node.name]))
             for o in results]
    return gone + fed + noted


def _feed_from_node(ssh: Ssh, image: LocalImage, ready: list[NodeOutcome[NodePlan]],
                    sources: Sequence[NodePlan], options: PushOptions, why: dict[str, str],
                    ) -> tuple[list[NodeOutcome[NodeResult]], list[NodeOutcome[NodePlan]]]:
    """Re-feed Docker nodes from a Docker node that has the image now: it saves the image
    under the temporary name and relays it down a chain of them, loading nothing itself.
    Returns the nodes it delivered to, and the plans still to deliver (all of them when no
    source can, or when a node it fed is still missing)."""
    source = next((s for s in sources if s.node.runtime is Runtime.DOCKER and s.probe
                   and "zstd" in s.probe.tools), None)
    takers = [p for p in ready if p.value is not None and p.value.action is Action.SEND
              and p.value.node.runtime is Runtime.DOCKER and p.value.codec is not None
              and p.value.codec.name is CodecName.ZSTD]
    if source is None or options.relay_auth is None or not takers:
        return [], ready
    plans = [source, *(p.value for p in takers if p.value is not None)]
    names = [p.node.name for p in plans]
    parents = topology(names, Fanout(FanoutMode.CHAIN, 1))
    table = build_table(plans, parents, options.relay_auth,
                        known_host_lines(ssh.options.known_hosts, [p.node for p in plans[1:]]),
                        loads={source.node.name: "cat > /dev/null"})
    temp, d = incoming_tag(image), source.docker
    command = (f"{remote.docker(d, 'tag', image.id, temp)} && "
               f"{remote.docker(d, 'save', temp)} | {' '.join(CODECS[CodecName.ZSTD].compress)} | "
               f"{remote_command(source.node.name, table)}; rc=$?; "
               f"{remote.docker(d, 'rmi', temp)} >/dev/null 2>&1; exit $rc")
    start = time.monotonic()
    with contextlib.suppress(FleetimgError):  # whoever it missed is delivered from here
        ssh.run(source.node, command, timeout=3600, check=False)

    def verify(node: Node) -> NodeResult:
        plan = next(p for p in plans if p.node.name == node.name)
        finish(ssh, plan, image)
        return NodeResult(node=node.name, action=ResultAction.LOADED, sent_bytes=0, raw_bytes=0,
                          layers_sent=plan.send_layers, seconds=time.monotonic() - start,
                          codec=CodecName.ZSTD, via=parents[node.name],
                          note=f"re-fed from {source.node.name}: {why[node.name]}")

    verified = for_each_node([p.node for p in plans[1:]], verify,
                             parallel=max(8, options.parallel))
    fed = [v for v in verified if v.ok]
    done = {v.node.name for v in fed}
    return fed, [p for p in ready if p.node.name not in done]


def discard_incoming(ssh: Ssh, plans: Sequence[NodePlan], image: LocalImage) -> None:
    """After a stop: remove the temporary name from every Docker node that was being sent
    to, in case its load had finished. Cleanup work, a few seconds at most."""
    senders = [p for p in plans
               if p.action is Action.SEND and p.node.runtime is Runtime.DOCKER]

    for_each_node([p.node for p in senders],
                  lambda node: drop_incoming(ssh, _plan_of(senders, node), image),
                  parallel=len(senders) or 1)


def _plan_of(plans: Sequence[NodePlan], node: Node) -> NodePlan:
    return next(p for p in plans if p.node.name == node.name)


def _with_reason(error: FleetimgError | None, why: str) -> FleetimgError:
    assert error is not None
    if why in error.message:
        return error
    # The same type (ConnectionFailed stays ConnectionFailed), with the relay's story added.
    told = copy.copy(error)
    told.message = f"{error.message} (relay: {why})"
    told.args = (told.message,)
    return told
