from __future__ import annotations

import pytest

from fleetimg.errors import UsageError
from fleetimg.l4t import (
    L4TRelease,
    format_nv_tegra_release,
    host_runs_image,
    parse_nv_tegra_release,
)
from tests.conftest import DATA


@pytest.mark.parametrize(
    ("fname", "release", "board", "jetpack"),
    [
        ("r32.5.0-nano.txt", "R32.5.0", "t210ref", "4.5"),
        ("r32.7.1-nano.txt", "R32.7.1", "t210ref", "4.6.1"),
        ("r32.7.4-tx2.txt", "R32.7.4", "t186ref", "4.6.4"),
        ("r35.4.1-xavier.txt", "R35.4.1", "t186ref", "5.1.2"),
        ("r36.3.0-orin.txt", "R36.3.0", "generic", "6.0"),
    ],
)
def test_parse_real_release_files(fname: str, release: str, board: str, jetpack: str) -> None:
    tegra = parse_nv_tegra_release((DATA / "nv_tegra_release" / fname).read_text())
    assert str(tegra.release) == release
    assert tegra.board == board
    assert tegra.eabi == "aarch64"
    assert tegra.release.jetpack == jetpack


def test_parse_rejects_garbage() -> None:
    with pytest.raises(UsageError, match="cannot read an L4T release"):
        parse_nv_tegra_release("Ubuntu 18.04.6 LTS\n")
    with pytest.raises(UsageError):
        parse_nv_tegra_release("")


def test_format_round_trips() -> None:
    line = format_nv_tegra_release(L4TRelease(35, 4, 1), "t186ref")
    tegra = parse_nv_tegra_release(line)
    assert tegra.release == L4TRelease(35, 4, 1)
    assert tegra.board == "t186ref"


@pytest.mark.parametrize("text", ["R32.7.1", "r32.7.1", "32.7.1", " R32.7.1 "])
def test_release_parse_forms(text: str) -> None:
    assert L4TRelease.parse(text) == L4TRelease(32, 7, 1)
    assert L4TRelease.parse(text).tag == "r32.7.1"


def test_release_parse_two_parts_and_errors() -> None:
    assert L4TRelease.parse("R35.4") == L4TRelease(35, 4, 0)
    for bad in ("", "R32", "JetPack 4.6", "R32.7.1.2", "Rx.y.z"):
        with pytest.raises(UsageError, match="not an L4T release"):
            L4TRelease.parse(bad)


def test_ordering() -> None:
    assert L4TRelease(32, 7, 1) < L4TRelease(32, 7, 4) < L4TRelease(35, 1, 0)
    assert max(L4TRelease(32, 6, 1), L4TRelease(32, 5, 0)) == L4TRelease(32, 6, 1)


@pytest.mark.parametrize(
    ("host", "image", "ok"),
    [
        ("R32.7.1", "R32.7.1", True),
        ("R32.7.4", "R32.7.1", True),  # R32.7.x host accepts any R32.7 image
        ("R32.7.1", "R32.7.4", True),
        ("R32.6.1", "R32.6.1", True),
        ("R32.6.1", "R32.7.1", False),  # below R32.7: exact match only
        ("R32.5.0", "R32.5.1", False),
        ("R32.7.1", "R32.6.1", False),
        ("R35.4.1", "R35.2.1", True),  # JetPack 5: any R35 on any R35
        ("R35.1.0", "R35.4.1", True),
        ("R35.4.1", "R32.7.1", False),  # never across majors
        ("R32.7.1", "R35.4.1", False),
        ("R36.3.0", "R35.4.1", False),
        ("R34.1.1", "R34.1.1", True),
    ],
)
def test_host_runs_image(host: str, image: str, ok: bool) -> None:
    result, why = host_runs_image(L4TRelease.parse(host), L4TRelease.parse(image))
    assert result is ok, why
    assert why


@pytest.mark.parametrize(("host", "image", "ok"), [
    ("R36.3.0", "R36.2.0", True),
    ("R36.2.0", "R36.3.0", True),
    ("R36.4.3", "R36.4.0", True),
    ("R36.4.7", "R36.4.3", True),
    ("R36.4.3", "R36.2.0", False),  # across 36.3/36.4: NVIDIA's 2024-10 rule
    ("R36.3.0", "R36.4.0", False),
    ("R36.4.3", "R35.4.1", False),
])
def test_jetpack_6_compatibility(host: str, image: str, ok: bool) -> None:
    assert host_runs_image(L4TRelease.parse(host), L4TRelease.parse(image))[0] is ok
