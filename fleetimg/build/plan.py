"""`fleetimg build` planning: which L4T, which base, which tags, args and labels."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetimg import labels, programs
from fleetimg.build.releases import ReleaseImages, images_for
from fleetimg.build.targets import Target
from fleetimg.errors import UsageError
from fleetimg.inventory import MODULES, Node
from fleetimg.l4t import L4TRelease

PLATFORM = "linux/arm64"


@dataclass(frozen=True)
class BuildPlan:
    target: Target
    images: ReleaseImages
    base: str
    tags: tuple[str, ...]
    build_args: dict[str, str]
    labels: dict[str, str]
    nodes: tuple[str, ...] = ()
    platform: str = PLATFORM
    boards: tuple[L4TRelease, ...] = ()
    dockerfile: str = "Dockerfile"  # in the target's directory

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target.name, "l4t": str(self.images.l4t),
            "jetpack": self.images.jetpack, "base": self.base, "tags": list(self.tags),
            "platform": self.platform, "build_args": self.build_args, "labels": self.labels,
            "nodes": list(self.nodes), "boards": [str(b) for b in self.boards],
            "dockerfile": self.dockerfile,
        }


@dataclass(frozen=True)
class ReleaseGroup:
    images: ReleaseImages
    nodes: tuple[Node, ...] = field(default=())
    boards: tuple[L4TRelease, ...] = field(default=())


def group_releases(releases: Sequence[tuple[Node | None, L4TRelease]]) -> list[ReleaseGroup]:
    """Nodes that can share one image build, keyed by the image release they need."""
    groups: dict[L4TRelease, list[tuple[Node | None, L4TRelease]]] = {}
    for node, rel in releases:
        groups.setdefault(images_for(rel).l4t, []).append((node, rel))
    return [
        ReleaseGroup(images_for(key), tuple(n for n, _ in members if n is not None),
                     tuple(sorted({r for _, r in members})))
        for key, members in sorted(groups.items())
    ]


def _git(*args: str) -> str | None:
    out = programs.run(["git", *args], check=False, timeout=10)
    return out.stdout.strip() or None if out.returncode == 0 else None


def source_date_epoch(directory: Path) -> int:
    """The time a build says it was made: SOURCE_DATE_EPOCH when set (reproducible-builds.org),
    else the last commit that touched the target's directory, else its newest file. Never
    the wall clock: a rebuild without a change must keep the image ID, or every push sends a
    new config to every node."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env.isdigit():
        return int(env)
    committed = _git("-C", str(directory), "log", "-1", "--format=%ct", "--", ".")
    if committed and committed.isdigit():
        return int(committed)
    files = [p for p in directory.rglob("*") if p.is_file()]
    return int(max((p.stat().st_mtime for p in files), default=0))


def _source_labels(directory: Path, target: Target) -> dict[str, str]:
    # The last commit of the target's own files: commits elsewhere keep the image ID.
    revision = _git("-C", str(directory), "log", "-1", "--format=%H", "--", ".") or "unknown"
    if revision != "unknown" and _git("-C", str(directory), "status", "--porcelain", "--", "."):
        revision += "-dirty"
    source = _git("-C", str(directory), "config", "--get", "remote.origin.url")
    created = dt.datetime.fromtimestamp(source_date_epoch(directory), dt.timezone.utc)
    return {
        "org.opencontainers.image.created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": source or f"fleetimg dockerfiles/{target.name}",
        "org.opencontainers.image.title": target.name,
        "org.opencontainers.image.description": target.description,
    }


def release_capabilities(group: ReleaseGroup) -> set[str]:
    """Without nodes, Horovod's CUDA code is compiled for every GPU whose module runs the
    boards' release (or the images' release): R32 Nano, TX2 and Xavier; R36 Orin only. A
    GPU no board of the release has would only cost compile time, and a toolkit may refuse
    it (CUDA 13 dropped compute capabilities below 7.5)."""
    releases = group.boards or (group.images.l4t,)
    return {m.compute_capability for m in MODULES.values()
            if any(m.supports(r) for r in releases)}


def _cc_order(capability: str) -> tuple[int, ...]:
    return tuple(int(x) for x in capability.split("."))


