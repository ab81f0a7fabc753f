"""The image to push, as the workstation's Docker engine knows it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import docker
from docker.errors import DockerException, ImageNotFound
from docker.models.images import Image

from fleetimg.errors import PushError, UsageError
from fleetimg.inventory import Node
from fleetimg.l4t import L4TRelease, host_runs_image
from fleetimg.labels import L4T as LABEL_L4T
from fleetimg.labels import TARGET as LABEL_TARGET


@dataclass(frozen=True)
class LocalImage:
    ref: str  # repository:tag as given (or resolved from a target)
    id: str  # sha256:... of the config: the image ID every node must end up with
    diff_ids: tuple[str, ...]
    layer_sizes: tuple[int, ...]  # uncompressed bytes per layer, same order
    architecture: str
    labels: dict[str, str]

    @property
    def size(self) -> int:
        return sum(self.layer_sizes)

    @property
    def l4t(self) -> L4TRelease | None:
        text = self.labels.get(LABEL_L4T)
        return L4TRelease.parse(text) if text else None

    @property
    def platform(self) -> str:
        return f"linux/{self.architecture}"


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except DockerException as exc:
        raise PushError(f"Docker engine not reachable: {exc}",
                        hint="`fleetimg doctor` says how to start it") from exc


def _layer_sizes(client: docker.DockerClient, ref: str, count: int) -> tuple[int, ...]:
    """Uncompressed size of each layer, oldest first, from the image history.

    History also lists metadata-only steps (size 0), and the API does not say which
    zero-size entries made a layer (a WORKDIR that changes nothing does). Entries with a
    size are layers, in order; any zero-size layers are assumed to come last. The total is
    exact, the split an estimate: the transfer counts real bytes.
    """
    history = client.api.history(ref)  # type: ignore[no-untyped-call]
    sizes = [int(h.get("Size", 0)) for h in reversed(history) if int(h.get("Size", 0)) > 0]
    sizes = sizes[:count]
    return (*sizes, *([0] * (count - len(sizes))))


def resolve_image(client: docker.DockerClient, ref: str) -> LocalImage:
    """An image reference, or a build target name (the newest image `fleetimg build` made)."""
    named = _by_name(client, ref)
    if named is not None:
        return named
    newest = _newest_per_release(client, ref)
    if len(newest) > 1:
        raise UsageError(
            f"target {ref!r} has images for {', '.join(sorted(newest))}: name one",
            hint=f"e.g. {next(iter(newest.values())).ref}")
    return next(iter(newest.values()))


def _by_name(client: docker.DockerClient, ref: str) -> LocalImage | None:
    """The local image `ref` names, or None when no image has that name."""
    try:
        image = client.images.get(ref)
    except ImageNotFound:
        return None
    return _local(client, image, ref if ":" in ref or "@" in ref else f"{ref}:latest")


@dataclass(frozen=True)
class ImageAssignment:
    """One image and the selected nodes that receive it."""

    image: LocalImage
    nodes: tuple[Node, ...]


def assign_images(client: docker.DockerClient, ref: str, nodes: Sequence[Node],
                  ) -> tuple[list[ImageAssignment], dict[str, PushError]]:
    """Which image each node receives.

    An image reference goes to every node (each node's pre-flight checks its L4T). A build
    target name gives each node the newest image built for that target whose L4T runs on
    the node's release (`build TARGET --all-releases` makes one per family); a node no built
    image runs on is refused here, with the build that fixes it.
    """
    named = _by_name(client, ref)
    if named is not None:
        return [ImageAssignment(named, tuple(nodes))], {}
    newest = _newest_per_release(client, ref)
    chosen: dict[str, list[Node]] = {}
    refused: dict[str, PushError] = {}
    for node in nodes:
        fits = [img for img in newest.values()
                if img.l4t is None or host_runs_image(node.l4t, img.l4t)[0]]
        if not fits:
            labels = ", ".join(sorted(k for k in newest if k)) or "no release"
            refused[node.name] = PushError(
                f"no {ref} image runs on L4T {node.l4t} (built for {labels})",
                hint=f"fleetimg build {ref} --all-releases (one image per family)")
            continue
        # The image built for the release closest to the node's (same family, highest).
        best = max(fits, key=lambda img: (img.l4t is not None, img.l4t or L4TRelease(0, 0, 0)))
        chosen.setdefault(best.ref, []).append(node)
    assignments = [ImageAssignment(img, tuple(chosen[img.ref]))
                   for img in newest.values() if img.ref in chosen]
    return assignments, refused


def _newest_per_release(client: docker.DockerClient, target: str) -> dict[str, LocalImage]:
    """The image `fleetimg build` made last for each L4T label of a target: the one holding
    the name it gives (fleetimg/TARGET:r32.7.1), which each build moves to the new image.
    BuildKit's `Created` is the cached step's time, so it cannot tell which is newer; it
    only orders images built outside fleetimg."""
    built = sorted(_target_images(client, target), key=lambda i: i.attrs.get("Created", ""),
                   reverse=True)
    by_release: dict[str, list[Image]] = {}
    for image in built:
        if image.tags:
            labels = (image.attrs.get("Config") or {}).get("Labels") or {}
            by_release.setdefault(labels.get(LABEL_L4T, ""), []).append(image)
    newest: dict[str, LocalImage] = {}
    for key, images in by_release.items():
        canonical = f"fleetimg/{target}:{L4TRelease.parse(key).tag}" if key else ""
        image = next((i for i in images if canonical in i.tags), images[0])
        newest[key] = _local(client, image, canonical if canonical in image.tags
                             else _tag_of(image, target))
    return newest


def _target_images(client: docker.DockerClient, target: str) -> list[Image]:
    built = client.images.list(filters={"label": f"{LABEL_TARGET}={target}"})
    if not built:
        # No `fleetimg build <ref>` here: the name may be a typo of an image, not a target.
        raise UsageError(
            f"no local image {target!r}, and no image built for a target of that name",
            hint="name a local image (`docker images`), or a target that `fleetimg build "
            "TARGET` has built (`fleetimg targets` lists them)") from None
    return list(built)


def _tag_of(image: Image, target: str) -> str:
    if not image.tags:
        raise UsageError(f"the newest image built for target {target!r} has no tag")
    return str(image.tags[0])


def _local(client: docker.DockerClient, image: Image,
           resolved: str) -> LocalImage:
    attrs = image.attrs
    diff_ids = tuple(attrs.get("RootFS", {}).get("Layers", []))
    return LocalImage(
        ref=resolved,
        id=attrs["Id"],
        diff_ids=diff_ids,
        layer_sizes=_layer_sizes(client, attrs["Id"], len(diff_ids)),
        architecture=attrs.get("Architecture", "amd64"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
    )
