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


def default_inventory() -> Path:
    # Set but empty (FLEETIMG_INVENTORY=) means unset, not the current directory.
    return Path(os.environ.get("FLEETIMG_INVENTORY", "").strip() or "fleet.toml")
