"""Where each node last answered: `apply` reaches a board whose inventory address is its
future one at the address a probe or an earlier apply found it at."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

from fleetimg import newfile
from fleetimg.paths import state_dir


def _path() -> Path:
    return state_dir() / "addresses.json"


def _load() -> dict[str, dict[str, str]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(_path().read_text())
        if isinstance(data, dict):
            return data
    return {}


def last_address(fleet_name: str, node_name: str) -> str | None:
    found = _load().get(fleet_name, {}).get(node_name)
    return found if isinstance(found, str) else None


def record(fleet_name: str, addresses: Mapping[str, str]) -> None:
    """Remember where these nodes answered; written whole by a rename, so a crash or a
    concurrent run never leaves half a file."""
    if not addresses:
        return
    data = _load()
    data.setdefault(fleet_name, {}).update(addresses)
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    newfile.write_atomic(_path(), json.dumps(data, indent=1, sort_keys=True).encode())
