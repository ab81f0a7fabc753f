"""fleetimg's known_hosts: the keys it trusts per address, kept through moves and resets.

When apply moves a board, the key it verified at the old address is pinned for the new
one before connecting there, so whatever answers at the new address must be that board.
When apply makes a board new host keys, it reads them over the verified connection and
pins them, so the next connection neither fails ("host key changed") nor trusts blindly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fleetimg import programs


@contextlib.contextmanager
def _editing(known_hosts: Path) -> Iterator[None]:
    """One rewrite of the file at a time. `ssh-keygen -R` reads the file, writes a new one
    and renames it over: two at once (boards of a fleet re-flashed and booted together)
    each put back the key the other removed, and the next SSH to that board fails with
    "host key changed". The lock is on the directory that holds it: no file of fleetimg's
    is made beside the user's for it, and the directory is never renamed."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(known_hosts.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def host_pattern(address: str, port: int = 22) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def entries(known_hosts: Path, address: str, port: int = 22) -> list[str]:
    """The known_hosts lines for the address, as recorded (hashed entries included)."""
    if not known_hosts.exists():
        return []
    found = programs.run(["ssh-keygen", "-F", host_pattern(address, port), "-f",
                        str(known_hosts)], check=False).stdout
    return [ln for ln in found.splitlines() if ln.strip() and not ln.startswith("#")]


def keys_for(known_hosts: Path, address: str, port: int = 22) -> list[str]:
    """"TYPE KEY" of every key recorded for the address."""
    return [" ".join(line.split()[1:3]) for line in entries(known_hosts, address, port)
            if len(line.split()) >= 3]


def forget(known_hosts: Path, address: str, port: int = 22) -> None:
    """Trust no key for the address any more (a re-flashed board makes new ones)."""
    if known_hosts.exists():
        with _editing(known_hosts):
            _remove(known_hosts, address, port)


def _remove(known_hosts: Path, address: str, port: int) -> None:
    programs.run(["ssh-keygen", "-q", "-R", host_pattern(address, port), "-f",
                  str(known_hosts)], check=False)
    known_hosts.with_name(known_hosts.name + ".old").unlink(missing_ok=True)


def pin(known_hosts: Path, address: str, keys: list[str], port: int = 22) -> None:
    """Trust exactly `keys` ("TYPE KEY [comment]") for the address from now on."""
    pattern = host_pattern(address, port)
    with _editing(known_hosts):
        if known_hosts.exists():
            _remove(known_hosts, address, port)
        with known_hosts.open("a") as fh:
            for key in keys:
                kind, blob = key.split()[:2]
                fh.write(f"{pattern} {kind} {blob}\n")
