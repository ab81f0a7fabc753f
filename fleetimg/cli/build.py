"""`fleetimg targets` and `fleetimg build`: arm64 images matched to the boards' L4T."""

from __future__ import annotations

from pathlib import Path

import click

from fleetimg.build.builder import BuildOptions, require_local_base, run_build, smoke_test
from fleetimg.build.plan import BuildPlan, base_image, parse_build_args, plan_builds
from fleetimg.build.releases import load_aliases, load_table
from fleetimg.build.targets import load_target, target_names
from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import emit_json, table
from fleetimg.inventory import Node
from fleetimg.probe import probed_releases


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json: bool) -> None:
    """Build targets and the NGC base each uses per L4T release."""
    table_ = load_table()
    rows, data = [], []
    for name in target_names():
        t = load_target(name)
        for rel, images in sorted(table_.items()):
            column = t.variant(images.family).base_column
            if t.needs_triton and not images.triton:
                base = "- (no Triton for this JetPack)"
            else:
                base = base_image(images, column)
            extra = (f" + Triton {images.triton} tarball"
                     if t.needs_triton and images.triton and column != "triton_image" else "")
            rows.append([name, rel, images.jetpack, base + extra])
            data.append({"target": name, "l4t": str(rel), "jetpack": images.jetpack,
                         "base": base, "triton": images.triton if t.needs_triton else None})
    if as_json:
        emit_json(data)
        return
    for name in target_names():
        click.echo(f"{name}: {load_target(name).description}")
    click.echo()
    click.echo(table(["TARGET", "L4T", "JETPACK", "BASE"], rows))
    click.echo()
    for rel, (jetpack, images_release) in sorted(load_aliases().items()):
        click.echo(f"{rel} (JetPack {jetpack}) uses the {images_release} images.")
    click.echo("By rule: R32.7.x uses R32.7.1, R35.3 and later R35.4.1, R36.4 and later R36.4.0 "
               "(R36.0-36.3 and R36.4+ never share images); JetPack 7 (R38/R39) is not "
               "supported yet.")


def _describe(plan: BuildPlan) -> list[str]:
    lines = [f"target    {plan.target.name} ({plan.platform})",
             f"for       boards on {', '.join(str(b) for b in plan.boards)}: "
             f"L4T {plan.images.l4t} images, JetPack {plan.images.jetpack}"
             + (f" (nodes {', '.join(plan.nodes)})" if plan.nodes else ""),
             f"base      {plan.base}", f"tags      {', '.join(plan.tags)}"]
    lines += [f"build-arg {k}={v}" for k, v in plan.build_args.items()]
    lines += [f"label     {k}={v}" for k, v in plan.labels.items()
              if k.startswith("io.fleetimg.")]
    return lines


@click.command()
@click.argument("target")
@click.option("--l4t", help="Build for this L4T release (else: the selected nodes').")
@click.option("--to", "selection", default=None, help=TO_HELP + " [default: all-nodes]")
@click.option("--probe", is_flag=True, help="Use the L4T the nodes report, not the inventory's.")
@click.option("--tag", "tags", multiple=True, help="Extra tag (repeatable).")
@click.option("--base", help="Base image instead of the NGC one (a local or mirrored image).")
@click.option("--standin", is_flag=True,
              help="Use the offline stand-in base (`fleetimg lab base`), for rehearsals.")
@click.option("--cpu-only", is_flag=True,
              help="Build a CUDA-capable target (horovod) without CUDA, for a CPU base; the "
              "image is labelled CPU-only. Implied by --standin.")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE",
              help="A build argument of the target's Dockerfile, over fleetimg's own "
              "(repeatable): e.g. CROSS_IMAGE=your-mirror/debian:bookworm-slim or "
              "PIP_INDEX=https://pypi.example/simple.")
@click.option("--all-releases", is_flag=True,
              help="When nodes need different bases, build one image per family.")
@click.option("--ca-bundle", type=click.Path(path_type=Path),
              help="CA bundle for build steps behind a TLS-intercepting proxy (a BuildKit "
              "secret: never stored in the image).")
@click.option("--triton-tarball", type=click.Path(path_type=Path),
              help="Use an already downloaded Triton Jetson tarball (offline).")
@click.option("--builder", metavar="NAME",
              help="A docker buildx builder by name (`docker buildx ls`), e.g. one on a "
              "board: `docker buildx create --name jetson ssh://USER@BOARD`. A builder (or an "
              "engine) that runs arm64 itself needs no QEMU here.")
@click.option("--no-cache", is_flag=True, help="Rebuild every step.")
@click.option("--no-smoke", is_flag=True, help="Skip the target's smoke test.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan; build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Plan (and result) as JSON.")
@pass_app
def build(app: AppContext, target: str, l4t: str | None, selection: str | None, probe: bool,
          tags: tuple[str, ...], base: str | None, standin: bool, cpu_only: bool,
          build_args: tuple[str, ...], all_releases: bool,
          ca_bundle: Path | None, triton_tarball: Path | None, builder: str | None,
          no_cache: bool,
          no_smoke: bool, dry_run: bool, as_json: bool) -> None:
    """Build TARGET for linux/arm64 with BuildKit: natively on an arm64 machine or builder,
    else under QEMU on this one.

    The base image is the NGC one for the boards' L4T release (see `fleetimg targets`);
    the image is labelled with what it was built for, which `fleetimg push` checks.
    """
    t = load_target(target)
    nodes: tuple[Node, ...] = ()
    if selection is not None or (l4t is None and app.inventory_path.exists()):
        nodes = app.fleet(resolve=False).select(selection or "all-nodes")
    probed = probed_releases(app.ssh(), nodes) if probe and nodes else {}
    plans = plan_builds(t, nodes, l4t=l4t, directory=Path(str(t.directory)), probed=probed,
                        all_releases=all_releases, tags=tags, base=base, standin=standin,
                        cpu_only=cpu_only, extra_args=parse_build_args(build_args))
    if dry_run:
        if as_json:
            emit_json([p.to_dict() for p in plans])
        else:
            for p in plans:
                click.echo("\n".join(_describe(p)))
            click.echo("dry run: nothing built")
        return
    if standin:
        for p in plans:
            require_local_base(p)
    options = BuildOptions(ca_bundle=ca_bundle, no_cache=no_cache,
                           triton_tarball=triton_tarball, builder=builder)
    echo = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    results = []
    for p in plans:
        if not as_json:
            click.echo("\n".join(_describe(p)), err=True)
        run_build(p, options, echo)
        smoke = "skipped" if no_smoke else smoke_test(p, echo)
        results.append({**p.to_dict(), "smoke": smoke})
        if not as_json:
            click.echo(f"built {', '.join(p.tags)}; smoke test: {smoke}")
    if as_json:
        emit_json(results)
