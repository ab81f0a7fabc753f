"""L4T releases: parsing /etc/nv_tegra_release, JetPack names, and container/host compatibility.

Facts from NVIDIA's release notes and jetson-containers `l4t_version_compatible()`;
see docs/releases.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from fleetimg.errors import UsageError

# L4T release -> JetPack release. Point releases without an entry fall back to
# `jetpack_for()`'s family rule.
JETPACK_BY_L4T: dict[tuple[int, int, int], str] = {
    (32, 4, 3): "4.4",
    (32, 4, 4): "4.4.1",
    (32, 5, 0): "4.5",
    (32, 5, 1): "4.5.1",
    (32, 5, 2): "4.5.1",
    (32, 6, 1): "4.6",
    (32, 7, 1): "4.6.1",
    (32, 7, 2): "4.6.2",
    (32, 7, 3): "4.6.3",
    (32, 7, 4): "4.6.4",
    (32, 7, 5): "4.6.5",
    (32, 7, 6): "4.6.6",
    (34, 1, 0): "5.0",
    (34, 1, 1): "5.0.1",
    (35, 1, 0): "5.0.2",
    (35, 2, 1): "5.1",
    (35, 3, 1): "5.1.1",
    (35, 4, 1): "5.1.2",
    (35, 5, 0): "5.1.3",
    (35, 6, 0): "5.1.4",
    (35, 6, 1): "5.1.5",
    (35, 6, 4): "5.1.6",
    (36, 2, 0): "6.0",
    (36, 3, 0): "6.0",
    (36, 4, 0): "6.1",
    (36, 4, 3): "6.2",
    (36, 4, 4): "6.2.1",
    (36, 4, 7): "6.2.1",  # apt upgrades a 6.2.1 board to 36.4.7
}

# L4T major releases -> their JetPack generation.
KNOWN_FAMILIES: dict[int, str] = {32: "JetPack 4", 34: "JetPack 5.0 DP", 35: "JetPack 5",
                                  36: "JetPack 6"}
KNOWN_FAMILIES_TEXT = ", ".join(f"R{m} = {jp}" for m, jp in KNOWN_FAMILIES.items())
# JetPack 7 (R38 on Thor, R39 with Orin support): SBSA arm64 images, not L4T containers.
# Refused in one line until fleetimg builds for them; nothing is guessed.
UNSUPPORTED_FAMILIES: dict[int, str] = {38: "JetPack 7.0/7.1 (Thor)", 39: "JetPack 7.2"}

# BOARD field of nv_tegra_release -> what it means to a person.
BOARDS: dict[str, str] = {
    "t210ref": "Jetson Nano / TX1 (t210)",
    "t186ref": "Jetson TX2 / Xavier (t186 family)",
    "t194ref": "Jetson Xavier (t194)",
    "t234ref": "Jetson Orin (t234)",
    "generic": "Jetson (generic L4T board)",
}

# Up to three digits a part: NVIDIA's run to R39.x; a 20-digit patch level is a typo.
_RELEASE_RE = re.compile(r"^[rR]?(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?$")
_TEGRA_RE = re.compile(
    r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<minor>\d+)(?:\.(?P<patch>\d+))?"
    r"(?P<rest>.*)$"
)


@total_ordering
@dataclass(frozen=True)
class L4TRelease:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> L4TRelease:
        """Parse 'R32.7.1', 'r32.7.1' or '32.7.1'."""
        match = _RELEASE_RE.match(text.strip())
        if match is None:
            raise UsageError(
                f"not an L4T release: {text!r}",
                hint="write it as R<major>.<minor>.<patch>, e.g. R32.7.1 or R35.4.1",
            )
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    def __str__(self) -> str:
        return f"R{self.major}.{self.minor}.{self.patch}"

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, L4TRelease):
            return NotImplemented
        return self._key() < other._key()

    @property
    def tag(self) -> str:
        """The form NGC image tags use: r32.7.1."""
        return f"r{self.major}.{self.minor}.{self.patch}"

    @property
    def jetpack(self) -> str | None:
        return JETPACK_BY_L4T.get(self._key())

    @property
    def known(self) -> bool:
        return self._key() in JETPACK_BY_L4T

    @property
    def family_known(self) -> bool:
        """A release of an L4T family NVIDIA shipped (R32, R34, R35, R36); point releases
        newer than the table are accepted, R99.1 is not."""
        return self.major in KNOWN_FAMILIES


@dataclass(frozen=True)
class TegraRelease:
    """The first line of /etc/nv_tegra_release, parsed."""

    release: L4TRelease
    board: str | None
    gcid: str | None
    eabi: str | None

    @property
    def board_description(self) -> str | None:
        if self.board is None:
            return None
        return BOARDS.get(self.board, self.board)


def parse_nv_tegra_release(text: str) -> TegraRelease:
    """Parse the content of /etc/nv_tegra_release (its first non-empty line matters).

    Example: `# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64,
    DATE: Sat Feb 19 17:05:08 UTC 2022`
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    match = _TEGRA_RE.match(line.strip())
    if match is None:
        raise UsageError(
            f"cannot read an L4T release from nv_tegra_release: {line[:80]!r}",
            hint="expected a line like '# R32 (release), REVISION: 7.1, ...'",
        )
    fields: dict[str, str] = {}
    for part in match["rest"].split(","):
        key, sep, value = part.partition(":")
        if sep:
            fields[key.strip().upper()] = value.strip()
    release = L4TRelease(int(match["major"]), int(match["minor"]), int(match["patch"] or 0))
    return TegraRelease(
        release=release,
        board=fields.get("BOARD") or None,
        gcid=fields.get("GCID") or None,
        eabi=fields.get("EABI") or None,
    )


