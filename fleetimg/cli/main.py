"""The `fleetimg` command: parse options, call one core function, render its result."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from fleetimg import __version__, doctor, inventory, stop
from fleetimg.cli.context import AppContext, pass_app
from fleetimg.cli.render import emit_json, ok_word
from fleetimg.errors import FleetimgError, UsageError
from fleetimg.paths import default_inventory, log_file


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
    default=None, envvar="FLEETIMG_INVENTORY", show_envvar=True,
    help="Fleet inventory file [default: ./fleet.toml].",
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
    ctx.obj = AppContext(inventory_path or default_inventory(), verbose)


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        fh.setLevel(logging.DEBUG)
        root.addHandler(fh)
    except OSError:
        pass


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
    """Write a commented starter fleet.toml."""
    target = output or app.inventory_path
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="use --force to overwrite it")
    text = inventory.starter_toml(nodes=nodes, subnet=subnet, name=name, l4t=l4t, module=module)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
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
    click.secho("interrupted: stopped before finishing", fg="red", err=True)
    for line in stop.unfinished():
        click.echo(f"unfinished: {line}", err=True)
    sys.exit(stop.exit_code())


def main(argv: list[str] | None = None) -> None:
    stop.install()
    try:
        cli.main(args=argv, prog_name="fleetimg", standalone_mode=False)
    except click.exceptions.Abort:
        if stop.requested():
            _interrupted()
        click.secho("aborted", fg="red", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, stop.Interrupted):
        _interrupted()
    except FleetimgError as exc:
        if stop.requested():
            _interrupted()
        click.secho(f"error: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        path = log_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(traceback.format_exc())
        except OSError:
            path = Path("(log file not writable)")
        click.secho(f"error: unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
        click.echo(f"hint: this is a fleetimg bug; the traceback is in {path}", err=True)
        sys.exit(1)
