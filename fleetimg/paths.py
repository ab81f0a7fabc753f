"""Where fleetimg keeps its own files on the workstation."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Per-user state: logs, the lab fleet, default known_hosts."""
    override = os.environ.get("FLEETIMG_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetimg"


def control_dir() -> Path:
    # Unix socket paths are limited to ~104 bytes, so ControlPath must stay short.
    return Path("/tmp") / f"fleetimg-ssh-{os.getuid()}"


def default_known_hosts() -> Path:
    return state_dir() / "known_hosts"


def log_file() -> Path:
    return state_dir() / "fleetimg.log"


INVENTORY_NAME = "fleet.toml"


def default_inventory(start: Path | None = None) -> Path:
    """FLEETIMG_INVENTORY, else the nearest fleet.toml in the current directory or a parent
    (as git finds its repository: commands work from a fleet's subdirectories), else
    ./fleet.toml, whose absence the loader reports."""
    # Set but empty (FLEETIMG_INVENTORY=) means unset, not the current directory.
    given = os.environ.get("FLEETIMG_INVENTORY", "").strip()
    if given:
        return Path(given)
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / INVENTORY_NAME
        if candidate.is_file():
            return candidate if directory != here else Path(INVENTORY_NAME)
    return Path(INVENTORY_NAME)
