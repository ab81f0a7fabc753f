"""Every `fleetimg ...` command line in the README and docs/ is one the CLI takes: the
command exists and so does every option, as click parses them (nothing runs). A renamed
option or command fails here before a reader finds it."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest

from fleetimg.cli.main import cli

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?:bash|sh|console)?\n(.*?)^```", re.MULTILINE | re.DOTALL)


def command_lines(text: str) -> list[str]:
    """fleetimg invocations in the page's code blocks: one per line or `;`/`&&` part."""
    found = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r";|&&|\|", line):
                part = part.strip().removeprefix("sudo ").strip()
                if part.startswith("fleetimg ") and "_FLEETIMG_COMPLETE" not in part:
                    found.append(part)
    return found


def parse(argv: list[str]) -> None:
    """Parse `argv` down to its leaf command as click would, without invoking anything.
    A value click rejects (a path that does not exist here) is not the page's error: the
    names of commands and options, and the count of arguments, are."""
    command: click.Command = cli
    ctx = command.make_context("fleetimg", argv)
    while isinstance(command, click.Group):
        with warnings.catch_warnings():
            # Click < 9 keeps the subcommand's name apart (deprecated); Click 9, in args.
            warnings.simplefilter("ignore", DeprecationWarning)
            protected = list(getattr(ctx, "protected_args", []))
        rest = [*protected, *ctx.args]
        if not rest:
            return
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None, name
        command = sub
        ctx = sub.make_context(name or "", rest, parent=ctx)


def cases() -> list[tuple[str, str]]:
    return [(page.name, line) for page in PAGES for line in command_lines(page.read_text())]


def test_the_pages_hold_commands_to_check() -> None:
    names = {name for name, _ in cases()}
    assert {"README.md", "push.md", "sdcard.md", "apply.md", "run.md", "lab.md"} <= names


@pytest.mark.parametrize(("page", "line"), cases())
def test_each_documented_command_is_one_the_cli_takes(page: str, line: str) -> None:
    text = line.split(" #", 1)[0]
    # A synopsis's optional parts, "[--l4t R32.7.1]", are checked as if given.
    argv = shlex.split(re.sub(r"\[(-[^]]*)\]", r"\1", text))[1:]
    try:
        parse(argv)
    except click.BadParameter:
        pass
    except click.UsageError as exc:
        pytest.fail(f"{page}: `{text}`: {exc.format_message()}")


def test_a_wrong_option_is_caught() -> None:
    with pytest.raises(click.UsageError, match="--no-such-option"):
        parse(["push", "my/app:1", "--no-such-option"])
    with pytest.raises(click.UsageError, match="No such command"):
        parse(["lab", "no-such-command"])
