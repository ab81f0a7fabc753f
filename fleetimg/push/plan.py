"""Pre-flight for a push: before any byte is sent, what each node has, needs and accepts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from fleetimg import remote
from fleetimg.errors import PushError
from fleetimg.inventory import Node, Runtime
from fleetimg.l4t import host_runs_image
from fleetimg.localimage import LocalImage
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.probe import NodeProbe, probe_node
from fleetimg.push.archive import chain_ids
from fleetimg.remote import sh
from fleetimg.ssh import Ssh
from fleetimg.units import human_bytes

# docker load unpacks the archive into a temporary directory before registering layers,
# so a node needs room for the archive and the unpacked layers (jetson-containers #218).
LOAD_SPACE_FACTOR = 2
SPACE_MARGIN = 200 << 20


class Action(str, Enum):
    SKIP = "skip"  # the node already has this image under this name
    TAG = "tag"  # the node has the image, only the name is missing
    SEND = "send"
    REFUSE = "refuse"


class CodecName(str, Enum):
    ZSTD = "zstd"
    PIGZ = "pigz"
    GZIP = "gzip"
    NONE = "none"


@dataclass(frozen=True)
class Codec:
    name: CodecName
    compress: tuple[str, ...]  # runs here
    decompress: str  # runs on the node


CODECS: dict[CodecName, Codec] = {
    # zstd -3 compresses ~245 MB/s on one core, gzip -6 ~27 MB/s: only zstd keeps ahead of
    # gigabit (~115 MB/s). Docker 20.10 cannot load zstd itself, so the node decompresses.
    CodecName.ZSTD: Codec(CodecName.ZSTD, ("zstd", "-3", "-T0", "-q", "-c"), "zstd -dc"),
    CodecName.PIGZ: Codec(CodecName.PIGZ, ("pigz", "-1", "-c"), "pigz -dc"),
    CodecName.GZIP: Codec(CodecName.GZIP, ("pigz", "-1", "-c"), "gzip -dc"),
    CodecName.NONE: Codec(CodecName.NONE, ("cat",), "cat"),
}


@dataclass(frozen=True)
class NodePlan:
    node: Node
    action: Action
    reason: str
    probe: NodeProbe | None = None
    have_layers: int = 0
    send_layers: int = 0
    send_bytes: int = 0  # uncompressed layer bytes to send
    codec: Codec | None = None
    docker: str = "docker"
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node.name, "action": self.action.value, "reason": self.reason,
            "have_layers": self.have_layers, "send_layers": self.send_layers,
            "send_bytes": self.send_bytes, "codec": self.codec.name if self.codec else None,
            "runtime": self.node.runtime.value, "warnings": list(self.warnings),
        }


def choose_codec(probe: NodeProbe, wanted: CodecName | None, local_tools: set[str]) -> Codec:
    """`wanted` None: zstd where both ends have it, else pigz, else gzip."""
    if wanted is not None:
        codec = CODECS[wanted]
        tool = codec.decompress.split()[0]
        if tool != "cat" and tool not in probe.tools:
            raise PushError(f"{probe.name}: --compress {wanted.value} but the node has no "
                            f"{tool}", hint="use --compress auto")
        return codec
    if "zstd" in probe.tools and "zstd" in local_tools:
        return CODECS[CodecName.ZSTD]
    if "pigz" in probe.tools and "pigz" in local_tools:
        return CODECS[CodecName.PIGZ]
    return CODECS[CodecName.GZIP] if "pigz" in local_tools else Codec(
        CodecName.GZIP, ("gzip", "-1", "-c"), "gzip -dc")


# ctr keeps only the host's platform unless told otherwise ("image might be filtered out"):
# a lab node is x86 playing an arm64 board.
K3S_IMPORT = ("if command -v k3s >/dev/null 2>&1; then sudo -n k3s ctr images import "
              "--all-platforms -; else sudo -n ctr -n k8s.io images import --all-platforms -; fi")
K3S_LIST = ("if command -v k3s >/dev/null 2>&1; then sudo -n k3s ctr images ls -q; "
            "else sudo -n ctr -n k8s.io images ls -q; fi")
# What `ctr images import` brings in is not pinned, unlike K3s's own agent/images imports:
# the kubelet's image GC may remove it, and with imagePullPolicy: Never the next pod fails.
# containerd's CRI (>= 1.7) reports an image with this label as pinned, which GC skips.
PINNED_LABEL = "io.cri-containerd.pinned=pinned"


def k3s_pin(name: str) -> str:
    """The command that pins containerd image `name` (as `ctr images ls -q` lists it)."""
    k3s = remote.sh("sudo", "-n", "k3s", "ctr", "images", "label", name, PINNED_LABEL)
    ctr = remote.sh("sudo", "-n", "ctr", "-n", "k8s.io", "images", "label", name, PINNED_LABEL)
    return f"if command -v k3s >/dev/null 2>&1; then {k3s}; else {ctr}; fi"


def containerd_name(ref: str) -> str:
    """The name containerd gives a docker-archive image: in full, docker.io/library/x:tag."""
    if "/" in ref.split(":")[0] and "." in ref.split("/")[0]:
        return ref
    name = ref if "/" in ref.split(":")[0] else f"library/{ref}"
    return f"docker.io/{name}"

def containerd_has(listing: str, ref: str, image_id: str) -> bool:
    """Does `ctr images ls -q` list our name and our image? containerd names docker-archive
    images in full (docker.io/library/x:tag) and also lists them by config digest, which is
    the Docker image ID."""
    names = {line.strip() for line in listing.splitlines()}
    return bool(names & {ref, containerd_name(ref)}) and image_id in names


REMOTE_IMAGES = (
    "{d} image inspect --format '{{{{.Id}}}}' {ref} 2>/dev/null | sed 's/^/REF /'; "
    "{d} image ls -q --no-trunc | sort -u | xargs -r {d} image inspect "
    "--format '{{{{.Id}}}} {{{{range .RootFS.Layers}}}}{{{{.}}}},{{{{end}}}}'"
)


def parse_remote_images(text: str) -> tuple[str | None, set[str], set[str]]:
    """(ID under our ref or None, all image IDs, all chain IDs) from REMOTE_IMAGES output."""
    ref_id = None
    ids: set[str] = set()
    chains: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "REF" and len(parts) > 1:
            ref_id = parts[1]
            continue
        ids.add(parts[0])
        if len(parts) > 1:
            chains.update(chain_ids([d for d in parts[1].split(",") if d]))
    return ref_id, ids, chains


def plan_node(ssh: Ssh, node: Node, image: LocalImage, *, codec: CodecName | None,
              local_tools: set[str]) -> NodePlan:
    probe = probe_node(ssh, node)
    if not probe.runs_arm64 and image.architecture == "arm64":
        return NodePlan(node, Action.REFUSE, f"node is {probe.arch} without arm64 emulation; "
                        f"image is {image.platform}", probe)
    if image.architecture == "amd64" and probe.arch != "x86_64":
        return NodePlan(node, Action.REFUSE, f"image is linux/amd64, node is {probe.arch}", probe)
    warnings: list[str] = []
    if image.l4t is not None:
        host = probe.l4t or node.l4t
        if probe.l4t is None:
            warnings.append(f"no /etc/nv_tegra_release; using the inventory's {node.l4t}")
        ok, why = host_runs_image(host, image.l4t)
        if not ok:
            return NodePlan(node, Action.REFUSE, f"L4T: {why}", probe)
    else:
        warnings.append("image has no io.fleetimg.l4t label: L4T compatibility not checked")
    if node.runtime is Runtime.K3S:
        listing = ssh.run(node, K3S_LIST, timeout=60, check=False).stdout
        if containerd_has(listing, image.ref, image.id):
            return NodePlan(node, Action.SKIP, "containerd (k8s.io) already has this image",
                            probe, len(image.diff_ids), docker="", warnings=tuple(warnings))
        # containerd imports need every blob: the whole image goes.
        return NodePlan(node, Action.SEND, "k3s: import into containerd (namespace k8s.io)",
                        probe, 0, len(image.diff_ids), image.size,
                        choose_codec(probe, codec, local_tools), "", tuple(warnings))
    if probe.docker_version is None:
        return NodePlan(node, Action.REFUSE, probe.docker_error or "no Docker engine", probe)
    docker = "sudo -n docker" if probe.docker_sudo else "docker"
    out = ssh.run(node, REMOTE_IMAGES.format(d=docker, ref=sh(image.ref)),
                  timeout=120).stdout
    ref_id, ids, chains = parse_remote_images(out)
    if ref_id == image.id:
        return NodePlan(node, Action.SKIP, "already has this image", probe,
                        len(image.diff_ids), docker=docker, warnings=tuple(warnings))
    if image.id in ids:
        return NodePlan(node, Action.TAG, "has the image under another name", probe,
                        len(image.diff_ids), docker=docker, warnings=tuple(warnings))
    mine = chain_ids(image.diff_ids)
    have = 0
    while have < len(mine) and mine[have] in chains:
        have += 1
    send_bytes = sum(image.layer_sizes[have:])
    need = send_bytes * LOAD_SPACE_FACTOR + SPACE_MARGIN
    if probe.free_bytes is not None and probe.free_bytes < need:
        return NodePlan(node, Action.REFUSE,
                        f"not enough disk under {probe.docker_root}: "
                        f"{human_bytes(probe.free_bytes)} free, loading needs about "
                        f"{human_bytes(need)}", probe, have,
                        len(mine) - have, send_bytes)
    return NodePlan(node, Action.SEND, f"missing {len(mine) - have} of {len(mine)} layers",
                    probe, have, len(mine) - have, send_bytes,
                    choose_codec(probe, codec, local_tools), docker, tuple(warnings))


def plan_push(ssh: Ssh, nodes: Sequence[Node], image: LocalImage, *,
              codec: CodecName | None = None,
              local_tools: set[str], parallel: int = 8) -> list[NodeOutcome[NodePlan]]:
    return for_each_node(
        nodes, lambda n: plan_node(ssh, n, image, codec=codec, local_tools=local_tools),
        parallel=parallel,
    )
