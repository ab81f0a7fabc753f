"""`fleetimg push`: pre-flight every node, then deliver in parallel; one node's failure
never stops the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleetimg import run as runmod
from fleetimg.inventory import Node
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.push.localimage import LocalImage
from fleetimg.push.plan import NodePlan, plan_push
from fleetimg.push.transfer import NodeResult, Progress, push_node
from fleetimg.ssh import Ssh


@dataclass(frozen=True)
class PushOptions:
    parallel: int = 4
    codec: str = "auto"


@dataclass(frozen=True)
class PushReport:
    image: LocalImage
    plans: list[NodeOutcome[NodePlan]]
    results: list[NodeOutcome[NodeResult]]

    @property
    def failed(self) -> list[NodeOutcome[NodeResult]]:
        return [r for r in self.results if not r.ok]

    @property
    def sent_bytes(self) -> int:
        return sum(r.value.sent_bytes for r in self.results if r.value)


def local_tools() -> set[str]:
    return {t for t in ("zstd", "pigz", "gzip") if runmod.find_tool(t)}


def preflight(ssh: Ssh, nodes: Sequence[Node], image: LocalImage,
              options: PushOptions) -> list[NodeOutcome[NodePlan]]:
    return plan_push(ssh, nodes, image, codec=options.codec, local_tools=local_tools(),
                     parallel=max(options.parallel, 8))


def execute(ssh: Ssh, image: LocalImage, plans: list[NodeOutcome[NodePlan]],
            options: PushOptions,
            progress_for: Callable[[NodePlan], Progress | None] | None = None) -> PushReport:
    by_node = {p.node.name: p for p in plans}

    def one(node: Node) -> NodeResult:
        outcome = by_node[node.name]
        if outcome.error is not None:
            raise outcome.error
        plan = outcome.value
        assert plan is not None
        progress = progress_for(plan) if progress_for else None
        return push_node(ssh, plan, image, progress)

    results = for_each_node([p.node for p in plans], one, parallel=options.parallel)
    return PushReport(image, plans, results)
