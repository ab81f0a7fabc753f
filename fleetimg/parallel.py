"""Run one operation on many nodes in parallel; a failing node never stops the others."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from fleetimg import stop
from fleetimg.errors import FleetimgError
from fleetimg.inventory import Node

log = logging.getLogger("fleetimg.parallel")

T = TypeVar("T")


@dataclass(frozen=True)
class NodeOutcome(Generic[T]):
    node: Node
    value: T | None
    error: FleetimgError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def for_each_node(
    nodes: Sequence[Node],
    operation: Callable[[Node], T],
    *,
    parallel: int = 8,
    on_done: Callable[[NodeOutcome[T]], None] | None = None,
) -> list[NodeOutcome[T]]:
    """Apply `operation` to every node, at most `parallel` at once; results in node order.

    Called inside stop.cleanup() (undoing work after a Ctrl-C), the workers run there too:
    the cleanup flag is per thread."""
    cleaning = stop.cleaning_up()

    def one(node: Node) -> NodeOutcome[T]:
        start = time.monotonic()
        try:
            with stop.cleanup() if cleaning else contextlib.nullcontext():
                value = operation(node)
        except FleetimgError as exc:
            return NodeOutcome(node, None, exc, time.monotonic() - start)
        except Exception as exc:  # a bug must not take the rest of the fleet down
            log.exception("unexpected error on %s", node.name)
            wrapped = FleetimgError(
                f"{node.name}: unexpected {type(exc).__name__}: {exc}",
                hint="this is a fleetimg bug; the traceback is in the log file",
            )
            return NodeOutcome(node, None, wrapped, time.monotonic() - start)
        return NodeOutcome(node, value, None, time.monotonic() - start)

    results: dict[str, NodeOutcome[T]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(nodes) or 1))) as pool:
        # Never an unbounded wait: in the main thread that would hold off Ctrl-C's handler.
        for future in stop.as_completed(pool.submit(one, node) for node in nodes):
            outcome = future.result()
            results[outcome.node.name] = outcome
            if on_done is not None:
                on_done(outcome)
    return [results[n.name] for n in nodes]
