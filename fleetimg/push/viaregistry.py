"""`push --via registry`: each image goes once to the workstation's registry, and every node
that lacks it pulls from there. Planned and executed as the SSH path is: the same plan (an
image per node, so a target pushed to a mixed fleet gives each family its own image, and
every node's pre-flight), then the same report, one `NodeResult` per node."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import docker
import requests

from fleetimg.errors import PushError
from fleetimg.inventory import Node
from fleetimg.localimage import LocalImage
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.push import registry as reg
from fleetimg.push.engine import (
    FleetPlan,
    FleetReport,
    ImagePlan,
    PushOptions,
    PushReport,
    plan_fleet_push,
)
from fleetimg.push.plan import Action, NodePlan
from fleetimg.push.transfer import NodeResult, ResultAction
from fleetimg.ssh import Ssh

# What a node that pulled says it came from (NodeResult.via, the FROM column).
FROM_REGISTRY = "registry"

# A node's pull finished: how many bytes it downloaded.
PullProgress = Callable[[NodePlan, int], None]


@dataclass(frozen=True)
class RegistryPushPlan:
    fleet: FleetPlan  # the SSH path's plan: images, each node's pre-flight
    registry: reg.RegistryInfo

    @staticmethod
    def pullers(ip: ImagePlan) -> list[NodePlan]:
        """The nodes that lack the image (or its name) and pull it."""
        return [p.value for p in ip.plans
                if p.value is not None and p.value.action in (Action.SEND, Action.TAG)]

    @property
    def pulling(self) -> set[str]:
        return {p.node.name for ip in self.fleet.images for p in self.pullers(ip)}


def plan_registry_push(ssh: Ssh, client: docker.DockerClient, ref: str, nodes: Sequence[Node],
                       *, parallel: int) -> RegistryPushPlan:
    """Everything checked, nothing sent: the registry runs, an image for each node, each
    node's pre-flight (reachable, L4T, disk, what it has)."""
    info = reg.require_registry()
    return RegistryPushPlan(plan_fleet_push(ssh, client, ref, nodes,
                                            PushOptions(parallel=parallel)), info)


def _blob_sizes(info: reg.RegistryInfo, image: LocalImage) -> list[int]:
    """The compressed size of each layer as the registry holds it, in layer order: what a
    node that lacks those layers downloads."""
    name, _, tag = image.ref.split("@")[0].rpartition(":")
    try:
        manifest = requests.get(f"http://{info.upload_endpoint}/v2/{name}/manifests/{tag}",
                                headers={"Accept": reg.MANIFEST_TYPES}, timeout=10).json()
        return [int(layer.get("size", 0)) for layer in manifest.get("layers", [])]
    except (requests.RequestException, ValueError, TypeError):
        return []  # sizes are for the report; a registry that will not say costs nothing


def execute_registry_push(ssh: Ssh, plan: RegistryPushPlan, *, parallel: int,
                          on_step: Callable[[str], None] = lambda s: None,
                          on_pulled: PullProgress | None = None) -> FleetReport:
    """Per image: push it once to the registry (only if a node needs it), then every node
    that lacks it pulls in parallel; nodes that already have it are skipped; a node's
    failure is its own. The report is the SSH path's."""
    reports = []
    for ip in plan.fleet.images:
        pullers = plan.pullers(ip)
        remote_ref, sizes = "", []
        if pullers:
            on_step(f"pushing {ip.image.ref} to the registry at {plan.registry.url}")
            remote_ref = reg.push_to_registry(ip.image, plan.registry)
            sizes = _blob_sizes(plan.registry, ip.image)
            on_step(f"{len(pullers)} node(s) pulling {ip.image.ref}")
        by_name = {p.node.name: p for p in pullers}

        def pull(node: Node, image: LocalImage = ip.image, ref: str = remote_ref,
                 blobs: list[int] = sizes, plans: dict[str, NodePlan] = by_name) -> NodeResult:
            p = plans[node.name]
            start = time.monotonic()
            reg.pull_on_node(ssh, p, image, ref)
            got = sum(blobs[p.have_layers:]) if p.action is Action.SEND else 0
            if on_pulled is not None:
                on_pulled(p, got)
            return NodeResult(node=node.name, action=ResultAction.PULLED, sent_bytes=got,
                              raw_bytes=p.send_bytes, layers_sent=p.send_layers,
                              seconds=time.monotonic() - start, via=FROM_REGISTRY)

        pulled = {r.node.name: r for r in for_each_node([p.node for p in pullers], pull,
                                                        parallel=parallel)}
        results = [pulled.get(o.node.name) or _not_pulled(o) for o in ip.plans]
        reports.append(PushReport(ip.image, ip.plans, results))
    unassigned: list[NodeOutcome[NodeResult]] = [
        NodeOutcome(u.node, None, u.error, 0.0) for u in plan.fleet.unassigned]
    return FleetReport(reports, unassigned)


def _not_pulled(o: NodeOutcome[NodePlan]) -> NodeOutcome[NodeResult]:
    """A node that pulled nothing: it had the image, or its pre-flight refused it."""
    if o.value is not None and o.value.action is Action.SKIP:
        return NodeOutcome(o.node, NodeResult(node=o.node.name, action=ResultAction.SKIPPED,
                                              sent_bytes=0, raw_bytes=0, layers_sent=0,
                                              seconds=0.0), None, o.seconds)
    error = o.error or PushError(f"{o.node.name}: refused: "
                                 f"{o.value.reason if o.value else 'no plan'}")
    return NodeOutcome(o.node, None, error, o.seconds)
