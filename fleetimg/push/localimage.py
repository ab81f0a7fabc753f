"""The image to push, as the workstation's Docker engine knows it."""

from __future__ import annotations

from dataclasses import dataclass

import docker
from docker.errors import DockerException, ImageNotFound

from fleetimg.errors import PushError, UsageError
from fleetimg.l4t import L4TRelease

LABEL_TARGET = "io.fleetimg.target"
LABEL_L4T = "io.fleetimg.l4t"


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
    try:
        image = client.images.get(ref)
        resolved = ref if ":" in ref or "@" in ref else f"{ref}:latest"
    except ImageNotFound:
        built = client.images.list(filters={"label": f"{LABEL_TARGET}={ref}"})
        if not built:
            raise UsageError(
                f"no local image {ref!r}, and no image built for a target of that name",
                hint=f"build it first (`fleetimg build {ref}`) or check `docker images`",
            ) from None
        image = max(built, key=lambda i: i.attrs.get("Created", ""))
        tags = image.tags
        if not tags:
            raise UsageError(f"the newest image built for target {ref!r} has no tag") from None
        resolved = tags[0]
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
