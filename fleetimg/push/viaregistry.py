"""`push --via registry`: the image goes once to the workstation's registry, and every node
that lacks it pulls from there. Planned and executed here, like the SSH path: a plan that
writes nothing (what `--dry-run` shows), then one outcome per node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetimg.inventory import Node
from fleetimg.localimage import LocalImage, docker_client, resolve_image
from fleetimg.parallel import NodeOutcome
from fleetimg.push import registry as reg
from fleetimg.push.engine import PushOptions, preflight
from fleetimg.push.plan import Action, NodePlan
from fleetimg.ssh import Ssh


@dataclass(frozen=True)
class RegistryPushPlan:
    image: LocalImage
    registry: reg.RegistryInfo
    nodes: tuple[NodeOutcome[NodePlan], ...]  # the pre-flight of every selected node

    @property
    def pullers(self) -> list[NodePlan]:
        """The nodes that lack the image (or its name) and pull it."""
        return [p.value for p in self.nodes
                if p.value is not None and p.value.action in (Action.SEND, Action.TAG)]

    def action(self, outcome: NodeOutcome[NodePlan]) -> str:
        """What the node does: pull, skip, or why it cannot."""
        if outcome.value is None:
            return "unreachable"
        pulling = {p.node.name for p in self.pullers}
        return "pull" if outcome.node.name in pulling else outcome.value.action.value


@dataclass(frozen=True)
class RegistryPushResult:
    node: str
    ok: bool
    detail: str


def plan_registry_push(ssh: Ssh, nodes: Sequence[Node], image: str, *,
                       parallel: int) -> RegistryPushPlan:
    """Everything checked, nothing sent: the registry runs, the image exists, each node's
    pre-flight (reachable, L4T, disk, what it has)."""
    info = reg.require_registry()
    local = resolve_image(docker_client(), image)
    plans = preflight(ssh, nodes, local, PushOptions(parallel=parallel))
    return RegistryPushPlan(local, info, tuple(plans))


def execute_registry_push(ssh: Ssh, plan: RegistryPushPlan, *,
                          parallel: int) -> list[RegistryPushResult]:
    """Push once to the registry (only if a node needs it), then every puller pulls in
    parallel; one result per selected node, in inventory order."""
    pullers = plan.pullers
    remote_ref = reg.push_to_registry(plan.image, plan.registry) if pullers else ""
    pulled = {r.node.name: r for r in reg.pull_everywhere(ssh, pullers, plan.image,
                                                          remote_ref, parallel)}
    results = []
    for p in plan.nodes:
        r = pulled.get(p.node.name)
        if r is not None:
            ok, what = r.ok, (r.value if r.ok else r.error.message if r.error else "")
        elif p.value is not None and p.value.action is Action.SKIP:
            ok, what = True, "skipped: already has it"
        else:
            ok = False
            what = p.value.reason if p.value else (p.error.message if p.error else "")
        results.append(RegistryPushResult(p.node.name, ok, what or ""))
    return results
