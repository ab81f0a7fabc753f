"""`fleetimg k3s`: K3s manifests for the fleet's workloads, and the node labels they select."""

from __future__ import annotations

from pathlib import Path

import click

from fleetimg.cli.context import TO_HELP, AppContext, pass_app
from fleetimg.cli.render import error_json, ok_word, render_outcomes
from fleetimg.errors import UsageError
from fleetimg.newfile import write_atomic
from fleetimg.parallel import NodeOutcome
from fleetimg.workload.k3s import (
    DEFAULT_K8S_VERSION,
    WORKLOADS,
    ManifestOptions,
    label_command,
    label_nodes,
    load_yaml,
    manifests,
    to_yaml,
    validate,
)

VERSION_HELP = "Kubernetes minor whose API schema the manifests are checked against."


@click.group()
def k3s() -> None:
    """K3s objects for the fleet's workloads, from the inventory and the pushed images."""


@k3s.command("manifests")
@click.argument("target", type=click.Choice(sorted(WORKLOADS)))
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--image", "image_ref", default=None, metavar="REF",
              help="This image name on every node, instead of the target's pushed images.")
@click.option("--images", "images_dir", default=None, metavar="DIR",
              help="pytorch: directory of images on every board (hostPath); default: "
              "synthetic images.")
@click.option("--weights", default=None, metavar="FILE",
              help="pytorch: weights file on every board (hostPath); default: random.")
@click.option("--synthetic", default=120, show_default=True, type=click.IntRange(1),
              help="pytorch: synthetic images over all slices.")
@click.option("--models", "models_dir", default="/models", show_default=True, metavar="DIR",
              help="triton: the model repository on every board (hostPath).")
@click.option("--k8s-version", default=DEFAULT_K8S_VERSION, show_default=True,
              help=VERSION_HELP)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write the YAML here [default: standard output].")
@pass_app
def manifests_cmd(app: AppContext, target: str, selection: str, image_ref: str | None,
                  images_dir: str | None, weights: str | None, synthetic: int,
                  models_dir: str, k8s_version: str, output: Path | None) -> None:
    """Write TARGET's K3s objects: an Indexed Job (pytorch) or a DaemonSet (triton).

    One object per L4T release among the selected nodes, each naming the image exactly as
    `fleetimg push TARGET` delivered it (imagePullPolicy: Never), with runtimeClassName
    fleetimg-nvidia (handler nvidia) and node selection by the labels `fleetimg k3s label`
    sets. Checked against the Kubernetes API schema before anything is written; no cluster
    needed.
    """
    options = ManifestOptions(target=target, image=image_ref, images_dir=images_dir,
                              weights=weights, synthetic=synthetic, models_dir=models_dir)
    docs = manifests(app.fleet(resolve=False).select(selection), options)
    validate(docs, k8s_version)
    text = to_yaml(docs)
    if output is None:
        click.echo(text, nl=False)
        return
    write_atomic(output, text.encode())
    kinds = ", ".join(f"{d['kind']} {d['metadata']['name']}" for d in docs)
    click.echo(f"wrote {output}: {kinds} (valid for Kubernetes {k8s_version}); "
               f"apply: sudo k3s kubectl apply -f {output.name}", err=True)


@k3s.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path,
                                                                  exists=True, dir_okay=False))
@click.option("--k8s-version", default=DEFAULT_K8S_VERSION, show_default=True,
              help=VERSION_HELP)
def validate_cmd(files: tuple[Path, ...], k8s_version: str) -> None:
    """Check manifests (edited by hand, say) the way `k3s manifests` checks its own."""
    for path in files:
        docs = load_yaml(path.read_text())
        validate(docs, k8s_version)
        click.echo(f"{ok_word(True)}   {path}: {len(docs)} object(s) valid for Kubernetes "
                   f"{k8s_version}")


@k3s.command("label")
@click.option("--to", "selection", default="all-nodes", show_default=True, help=TO_HELP)
@click.option("--server", default=None, metavar="NODE",
              help="The K3s server to run kubectl on [default: the first master].")
@click.option("--dry-run", is_flag=True, help="Print the commands; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def label(app: AppContext, selection: str, server: str | None, dry_run: bool,
          as_json: bool) -> None:
    """Label the K3s nodes with their L4T release and module, as the manifests select."""
    fleet = app.fleet()
    nodes = fleet.select(selection)
    if server:
        host = fleet.node(server)
    elif fleet.masters:
        host = fleet.masters[0]
    else:
        raise UsageError("no master in fleet.toml to run kubectl on",
                         hint="--server NODE names the K3s server")
    if dry_run:
        for node in nodes:
            click.echo(f"{host.name}: {label_command(node)}")
        return
    results = label_nodes(app.ssh(), host, nodes)

    def to_json(r: NodeOutcome[str]) -> dict[str, object]:
        return {"node": r.node.name, "ok": r.ok, "labels": r.value, **error_json(r.error)}

    render_outcomes(results, as_json=as_json, headers=["NODE", "RESULT", "LABELS"],
                    row=lambda r: [r.node.name, ok_word(r.ok), r.value],
                    to_json=to_json)
