"""What every workload run needs on each node: Docker, the image as pushed, the runtime.

`fleetimg run` starts its containers with the label below, so `run --stop` (and a Ctrl-C)
finds exactly what run started and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from fleetimg import remote
from fleetimg.errors import FleetimgError, RunError
from fleetimg.inventory import Node
from fleetimg.localimage import LocalImage, assign_images, docker_client
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.probe import NodeProbe, probe_node
from fleetimg.ssh import Ssh

RUN_LABEL = "io.fleetimg.run"


class Kind(str, Enum):
    PYTORCH = "pytorch"
    HOROVOD = "horovod"


def container_name(kind: Kind, suffix: str = "") -> str:
    return f"fleetimg-run-{kind.value}{'-' + suffix if suffix else ''}"


@dataclass(frozen=True)
class Worker:
    """A node ready to run a workload container."""

    node: Node
    image: str  # the name the image was pushed under: what the node runs
    docker: str  # "docker" or "sudo -n docker", as the probe found Docker answers
    nvidia: bool  # the node's Docker engine has the nvidia runtime
    probe: NodeProbe

    def command(self, *args: object) -> str:
        return remote.docker(self.docker, *args)

    def runtime_args(self) -> list[str]:
        # nvidia is named even where it is the default runtime, so the GPU does not depend
        # on daemon.json being right (the field reports set default-runtime by hand).
        # An x86 node that emulates arm64 (a lab node) is told the platform, or Docker warns
        # on every run.
        emulated = self.probe.arch != "aarch64" and self.probe.arm64_emulation
        return [*(["--runtime", "nvidia"] if self.nvidia else []),
                *(["--platform", "linux/arm64"] if emulated else [])]


def prepare_workers(ssh: Ssh, nodes: Sequence[Node], image: str, *, exact: bool = False,
                    ) -> tuple[list[Worker], dict[str, FleetimgError]]:
    """Probe each node and check it holds the image it is to run.

    `image` is a build target (each node runs the image `fleetimg push TARGET` gave it: the
    newest built for the target whose L4T runs on the node, checked by image ID) or, with
    `exact`, a name used as is on every node. Returns the ready workers, in node order, and
    an error per node that cannot run.
    """
    errors: dict[str, FleetimgError] = {}
    wanted: dict[str, LocalImage | None] = {}
    if exact:
        wanted = {n.name: None for n in nodes}
        refs = {n.name: image for n in nodes}
    else:
        assignments, refused = assign_images(docker_client(), image, nodes)
        errors.update(refused)
        refs = {}
        for a in assignments:
            for n in a.nodes:
                wanted[n.name], refs[n.name] = a.image, a.image.ref

    def check(node: Node) -> Worker:
        probe = probe_node(ssh, node)
        if probe.docker_version is None:
            raise RunError(
                f"{node.name}: no Docker engine answers ({probe.docker_error or 'not installed'})",
                hint="fleetimg run uses Docker on the boards; on K3s-only boards use "
                "`fleetimg k3s manifests` instead")
        worker = Worker(node, refs[node.name], "sudo -n docker" if probe.docker_sudo else "docker",
                        "nvidia" in probe.docker_runtimes, probe)
        found = ssh.run(node, worker.command("image", "inspect", "--format", remote.ID_FORMAT,
                                             worker.image), check=False)
        local = wanted[node.name]
        push = f"fleetimg push {image if not exact else worker.image} --to {node.name}"
        if found.returncode != 0:
            raise RunError(f"{node.name}: has no image {worker.image}", hint=push)
        if local is not None and found.stdout.strip() != local.id:
            raise RunError(
                f"{node.name}: its {worker.image} is not the one built last on this "
                f"workstation ({found.stdout.strip()[:19]}, here {local.id[:19]})",
                hint=f"{push} (sends only the changed layers)")
        return worker

    todo = [n for n in nodes if n.name not in errors]
    outcomes = for_each_node(todo, check)
    errors.update({o.node.name: o.error for o in outcomes if o.error is not None})
    workers = [o.value for o in outcomes if o.value is not None]
    return workers, errors


# Finds the node's Docker the way probe does (directly, else through sudo), then removes
# every container fleetimg run started there (of one kind, or all), naming each.
_STOP_SCRIPT = """\
d=docker
$d info >/dev/null 2>&1 || d="sudo -n docker"
names=$($d ps -a --filter "label=$1" --format '{{.Names}}') || exit 1
[ -z "$names" ] || $d rm -f $names >/dev/null || exit 1
echo $names
"""


def stop_runs(ssh: Ssh, nodes: Sequence[Node], kind: Kind | None = None,
              ) -> list[NodeOutcome[list[str]]]:
    """Remove the containers `fleetimg run` started on each node; per node, their names."""
    label = f"{RUN_LABEL}={kind.value}" if kind else RUN_LABEL

    def one(node: Node) -> list[str]:
        out = ssh.run(node, remote.sh("sh", "-s", "--", label), input=_STOP_SCRIPT,
                      timeout=60)
        return out.stdout.split()

    return for_each_node(nodes, one)