def format_nv_tegra_release(release: L4TRelease, board: str = "t210ref") -> str:
    """The line NVIDIA writes, for lab nodes and test images."""
    return (
        f"# R{release.major} (release), REVISION: {release.minor}.{release.patch}, "
        f"GCID: 00000000, BOARD: {board}, EABI: aarch64, DATE: Thu Jan  1 00:00:00 UTC 2026\n"
    )


def host_runs_image(host: L4TRelease, image: L4TRelease) -> tuple[bool, str]:
    """Can a container built for `image` run on a board with L4T `host`? Returns (ok, why).

    JetPack 4 (R32): the nvidia runtime mounts CUDA/cuDNN/TensorRT from the host, so the
    image must match the host; a host >= R32.7 accepts any R32.7 image, below that the
    release must match exactly. JetPack 5/6 (R35/R36): CUDA is inside the image, any image
    of the same major runs. R34 only on R34. Never across majors.
    """
    if host.major != image.major:
        return False, f"image is for R{image.major}, board runs R{host.major}: never across majors"
    if host.major == 32:
        if host >= L4TRelease(32, 7, 0) and image.minor == 7:
            return True, "R32.7 host accepts any R32.7 image"
        if host == image:
            return True, "exact L4T match"
        return False, (
            f"JetPack 4 mounts CUDA from the host: image {image} needs a board on exactly that "
            f"release (or R32.7.x with an R32.7 image), board runs {host}"
        )
    if host.major == 36:
        # NVIDIA changed the rule in 2024-10 (jetson-containers l4t_version_compatible):
        # R36.0-36.3 boards take R36.0-36.3 images, R36.4+ boards take R36.4+ images.
        if (host.minor >= 4) != (image.minor >= 4):
            side = "R36.4 and later" if host.minor >= 4 else "R36.0 to R36.3"
            return False, (f"image {image} and board {host} are on either side of R36.4: "
                           f"an {side} board needs an image built for {side}")
        return True, f"{image} image runs on an R36.{host.minor} board"
    return True, f"any R{host.major} image runs on an R{host.major} board"