def plan_build(
    target: Target, group: ReleaseGroup, *, directory: Path, tags: Sequence[str] = (),
    base: str | None = None, standin: bool = False, cpu_only: bool = False,
    extra_args: Mapping[str, str] | None = None,
) -> BuildPlan:
    """One build. `cpu_only` (implied by `standin`: the stand-ins have no CUDA) builds a
    CUDA-capable target without CUDA and labels it so; otherwise it must get CUDA or fail."""
    images = group.images
    variant = target.variant(images.family)
    if target.needs_triton and not images.triton:
        raise UsageError(
            f"NVIDIA published no Triton release for JetPack {images.jetpack} (L4T "
            f"{images.l4t})", hint="Triton for Jetson starts at JetPack 4.6 (R32.6.1)")
    if standin and base is None and variant.standin_base is None:
        raise UsageError(f"{target.name} has no stand-in base for {images.family}",
                         hint="pass one with --base, or add [standin] base to its target.toml")
    resolved = base or (variant.standin_base if standin else None) or base_image(
        images, variant.base_column)
    # Without nodes: the oldest GPU of the family (Nano 5.3; JetPack 6 runs on Orin only).
    default_capability = "8.7" if images.l4t.major >= 36 else "5.3"
    selected = {n.module.compute_capability for n in group.nodes}
    capability = min(selected, default=default_capability, key=_cc_order)
    ccs = sorted(selected or release_capabilities(group), key=_cc_order)
    without_cuda = cpu_only or standin
    computed = {
        "HOROVOD_CUDA": "none" if without_cuda else "required",
        "HOROVOD_BUILD_CUDA_CC_LIST": ",".join(c.replace(".", "") for c in ccs),
        "TRITON_VERSION": images.triton or "",
        "TRITON_TARBALL": images.triton_tarball or "",
        "MIN_COMPUTE_CAPABILITY": capability,
        "L4T": str(images.l4t),
        "JETPACK": images.jetpack,
    }
    args = {"BASE_IMAGE": resolved, **target.build_args,
            **target.family_args.get(images.family, {}),
            **{k: computed[k] for k in target.args}}
    if standin:
        args.update(target.standin_args)
    # The user's own (--build-arg) last: a mirror for a base stage, another pip index.
    args.update(extra_args or {})
    # BuildKit 0.11+ (buildx) also stamps the config and history with it; older BuildKit
    # (Docker 20.10's) ignores an argument no ARG declares.
    args["SOURCE_DATE_EPOCH"] = str(source_date_epoch(directory))
    image_labels = {
        **_source_labels(directory, target),
        labels.TARGET: target.name,
        labels.L4T: str(images.l4t),
        labels.JETPACK: images.jetpack,
        labels.BASE: resolved,
    }
    if "HOROVOD_CUDA" in target.args:
        image_labels[labels.CUDA] = "false" if without_cuda else "true"
    all_tags = (f"fleetimg/{target.name}:{images.l4t.tag}", *tags)
    return BuildPlan(target, images, resolved, tuple(dict.fromkeys(all_tags)), args,
                     image_labels,
                     tuple(n.name for n in group.nodes), boards=group.boards,
                     dockerfile=variant.dockerfile)


_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_build_args(items: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE pairs as `docker build --build-arg` takes them, checked."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ARG_NAME.match(key):
            raise UsageError(f"--build-arg {item!r}: expected KEY=VALUE",
                             hint="e.g. --build-arg PIP_INDEX=https://pypi.example/simple")
        if key == "BASE_IMAGE":
            raise UsageError("--build-arg BASE_IMAGE: use --base for the base image",
                             hint="--base names it, and the image's io.fleetimg.base label")
        out[key] = value
    return out


def base_image(images: ReleaseImages, column: str) -> str:
    """The base image a column of releases.toml names for this release."""
    value = {"base": images.base, "pytorch": images.pytorch,
             "triton_image": images.triton_image}[column]
    if value is None:
        raise UsageError(f"releases.toml has no {column} for L4T {images.l4t}",
                         hint="pass the base image with --base")
    return value


def board_releases(
    nodes: Sequence[Node], l4t: str | None,
    probed: dict[str, L4TRelease] | None = None,
) -> list[tuple[Node | None, L4TRelease]]:
    """The L4T each selected board runs: --l4t, else probed, else the inventory's."""
    if l4t is not None:
        rel = L4TRelease.parse(l4t)
        return [(n, rel) for n in nodes] or [(None, rel)]
    if not nodes:
        raise UsageError("no L4T release to build for",
                         hint="pass --l4t R32.7.1, or --to nodes from an inventory")
    probed = probed or {}
    return [(n, probed.get(n.name, n.l4t)) for n in nodes]


def single_group(groups: list[ReleaseGroup]) -> ReleaseGroup:
    if len(groups) == 1:
        return groups[0]
    listing = "; ".join(
        f"{','.join(n.name for n in g.nodes) or '-'} on "
        f"{'/'.join(str(b) for b in g.boards)} need {g.images.l4t.tag} images"
        for g in groups)
    raise UsageError(f"the selected nodes need different base images: {listing}",
                     hint="build one image per family with --all-releases, or narrow --to")


def plan_builds(
    target: Target, nodes: Sequence[Node], *, l4t: str | None, directory: Path,
    probed: dict[str, L4TRelease] | None = None, all_releases: bool = False,
    tags: Sequence[str] = (), base: str | None = None, standin: bool = False,
    cpu_only: bool = False, extra_args: Mapping[str, str] | None = None,
) -> list[BuildPlan]:
    """The builds TARGET needs for these nodes: one, or one per L4T family with
    `all_releases` (extra tags only when there is one build)."""
    groups = group_releases(board_releases(nodes, l4t, probed))
    if not all_releases:
        groups = [single_group(groups)]
    return [plan_build(target, g, directory=directory, tags=tags if len(groups) == 1 else (),
                       base=base, standin=standin, cpu_only=cpu_only,
                       extra_args=extra_args) for g in groups]
