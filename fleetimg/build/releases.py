"""Which NGC base image a target uses for an L4T release: dockerfiles/releases.toml."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from fleetimg import tomlcompat as tomllib
from fleetimg.errors import UsageError
from fleetimg.l4t import KNOWN_FAMILIES_TEXT, UNSUPPORTED_FAMILIES, L4TRelease

NEWEST_R32 = L4TRelease(32, 7, 1)
NEWEST_R35 = L4TRelease(35, 4, 1)
# There is no r36.4.3 (JetPack 6.2) or later tag: R36.4+ boards use r36.4.0 images.
NEWEST_R36 = L4TRelease(36, 4, 0)


@dataclass(frozen=True)
class ReleaseImages:
    l4t: L4TRelease  # the release whose images are used
    jetpack: str
    base: str
    pytorch: str
    triton: str | None
    triton_tarball: str | None  # JetPack 4/5: Triton's release tarball for Jetson
    triton_image: str | None = None  # JetPack 6: NGC's tritonserver igpu image

    @property
    def family(self) -> str:
        return f"r{self.l4t.major}"


@functools.cache
def _rows() -> tuple[dict[str, str], ...]:
    """releases.toml, read once: images_for() runs per node and per lookup."""
    text = resources.files("fleetimg.dockerfiles").joinpath("releases.toml").read_text()
    return tuple(tomllib.loads(text)["release"])


def load_table() -> dict[L4TRelease, ReleaseImages]:
    """The releases NVIDIA published images for."""
    return {
        (rel := L4TRelease.parse(row["l4t"])): ReleaseImages(
            rel, row["jetpack"], row["base"], row["pytorch"], row.get("triton"),
            row.get("triton_tarball"), row.get("triton_image"))
        for row in _rows() if "images" not in row
    }


def load_aliases() -> dict[L4TRelease, tuple[str, L4TRelease]]:
    """Releases listed without images of their own: {l4t: (jetpack, images' l4t)}."""
    return {L4TRelease.parse(row["l4t"]): (row["jetpack"], L4TRelease.parse(row["images"]))
            for row in _rows() if "images" in row}


def images_for(l4t: L4TRelease) -> ReleaseImages:
    """The image set for a board's L4T, following NVIDIA's "last published" rules."""
    table = load_table()
    if l4t in table:
        return table[l4t]
    aliases = load_aliases()
    if l4t in aliases:
        return table[aliases[l4t][1]]
    if l4t.major == 32 and l4t.minor == 7:
        return table[NEWEST_R32]  # R32.7.2+ has no images; any R32.7 image runs on R32.7.x
    if l4t.major == 35 and l4t.minor >= 3:
        return table[NEWEST_R35]  # R35.5+ has no images; any R35 image runs on any R35
    if l4t.major == 36 and l4t >= NEWEST_R36:
        return table[NEWEST_R36]  # R36.4.x boards take R36.4+ images
    if l4t.major in UNSUPPORTED_FAMILIES:
        raise UsageError(f"L4T {l4t} is {UNSUPPORTED_FAMILIES[l4t.major]}: not supported yet",
                         hint=f"supported: {KNOWN_FAMILIES_TEXT} "
                         f"({', '.join(str(r) for r in sorted(table))} and their point "
                         "releases)")
    raise UsageError(
        f"no NGC base images for L4T {l4t}",
        hint=f"supported: {', '.join(str(r) for r in sorted(table))}, R32.7.x, R35.3+ and "
        "R36.4+",
    )
