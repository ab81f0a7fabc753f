"""The `fleetimg` command: parse options, call one core function, render its result."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import NoReturn, TextIO

import click
from click.core import ParameterSource

from fleetimg import __version__, doctor, inventory, stop
from fleetimg.cli.context import AppContext, pass_app
from fleetimg.cli.render import emit_json, ok_word
from fleetimg.errors import FleetimgError
from fleetimg.inventory import write_starter
from fleetimg.paths import default_inventory, log_file


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
    default=None, envvar="FLEETIMG_INVENTORY", show_envvar=True,
    help="Fleet inventory file [default: fleet.toml here or in the nearest parent "
    "directory that has one].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every command fleetimg runs.")
@click.version_option(__version__, prog_name="fleetimg")
@click.pass_context
def cli(ctx: click.Context, inventory_path: Path | None, verbose: bool) -> None:
    """Build, push and flash images for a small NVIDIA Jetson cluster.

    Describe the fleet once in fleet.toml (`fleetimg init`), then:

    \b
      fleetimg nodes probe            what every board runs (L4T, Docker, disk)
      fleetimg apply --dry-run        what running boards differ from fleet.toml
      fleetimg doctor                 is this workstation ready?
      fleetimg lab up --nodes 3       rehearse on local containers first
    """
    _setup_logging(verbose)
    if ctx.get_parameter_source("inventory_path") is ParameterSource.ENVIRONMENT \
            and not os.environ.get("FLEETIMG_INVENTORY", "").strip():
        inventory_path = None  # FLEETIMG_INVENTORY= (set but empty) means unset, not "."
    if os.environ.get("NO_COLOR"):
        ctx.color = False  # no-color.org: no ANSI styles, terminal or not
    ctx.obj = AppContext(inventory_path or default_inventory(), verbose,
                         inventory_given=inventory_path is not None)


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("fleetimg")
    root.setLevel(logging.DEBUG)
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.DEBUG)
        root.addHandler(handler)
    try:
        path = log_file()
        _private_log(path)
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        # Every command line (secrets masked) only when asked for with -v; the file keeps
        # what went wrong either way.
        fh.setLevel(logging.DEBUG if verbose else logging.INFO)
        root.addHandler(fh)
    except OSError:
        pass


def _private_log(path: Path) -> None:
    """The log names hosts, paths and commands: the user's alone (0600 in a 0700
    directory), created without following a link."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


@cli.command()
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 200),
              help="How many boards.")
@click.option("--subnet", default="192.168.10.0/24", show_default=True,
              help="Network the boards live on (CIDR).")
@click.option("--name", default="jetson-fleet", show_default=True, help="Fleet name.")
@click.option("--l4t", default="R32.7.1", show_default=True,
              help="L4T release the boards run (R32.7.1 = JetPack 4.6.1).")
@click.option("--module", default="nano-4gb", show_default=True,
              type=click.Choice(list(inventory.MODULES)), help="Jetson module of every board.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write [default: the -i inventory path].")
@pass_app
def init(app: AppContext, nodes: int, subnet: str, name: str, l4t: str, module: str,
         force: bool, output: Path | None) -> None:
    """Write a commented starter fleet.toml (here, unless -o or -i names another)."""
    # Not a fleet.toml found in a parent directory: init starts a fleet where it is run.
    target = output or (app.inventory_path if app.inventory_given else Path("fleet.toml"))
    write_starter(target, inventory.starter_toml(nodes=nodes, subnet=subnet, name=name,
                                                 l4t=l4t, module=module), force=force)
    click.echo(f"wrote {target} with {nodes} node(s) on {subnet}; edit addresses and modules, "
               "then run `fleetimg nodes probe`")


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(as_json: bool) -> None:
    """Check this workstation: Docker, BuildKit, QEMU arm64, ssh, e2fsprogs, sgdisk."""
    checks = doctor.run_checks()
    failed = [c for c in checks if not c.ok and c.required]
    if as_json:
        emit_json([c.__dict__ for c in checks])
    else:
        for c in checks:
            word = ok_word(c.ok, "ok", "FAIL" if c.required else "warn")
            click.echo(f"{word:>4}  {c.name:<18} {c.detail}")
            if not c.ok and c.fix:
                click.echo(f"      fix: {c.fix}")
        if failed:
            click.echo(f"\n{len(failed)} required check(s) failed; `bash scripts/setup-host.sh` "
                       "installs and starts all of them.")
    if failed:
        sys.exit(1)


def _register() -> None:
    from fleetimg.cli import apply, build, k3s, lab, nodes, push, registry, run, sdcard

    cli.add_command(nodes.nodes)
    cli.add_command(lab.lab)
    cli.add_command(sdcard.sdcard)
    cli.add_command(push.push)
    cli.add_command(registry.registry)
    cli.add_command(build.build)
    cli.add_command(build.targets)
    cli.add_command(apply.apply)
    cli.add_command(run.run)
    cli.add_command(k3s.k3s)


_register()


def _interrupted() -> None:
    # Ctrl-C / SIGTERM: fleetimg.stop already ended the children and the workers have
    # unwound; say what was left unfinished, exit 130 (SIGINT) or 143 (SIGTERM).
    click.secho("interrupted: stopped before finishing", fg="red", err=True, color=_color())
    for line in stop.unfinished():
        click.echo(f"unfinished: {line}", err=True)
    sys.exit(stop.exit_code())


def _color() -> bool | None:
    """False under NO_COLOR (no-color.org), else click's own choice (a terminal or not)."""
    return False if os.environ.get("NO_COLOR") else None


def _wants_json(argv: list[str] | None) -> bool:
    """Whether the command line asked for --json (before any `--`): its errors are then a
    JSON document on stdout too, so a script reading stdout never parses plain text."""
    args = sys.argv[1:] if argv is None else argv
    return "--json" in (args[:args.index("--")] if "--" in args else args)


# Control characters in a message (a path, a name the user typed) never reach the
# terminal raw: an escape sequence could rewrite what the user sees.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _Watched:
    """stdout, noting whether the command wrote to it: an error after a command's own JSON
    document must not add a second one (a script parses one document)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.wrote = stream, False

    def write(self, text: str) -> int:
        self.wrote = self.wrote or bool(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


_stdout: _Watched | None = None


def _error_json(kind: str, message: str, hint: str | None, code: int) -> None:
    """The error as --json's document, unless the command already printed its own."""
    if _stdout is not None and not _stdout.wrote:
        emit_json({"error": {"type": kind, "message": message, "hint": hint,
                             "exit_code": code}})


def _fail(message: str, hint: str | None, code: int, kind: str) -> NoReturn:
    _error_json(kind, message, hint, code)
    click.secho(f"error: {_printable(message)}", fg="red", err=True, color=_color())
    if hint:
        click.echo(f"hint: {_printable(hint)}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    global _stdout
    stop.install()
    if _wants_json(argv):
        _stdout = _Watched(sys.stdout)
        sys.stdout = _stdout
    try:
        cli.main(args=argv, prog_name="fleetimg", standalone_mode=False)
    except click.exceptions.Abort:
        if stop.requested():
            _interrupted()
        click.secho("aborted", fg="red", err=True, color=_color())
        sys.exit(130)
    except click.ClickException as exc:
        _error_json("UsageError", exc.format_message(), "see --help", exc.exit_code)
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, stop.Interrupted):
        _interrupted()
    except FleetimgError as exc:
        if stop.requested():
            _interrupted()
        _fail(exc.message, exc.hint, exc.exit_code, type(exc).__name__)
    except Exception as exc:
        path = log_file()
        try:
            _private_log(path)
            with path.open("a") as fh:
                fh.write(traceback.format_exc())
        except OSError:
            path = Path("(log file not writable)")
        _fail(f"unexpected {type(exc).__name__}: {exc}",
              f"this is a fleetimg bug; the traceback is in {path}", 1, "InternalError")
