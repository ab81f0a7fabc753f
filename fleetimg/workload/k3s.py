"""`fleetimg k3s`: the workloads as K3s objects, written from the inventory, checked offline.

- pytorch: an Indexed Job per image (one per L4T release in the selection), one pod per
  board (`completions` = boards, a pod anti-affinity keeps two slices off one board), as
  `fleetimg run pytorch` slices the same work.
- triton: a DaemonSet per image, serving on ports 8000-8002 of every selected board.

Pods land by the labels `fleetimg k3s label` puts on the K3s nodes (the board's L4T release
and module), use `runtimeClassName: fleetimg-nvidia` (a RuntimeClass of fleetimg's own in
the file, handler `nvidia`: the runtime K3s configures in containerd when a board has the
NVIDIA container runtime) and name the image exactly as `fleetimg push` delivered it, with
`imagePullPolicy: Never`: there is no registry.

The RuntimeClass is not called `nvidia`: recent K3s creates that one itself from its
packaged runtimes manifest (k3s-io/k3s#8700, #8751), so ours would take over K3s's object
and deleting our file would delete it. `fleetimg-nvidia` points at the same handler, works
on K3s releases with and without their own, and is ours alone to delete.

Every manifest is validated against the Kubernetes API schema (kubernetes-validate's
bundled JSON schemas, strict: an unknown field is an error) before it is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fleetimg import remote
from fleetimg.errors import FleetimgError, RunError, UsageError
from fleetimg.inventory import Node
from fleetimg.localimage import assign_images, docker_client
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.ssh import Ssh
from fleetimg.workload.batch import worker_inputs

LABEL_L4T = "fleetimg/l4t"
LABEL_MODULE = "fleetimg/module"
MANAGED_BY = {"app.kubernetes.io/managed-by": "fleetimg"}
# K3s on JetPack boards: the schemas of this Kubernetes minor are the default check.
DEFAULT_K8S_VERSION = "1.31"


class ManifestError(FleetimgError):
    """A manifest does not match the Kubernetes API schema."""


class Workload(str, Enum):
    INDEXED_JOB = "indexed-job"
    DAEMONSET = "daemonset"


# Which object each build target becomes; horovod runs with `fleetimg run horovod`.
WORKLOADS = {"pytorch": Workload.INDEXED_JOB, "triton": Workload.DAEMONSET}


@dataclass(frozen=True)
class ManifestOptions:
    target: str
    image: str | None = None  # an image name for every node instead of the pushed ones
    images_dir: str | None = None  # pytorch: hostPath of the images on every board
    weights: str | None = None  # pytorch: hostPath of the weights file
    synthetic: int = 120
    models_dir: str = "/models"  # triton: hostPath of the model repository


@dataclass(frozen=True)
class ImageGroup:
    image: str
    nodes: tuple[Node, ...]

    @property
    def release(self) -> str:
        return str(self.nodes[0].l4t)

    @property
    def suffix(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.release.lower()).strip("-")


def group_nodes(nodes: Sequence[Node], options: ManifestOptions) -> list[ImageGroup]:
    """Nodes by the image they run and their release: one object per group."""
    if options.image:
        pairs = [(options.image, n) for n in nodes]
    else:
        assignments, refused = assign_images(docker_client(), options.target, nodes)
        if refused:
            first = next(iter(refused.values()))
            raise UsageError(f"{', '.join(refused)}: {first.message}", hint=first.hint)
        pairs = [(a.image.ref, n) for a in assignments for n in a.nodes]
    groups: dict[tuple[str, str], list[Node]] = {}
    for image, node in pairs:
        groups.setdefault((image, str(node.l4t)), []).append(node)
    return [ImageGroup(image, tuple(ns)) for (image, _), ns in groups.items()]


def manifests(nodes: Sequence[Node], options: ManifestOptions) -> list[dict[str, Any]]:
    workload = WORKLOADS.get(options.target)
    if workload is None:
        raise UsageError(
            f"no K3s manifest for target {options.target!r}",
            hint="targets with manifests: " + ", ".join(WORKLOADS)
            + ("; train with `fleetimg run horovod`" if options.target == "horovod" else ""))
    if not nodes:
        raise UsageError("no nodes selected", hint="--to all-nodes, a group, or node1,node2")
    docs: list[dict[str, Any]] = [runtime_class()]
    for group in group_nodes(nodes, options):
        if workload is Workload.INDEXED_JOB:
            docs.append(indexed_job(group, options))
        else:
            docs.append(daemonset(group, options))
    return docs


# Ours, beside the `nvidia` RuntimeClass recent K3s makes itself (see the module docstring).
RUNTIME_CLASS = "fleetimg-nvidia"
# The containerd runtime K3s configures when it finds nvidia-container-runtime on a board.
RUNTIME_HANDLER = "nvidia"


def runtime_class() -> dict[str, Any]:
    return {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": RUNTIME_CLASS, "labels": dict(MANAGED_BY)},
            "handler": RUNTIME_HANDLER}


def _placement(group: ImageGroup) -> dict[str, Any]:
    modules = sorted({n.module.name for n in group.nodes})
    return {
        "nodeSelector": {LABEL_L4T: group.release},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": LABEL_MODULE, "operator": "In", "values": modules},
                {"key": "kubernetes.io/hostname", "operator": "In",
                 "values": [n.name for n in group.nodes]},
            ]}]}}},
    }


def indexed_job(group: ImageGroup, options: ManifestOptions) -> dict[str, Any]:
    name = f"fleetimg-pytorch-{group.suffix}"
    count = len(group.nodes)
    labels = {"app.kubernetes.io/name": "pytorch", "fleetimg/job": name}
    inputs, host_mounts = worker_inputs(options.images_dir, options.weights, options.synthetic)
    env = [{"name": k, "value": v} for k, v in {"TOTAL_JOBS": str(count), **inputs}.items()]
    volumes = [{"name": m.name, "hostPath": {"path": m.host}} for m in host_mounts]
    mounts = [{"name": m.name, "mountPath": m.path, "readOnly": True} for m in host_mounts]
    placement = _placement(group)
    # One slice per board: pods of this job never share a node.
    placement["affinity"]["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"fleetimg/job": name}},
         "topologyKey": "kubernetes.io/hostname"}]}
    container: dict[str, Any] = {"name": "worker", "image": group.image,
                                 "imagePullPolicy": "Never", "env": env}
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"restartPolicy": "Never", "runtimeClassName": RUNTIME_CLASS,
                           **placement, "containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {**labels, **MANAGED_BY}},
        "spec": {"completionMode": "Indexed", "completions": count, "parallelism": count,
                 "backoffLimit": count,
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def daemonset(group: ImageGroup, options: ManifestOptions) -> dict[str, Any]:
    name = f"fleetimg-triton-{group.suffix}"
    labels = {"app.kubernetes.io/name": "triton", "fleetimg/daemonset": name}
    volume = {"name": "models", "hostPath": {"path": options.models_dir}}
    mount = {"name": "models", "mountPath": "/models", "readOnly": True}
    ports = [{"name": n, "containerPort": p, "hostPort": p}
             for n, p in (("http", 8000), ("grpc", 8001), ("metrics", 8002))]
    container = {
        "name": "triton", "image": group.image, "imagePullPolicy": "Never", "ports": ports,
        "volumeMounts": [mount],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8000},
                           "periodSeconds": 10},
    }
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "labels": {**labels, **MANAGED_BY}},
        "spec": {"selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"runtimeClassName": RUNTIME_CLASS, **_placement(group),
                                       "containers": [container], "volumes": [volume]}}},
    }


def _bundled_schema(k8s_version: str) -> str:
    """The bundled schema version for a Kubernetes minor ("1.31" -> "1.31.0"). Chosen here:
    the library compares version strings as text ("1.9" > "1.31")."""
    from kubernetes_validate.utils import all_versions

    bundled = {tuple(int(x) for x in v.split(".")[:2]): v for v in all_versions()}
    m = re.fullmatch(r"v?(\d+)\.(\d+)(\.\d+)?", k8s_version.strip())
    key = (int(m.group(1)), int(m.group(2))) if m else None
    if key not in bundled:
        lo, hi = min(bundled), max(bundled)
        raise UsageError(f"--k8s-version {k8s_version}: no schema bundled for it",
                         hint=f"a Kubernetes minor from {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, "
                         "e.g. the K3s server's (`k3s --version`)")
    return str(bundled[key])


def validate(docs: Sequence[dict[str, Any]], k8s_version: str = DEFAULT_K8S_VERSION) -> None:
    """Check every document against the Kubernetes API schema of `k8s_version`, strictly;
    raise ManifestError naming the object and the field."""
    import kubernetes_validate  # its schemas load on first use: only commands that check

    schema = _bundled_schema(k8s_version)
    for doc in docs:
        what = f"{doc.get('kind', '?')} {doc.get('metadata', {}).get('name', '?')}"
        try:
            kubernetes_validate.validate(doc, schema, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(top level)"
            raise ManifestError(f"{what}: {where}: {exc.message}",
                                hint="the Kubernetes API schema "
                                f"{k8s_version} rejects it") from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise ManifestError(f"{what}: {exc.message}",
                                hint="apiVersion and kind must name a Kubernetes object") \
                from None


def to_yaml(docs: Sequence[dict[str, Any]]) -> str:
    import yaml

    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


def load_yaml(text: str) -> list[dict[str, Any]]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML: {exc}".splitlines()[0]) from None
    bad = [d for d in docs if not isinstance(d, dict)]
    if bad:
        raise ManifestError("a document is not a Kubernetes object (a mapping)")
    return docs


def label_command(node: Node) -> str:
    """What the K3s server runs to label one node as the manifests select it."""
    return remote.sh("sudo", "-n", "k3s", "kubectl", "label", "node", node.name,
                     f"{LABEL_L4T}={node.l4t}", f"{LABEL_MODULE}={node.module.name}",
                     "--overwrite")


def label_nodes(ssh: Ssh, server: Node, nodes: Sequence[Node],
                ) -> list[NodeOutcome[str]]:
    """Label each node on the K3s server (over SSH, `k3s kubectl` as root); per node, the
    labels set. A node the server does not know fails alone."""
    has = ssh.run(server, "command -v k3s >/dev/null", check=False, timeout=30)
    if has.returncode != 0:
        raise RunError(f"{server.name}: no k3s command: not a K3s server",
                       hint="the first master in fleet.toml is taken as the K3s server; "
                       "name another with --server")

    def one(node: Node) -> str:
        out = ssh.run(server, label_command(node), check=False, timeout=60)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["failed"])[-1]
            raise RunError(f"{node.name}: {last}",
                           hint=f"is {node.name} joined? `sudo k3s kubectl get nodes` on "
                           f"{server.name}")
        return f"{LABEL_L4T}={node.l4t},{LABEL_MODULE}={node.module.name}"

    # One at a time: the API server on a Nano is slow enough without a burst.
    return for_each_node(nodes, one, parallel=1)
