"""Output helpers for the CLI: plain tables, JSON, colored status words."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from fleetimg.errors import FleetimgError
from fleetimg.parallel import NodeOutcome
from fleetimg.units import human_bytes

__all__ = ["echo_failure", "emit_json", "error_json", "human_bytes", "node_message", "ok_word",
           "render_outcomes", "table"]

T = TypeVar("T")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = (c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True))
        lines.append("  ".join(padded).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _width(text: str) -> int:
    return len(click.unstyle(text))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def ok_word(ok: bool, yes: str = "ok", no: str = "FAIL") -> str:
    return click.style(yes, fg="green") if ok else click.style(no, fg="red", bold=True)


def node_message(name: str, message: str) -> str:
    """`name: message`, unless core already named the node ("node2: refused: ...")."""
    if message.startswith((f"{name}:", f"{name} (")):
        return message
    return f"{name}: {message}"


def error_json(error: FleetimgError | None) -> dict[str, str | None]:
    """A failed node's error and hint, as every --json document gives them."""
    return {"error": error.message if error else None, "hint": error.hint if error else None}


def echo_failure(name: str, error: FleetimgError | None) -> None:
    """One red line naming the node and what went wrong, then the hint that fixes it."""
    if error is None:
        return
    click.echo(f"{ok_word(False)} {node_message(name, error.message)}")
    if error.hint:
        click.echo(f"     hint: {error.hint}")


def render_outcomes(
    results: Sequence[NodeOutcome[T]], *, as_json: bool, headers: Sequence[str],
    row: Callable[[NodeOutcome[T]], Sequence[Any]],
    to_json: Callable[[NodeOutcome[T]], dict[str, Any]],
    json_document: Callable[[list[dict[str, Any]]], Any] = lambda rows: rows,
    after_table: Callable[[], None] = lambda: None, summary: str | None = None,
) -> None:
    """Per-node outcomes as --json or as a table, then one failure line + hint per failed
    node and a summary; exits 1 when any node failed. Every fleet command ends here."""
    failed = [r for r in results if not r.ok]
    if as_json:
        emit_json(json_document([to_json(r) for r in results]))
    else:
        click.echo(table(headers, [row(r) for r in results]))
        after_table()
        for r in failed:
            echo_failure(r.node.name, r.error)
        if summary:
            click.echo(f"\n{summary}")
    if failed:
        sys.exit(1)
