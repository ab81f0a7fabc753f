"""SD card fixtures: real Jetson-like GPT disk images with real ext4, built without root."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetimg import inventory, programs
from fleetimg.inventory import Fleet
from fleetimg.lab.testimage import build_test_image
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.gpt import read_table_file


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def jetson_image(images: Path) -> Path:
    return build_test_image(images / "jetson-r32.7.1.img")


@pytest.fixture(scope="session")
def booted_image(images: Path) -> Path:
    return build_test_image(images / "booted.img", booted=True)


@pytest.fixture(scope="session")
def large_image(images: Path) -> Path:
    """An image whose write, verify and overlay take seconds: 512 MB of real blocks."""
    return build_test_image(images / "large.img", app_size=1 << 30, payload=512 << 20)


@pytest.fixture
def make_fleet(tmp_path: Path) -> Callable[..., Fleet]:
    """An inventory in tmp_path with a real key pair; extra TOML goes into [sdcard]."""
    programs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id_fleet")])

    def make(sdcard: str = "", runtime: str = "docker", key: bool = True) -> Fleet:
        text = inventory.starter_toml(nodes=3, subnet="192.168.10.0/24", runtime=runtime)
        if key:
            text = text.replace('# ssh_key = "~/.ssh/id_ed25519"', 'ssh_key = "id_fleet"')
        text = text.replace("[sdcard]\n", "[sdcard]\n" + sdcard + "\n")
        path = tmp_path / "fleet.toml"
        path.write_text(text)
        return inventory.load(path)

    return make


def app_fs(image: Path) -> Ext4:
    """APP of a card image, found by name in its GPT (Nano and Orin layouts differ)."""
    app = read_table_file(image).by_name("APP")
    assert app is not None
    return Ext4(image, app.offset)


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst
